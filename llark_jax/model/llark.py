"""LLark: a Llama whose `<audio_patch>` token positions receive projected audio frames.

    audio [B,S,T_a,D_audio] --projector ([LayerMix over L layers] Dense + bias)--> [B,S,T_a,E]
        --optional MusiLingo temporal compression: mean over groups of `pool` frames--> [B,S,T',E]
        --flatten--> frames [B,F=S*T',E]
    x = embed(input_ids); x[b,t] = frames[b, audio_frame_index[b,t]] where input_ids[b,t] == patch
    logits = llama.decode_embeddings(x, ...)

The splice is one static-shape gather + `jnp.where` (jit-friendly, no loop over the batch) and
fills every audio segment of every row (the reference only splices the last one, spec §1.4).
`<audio_start>`/`<audio_end>` keep their learned embeddings. When `audio_frame_index` is None, the
k-th patch token of a row takes frame k of that row's flattened frames.

The reference's "detach hack" (only the `<audio_start>`/`<audio_end>` embedding rows get gradient)
is expressed as a gradient mask in `llark_jax.model.trainable`, not in the forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from llark_jax.model.layer_mix import LayerMix
from llark_jax.model.llama import Llama


def _torch_linear_bias_init(fan_in: int):
    bound = fan_in**-0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class AudioProjector(nnx.Module):
    """[optional LayerMix ->] Dense D -> E with bias, PyTorch `nn.Linear` default init times
    `init_scale` (1: the reference's init; unit-variance inputs then give outputs of RMS ~0.58).

    `audio_dim` is the stored feature width. With `audio_layers` L > 0 the features are L encoder
    states in MERT's layer-major layout [..., T, L*D] (`data_prep.encoders.mert`, layers="all"):
    a `LayerMix(L)` (MusiLingo's learned softmax layer weights, param `layer_mix/logits` [L])
    reduces them to [..., T, D] first, so the dense layer is D = audio_dim / L wide. The mix lives
    inside the projector, so every preset that trains the projector trains it too.
    """

    def __init__(self, audio_dim: int, hidden_size: int, *, audio_layers: int = 0, param_dtype,
                 dtype, rngs: nnx.Rngs, init_scale: float = 1.0):
        if audio_layers < 0 or (audio_layers and audio_dim % audio_layers):
            raise ValueError(f"audio_layers={audio_layers} must be 0 or divide audio_dim="
                             f"{audio_dim} (stored width L * D)")
        self.audio_dim = audio_dim
        self.audio_layers = audio_layers
        self.layer_mix = LayerMix(audio_layers) if audio_layers else None
        in_dim = audio_dim // audio_layers if audio_layers else audio_dim
        kernel_init = jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
        self.dtype = dtype
        self.kernel = nnx.Param(
            init_scale * kernel_init(rngs.params(), (in_dim, hidden_size), param_dtype),
            out_sharding=("audio_features", "embed"), eager_sharding=False,
        )
        bias_init = _torch_linear_bias_init(in_dim)
        self.bias = nnx.Param(
            init_scale * bias_init(rngs.params(), (hidden_size,), param_dtype),
            out_sharding=("embed",), eager_sharding=False,
        )

    def __call__(self, audio_bstd: jax.Array) -> jax.Array:
        """[..., audio_dim] -> [..., E] in the compute dtype."""
        dt = self.dtype
        if self.layer_mix is not None:
            audio_bstd = self.layer_mix.mix_flat(audio_bstd)
        out = jnp.einsum("...a,ae->...e", audio_bstd.astype(dt), self.kernel[...].astype(dt))
        return out + self.bias[...].astype(dt)


class LLark(nnx.Module):
    """Llama + audio projector + `<audio_patch>` splice.

    Args:
      llama: the language model (its vocabulary already holds the LLark tokens).
      audio_dim: D_audio of the stored encoder features (4800 for Jukebox; L*D for L layers).
      audio_patch_id, audio_start_id, audio_end_id: token ids (`AudioTokenIds` fields).
      temporal_pool: MusiLingo compression, frames averaged per patch token (1 = none, LLark).
      audio_layers: MusiLingo's learned layer average over L stored encoder states (0 = none).
      projector_init_scale: multiplies the projector's initial weights (`AudioProjector`).
    """

    def __init__(
        self,
        llama: Llama,
        audio_dim: int,
        *,
        audio_patch_id: int,
        audio_start_id: int,
        audio_end_id: int,
        temporal_pool: int = 1,
        audio_layers: int = 0,
        projector_init_scale: float = 1.0,
        rngs: nnx.Rngs,
    ):
        cfg = llama.config
        if temporal_pool < 1:
            raise ValueError(f"temporal_pool must be >= 1, got {temporal_pool}")
        self.llama = llama
        self.projector = AudioProjector(
            audio_dim, cfg.hidden_size, audio_layers=audio_layers, param_dtype=cfg.param_dtype,
            dtype=cfg.dtype, rngs=rngs, init_scale=projector_init_scale,
        )
        self.audio_patch_id = audio_patch_id
        self.audio_start_id = audio_start_id
        self.audio_end_id = audio_end_id
        self.temporal_pool = temporal_pool

    def project_audio(self, audio: jax.Array, audio_mask: jax.Array | None = None) -> jax.Array:
        """audio [B,S,T_a,D] or [B,T_a,D] -> frames [B, S*T_a/pool, E].

        With `temporal_pool` p > 1, T_a must be a multiple of p; each group of p projected frames
        is averaged over its valid frames (`audio_mask` [B,S,T_a] bool, all valid when None).
        """
        if audio.ndim == 3:
            audio = audio[:, None]
            audio_mask = None if audio_mask is None else audio_mask[:, None]
        b, s, t, _ = audio.shape
        p = self.temporal_pool
        if p > 1 and t % p:
            raise ValueError(f"T_a={t} is not a multiple of temporal_pool={p}")
        with jax.named_scope("projector"):
            frames_bste = self.projector(audio)
            if p > 1:
                grouped = frames_bste.reshape(b, s, t // p, p, -1)
                w = jnp.ones((b, s, t), grouped.dtype) if audio_mask is None else audio_mask
                w = w.astype(grouped.dtype).reshape(b, s, t // p, p, 1)
                frames_bste = (grouped * w).sum(3) / jnp.maximum(w.sum(3), 1)
            return frames_bste.reshape(b, -1, frames_bste.shape[-1])

    def embed_inputs(
        self,
        input_ids: jax.Array,
        audio: jax.Array | None,
        audio_frame_index: jax.Array | None = None,
        audio_mask: jax.Array | None = None,
    ) -> jax.Array:
        """Token embeddings [B,T,E] with projected frames spliced into the patch positions.

        `audio=None` (text only, e.g. decode steps) returns the plain token embeddings.
        """
        x_bte = self.llama.embed_tokens(input_ids)
        if audio is None:
            return x_bte
        frames_bfe = self.project_audio(audio, audio_mask)
        with jax.named_scope("splice"):
            is_patch_bt = input_ids == self.audio_patch_id
            if audio_frame_index is None:
                audio_frame_index = jnp.cumsum(is_patch_bt, axis=1) - 1
            index_bt = jnp.clip(audio_frame_index, 0, frames_bfe.shape[1] - 1).astype(jnp.int32)
            spliced_bte = jnp.take_along_axis(frames_bfe, index_bt[..., None], axis=1)
            return jnp.where(is_patch_bt[..., None], spliced_bte.astype(x_bte.dtype), x_bte)

    def __call__(
        self,
        input_ids: jax.Array,
        audio: jax.Array | None,
        positions: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
        audio_frame_index: jax.Array | None = None,
        audio_mask: jax.Array | None = None,
        logits_at: jax.Array | None = None,
        embed_grad_rows: tuple[int, ...] | None = None,
    ) -> jax.Array:
        """input_ids [B,T] int32, audio [B,S,T_a,D] | [B,T_a,D] | None -> logits [B,T,V] f32.

        positions/segment_ids/attention_mask/logits_at/embed_grad_rows as in
        `Llama.decode_embeddings` (with `logits_at` [B,K] the logits are [B,K,V]);
        audio_frame_index [B,T] int32 = s*T'+t at patch positions (T' = T_a/temporal_pool),
        ignored elsewhere.
        """
        x_bte = self.embed_inputs(input_ids, audio, audio_frame_index, audio_mask)
        logits_btv, _ = self.llama.decode_embeddings(
            x_bte, positions_bt=positions, segment_ids_bt=segment_ids,
            attention_mask_bt=attention_mask, logits_at=logits_at,
            embed_grad_rows=embed_grad_rows,
        )
        return logits_btv
