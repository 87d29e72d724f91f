"""The paper's crop rule and clip ids: which window of a track becomes a clip, and its name.

Crop rule (paper §G.1; the reference's `crop_audio.py` is the 30 s setting of the same rule):
a track of duration <= ``long_threshold_s`` (60 s) keeps its first ``crop_s`` seconds (all of it if
shorter); a longer track gets ``[30, 30 + crop_s)`` with probability ``p_middle`` (0.8) and
``[0, crop_s)`` otherwise. The coin is seeded by the clip's track id, so reruns crop identically.
Multicrop (MusicNet captioning) emits every full window ``[i * crop_s, (i + 1) * crop_s)``.

The offline crop stage (`data_prep crop`) and `python -m llark_jax benchmark` both crop with it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CropWindow:
    """A clip window in seconds, ``[start_s, end_s)`` on the source track's time axis."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def _unit_uniform(track_id: str, seed: int) -> float:
    """A U(0, 1) draw that depends only on ``(track_id, seed)``: stable across runs and hosts."""
    digest = hashlib.sha256(f"{seed}:{track_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def choose_crop(
    track_id: str,
    duration_s: float,
    *,
    crop_s: float = 25.0,
    p_middle: float = 0.8,
    middle_start_s: float = 30.0,
    long_threshold_s: float = 60.0,
    seed: int = 0,
) -> CropWindow:
    """The paper's single-crop rule (module docstring), seeded by ``track_id``.

    The reference's 30 s files are ``crop_s=30``; its ``--p 0.0`` (GiantSteps key, MedleyDB) is
    ``p_middle=1.0`` here.
    """
    if duration_s <= long_threshold_s or _unit_uniform(track_id, seed) >= p_middle:
        return CropWindow(0.0, min(crop_s, duration_s))
    return CropWindow(middle_start_s, min(middle_start_s + crop_s, duration_s))


def multicrop_windows(duration_s: float, crop_s: float = 25.0) -> list[CropWindow]:
    """Every full window ``[i * crop_s, (i + 1) * crop_s)``; a partial last window is dropped."""
    count = int(np.floor(duration_s / crop_s + 1e-9))
    return [CropWindow(i * crop_s, (i + 1) * crop_s) for i in range(count)]


_CLIP_ID = re.compile(r"^(?P<uid>.+)-start(?P<start>\d+\.\d{3})-end(?P<end>\d+\.\d{3})$")


def clip_id(track_id: str, window: CropWindow) -> str:
    """The reference's clip uri: ``f"{track_id}-start{start:.3f}-end{end:.3f}"``."""
    return f"{track_id}-start{window.start_s:.3f}-end{window.end_s:.3f}"


def parse_clip_id(clip: str) -> tuple[str, CropWindow]:
    """Inverse of `clip_id`; anchored at the end, so track ids containing ``-`` survive."""
    match = _CLIP_ID.match(clip)
    if match is None:
        raise ValueError(f"not a clip id of the form '<id>-startS.SSS-endE.EEE': {clip!r}")
    return match["uid"], CropWindow(float(match["start"]), float(match["end"]))
