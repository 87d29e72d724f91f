"""Llama decoder in Flax NNX with the numerics of Hugging Face `LlamaForCausalLM`.

Parameter tree (names are stable; trainable-set masks select by path):

    embed                         [vocab, embed]            (padded_vocab_size rows)
    layers[i].attn.{q,k,v}        [embed, heads|kv_heads, head_dim]
    layers[i].attn.o              [heads, head_dim, embed]
    layers[i].mlp.{gate,up}       [embed, mlp];  layers[i].mlp.down [mlp, embed]
    layers[i].{input_norm,post_attn_norm}.scale   [embed]
    final_norm.scale              [embed]
    lm_head                       [embed, vocab]            (absent when tie_word_embeddings)

Each `nnx.Param` carries its logical axis names in the `out_sharding` metadata (eager sharding off),
see `param_logical_axes` and `llark_jax.model.sharding`.

Dtype policy: params stored in `param_dtype`; matmuls in `dtype`; attention scores, softmax and
RMSNorm statistics in float32; logits float32.

Masks: a query attends a key iff key slot <= query slot (causal), both have the same segment id, and
the key's segment id is not 0 (padding). `segment_ids` [B, T] int32 (0 = padding) packs several
sequences in a row; HF-style `attention_mask` (1 = token) serves as segment ids when none given.
Default positions restart at 0 in each segment.
Without a cache, T > 128 and T a multiple of `ATTENTION_BLOCK` (128), attention runs in causal
query blocks: block [s, e) scores keys [0, e) only (the blocks above the diagonal are all masked),
so n blocks compute (n+1)/2n of the scores (62% at T = 512), with the same output on every
non-padding token.

KV cache (`KVCache`, `init_cache`): k/v [L, B, S_max, kv_heads, head_dim] (post-RoPE), the segment
id of every cache slot [B, S_max] (0 = empty or padding) and one shared write `index`. A call with a
cache writes its T tokens at slots [index, index + T) for all rows and advances `index` by T.
Prefill right-padded prompts of mixed lengths with their `attention_mask`: pad slots get segment 0
and are never attended. Then decode one token per step (segment id 1). Default positions with a
cache are `number of non-padding slots already in the row + position inside the new chunk`, so
each row continues at its own length. One sequence per row when a cache is used.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from llark_jax.model.rope import apply_rotary, inverse_frequencies, rotary_tables
from llark_jax.model.sharding import constrain

MASK_VALUE = -1e30  # finite, so fully masked (padding) query rows stay NaN-free


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Llama hyperparameters (HF config.json names in `from_hf_dict`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    scan_layers: bool = False  # lax.scan over stacked layer weights (no-cache path): fast compile
    vocab_multiple: int = 1  # pad embed/lm_head rows to a multiple of this (e.g. 128)
    initializer_range: float = 0.02

    def __hash__(self) -> int:  # rope_scaling is a dict; configs live in (hashable) graphdefs
        return hash(json.dumps(self.to_hf_dict(), sort_keys=True) + str(self.dtype)
                    + str(self.param_dtype)
                    + str((self.remat, self.scan_layers, self.vocab_multiple)))

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
        """Reads an HF Llama config.json dict (transformers 4.x `rope_scaling` or 5.x
        `rope_parameters`)."""
        if d.get("attention_bias") or d.get("mlp_bias"):
            raise ValueError("Llama config with attention_bias/mlp_bias is not supported")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {d.get('hidden_act')!r}")
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", d.get("rope_theta", 10000.0)))
        kind = rope.get("rope_type", rope.get("type", "default"))
        heads = int(d["num_attention_heads"])
        fields = dict(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
            rope_theta=theta,
            rope_scaling=None if kind == "default" else rope,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            initializer_range=float(d.get("initializer_range", 0.02)),
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF (transformers 5.x) config.json dict of this config."""
        rope = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "rope_parameters": rope,
            "attention_bias": False,
            "mlp_bias": False,
        }


@flax.struct.dataclass
class KVCache:
    """k/v [L, B, S, kv_heads, head_dim]; segment_ids [B, S] (0 = empty/pad); index: next slot."""

    k: jax.Array
    v: jax.Array
    segment_ids: jax.Array
    index: jax.Array


