"""Masked grouped-query attention math shared by the Llama layers (pure functions, no params).

Shapes: B batch, T query slots, S key slots, K kv heads, G query heads per kv head, H head dim.

Masks: a query attends a key iff key slot <= query slot (causal), both have the same segment id,
and the key's segment id is not 0 (padding). Scores and softmax run in float32; fully masked
(padding) query rows get a finite `MASK_VALUE`, so they stay NaN-free.

Implementations of the attention core (`LlamaConfig.attention`, config `model.attention`):
- `einsum`: `masked_attention`, two einsums around a float32 masked softmax.
- `dot_product`: `jax.nn.dot_product_attention` with the same boolean mask, XLA's implementation
  on CPU/TPU and cuDNN's fused kernel on GPU for bf16/fp16 (cuDNN takes no fp32).
- `splash`: the Pallas TPU splash-attention kernel (causal mask + segment ids, blocks of 128, so
  T must be a multiple of 128). Off TPU it runs in Pallas interpret mode (correct, slow: tests).
They apply to cache-less calls (training, scoring; `self_attention`); calls with a KV cache
(prefill into a cache, decode) always use `masked_attention`. The first two also skip the blocks
above the causal diagonal (`causal_attention`). On padding queries the implementations differ
(their outputs are never used); on real tokens they agree.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

MASK_VALUE = -1e30
ATTENTION_KINDS = ("einsum", "dot_product", "splash")
SPLASH_BLOCK = 128  # the splash kernel's default query/key block: T must be a multiple


def segment_positions(segment_ids_bt: jax.Array) -> jax.Array:
    """Positions [B, T] that restart at 0 wherever the segment id changes."""
    t = jnp.arange(segment_ids_bt.shape[1], dtype=jnp.int32)[None, :]
    changed_bt = segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]
    first_b1 = jnp.ones((segment_ids_bt.shape[0], 1), bool)
    starts = jnp.concatenate([first_b1, changed_bt], axis=1)
    return t - jax.lax.cummax(jnp.where(starts, t, 0), axis=1)


def allowed_keys(q_slot_t, k_slot_s, q_seg_bt, k_seg_bs) -> jax.Array:
    """bool [B, T, S]: causal by slot, same segment, key not padding (segment 0)."""
    return ((k_slot_s[None, None, :] <= q_slot_t[None, :, None])
            & (k_seg_bs[:, None, :] == q_seg_bt[:, :, None])
            & (k_seg_bs[:, None, :] != 0))


def masked_attention(q_btkgh, keys_bskh, values_bskh, allowed_bts,
                     kv_axes: str = "bskh") -> jax.Array:
    """softmax(q·k/sqrt(H) where allowed, else MASK_VALUE) · v -> [B, T, K, G, H].

    q [B,T,K,G,H], keys/values [B,S,K,H] (or the axis order `kv_axes`, e.g. "bksh" as the decode
    cache stores them), allowed [B,T,S] bool; float32 scores and softmax, probabilities cast back
    to q's dtype for the value product.
    """
    scale = q_btkgh.shape[-1] ** -0.5
    scores_bkgts = jnp.einsum(f"btkgh,{kv_axes}->bkgts", q_btkgh, keys_bskh,
                              preferred_element_type=jnp.float32) * scale
    scores_bkgts = jnp.where(allowed_bts[:, None, None], scores_bkgts, MASK_VALUE)
    probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1).astype(q_btkgh.dtype)
    return jnp.einsum(f"bkgts,{kv_axes}->btkgh", probs_bkgts, values_bskh)


def dot_product_attention(q_btkgh, keys_bskh, values_bskh, allowed_bts) -> jax.Array:
    """`masked_attention` through `jax.nn.dot_product_attention` -> [B, T, K, G, H].

    cuDNN on GPU when q is bf16/fp16 (it turns the mask into an additive bias), XLA otherwise.
    """
    b, t, k, g, h = q_btkgh.shape
    fused = jax.default_backend() == "gpu" and q_btkgh.dtype in (jnp.bfloat16, jnp.float16)
    out_btnh = jax.nn.dot_product_attention(
        q_btkgh.reshape(b, t, k * g, h), keys_bskh, values_bskh, mask=allowed_bts[:, None],
        implementation="cudnn" if fused else "xla")
    return out_btnh.reshape(b, t, k, g, h)


def splash_attention(q_btkgh, keys_btkh, values_btkh, segment_ids_bt) -> jax.Array:
    """Causal self-attention within segments by the Pallas splash kernel -> [B, T, K, G, H].

    T must be a multiple of `SPLASH_BLOCK`. Padding (segment 0) queries attend earlier padding
    keys, real queries never do. Interpret mode off TPU.
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    b, t, k, g, h = q_btkgh.shape
    mask = splash.MultiHeadMask([splash.CausalMask((t, t))] * (k * g))
    kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1,
                                    interpret=jax.default_backend() != "tpu")
    q_bnth = (q_btkgh * h**-0.5).reshape(b, t, k * g, h).transpose(0, 2, 1, 3)

    def one_row(q_nth, k_kth, v_kth, seg_t):
        return kernel(q_nth, k_kth, v_kth, segment_ids=splash.SegmentIds(q=seg_t, kv=seg_t))

    out_bnth = jax.vmap(one_row)(q_bnth, keys_btkh.transpose(0, 2, 1, 3),
                                 values_btkh.transpose(0, 2, 1, 3), segment_ids_bt)
    return out_bnth.transpose(0, 2, 1, 3).reshape(b, t, k, g, h).astype(q_btkgh.dtype)


def causal_attention(q_btkgh, keys_bskh, values_bskh, allowed_bts, block: int,
                     core: Callable[..., jax.Array] = masked_attention) -> jax.Array:
    """`core` (`masked_attention` or `dot_product_attention`) on a cache-less causal call
    (S = T), in query blocks when it pays.

    With T > block and T a multiple of `block`, query block [s, e) scores keys [0, e) only: the
    blocks above the diagonal (masked anyway) are never computed, so n blocks compute (n+1)/2n
    of the scores (62% at T = 512), with the same output on every non-padding token.
    """
    t = q_btkgh.shape[1]
    if t <= block or t % block:
        return core(q_btkgh, keys_bskh, values_bskh, allowed_bts)
    return jnp.concatenate([
        core(q_btkgh[:, s:s + block], keys_bskh[:, :s + block], values_bskh[:, :s + block],
             allowed_bts[:, s:s + block, :s + block])
        for s in range(0, t, block)
    ], axis=1)


def self_attention(kind: str, q_btkgh, keys_btkh, values_btkh, segment_ids_bt,
                   block: int) -> jax.Array:
    """Cache-less causal attention within segments by implementation `kind` -> [B, T, K, G, H]."""
    if kind == "splash":
        return splash_attention(q_btkgh, keys_btkh, values_btkh, segment_ids_bt)
    slots_t = jnp.arange(q_btkgh.shape[1])
    allowed_bts = allowed_keys(slots_t, slots_t, segment_ids_bt, segment_ids_bt)
    core = dot_product_attention if kind == "dot_product" else masked_attention
    return causal_attention(q_btkgh, keys_btkh, values_btkh, allowed_bts, block, core)
