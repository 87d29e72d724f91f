"""Greedy decoding with the Llama KV cache: one jitted prefill, then one jitted step per token.

Prompts are right-padded [B, T] with an attention mask (1 = token), so rows of different lengths
share one batch; every row continues from its own last real token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from llark_jax.model.llama import KVCache, Llama, init_cache


@functools.partial(jax.jit, static_argnums=(0,))
def _prefill(graphdef, state, input_ids_bt, attention_mask_bt, cache):
    model = nnx.merge(graphdef, state)
    return model.decode_embeddings(
        model.embed_tokens(input_ids_bt), attention_mask_bt=attention_mask_bt, cache=cache
    )


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(3,))
def _step(graphdef, state, token_b, cache):
    model = nnx.merge(graphdef, state)
    logits_btv, cache = model.decode_embeddings(model.embed_tokens(token_b[:, None]), cache=cache)
    return logits_btv[:, 0], cache


def prefill(
    model: Llama, input_ids_bt: jax.Array, attention_mask_bt: jax.Array, cache: KVCache
) -> tuple[jax.Array, KVCache]:
    """Jitted prefill of right-padded prompts: (logits [B, T, V] float32, cache advanced by T)."""
    graphdef, state = nnx.split(model)
    return _prefill(graphdef, state, input_ids_bt, attention_mask_bt.astype(jnp.int32), cache)


def decode_step(model: Llama, token_b: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Jitted single-token step (the cache is donated): (logits [B, V] float32, new cache)."""
    graphdef, state = nnx.split(model)
    return _step(graphdef, state, token_b.astype(jnp.int32), cache)


def greedy_generate(
    model: Llama,
    input_ids_bt: jax.Array,
    attention_mask_bt: jax.Array | None = None,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    return_logits: bool = False,
    cache_len: int | None = None,
):
    """Greedy continuation [B, max_new_tokens] int32 (after EOS a row repeats EOS).

    With `return_logits`, also the float32 logits [B, max_new_tokens, V] that chose each token.
    `cache_len` (default T + max_new_tokens) fixes the cache shape, so calls with different
    `max_new_tokens` reuse the compiled prefill/step.
    """
    b, t = input_ids_bt.shape
    if attention_mask_bt is None:
        attention_mask_bt = jnp.ones((b, t), jnp.int32)
    graphdef, state = nnx.split(model)
    cache = init_cache(model.config, b, cache_len or t + max_new_tokens)
    logits_btv, cache = _prefill(graphdef, state, input_ids_bt, attention_mask_bt.astype(jnp.int32),
                                 cache)
    last_b = jnp.sum(attention_mask_bt, axis=1) - 1
    logits_bv = logits_btv[jnp.arange(b), last_b]
    done_b = jnp.zeros((b,), bool)
    tokens, all_logits = [], []
    for _ in range(max_new_tokens):
        token_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
        if eos_id is not None:
            token_b = jnp.where(done_b, eos_id, token_b)
            done_b = done_b | (token_b == eos_id)
        tokens.append(token_b)
        all_logits.append(logits_bv)
        if len(tokens) == max_new_tokens or (eos_id is not None and bool(jnp.all(done_b))):
            break
        logits_bv, cache = _step(graphdef, state, token_b, cache)
    out_bn = jnp.stack(tokens, axis=1)
    if eos_id is not None and out_bn.shape[1] < max_new_tokens:
        out_bn = jnp.pad(out_bn, ((0, 0), (0, max_new_tokens - out_bn.shape[1])),
                         constant_values=eos_id)
    return (out_bn, jnp.stack(all_logits, axis=1)) if return_logits else out_bn
