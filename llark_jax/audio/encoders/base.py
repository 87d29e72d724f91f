"""The audio-encoder interface every embedding backend implements (mel, jukebox, mert, clap).

An encoder turns mono float32 waveforms at its own `sample_rate` into frame sequences on a fixed
time grid: `encode_batch([x_n]) -> [y_td]`, one float32 array `[T, D]` per clip, with
`T = frames for that clip` and `D = dim`. `frame_rate_hz` is the grid's rate (10 Hz for the paper's
setting); callers resample audio to `sample_rate` before calling.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np


class EncoderError(RuntimeError):
    """An encoder could not be built or could not encode a clip (the message names the thing)."""


class AudioEncoder(abc.ABC):
    """Frozen audio encoder: mono waveforms -> float32 `[T, D]` frames at `frame_rate_hz`.

    Attributes:
      name: registry name (`"mel"`, `"jukebox"`), written next to every embedding.
      version: string that changes whenever outputs would change (config, weights, pooling).
      frame_rate_hz: frames per second of the output grid.
      dim: D, the feature width.
      sample_rate: Hz the input waveforms must have.
    """

    name: str
    version: str
    frame_rate_hz: float
    dim: int
    sample_rate: int

    @abc.abstractmethod
    def encode_batch(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Encodes mono float32 waveforms `[n_samples]` (any lengths) to float32 `[T, D]` arrays."""

    def describe(self) -> dict:
        """The sidecar fields stored with every embedding."""
        return {
            "encoder": self.name,
            "version": self.version,
            "frame_rate_hz": float(self.frame_rate_hz),
            "sample_rate": int(self.sample_rate),
            "dim": int(self.dim),
        }


def as_mono_float32(waveform: np.ndarray, what: str = "waveform") -> np.ndarray:
    """Checks a waveform is 1-D and finite and returns it as contiguous float32 `[n_samples]`."""
    x_n = np.ascontiguousarray(np.asarray(waveform, dtype=np.float32))
    if x_n.ndim != 1:
        raise EncoderError(f"{what}: expected mono audio of shape [n_samples], got {x_n.shape}")
    if not np.all(np.isfinite(x_n)):
        raise EncoderError(f"{what}: waveform contains NaN or Inf samples")
    return x_n


def peak_normalise(x_n: np.ndarray) -> np.ndarray:
    """Scales to max|x| = 1 (the reference's step 1); silent clips are returned unchanged."""
    peak = float(np.max(np.abs(x_n))) if x_n.size else 0.0
    return x_n / peak if peak > 0.0 else x_n
