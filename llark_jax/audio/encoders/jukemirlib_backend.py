"""`jukebox-jukemirlib`: the same embedding through jukemirlib, when it is importable.

jukemirlib is not on PyPI (it needs its own fork of openai/jukebox, a CUDA GPU and >= 13 GB of
VRAM), so it is imported only when this encoder is built. Its `extract` runs one clip at a time,
truncates audio to 25 s and then to the first 8192 tokens (23.78 s) without zero padding, and
returns per-token block outputs; we peak-normalise before and pool after with the same rules as
`jukebox` (`pooling.py`), so at most 237 `paper` frames (the 8192 tokens cover 23.78 s) or 240
`reference` frames. Spec §7.5 lists the (unverified) differences from the reference pipeline.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence

import numpy as np

from llark_jax.audio.encoders import pooling
from llark_jax.audio.encoders.base import (
    AudioEncoder,
    EncoderError,
    as_mono_float32,
    peak_normalise,
)

SAMPLE_RATE = 44100
HOP = 128
N_CTX = 8192


class JukemirlibEncoder(AudioEncoder):
    """jukemirlib backend: float32 [T, 4800] per clip; same pooling modes as `jukebox`."""

    name = "jukebox"
    sample_rate = SAMPLE_RATE
    dim = 4800

    def __init__(self, jukebox_dir: str | None = None, layer: int = 36,
                 pooling_mode: str = "reference", max_seconds: float = 25.0) -> None:
        try:
            import jukemirlib
        except ImportError as err:
            raise EncoderError("jukebox-jukemirlib: the jukemirlib package is not importable "
                               "(not on PyPI); use --encoder jukebox (jukebox-infer)") from err
        jukebox_dir = jukebox_dir or os.environ.get("JUKEBOX_DIR")
        if "cache_dir" not in inspect.signature(jukemirlib.setup_models).parameters:
            raise EncoderError("jukebox-jukemirlib: this jukemirlib's setup_models() takes no "
                               "cache_dir, so it would download weights; not supported")
        jukemirlib.setup_models(cache_dir=jukebox_dir)
        self._extract = jukemirlib.extract
        self.layer = layer
        self.pooling_mode = pooling_mode
        self.max_samples = min(int(max_seconds * SAMPLE_RATE), N_CTX * HOP)
        self.frame_rate_hz = pooling.frame_rate(pooling_mode, SAMPLE_RATE, HOP)
        self.version = f"jukemirlib-layer{layer}-{pooling_mode}"

    def encode_batch(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        outputs = []
        for i, waveform in enumerate(waveforms):
            x_n = peak_normalise(as_mono_float32(waveform, f"clip {i}"))
            plan = pooling.frame_plan(self.pooling_mode, x_n.shape[0], SAMPLE_RATE, HOP,
                                      max_samples=self.max_samples, max_tokens=N_CTX)
            acts_td = self._extract(audio=x_n, layers=[self.layer])[self.layer]
            outputs.append(pooling.mean_pool(np.asarray(acts_td, np.float32), plan))
        return outputs
