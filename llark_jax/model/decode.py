"""KV-cache decode steps on per-layer fused weights: the hot loop of generation.

A decode step reads every weight once, so its speed is set by how directly the weights stream
through the matrix-vector products. `Llama.decode_embeddings` with a cache scans the stacked
[L, ...] params, which slices each layer's weights inside every step, and runs q, k, v, gate and
up as separate products. `decode_weights` instead splits the stacked params once into per-layer
contiguous matrices with q|k|v and gate|up concatenated on their output axis (4 products per
layer instead of 7), in the compute dtype (bf16 compute then streams bf16 weights); `Generator`
computes them once and keeps them. `decode_step` runs the L layers unrolled on them, with the
cache as per-layer k/v arrays (`LayerCache`) that each step updates in place (no restacking).

Numerics are those of `DecoderLayer` with a cache (shared `rms_norm`, rotary, masks and
`masked_attention`; Qwen2 q/k/v biases and Qwen3 q/k norms included; quantised weights and LoRA
adapters folded into plain weights first); each output element is the same dot product, only
XLA's blocking of the concatenated matrices may reorder its sum. Memory: the fused weights are a
second copy of the layer weights, kept by whoever decodes (`Generator`, `StreamDecoder`).

Shapes: B batch, T new tokens, S cache slots, D embed, N heads, K kv heads, H head dim, F mlp.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from llark_jax.model.attention import allowed_keys, masked_attention
from llark_jax.model.llama import KVCache, Llama, rms_norm
from llark_jax.model.quant import plain
from llark_jax.model.rope import apply_rotary, inverse_frequencies, rotary_tables


@flax.struct.dataclass
class DecodeWeights:
    """Per-layer tuples (length L): qkv [D, (N+2K)*H], o [N*H, D], gate_up [D, 2F], down [F, D],
    input_norm / post_attn_norm [D], in the compute dtype; and when the model has them, the q|k|v
    biases [(N+2K)*H] (Qwen2) and the per-head q|k norm scales [N+K, H] (Qwen3), else None."""

    qkv: tuple[jax.Array, ...]
    o: tuple[jax.Array, ...]
    gate_up: tuple[jax.Array, ...]
    down: tuple[jax.Array, ...]
    input_norm: tuple[jax.Array, ...]
    post_attn_norm: tuple[jax.Array, ...]
    qkv_bias: tuple[jax.Array, ...] | None = None
    qk_norm: tuple[jax.Array, ...] | None = None


@flax.struct.dataclass
class LayerCache:
    """`KVCache` with k/v as L per-layer arrays [B, K, S, H], updated in place by each step (kv
    heads before slots: the layout the attention products read, so no step transposes them)."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    segment_ids: jax.Array
    index: jax.Array


def decode_weights(llama: Llama) -> DecodeWeights:
    """The stacked layer params of `llama` split per layer and fused (see the module docstring).

    Quantised weights are dequantised and LoRA adapters folded in first (`quant.plain`). Each
    layer's matrices are written once (slice + concatenate fuse into one copy); compute this once
    per set of params (`Generator` keeps it), not per call.
    """
    llama = plain(llama)
    cfg, layers = llama.config, llama.layers
    dt, d, n, kv = cfg.dtype, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads
    q, k, v, o, gate, up, down, norm1, norm2 = (p[...] for p in (
        layers.attn.q, layers.attn.k, layers.attn.v, layers.attn.o, layers.mlp.gate,
        layers.mlp.up, layers.mlp.down, layers.input_norm.scale, layers.post_attn_norm.scale))
    per_layer = [
        (jnp.concatenate([q[i].reshape(d, -1), k[i].reshape(d, -1), v[i].reshape(d, -1)],
                         axis=-1).astype(dt),
         o[i].reshape(-1, d).astype(dt),
         jnp.concatenate([gate[i], up[i]], axis=-1).astype(dt),
         down[i].astype(dt), norm1[i], norm2[i])
        for i in range(cfg.num_layers)
    ]
    weights = DecodeWeights(*(tuple(column) for column in zip(*per_layer, strict=True)))
    attn = layers.attn
    if cfg.attention_bias:
        bias_lx = jnp.concatenate([attn.q_bias[...].reshape(cfg.num_layers, -1),
                                   attn.k_bias[...].reshape(cfg.num_layers, -1),
                                   attn.v_bias[...].reshape(cfg.num_layers, -1)], axis=-1)
        weights = weights.replace(qkv_bias=tuple(bias_lx.astype(dt)))
    if cfg.qk_norm:
        h = cfg.head_dim
        scale_lnh = jnp.concatenate([
            jnp.broadcast_to(attn.q_norm[...][:, None], (cfg.num_layers, n, h)),
            jnp.broadcast_to(attn.k_norm[...][:, None], (cfg.num_layers, kv, h))], axis=1)
        weights = weights.replace(qk_norm=tuple(scale_lnh))
    return weights


