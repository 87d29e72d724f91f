"""Llama decoder in Flax NNX with the numerics of Hugging Face `LlamaForCausalLM`.

Parameter tree (names are stable; trainable-set masks select by path). The L decoder layers are
one `DecoderLayer` whose parameters are stacked on a leading layer axis (logical name `layers`),
as MaxText's scanned layers; `llark_jax.checkpoints.hf` maps HF `model.layers.<i>.*` to row i:

    embed                         [vocab, embed]            (padded_vocab_size rows)
    layers.attn.{q,k,v}           [layers, embed, heads|kv_heads, head_dim]
    layers.attn.o                 [layers, heads, head_dim, embed]
    layers.mlp.{gate,up}          [layers, embed, mlp];  layers.mlp.down [layers, mlp, embed]
    layers.{input_norm,post_attn_norm}.scale   [layers, embed]
    final_norm.scale              [embed]
    lm_head                       [embed, vocab]            (absent when tie_word_embeddings)
    layers.attn.{q,k,v}_bias      [layers, heads|kv_heads, head_dim]   (Qwen2: attention_bias)
    layers.attn.{q,k}_norm        [layers, head_dim]                  (Qwen3: qk_norm)
    layers.{attn,mlp}.<w>_lora.{a,b}  optional LoRA adapters (`llark_jax.model.lora`)

Each `nnx.Param` carries its logical axis names in the `out_sharding` metadata (eager sharding off),
see `param_logical_axes` and `llark_jax.model.sharding`.

The layers run as one `lax.scan` over the stacked parameters (`_scan_layers`): rolled when
`scan_layers` (one compiled body: big models), unrolled otherwise (faster on CPU for small
models); the body is `jax.checkpoint`ed when `remat`. Nothing is restacked per step. The KV-cache
path (`_scan_layers_cached`) scans (layer params, cache k[l], cache v[l]) and returns the new k/v
stacked. `jax.named_scope`s (embed, layer/attention, layer/mlp, final_norm, lm_head) label
profiler traces.

Dtype policy: params stored in `param_dtype`; matmuls in `dtype`; attention scores, softmax and
RMSNorm statistics in float32; logits float32.

Tied head gradient: with `tie_word_embeddings` the embedding is also the output layer, and its
weight gradient through the head is a [V, D] matmul over every scored position. A trainer whose
mask trains only a few embedding rows (the `<audio_start>`/`<audio_end>` rows of LLark's recipe)
passes them as `embed_grad_rows`; the head then computes the weight gradient of those rows only
(`tied_logits`). Logits and every other gradient are unchanged.

Masks (`llark_jax.model.attention`): a query attends a key iff key slot <= query slot (causal),
both have the same segment id, and the key's segment id is not 0 (padding). `segment_ids` [B, T]
int32 (0 = padding) packs several sequences in a row; HF-style `attention_mask` (1 = token) serves
as segment ids when none given. Default positions restart at 0 in each segment. Without a cache,
T > 128 and T a multiple of `ATTENTION_BLOCK` (128), attention runs in causal query blocks
(`attention.causal_attention`), same output on every non-padding token. `config.attention`
picks the cache-less attention core (einsum | dot_product | splash, `llark_jax.model.attention`).

KV cache (`KVCache`, `init_cache`): k/v [L, B, S_max, kv_heads, head_dim] (post-RoPE), the segment
id of every cache slot [B, S_max] (0 = empty or padding) and one shared write `index`. A call with a
cache writes its T tokens at slots [index, index + T) for all rows and advances `index` by T.
Prefill right-padded prompts of mixed lengths with their `attention_mask`: pad slots get segment 0
and are never attended. Then decode one token per step (segment id 1). Default positions with a
cache are `number of non-padding slots already in the row + position inside the new chunk`, so
each row continues at its own length. One sequence per row when a cache is used.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from llark_jax.model.attention import (
    MASK_VALUE,
    allowed_keys,
    masked_attention,
    segment_positions,
    self_attention,
)
from llark_jax.model.llama_config import LlamaConfig
from llark_jax.model.lora import project
from llark_jax.model.rope import apply_rotary, inverse_frequencies, rotary_tables
from llark_jax.model.sharding import constrain

ATTENTION_BLOCK = 128  # query rows per block of the cache-less causal attention (read at trace)


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


def _param(init: jax.Array, logical_axes: tuple[str, ...]) -> nnx.Param:
    return nnx.Param(init, out_sharding=logical_axes, eager_sharding=False)


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], config: LlamaConfig) -> jax.Array:
    std = config.initializer_range
    return (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(config.param_dtype)


def param_logical_axes(variable: nnx.Variable) -> tuple[str, ...]:
    """The logical axis names a parameter was created with (stacked layers: `layers` first)."""
    return tuple(variable.get_metadata()["out_sharding"])


def rms_norm(x_btd: jax.Array, scale_d: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) * scale over the last axis; statistics in float32, output in x's dtype (HF)."""
    x32 = x_btd.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale_d.astype(x_btd.dtype) * normed.astype(x_btd.dtype)


