"""`jukebox`: Jukebox-5B top-prior activations after block 36, mean-pooled to ~10 Hz (LLark §5).

Procedure (the reference's `get_acts_from_file`, spec §7.2, batched over context windows):

1. mono float32 at 44.1 kHz, peak-normalised to max|x| = 1 (silence left as is);
2. the clip is cut to its first 2^20 samples (`reference`) or `max_seconds` (25 s, `paper`) and
   split into context windows of n_ctx * hop = 8192 * 128 = 2^20 samples (23.78 s), zero-padded
   at the end; when a `paper` clip needs more than 8192 tokens, a last window is added
   ending at the clip's last needed token (a 25 s clip: windows at tokens 0 and 422; each token's
   activation comes from the earliest window containing it);
3. VQ-VAE top-level codes (hop 128, 2048 bins) of each window;
4. the prior's input embedding with the reference conditioning: artist "unknown", genre
   "unknown", total length (62 s * 44100 // 128) * 128 samples, offset = the window's first
   sample, lyrics empty (the 5B model has no lyric tokens); codes embedded, shifted right by one
   with slot 0 = the artist/genre start embedding, plus the learned position embedding plus the
   timing embedding;
5. the first `layer` (36) transformer blocks; the output of block 36 (width 4800, no final norm)
   is the activation per token;
6. mean pooling (`pooling.py`): `reference` (default, LLark's code and `configs/llark_7b.py`)
   34-token windows, 240 for >= 2^20 samples; `paper` exact 100 ms frames, 250 for a 25 s clip.

The package's CUDA-only type asserts (`ConditionalAutoregressive2D.forward`,
`LabelConditioner.forward`) are avoided by running the same modules piecewise here; tests check
that this equals the package's own `get_cond` + `prior.forward(only_encode=True)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from llark_jax.audio.encoders import pooling
from llark_jax.audio.encoders.base import (
    AudioEncoder,
    EncoderError,
    as_mono_float32,
    peak_normalise,
)
from llark_jax.audio.encoders.jukebox_checkpoint import build_models

if TYPE_CHECKING:
    import torch

TOTAL_LENGTH_SECONDS = 62  # the reference's conditioning: (int(62 * sr) // hop) * hop samples
DTYPES = ("float32", "bfloat16", "float16")  # torch dtypes by name (torch is imported lazily)


class JukeboxEncoder(AudioEncoder):
    """Jukebox-5B layer-`layer` embeddings: float32 [T, 4800] per clip at ~10 Hz.

    Args:
      jukebox_dir: folder with vqvae.pth.tar and prior_level_2.pth.tar (default $JUKEBOX_DIR).
      layer: number of prior blocks run; the output of block `layer` is the embedding.
      pooling_mode: "reference" (default: the code's 34-token windows, 240 frames per clip) or
        "paper" (exact 10 Hz up to `max_seconds`, 250 frames for 25 s).
      device: "auto" (cuda if available), "cpu", "cuda", ...
      dtype: "auto" (bfloat16 on GPU, float32 on CPU), "float32", "bfloat16", "float16".
      windows_per_forward: context windows (across clips) per prior forward.
      trust_pickle: read checkpoints with weights_only=False (only for files you trust).
      vqvae_overrides / prior_overrides: jukebox_infer hparams overrides (tests: tiny models).
    """

    name = "jukebox"

    def __init__(
        self,
        jukebox_dir: str | None = None,
        layer: int = 36,
        pooling_mode: str = "reference",
        max_seconds: float = 25.0,
        device: str = "auto",
        dtype: str = "auto",
        windows_per_forward: int = 4,
        trust_pickle: bool = False,
        vqvae_overrides: Mapping | None = None,
        prior_overrides: Mapping | None = None,
    ) -> None:
        jukebox_dir = jukebox_dir or os.environ.get("JUKEBOX_DIR")
        if not jukebox_dir:
            raise EncoderError("jukebox: give --jukebox-dir or set JUKEBOX_DIR to the folder "
                               "holding vqvae.pth.tar and prior_level_2.pth.tar (5B, no lyrics)")
        if pooling_mode not in pooling.POOLING_MODES:
            raise EncoderError(f"jukebox: pooling must be one of {pooling.POOLING_MODES}")
        if dtype != "auto" and dtype not in DTYPES:
            raise EncoderError(f"jukebox: dtype must be auto or one of {sorted(DTYPES)}")
        import torch

        models = build_models(jukebox_dir, layer, vqvae_overrides, prior_overrides, trust_pickle)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.compute_dtype = getattr(torch, dtype)
        self.vqvae = models.vqvae.float().to(self.device)
        self.prior = _place_prior(models.prior, self.device, self.compute_dtype)
        self.layer = layer
        self.pooling_mode = pooling_mode
        self.n_ctx = int(models.prior.n_ctx)
        # Audio used per clip (after peak normalisation over the whole clip, as the reference):
        # paper: the first max_seconds; reference: the first window (2^20 samples).
        self.max_samples = (int(max_seconds * models.sample_rate) if pooling_mode == "paper"
                            else self.n_ctx * models.hop)
        self.windows_per_forward = windows_per_forward
        self.sample_rate = models.sample_rate
        self.hop = models.hop
        self.dim = int(self.prior.prior.width)
        self.frame_rate_hz = pooling.frame_rate(pooling_mode, self.sample_rate, self.hop)
        self.total_length = (int(TOTAL_LENGTH_SECONDS * self.sample_rate) // self.hop) * self.hop
        seconds = f"-max{max_seconds:g}s" if pooling_mode == "paper" else ""
        self.version = f"jukebox5b-layer{layer}-{pooling_mode}{seconds}-{dtype}"

    # -- per-clip planning -------------------------------------------------------------------
    def plan(self, n_samples: int) -> tuple[pooling.FramePlan, list[int]]:
        """Frames of a clip of `n_samples` and the first token of each context window it needs."""
        plan = pooling.frame_plan(self.pooling_mode, n_samples, self.sample_rate, self.hop,
                                  max_samples=self.max_samples, max_tokens=self.n_ctx)
        return plan, window_starts(plan.n_tokens, self.n_ctx)

    def encode_batch(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Mono float32 waveforms at 44.1 kHz -> float32 [T, dim] (T per `plan`); each clip is
        peak-normalised, then cut to `max_samples`; windows past its end are zero-padded."""
        clips = [peak_normalise(as_mono_float32(x, f"clip {i}"))[: self.max_samples]
                 for i, x in enumerate(waveforms)]
        plans = [self.plan(x_n.shape[0]) for x_n in clips]
        jobs = [(c, s) for c, (_, starts) in enumerate(plans) for s in starts]
        acts = {}
        for i in range(0, len(jobs), self.windows_per_forward):
            chunk = jobs[i : i + self.windows_per_forward]
            audio_bn = np.stack([self._window_audio(clips[c], s) for c, s in chunk])
            acts_btd = self.window_activations(audio_bn, [s * self.hop for _, s in chunk])
            acts.update({job: acts_btd[b] for b, job in enumerate(chunk)})
        outputs = []
        for c, (plan, starts) in enumerate(plans):
            acts_td = stitch_windows([acts[(c, s)] for s in starts], starts, plan.n_tokens)
            outputs.append(pooling.mean_pool(acts_td, plan))
        return outputs

    def _window_audio(self, x_n: np.ndarray, start_token: int) -> np.ndarray:
        """The 2^20 samples from token `start_token`, zero-padded at the end."""
        n_window = self.n_ctx * self.hop
        piece = x_n[start_token * self.hop : start_token * self.hop + n_window]
        return np.pad(piece, (0, n_window - piece.shape[0]))

    # -- the model -----------------------------------------------------------------------------
    def window_activations(self, audio_bn: np.ndarray, offsets_b: Sequence[int]) -> np.ndarray:
        """[B, n_ctx * hop] audio windows starting at sample `offsets_b` -> [B, n_ctx, dim] f32."""
        import torch

        with torch.inference_mode():
            z_bt = self.top_codes(torch.from_numpy(audio_bn).to(self.device))
            x_cond_btd, y_cond_b1d = self.conditioning(offsets_b)
            h_btd = self.embed_codes(z_bt, x_cond_btd, y_cond_b1d).to(self.compute_dtype)
            for block in self.prior.prior.transformer._attn_mods:
                h_btd = block(h_btd, encoder_kv=None, sample=False)
            return h_btd.float().cpu().numpy()

    def top_codes(self, audio_bn: torch.Tensor) -> torch.Tensor:
        """VQ-VAE top-level codes: [B, n_samples] -> int64 [B, n_samples // hop]."""
        top = len(self.vqvae.encoders) - 1
        latents_bct = self.vqvae.encoders[top](audio_bn.float()[:, None, :])[-1]
        return self.vqvae.bottleneck.level_blocks[top].encode(latents_bct)

    def conditioning(self, offsets_b: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference labels -> (timing x_cond [B, n_ctx, dim], start-slot y_cond [B, 1, dim])."""
        metas = [dict(artist="unknown", genre="unknown", lyrics="", total_length=self.total_length,
                      offset=int(o)) for o in offsets_b]
        y = self.prior.get_y(self.prior.labeller.get_batch_labels(metas, self.device), 0)
        y_emb = self.prior.y_emb  # LabelConditioner, run piecewise (its forward asserts CUDA)
        total, offset, length, artist, genre = y[:, 0:1], y[:, 1:2], y[:, 2:3], y[:, 3:4], y[:, 4:]
        genre_mask = (genre >= 0).unsqueeze(2).float()
        genre_emb = (y_emb.bow_genre_emb.emb(genre.clamp(0)) * genre_mask).sum(dim=1, keepdim=True)
        y_cond_b1d = y_emb.artist_emb.emb(artist) + genre_emb
        start, end, total = offset.float(), (offset + length).float(), total.float()
        x_cond_btd = (y_emb.total_length_emb(total) + y_emb.absolute_pos_emb(start, end)
                      + y_emb.relative_pos_emb(start / total, end / total))
        return x_cond_btd, y_cond_b1d

    def embed_codes(self, z_bt: torch.Tensor, x_cond_btd: torch.Tensor,
                    y_cond_b1d: torch.Tensor) -> torch.Tensor:
        """Prior input: codes shifted right by one (slot 0 = y_cond) + position + timing."""
        import torch

        prior = self.prior.prior
        tokens_btd = prior.x_emb(z_bt)
        h_btd = torch.cat([y_cond_b1d, tokens_btd[:, :-1]], dim=1)
        return h_btd + prior.pos_emb() + x_cond_btd


def window_starts(n_tokens: int, n_ctx: int) -> list[int]:
    """First tokens of the context windows covering [0, n_tokens): 0, n_ctx, ..., last aligned
    to end at n_tokens (overlapping the previous one)."""
    if n_tokens <= n_ctx:
        return [0]
    return list(range(0, n_tokens - n_ctx, n_ctx)) + [n_tokens - n_ctx]


def stitch_windows(acts: Sequence[np.ndarray], starts: Sequence[int], n_tokens: int) -> np.ndarray:
    """Per-token activations [n_tokens, D], each from the earliest window [n_ctx, D] holding it."""
    if len(acts) == 1:
        return acts[0][:n_tokens]
    out_td = np.empty((n_tokens, acts[0].shape[1]), np.float32)
    covered = 0
    for acts_td, start in zip(acts, starts, strict=True):
        end = min(start + acts_td.shape[0], n_tokens)
        out_td[covered:end] = acts_td[covered - start : end - start]
        covered = end
    return out_td


def _place_prior(prior: torch.nn.Module, device: torch.device, dtype: torch.dtype):
    """Moves the prior to `device` the way Jukebox's own fp16 mode lays it out: Conv1D weights
    (the transformer matmuls) in `dtype`, everything else (embeddings, LayerNorms, whose forward
    upcasts to float32) in float32. For float32 the Conv1D weights stay as stored (fp16 in the
    official file); Conv1D casts them to the input dtype, so compute is fp32 as in the reference."""
    import torch
    from jukebox_infer.transformer.ops import Conv1D

    for module in prior.modules():
        for name, param in module.named_parameters(recurse=False):
            if not isinstance(module, Conv1D):
                target = torch.float32
            else:
                target = param.dtype if dtype == torch.float32 else dtype
            setattr(module, name, torch.nn.Parameter(param.to(device=device, dtype=target),
                                                     requires_grad=False))
    return prior