def init_cache(config: LlamaConfig, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty cache for `batch` rows of at most `max_len` tokens (k/v: dtype or config.dtype)."""
    shape = (config.num_layers, batch, max_len, config.num_kv_heads, config.head_dim)
    dtype = dtype or config.dtype
    return KVCache(
        k=jnp.zeros(shape, dtype),
        v=jnp.zeros(shape, dtype),
        segment_ids=jnp.zeros((batch, max_len), jnp.int32),
        index=jnp.zeros((), jnp.int32),
    )


def segment_positions(segment_ids_bt: jax.Array) -> jax.Array:
    """Positions [B, T] that restart at 0 wherever the segment id changes."""
    t = jnp.arange(segment_ids_bt.shape[1], dtype=jnp.int32)[None, :]
    changed_bt = segment_ids_bt[:, 1:] != segment_ids_bt[:, :-1]
    first_b1 = jnp.ones((segment_ids_bt.shape[0], 1), bool)
    starts = jnp.concatenate([first_b1, changed_bt], axis=1)
    return t - jax.lax.cummax(jnp.where(starts, t, 0), axis=1)


def _param(init: jax.Array, logical_axes: tuple[str, ...]) -> nnx.Param:
    return nnx.Param(init, out_sharding=logical_axes, eager_sharding=False)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], config: LlamaConfig) -> jax.Array:
    std = config.initializer_range
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(config.param_dtype)


def param_logical_axes(variable: nnx.Variable) -> tuple[str, ...]:
    """The logical axis names a parameter was created with."""
    return tuple(variable.get_metadata()["out_sharding"])


class RMSNorm(nnx.Module):
    """x / rms(x) * scale; statistics in float32, output in x's dtype (as HF)."""

    def __init__(self, config: LlamaConfig):
        self.eps = config.rms_norm_eps
        self.scale = _param(jnp.ones((config.hidden_size,), config.param_dtype), ("embed",))

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        x32 = x_btd.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x_btd.dtype) * normed.astype(x_btd.dtype)


ATTENTION_BLOCK = 128  # query rows per block of the cache-less causal attention


def _masked_attention(q_btkgh, keys_bskh, values_bskh, allowed_bts) -> jax.Array:
    """softmax(q·k/sqrt(H) where allowed, else MASK_VALUE) · v -> [B, T, K, G, H].

    Scores and softmax in float32; q [B,T,K,G,H], keys/values [B,S,K,H], allowed [B,T,S] bool.
    """
    scale = q_btkgh.shape[-1] ** -0.5
    scores_bkgts = jnp.einsum("btkgh,bskh->bkgts", q_btkgh, keys_bskh,
                              preferred_element_type=jnp.float32) * scale
    scores_bkgts = jnp.where(allowed_bts[:, None, None], scores_bkgts, MASK_VALUE)
    probs_bkgts = jax.nn.softmax(scores_bkgts, axis=-1).astype(q_btkgh.dtype)
    return jnp.einsum("bkgts,bskh->btkgh", probs_bkgts, values_bskh)


