"""The attention implementations (`model.attention`) against today's einsum attention, fp32.

Packed rows as the training batch has them (several segments, trailing padding with segment 0),
causal + segment masks, 256-320 tokens: outputs and gradients agree within 1e-5 of the output
scale on every real token. Splash runs in Pallas interpret mode here (no TPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llark_jax.config import ConfigError, validate_config
from llark_jax.config_base import base_config
from llark_jax.model.attention import self_attention
from llark_jax.model.llama import ATTENTION_BLOCK, Llama, LlamaConfig

REL_TOL = 1e-5
SEGMENTS = ([1] * 100 + [2] * 90 + [3] * 40 + [0] * 26,  # packed row: 3 examples + padding
            [1] * 200 + [0] * 56)  # one example + padding


def _packed_qkv(seed: int, t: int = 256, k: int = 2, g: int = 2, h: int = 16):
    keys = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(keys[0], (2, t, k, g, h), jnp.float32)
    kv = [jax.random.normal(key, (2, t, k, h), jnp.float32) for key in keys[1:]]
    return q, *kv, jnp.asarray(SEGMENTS, jnp.int32)


def _assert_close(out, ref, real_bt) -> None:
    out, ref = np.asarray(out)[real_bt], np.asarray(ref)[real_bt]
    assert np.abs(out - ref).max() <= REL_TOL * np.abs(ref).max(), np.abs(out - ref).max()


@pytest.mark.parametrize("kind", ["dot_product", "splash"])
def test_attention_core_and_gradients_equal_einsum(kind):
    q, k, v, seg = _packed_qkv(0)
    real_bt = np.asarray(seg) != 0
    weight = jax.random.normal(jax.random.key(9), q.shape) * real_bt[:, :, None, None, None]

    def loss(kind, q, k, v):
        out = self_attention(kind, q, k, v, seg, ATTENTION_BLOCK)
        return jnp.sum(out * weight), out

    (_, ref), ref_grads = jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)(
        "einsum", q, k, v)
    (_, out), grads = jax.value_and_grad(loss, argnums=(1, 2, 3), has_aux=True)(kind, q, k, v)
    _assert_close(out, ref, real_bt)
    for grad, ref_grad in zip(grads, ref_grads, strict=True):  # every key of a real token
        _assert_close(grad, ref_grad, real_bt)


def _tiny_llama(attention: str) -> Llama:
    config = LlamaConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=16, attention=attention)
    return Llama(config, rngs=nnx.Rngs(0))  # same seed: same weights for every attention


def test_llama_logits_with_dot_product_attention_equal_einsum():
    """A right-padded 320-token batch (attention mask) and a packed one (segment ids)."""
    ids = jax.random.randint(jax.random.key(1), (2, 320), 1, 97)
    mask = (np.arange(320)[None] < np.array([[320], [250]])).astype(np.int32)
    packed = np.asarray([SEGMENTS[0] + [4] * 64, SEGMENTS[1] + [2] * 64], np.int32)
    ref_model, model = _tiny_llama("einsum"), _tiny_llama("dot_product")
    for kwargs, real in (({"attention_mask": jnp.asarray(mask)}, mask != 0),
                         ({"segment_ids": jnp.asarray(packed)}, packed != 0)):
        _assert_close(model(ids, **kwargs), ref_model(ids, **kwargs), real)


def test_config_rejects_unknown_attention_and_splash_lengths():
    config = base_config()
    config.model.attention = "flash"
    with pytest.raises(ConfigError, match="model.attention='flash': choose one of"):
        validate_config(config)
    config.model.attention, config.data.seq_len = "splash", 200
    with pytest.raises(ConfigError, match="multiple of 128, got 200"):
        validate_config(config)
    config.data.seq_len = 256
    validate_config(config)


def test_config_field_reaches_the_model_config():
    from llark_jax.checkpoints.build import llama_config

    config = base_config()
    config.model.attention = "dot_product"
    assert llama_config(config.model).attention == "dot_product"
