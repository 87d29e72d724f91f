"""Scanned layers (`scan_layers=True`) compute exactly what the unrolled layer loop computes."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llark_jax.model.llama import Llama, LlamaConfig

CONFIG = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=3,
                     num_heads=4, num_kv_heads=2, head_dim=8)


def _loss_and_grads(model: Llama, ids_bt, seg_bt):
    def loss_fn(m):
        logits = m(ids_bt, segment_ids=seg_bt)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 0])

    return nnx.value_and_grad(loss_fn)(model)


@pytest.mark.parametrize("remat", [False, True])
def test_scan_equals_unrolled_loss_and_gradients(remat):
    unrolled = Llama(dataclasses.replace(CONFIG, remat=remat), rngs=nnx.Rngs(0))
    scanned = Llama(dataclasses.replace(CONFIG, remat=remat, scan_layers=True), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids_bt = jnp.asarray(rng.integers(0, 128, (2, 300)), jnp.int32)
    seg_bt = jnp.asarray(np.repeat([[1] * 200 + [2] * 80 + [0] * 20], 2, axis=0), jnp.int32)
    loss_u, grads_u = _loss_and_grads(unrolled, ids_bt, seg_bt)
    loss_s, grads_s = _loss_and_grads(scanned, ids_bt, seg_bt)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
    flat_u, flat_s = jax.tree.leaves(nnx.state(grads_u)), jax.tree.leaves(nnx.state(grads_s))
    assert len(flat_u) == len(flat_s) == len(jax.tree.leaves(nnx.state(unrolled, nnx.Param)))
    for g_u, g_s in zip(flat_u, flat_s, strict=True):
        np.testing.assert_allclose(g_s, g_u, rtol=1e-5, atol=1e-7)