class RMSNorm(nnx.Module):
    """`rms_norm` with a learned scale [D]."""

    def __init__(self, config: LlamaConfig):
        self.eps = config.rms_norm_eps
        self.scale = _param(jnp.ones((config.hidden_size,), config.param_dtype), ("embed",))

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        return rms_norm(x_btd, self.scale[...], self.eps)


class Attention(nnx.Module):
    """Grouped-query self-attention with rotate-half RoPE and an optional KV cache (one layer)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        d, n, k, h = config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim
        if n % k:
            raise ValueError(f"num_heads {n} is not a multiple of num_kv_heads {k}")
        self.config = config
        self.q = _param(_normal(rngs, (d, n, h), config), ("embed", "heads", "head_dim"))
        self.k = _param(_normal(rngs, (d, k, h), config), ("embed", "kv_heads", "head_dim"))
        self.v = _param(_normal(rngs, (d, k, h), config), ("embed", "kv_heads", "head_dim"))
        self.o = _param(_normal(rngs, (n, h, d), config), ("heads", "head_dim", "embed"))
        if config.attention_bias:  # Qwen2
            dtype = config.param_dtype
            self.q_bias = _param(jnp.zeros((n, h), dtype), ("heads", "head_dim"))
            self.k_bias = _param(jnp.zeros((k, h), dtype), ("kv_heads", "head_dim"))
            self.v_bias = _param(jnp.zeros((k, h), dtype), ("kv_heads", "head_dim"))
        if config.qk_norm:  # Qwen3
            self.q_norm = _param(jnp.ones((h,), config.param_dtype), ("head_dim",))
            self.k_norm = _param(jnp.ones((h,), config.param_dtype), ("head_dim",))

    def __call__(self, x_btd, cos_bth, sin_bth, segment_ids_bt, layer_cache=None):
        """x [B,T,D] -> (out [B,T,D], this layer's updated cache (k, v) [B,S,K,H] or None).

        `layer_cache`: (k [B,S,K,H], v [B,S,K,H], segment ids of the slots after this call
        [B,S], write index): the T new keys/values go to slots [index, index + T).
        """
        cfg = self.config
        dt = cfg.dtype
        q_btnh = project(self, "q", "btd,dnh->btnh", x_btd, dt)
        k_btkh = project(self, "k", "btd,dkh->btkh", x_btd, dt)
        v_btkh = project(self, "v", "btd,dkh->btkh", x_btd, dt)
        if cfg.attention_bias:
            q_btnh = q_btnh + self.q_bias[...].astype(dt)
            k_btkh = k_btkh + self.k_bias[...].astype(dt)
            v_btkh = v_btkh + self.v_bias[...].astype(dt)
        if cfg.qk_norm:
            q_btnh = rms_norm(q_btnh, self.q_norm[...], cfg.rms_norm_eps)
            k_btkh = rms_norm(k_btkh, self.k_norm[...], cfg.rms_norm_eps)
        q_btnh = apply_rotary(q_btnh, cos_bth, sin_bth)
        q_btnh = constrain(q_btnh, ("batch", "length", "heads", "head_dim"))
        k_btkh = apply_rotary(k_btkh, cos_bth, sin_bth)
        b, t = x_btd.shape[:2]
        q_btkgh = q_btnh.reshape(b, t, cfg.num_kv_heads, -1, cfg.head_dim)

        if layer_cache is None:
            out_btkgh = self_attention(cfg.attention, q_btkgh, k_btkh, v_btkh, segment_ids_bt,
                                       ATTENTION_BLOCK)
            new_layer_cache = None
        else:
            cache_k, cache_v, key_seg_bs, index = layer_cache
            keys_bskh = jax.lax.dynamic_update_slice(cache_k, k_btkh.astype(cache_k.dtype),
                                                     (0, index, 0, 0))
            values_bskh = jax.lax.dynamic_update_slice(cache_v, v_btkh.astype(cache_v.dtype),
                                                       (0, index, 0, 0))
            allowed_bts = allowed_keys(index + jnp.arange(t), jnp.arange(cache_k.shape[1]),
                                       segment_ids_bt, key_seg_bs)
            out_btkgh = masked_attention(q_btkgh, keys_bskh.astype(dt), values_bskh.astype(dt),
                                         allowed_bts)
            new_layer_cache = (keys_bskh, values_bskh)
        out_btnh = out_btkgh.reshape(q_btnh.shape)
        out_btd = project(self, "o", "btnh,nhd->btd", out_btnh, dt)
        return out_btd, new_layer_cache


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)) (one layer)."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        d, f = config.hidden_size, config.intermediate_size
        self.dtype = config.dtype
        self.gate = _param(_normal(rngs, (d, f), config), ("embed", "mlp"))
        self.up = _param(_normal(rngs, (d, f), config), ("embed", "mlp"))
        self.down = _param(_normal(rngs, (f, d), config), ("mlp", "embed"))

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        dt = self.dtype
        gate_btf = project(self, "gate", "btd,df->btf", x_btd, dt)
        up_btf = project(self, "up", "btd,df->btf", x_btd, dt)
        hidden_btf = constrain(jax.nn.silu(gate_btf) * up_btf, ("batch", "length", "mlp"))
        return project(self, "down", "btf,fd->btd", hidden_btf, dt)


class DecoderLayer(nnx.Module):
    """Pre-norm attention block + pre-norm MLP block, both residual.

    `Llama.layers` is one DecoderLayer built by `stacked_layers`: every parameter [L, ...]. Its
    `__call__` runs one layer, i.e. on a module merged from one row of that state (as the scans
    below do).
    """

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.input_norm = RMSNorm(config)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(config)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x_btd, cos_bth, sin_bth, segment_ids_bt, layer_cache=None):
        """x [B,T,D] -> (x [B,T,D], updated layer cache or None); see `Attention.__call__`."""
        with jax.named_scope("attention"):
            attn_btd, new_layer_cache = self.attn(
                self.input_norm(x_btd), cos_bth, sin_bth, segment_ids_bt, layer_cache
            )
            x_btd = constrain(x_btd + attn_btd, ("batch", "length", "embed"))
        with jax.named_scope("mlp"):
            mlp_btd = self.mlp(self.post_attn_norm(x_btd))
            x_btd = constrain(x_btd + mlp_btd, ("batch", "length", "embed"))
        return x_btd, new_layer_cache


def stacked_layers(config: LlamaConfig, rngs: nnx.Rngs) -> DecoderLayer:
    """`config.num_layers` layers as one DecoderLayer with a leading `layers` axis on every param.

    `nnx.vmap` over L split keys: each row draws the same init distribution a lone layer does.
    """

    @nnx.split_rngs(splits=config.num_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(layer_rngs: nnx.Rngs) -> DecoderLayer:
        return DecoderLayer(config, rngs=layer_rngs)

    return create(rngs)


def _scan_layers(layers: DecoderLayer, x_btd, cos_bth, sin_bth, segment_ids_bt, *, remat: bool,
                 unroll: bool) -> jax.Array:
    """x [B,T,D] through all L layers (no cache): one `lax.scan` over the stacked params.

    Rolled (`unroll=False`, `scan_layers=True`): XLA compiles the layer body once (a 32-layer 7B
    step compiles in seconds) and keeps one layer's gathered weights live. Unrolled: straight-line
    code over static rows of the same arrays, 6-9% faster on CPU for small models (SmolLM2-135M
    train step, measured). Either way nothing is restacked: row l of each [L, ...] param is read
    where it lies and its gradient lands in row l. `remat`: the body is `jax.checkpoint`ed (only
    the carry x is saved per layer).
    """
    graphdef, stacked = nnx.split(layers)

    def body(h_btd, layer_state):
        with jax.named_scope("layer"):
            h_btd, _ = nnx.merge(graphdef, layer_state)(h_btd, cos_bth, sin_bth, segment_ids_bt)
        return h_btd, None

    body = jax.checkpoint(body) if remat else body
    return jax.lax.scan(body, x_btd, stacked, unroll=unroll)[0]


def _scan_layers_cached(layers: DecoderLayer, x_btd, cos_bth, sin_bth, segment_ids_bt,
                        cache: KVCache) -> tuple[jax.Array, KVCache]:
    """x [B,T,D] through all L layers with the KV cache -> (x, cache advanced by T slots).

    One rolled `lax.scan` over (layer params, cache k[l], cache v[l]) [B,S,K,H]; its stacked
    outputs are the new k/v [L,B,S,K,H]. Rolled whatever `scan_layers` says: 32 greedy SmolLM2
    tokens ran 1.9x slower unrolled on CPU (measured).
    """
    graphdef, stacked = nnx.split(layers)
    t = x_btd.shape[1]
    seg_bs = jax.lax.dynamic_update_slice(cache.segment_ids, segment_ids_bt, (0, cache.index))

    def body(h_btd, xs):
        layer_state, k_bskh, v_bskh = xs
        with jax.named_scope("layer"):
            h_btd, kv = nnx.merge(graphdef, layer_state)(
                h_btd, cos_bth, sin_bth, segment_ids_bt, (k_bskh, v_bskh, seg_bs, cache.index))
        return h_btd, kv

    x_btd, (k_lbskh, v_lbskh) = jax.lax.scan(body, x_btd, (stacked, cache.k, cache.v))
    return x_btd, KVCache(k=k_lbskh, v=v_lbskh, segment_ids=seg_bs, index=cache.index + t)


def _tied_logits_plain(x_btd: jax.Array, table_vd: jax.Array) -> jax.Array:
    return jnp.einsum("btd,vd->btv", x_btd, table_vd, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def tied_logits(x_btd: jax.Array, table_vd: jax.Array, grad_rows: tuple[int, ...]) -> jax.Array:
    """x [B,T,D] · table [V,D] -> logits [B,T,V] float32, with the table's gradient computed
    only at the rows `grad_rows` (token ids) and exactly zero elsewhere.

    The input gradient is the plain einsum's; the row gradients are the plain einsum's
    restricted to those columns of the logits, so a row-masked trainer gets the same update for
    [R, D] of weight-gradient work instead of [V, D].
    """
    return _tied_logits_plain(x_btd, table_vd)


def _tied_logits_fwd(x_btd: jax.Array, table_vd: jax.Array, grad_rows: tuple[int, ...]):
    return _tied_logits_plain(x_btd, table_vd), (x_btd, table_vd)


def _tied_logits_bwd(grad_rows: tuple[int, ...], residuals: tuple, g_btv: jax.Array):
    x_btd, table_vd = residuals
    rows_r = jnp.asarray(grad_rows, jnp.int32)
    _, x_vjp = jax.vjp(lambda x: _tied_logits_plain(x, table_vd), x_btd)
    _, rows_vjp = jax.vjp(lambda r: _tied_logits_plain(x_btd, r), table_vd[rows_r])
    (dx_btd,) = x_vjp(g_btv)
    (drows_rd,) = rows_vjp(g_btv[..., rows_r])
    return dx_btd, jnp.zeros_like(table_vd).at[rows_r].set(drows_rd)


tied_logits.defvjp(_tied_logits_fwd, _tied_logits_bwd)


class Llama(nnx.Module):
    """Llama causal LM. See the module docstring for names, masks, dtypes and the KV cache."""

    def __init__(self, config: LlamaConfig, *, rngs: nnx.Rngs):
        self.config = config
        v, d = config.padded_vocab_size, config.hidden_size
        self.embed = _param(_normal(rngs, (v, d), config), ("vocab", "embed"))
        self.layers = stacked_layers(config, rngs)
        self.final_norm = RMSNorm(config)
        if not config.tie_word_embeddings:
            self.lm_head = _param(_normal(rngs, (d, v), config), ("embed", "vocab"))

    def embed_tokens(self, input_ids_bt: jax.Array) -> jax.Array:
        """Token ids [B, T] -> embeddings [B, T, D] in the compute dtype."""
        with jax.named_scope("embed"):
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
        embed_grad_rows: tuple[int, ...] | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """The transformer on input embeddings [B, T, D] -> (logits [B, T, V] f32, new cache).

        With `logits_at` (int [B] or [B, K]: positions per row) the final norm and the LM head
        run only there, giving [B, 1, V] or [B, K, V] instead of [B, T, V]: a prefill needs only
        each prompt's last position (at 7B, T=2048, B=8 the full logits are ~2 GB of float32),
        training only the positions that predict a supervised token. `embed_grad_rows`: see the
        module docstring (tied head gradient).
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
        per_token = (cos_bth, sin_bth, segment_ids_bt)
        if cache is None:
            x_btd = _scan_layers(self.layers, x_btd, *per_token, remat=cfg.remat,
                                 unroll=not cfg.scan_layers)
        else:
            x_btd, cache = _scan_layers_cached(self.layers, x_btd, *per_token, cache)
        return self.head(x_btd, logits_at, embed_grad_rows), cache

    def head(self, x_btd: jax.Array, logits_at: jax.Array | None,
             embed_grad_rows: tuple[int, ...] | None = None) -> jax.Array:
        """Final norm + LM head on x [B,T,D] (only at `logits_at`) -> logits [B,T|K,V] f32.

        With tied embeddings and `embed_grad_rows`, the head's weight gradient reaches only
        those embedding rows (`tied_logits`)."""
        cfg = self.config
        if logits_at is not None:
            at_bk = logits_at[:, None] if logits_at.ndim == 1 else logits_at
            x_btd = jnp.take_along_axis(x_btd, at_bk[..., None], axis=1)  # [B, K, D]
        with jax.named_scope("final_norm"):
            x_btd = self.final_norm(x_btd)
        with jax.named_scope("lm_head"):
            if cfg.tie_word_embeddings:
                table_vd = self.embed[...].astype(cfg.dtype)
                logits_btv = (_tied_logits_plain(x_btd, table_vd) if embed_grad_rows is None
                              else tied_logits(x_btd, table_vd, tuple(embed_grad_rows)))
            else:
                logits_btv = jnp.einsum("btd,dv->btv", x_btd,
                                        self.lm_head[...].astype(cfg.dtype),
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
