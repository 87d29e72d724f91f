"""Mean pooling of per-token activations onto a ~10 Hz frame grid (paper vs reference-code rules).

Jukebox's top level emits one activation per `hop` samples (hop 128 at 44.1 kHz: a token rate of
44100/128 = 344.53125 Hz). Two rules turn these into frames:

* `reference` (the encoders' default): LLark's code, `AvgPool1d(kernel=34, stride=34)` over the
  first latent_len = floor(n / hop) tokens (at most 8192); frame k averages tokens [34k, 34k + 34),
  T = floor(latent_len / 34) (240 for clips >= 2^20 samples), frame rate 344.53125 / 34 = 10.13 Hz.
* `paper`: exact 100 ms frames (the paper's "250x4800 for a 25-second clip"). Token t (covering
  samples [t*hop, (t+1)*hop)) belongs to frame k = floor(t * hop * frame_rate / sample_rate), i.e.
  the frame its first sample falls in; a frame averages 34 or 35 tokens (4410 / 128 = 34.45). A
  clip of n samples gives T = floor(n * frame_rate / sample_rate) full frames, so a 25 s clip
  gives exactly 250 frames.

All index arithmetic is exact integer/rational arithmetic; sums accumulate in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

POOLING_MODES = ("paper", "reference")


@dataclass(frozen=True)
class FramePlan:
    """How many tokens a clip needs and which frame each of them averages into.

    frame_of_token_t: int64 [n_tokens], non-decreasing frame index per token, in [0, n_frames).
    """

    n_frames: int
    frame_of_token_t: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.frame_of_token_t.shape[0])


def token_rate_hz(sample_rate: float, hop: int) -> Fraction:
    return Fraction(sample_rate) / hop


def reference_window_tokens(sample_rate: float, hop: int, frame_rate_hz: float = 10) -> int:
    """The reference's window: floor(token_rate / frame_rate) = 34 tokens for Jukebox."""
    return int(token_rate_hz(sample_rate, hop) / Fraction(frame_rate_hz))


def paper_plan(n_samples: int, sample_rate: float, hop: int,
               frame_rate_hz: float = 10) -> FramePlan:
    """Exact 100 ms frames: T = floor(n * frame_rate / sr); token t -> floor(t * hop * fr / sr)."""
    frames_per_token = Fraction(frame_rate_hz) / token_rate_hz(sample_rate, hop)
    n_frames = int(Fraction(n_samples) * Fraction(frame_rate_hz) / Fraction(sample_rate))
    # Tokens whose first sample lies in a full frame: t < n_frames / frames_per_token.
    n_tokens = -(-n_frames * frames_per_token.denominator // frames_per_token.numerator)
    t = np.arange(n_tokens, dtype=np.int64)
    frame_t = (t * frames_per_token.numerator) // frames_per_token.denominator
    return FramePlan(n_frames=n_frames, frame_of_token_t=frame_t)


def reference_plan(n_samples: int, hop: int, max_tokens: int, window: int) -> FramePlan:
    """LLark's code: latent_len = min(n // hop, max_tokens); T = latent_len // window."""
    latent_len = min(n_samples // hop, max_tokens)
    n_frames = latent_len // window
    frame_t = np.arange(n_frames * window, dtype=np.int64) // window
    return FramePlan(n_frames=n_frames, frame_of_token_t=frame_t)


def mean_pool(acts_td: np.ndarray, plan: FramePlan) -> np.ndarray:
    """Averages `acts_td[:plan.n_tokens]` [n_tokens, D] per frame -> float32 [n_frames, D]."""
    if acts_td.shape[0] < plan.n_tokens:
        raise ValueError(f"pooling needs {plan.n_tokens} tokens, got {acts_td.shape[0]}")
    dim = acts_td.shape[1]
    if plan.n_frames == 0:
        return np.zeros((0, dim), np.float32)
    starts_k = np.searchsorted(plan.frame_of_token_t, np.arange(plan.n_frames))
    counts_k = np.diff(np.append(starts_k, plan.n_tokens))
    sums_kd = np.add.reduceat(acts_td[: plan.n_tokens].astype(np.float64), starts_k, axis=0)
    return (sums_kd / counts_k[:, None]).astype(np.float32)


def frame_plan(mode: str, n_samples: int, sample_rate: float, hop: int, *, max_samples: int,
               max_tokens: int) -> FramePlan:
    """`paper`: exact 10 Hz frames of the first `max_samples`; `reference`: 34-token windows
    over the first `max_tokens` tokens."""
    if mode == "reference":
        window = reference_window_tokens(sample_rate, hop)
        return reference_plan(n_samples, hop, max_tokens, window)
    if mode == "paper":
        return paper_plan(min(n_samples, max_samples), sample_rate, hop)
    raise ValueError(f"pooling mode must be one of {POOLING_MODES}, got {mode!r}")


def frame_rate(mode: str, sample_rate: float, hop: int) -> float:
    """10.0 for `paper`; token_rate / 34 = 10.133 Hz for `reference` (Jukebox numbers)."""
    if mode == "paper":
        return 10.0
    return float(token_rate_hz(sample_rate, hop) / reference_window_tokens(sample_rate, hop))