class Attention(nnx.Module):
    """Grouped-query self-attention with rotate-half RoPE and an optional KV cache."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        if n % k:
            raise ValueError(f"num_heads {n} is not a multiple of num_kv_heads {k}")
        self.config = config
        self.q = _param(_normal(rngs, (d, n, h), config), ("embed", "heads", "head_dim"))
        self.k = _param(_normal(rngs, (d, k, h), config), ("embed", "kv_heads", "head_dim"))
        self.v = _param(_normal(rngs, (d, k, h), config), ("embed", "kv_heads", "head_dim"))
        self.o = _param(_normal(rngs, (n, h, d), config), ("heads", "head_dim", "embed"))

    def __call__(self, x_btd, cos_bth, sin_bth, segment_ids_bt, layer_cache):
        """x [B,T,D] -> ([B,T,D], updated (k, v) of this layer [B,S,K,H] or None)."""
        cfg = self.config
        dt = cfg.dtype
        q_btnh = jnp.einsum("btd,dnh->btnh", x_btd, self.q[...].astype(dt))
        k_btkh = jnp.einsum("btd,dkh->btkh", x_btd, self.k[...].astype(dt))
        v_btkh = jnp.einsum("btd,dkh->btkh", x_btd, self.v[...].astype(dt))
        q_btnh = apply_rotary(q_btnh, cos_bth, sin_bth)
        q_btnh = constrain(q_btnh, ("batch", "length", "heads", "head_dim"))
        k_btkh = apply_rotary(k_btkh, cos_bth, sin_bth)

        t = x_btd.shape[1]
        if layer_cache is None:
            keys_bskh, values_bskh, key_seg_bs = k_btkh, v_btkh, segment_ids_bt
            q_slot_t, k_slot_s = jnp.arange(t), jnp.arange(t)
            new_layer_cache = None
        else:
            cache_k, cache_v, key_seg_bs, index = layer_cache
            keys_bskh = jax.lax.dynamic_update_slice(cache_k, k_btkh.astype(cache_k.dtype),
                                                     (0, index, 0, 0))
            values_bskh = jax.lax.dynamic_update_slice(cache_v, v_btkh.astype(cache_v.dtype),
                                                       (0, index, 0, 0))
            q_slot_t, k_slot_s = index + jnp.arange(t), jnp.arange(cache_k.shape[1])
            new_layer_cache = (keys_bskh, values_bskh)

        allowed_bts = (
            (k_slot_s[None, None, :] <= q_slot_t[None, :, None])
            & (key_seg_bs[:, None, :] == segment_ids_bt[:, :, None])
            & (key_seg_bs[:, None, :] != 0)
        )
        groups = cfg.num_heads // cfg.num_kv_heads
        q_btkgh = q_btnh.reshape(*q_btnh.shape[:2], cfg.num_kv_heads, groups, cfg.head_dim)
        keys_bskh, values_bskh = keys_bskh.astype(dt), values_bskh.astype(dt)
        if layer_cache is None and t > ATTENTION_BLOCK and t % ATTENTION_BLOCK == 0:
            # Causal: query block [s, e) attends keys [0, e) only; the score blocks above the
            # diagonal (masked anyway) are never computed. Same result on every real token.
            out_btkgh = jnp.concatenate([
                _masked_attention(q_btkgh[:, s:e], keys_bskh[:, :e], values_bskh[:, :e],
                                  allowed_bts[:, s:e, :e])
                for s, e in ((s, s + ATTENTION_BLOCK) for s in range(0, t, ATTENTION_BLOCK))
            ], axis=1)
        else:
            out_btkgh = _masked_attention(q_btkgh, keys_bskh, values_bskh, allowed_bts)
        out_btnh = out_btkgh.reshape(q_btnh.shape)
        out_btd = jnp.einsum("btnh,nhd->btd", out_btnh, self.o[...].astype(dt))
        return out_btd, new_layer_cache


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.dtype = config.dtype
        self.gate = _param(_normal(rngs, (d, f), config), ("embed", "mlp"))
        self.up = _param(_normal(rngs, (d, f), config), ("embed", "mlp"))
        self.down = _param(_normal(rngs, (f, d), config), ("mlp", "embed"))

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        dt = self.dtype
        gate_btf = jnp.einsum("btd,df->btf", x_btd, self.gate[...].astype(dt))
        up_btf = jnp.einsum("btd,df->btf", x_btd, self.up[...].astype(dt))
        hidden_btf = constrain(jax.nn.silu(gate_btf) * up_btf, ("batch", "length", "mlp"))
        return jnp.einsum("btf,fd->btd", hidden_btf, self.down[...].astype(dt))


class DecoderLayer(nnx.Module):
    """Pre-norm attention block + pre-norm MLP block, both residual."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(config)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(config)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x_btd, cos_bth, sin_bth, segment_ids_bt, layer_cache=None):
        attn_btd, new_layer_cache = self.attn(
            self.input_norm(x_btd), cos_bth, sin_bth, segment_ids_bt, layer_cache
        )
        x_btd = constrain(x_btd + attn_btd, ("batch", "length", "embed"))
        mlp_btd = self.mlp(self.post_attn_norm(x_btd))
        x_btd = constrain(x_btd + mlp_btd, ("batch", "length", "embed"))
        return x_btd, new_layer_cache


def _run_layer(layer: DecoderLayer, x_btd, cos_bth, sin_bth, segment_ids_bt):
    return layer(x_btd, cos_bth, sin_bth, segment_ids_bt)[0]


_run_layer_remat = nnx.remat(_run_layer)


def _scan_layers(layers: nnx.List, x_btd, cos_bth, sin_bth, segment_ids_bt, remat: bool):
    """Runs identical decoder layers as one `lax.scan` over their stacked weights.

    XLA then compiles the layer body once instead of L times (a 32-layer 7B step compiles in
    seconds). The weights keep their per-layer parameter paths; the stack is a transient [L, ...]
    copy made inside the step, and gradients flow back to each layer's parameters through it.
    """
    graphdef = nnx.graphdef(layers[0])
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *[nnx.state(layer) for layer in layers])

    def body(h_btd, layer_state):
        layer = nnx.merge(graphdef, layer_state)
        return _run_layer(layer, h_btd, cos_bth, sin_bth, segment_ids_bt), None

    if remat:
        body = jax.checkpoint(body)
    x_btd, _ = jax.lax.scan(body, x_btd, stacked)
    return x_btd