def unstack_cache(cache: KVCache) -> LayerCache:
    """A stacked [L, B, S, K, H] cache (e.g. after a prefill) as per-layer [B, K, S, H] arrays."""
    k_lbksh, v_lbksh = (x.transpose(0, 1, 3, 2, 4) for x in (cache.k, cache.v))
    return LayerCache(k=tuple(k_lbksh), v=tuple(v_lbksh), segment_ids=cache.segment_ids,
                      index=cache.index)


def decode_step(llama: Llama, weights: DecodeWeights, x_btd: jax.Array,
                cache: LayerCache) -> tuple[jax.Array, LayerCache]:
    """T new tokens' embeddings [B, T, D] (one sequence per row, segment id 1) through the layers
    with the cache -> (logits [B, T, V] float32, cache advanced by T slots).

    Positions continue each row's count of non-padding cache slots, as
    `Llama.decode_embeddings` does with a cache.
    """
    cfg = llama.config
    b, t, _ = x_btd.shape
    n, kv, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    x_btd = x_btd.astype(cfg.dtype)
    new_seg_bt = jnp.ones((b, t), jnp.int32)
    positions_bt = jnp.sum(cache.segment_ids != 0, axis=1)[:, None] + jnp.arange(t)[None]
    cos_bth, sin_bth = rotary_tables(
        positions_bt, inverse_frequencies(h, cfg.rope_theta, cfg.rope_scaling))
    seg_bs = jax.lax.dynamic_update_slice(cache.segment_ids, new_seg_bt, (0, cache.index))
    allowed_bts = allowed_keys(cache.index + jnp.arange(t), jnp.arange(seg_bs.shape[1]),
                               new_seg_bt, seg_bs)
    new_k, new_v = [], []
    for layer in range(cfg.num_layers):
        qkv_btx = rms_norm(x_btd, weights.input_norm[layer], cfg.rms_norm_eps) @ weights.qkv[layer]
        if weights.qkv_bias is not None:
            qkv_btx = qkv_btx + weights.qkv_bias[layer]
        qk_btnh = qkv_btx[..., : (n + kv) * h].reshape(b, t, n + kv, h)
        if weights.qk_norm is not None:  # per head, over head_dim, before RoPE
            qk_btnh = rms_norm(qk_btnh, weights.qk_norm[layer], cfg.rms_norm_eps)
        qk_btnh = apply_rotary(qk_btnh, cos_bth, sin_bth)
        new_k_bkth = qk_btnh[:, :, n:].transpose(0, 2, 1, 3)
        new_v_bkth = qkv_btx[..., (n + kv) * h :].reshape(b, t, kv, h).transpose(0, 2, 1, 3)
        keys_bksh, values_bksh = (
            jax.lax.dynamic_update_slice(old, new.astype(old.dtype), (0, 0, cache.index, 0))
            for old, new in ((cache.k[layer], new_k_bkth), (cache.v[layer], new_v_bkth)))
        out_btkgh = masked_attention(qk_btnh[:, :, :n].reshape(b, t, kv, n // kv, h),
                                     keys_bksh.astype(cfg.dtype), values_bksh.astype(cfg.dtype),
                                     allowed_bts, kv_axes="bksh")
        x_btd = x_btd + out_btkgh.reshape(b, t, n * h) @ weights.o[layer]
        gate_up_btf = (rms_norm(x_btd, weights.post_attn_norm[layer], cfg.rms_norm_eps)
                       @ weights.gate_up[layer])
        gate_btf, up_btf = jnp.split(gate_up_btf, 2, axis=-1)
        x_btd = x_btd + (jax.nn.silu(gate_btf) * up_btf) @ weights.down[layer]
        new_k.append(keys_bksh)
        new_v.append(values_bksh)
    cache = LayerCache(k=tuple(new_k), v=tuple(new_v), segment_ids=seg_bs, index=cache.index + t)
    return llama.head(x_btd, None), cache
