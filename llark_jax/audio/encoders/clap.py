"""`clap`: LAION-CLAP audio embeddings, the audio-encoder ablation of the paper (appendix E.1).

The reference ablation (`scripts/clap/train_model_clap.sh`) replaces the Jukebox frames with one
512-d CLAP audio embedding per clip (`mm_hidden_size 512`, T = 1 audio token), from LAION-CLAP's
music checkpoint (HTSAT-base, unfused, 48 kHz, 10 s input). The paper reports that CLAP degrades
every music-understanding task against Jukebox, tempo most (CLAP has no time axis).

Checkpoint: a local folder in the Hugging Face `ClapModel` layout (`config.json` with model_type
"clap", `model.safetensors` or `pytorch_model.bin`, `preprocessor_config.json`), e.g.
`laion/larger_clap_music` or a LAION checkpoint converted with transformers'
`convert_clap_original_pytorch_to_hf.py`. transformers and torch are imported only when built.

Embedding of one window: `ClapModel.get_audio_features` on `ClapFeatureExtractor` input (log-mel,
repeat-padded to the 10 s window), L2-normalised as LAION-CLAP's `get_audio_embedding_from_data`.
Time grid: consecutive windows of `max_length_s` (10 s) from the clip's start, so
`frame_rate_hz = 1 / 10`; a shorter last piece is kept (repeat-padded) when it is at least half a
window or the clip's only piece, so T = min(max(1, round(n / window)), max_windows).
`max_windows = 1` (default) is the reference setting: one token per clip. The reference takes a
random 10 s of a longer clip; this takes the first 10 s, so embeddings are reproducible.
`max_windows = 0` keeps every window (a 25 s crop gives T = 3).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llark_jax.audio.encoders.base import AudioEncoder, EncoderError, as_mono_float32

DTYPES = ("float32", "bfloat16", "float16")


class ClapEncoder(AudioEncoder):
    """CLAP audio embeddings: float32 `[T, projection_dim]` per clip, one row per 10 s window.

    Args:
      clap_dir: Hugging Face ClapModel folder; default $CLAP_DIR.
      max_windows: at most this many windows per clip (1: the reference's one token; 0: all).
      device: "auto" (cuda if available), "cpu", "cuda", ...
      dtype: "float32" (default), "bfloat16" or "float16" for the forward pass.
    """

    name = "clap"

    def __init__(self, clap_dir: str | Path | None = None, max_windows: int = 1,
                 device: str = "auto", dtype: str = "float32") -> None:
        clap_dir = clap_dir or os.environ.get("CLAP_DIR")
        if not clap_dir:
            raise EncoderError("clap: no checkpoint folder given (clap_dir or $CLAP_DIR)")
        clap_dir = Path(clap_dir)
        config_path = clap_dir / "config.json"
        if not config_path.is_file():
            raise EncoderError(f"{config_path}: not found (expected a Hugging Face ClapModel "
                               "folder: config.json, weights, preprocessor_config.json)")
        model_type = json.loads(config_path.read_text()).get("model_type")
        if model_type != "clap":
            raise EncoderError(f"{config_path}: model_type {model_type!r} is not a CLAP model")
        if dtype not in DTYPES:
            raise EncoderError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        if int(max_windows) < 0:
            raise EncoderError(f"max_windows must be >= 0, got {max_windows}")
        import torch
        from transformers import ClapFeatureExtractor, ClapModel

        self.features = ClapFeatureExtractor.from_pretrained(str(clap_dir))
        self.model = ClapModel.from_pretrained(str(clap_dir)).eval().requires_grad_(False)
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.torch_dtype = getattr(torch, dtype)
        self.model.to(self.device, self.torch_dtype)
        self.fused = bool(self.model.config.audio_config.enable_fusion)
        self.sample_rate = int(self.features.sampling_rate)
        self.window_samples = int(self.features.nb_max_samples)
        self.frame_rate_hz = self.sample_rate / self.window_samples
        self.dim = int(self.model.config.projection_dim)
        self.max_windows = int(max_windows)
        digest = hashlib.sha1(config_path.read_bytes()).hexdigest()[:10]
        self.version = (f"clap-{digest}-D{self.dim}-win{self.window_samples / self.sample_rate:g}s"
                        f"-max{self.max_windows}-fusion{int(self.fused)}-{dtype}")

    def windows(self, x_n: np.ndarray) -> list[np.ndarray]:
        """Consecutive `window_samples` pieces from the start; a last piece under half a window
        is dropped unless it is the only one."""
        starts = range(0, x_n.shape[0], self.window_samples)
        pieces = [x_n[s: s + self.window_samples] for s in starts]
        if len(pieces) > 1 and 2 * pieces[-1].shape[0] < self.window_samples:
            pieces.pop()
        return pieces[: self.max_windows] if self.max_windows else pieces

    def encode_batch(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        import torch

        per_clip = [self.windows(as_mono_float32(x_n, f"clip {i}"))
                    for i, x_n in enumerate(waveforms)]
        flat = [w for pieces in per_clip for w in pieces]
        if not flat:
            return [np.zeros((0, self.dim), np.float32) for _ in per_clip]
        inputs = self.features(flat, sampling_rate=self.sample_rate, return_tensors="pt",
                               truncation="fusion" if self.fused else "rand_trunc",
                               padding="repeatpad")
        with torch.no_grad():
            out = self.model.get_audio_features(
                input_features=inputs["input_features"].to(self.device, self.torch_dtype),
                is_longer=inputs.get("is_longer"))
        emb_wd = out.pooler_output.float().cpu().numpy()
        split_at = np.cumsum([len(pieces) for pieces in per_clip])[:-1]
        return [np.ascontiguousarray(y_td, dtype=np.float32)
                for y_td in np.split(emb_wd, split_at)]