class Llama(nnx.Module):
    """Llama causal LM. See the module docstring for names, masks, dtypes and the KV cache."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        v, d = config.padded_vocab_size, config.hidden_size
        self.embed = _param(_normal(rngs, (v, d), config), ("vocab", "embed"))
        self.layers = nnx.List([DecoderLayer(config, rngs=rngs) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config)
        if not config.tie_word_embeddings:
            self.lm_head = _param(_normal(rngs, (d, v), config), ("embed", "vocab"))

    def embed_tokens(self, input_ids_bt: jax.Array) -> jax.Array:
        """Token ids [B, T] -> embeddings [B, T, D] in the compute dtype."""
        x_btd = jnp.take(self.embed[...], input_ids_bt, axis=0).astype(self.config.dtype)
        return constrain(x_btd, ("batch", "length", "embed"))

    def decode_embeddings(
        self,
        x_btd: jax.Array,
        *,
        positions_bt: jax.Array | None = None,
        segment_ids_bt: jax.Array | None = None,
        attention_mask_bt: jax.Array | None = None,
        cache: KVCache | None = None,
        logits_at: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """The transformer on input embeddings [B, T, D] -> (logits [B, T, V] f32, new cache).

        With `logits_at` (int [B] or [B, K]: positions per row) the final norm and the LM head
        run only there, giving [B, 1, V] or [B, K, V] instead of [B, T, V]: a prefill needs only
        each prompt's last position (at 7B, T=2048, B=8 the full logits are ~2 GB of float32),
        training only the positions that predict a supervised token.
        """
        cfg = self.config
        b, t = x_btd.shape[:2]
        if segment_ids_bt is None:
            segment_ids_bt = (jnp.ones((b, t), jnp.int32) if attention_mask_bt is None
                              else attention_mask_bt)
        segment_ids_bt = segment_ids_bt.astype(jnp.int32)
        if positions_bt is None:
            positions_bt = segment_positions(segment_ids_bt)
            if cache is not None:
                positions_bt = positions_bt + jnp.sum(cache.segment_ids != 0, axis=1)[:, None]
        rope_freqs = inverse_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)
        cos_bth, sin_bth = rotary_tables(positions_bt, rope_freqs)

        x_btd = constrain(x_btd.astype(cfg.dtype), ("batch", "length", "embed"))
        new_k, new_v = [], []
        if cache is not None:
            cache_seg_bs = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids_bt,
                                                        (0, cache.index))
        if cache is None and cfg.scan_layers:
            x_btd = _scan_layers(self.layers, x_btd, cos_bth, sin_bth, segment_ids_bt, cfg.remat)
        for i, layer in enumerate(self.layers if cache is not None or not cfg.scan_layers else []):
            if cache is not None:
                layer_cache = (cache.k[i], cache.v[i], cache_seg_bs, cache.index)
                x_btd, (k_bskh, v_bskh) = layer(x_btd, cos_bth, sin_bth, segment_ids_bt,
                                                layer_cache)
                new_k.append(k_bskh)
                new_v.append(v_bskh)
            elif cfg.remat:
                x_btd = _run_layer_remat(layer, x_btd, cos_bth, sin_bth, segment_ids_bt)
            else:
                x_btd = _run_layer(layer, x_btd, cos_bth, sin_bth, segment_ids_bt)
        if logits_at is not None:
            at_bk = logits_at[:, None] if logits_at.ndim == 1 else logits_at
            x_btd = jnp.take_along_axis(x_btd, at_bk[..., None], axis=1)  # [B, K, D]
        x_btd = self.final_norm(x_btd)
        logits_btv = self._logits(x_btd)
        if cache is None:
            return logits_btv, None
        new_cache = KVCache(k=jnp.stack(new_k), v=jnp.stack(new_v), segment_ids=cache_seg_bs,
                            index=cache.index + t)
        return logits_btv, new_cache

    def _logits(self, x_btd: jax.Array) -> jax.Array:
        cfg = self.config
        if cfg.tie_word_embeddings:
            logits_btv = jnp.einsum("btd,vd->btv", x_btd, self.embed[...].astype(cfg.dtype),
                                    preferred_element_type=jnp.float32)
        else:
            logits_btv = jnp.einsum("btd,dv->btv", x_btd, self.lm_head[...].astype(cfg.dtype),
                                    preferred_element_type=jnp.float32)
        if cfg.padded_vocab_size != cfg.vocab_size:
            real_v = jnp.arange(cfg.padded_vocab_size) < cfg.vocab_size
            logits_btv = jnp.where(real_v, logits_btv, MASK_VALUE)
        return constrain(logits_btv, ("batch", "length", "vocab"))

    def __call__(
        self,
        input_ids: jax.Array,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Token ids [B, T] int32 -> logits [B, T, padded_vocab_size] float32."""
        logits_btv, _ = self.decode_embeddings(
            self.embed_tokens(input_ids),
            positions_bt=positions,
            segment_ids_bt=segment_ids,
            attention_mask_bt=attention_mask,
        )
        return logits_btv
