"""Tracks -> the clips a benchmark asks about: the paper's crop rule, audio checked first.

Every annotated track must have its audio (a missing file is a `DatasetFormatError` naming it:
the data folder is not the published layout, or the download is incomplete). Audio that cannot
be used (undecodable, cut short, silent, shorter than 0.1 s) and clips without a usable label
are skipped with the reason, and listed in the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llark_jax.audio.crop import CropWindow, choose_crop, clip_id, multicrop_windows
from llark_jax.audio.io import MIN_DURATION_S, AudioError, check_audio
from llark_jax.benchmarks.tracks import DatasetFormatError, RowSkip, TrackRecord


@dataclass(frozen=True)
class CropSpec:
    """How a benchmark crops its tracks (`llark_jax.audio.crop`): one window by the crop rule
    (`p_middle` 1.0 = the reference's ``--p 0.0``), or every full window (`multicrop`)."""

    crop_s: float = 25.0
    p_middle: float = 0.8
    multicrop: bool = False

    def windows(self, track_id: str, duration_s: float, seed: int = 0) -> list[CropWindow]:
        if self.multicrop and duration_s >= self.crop_s:
            return multicrop_windows(duration_s, self.crop_s)
        return [choose_crop(track_id, duration_s, crop_s=self.crop_s, p_middle=self.p_middle,
                            seed=seed)]


@dataclass(frozen=True)
class Clip:
    """One scored clip: a window of a track and its label (the benchmark's ground truth)."""

    clip_id: str
    track_id: str
    audio_path: str
    window: CropWindow
    label: Any


LabelFn = Callable[[TrackRecord, CropWindow], Any]


def prepare_clips(items: Iterable[TrackRecord | RowSkip], label_of: LabelFn, crop: CropSpec, *,
                  annotation_of: Callable[[TrackRecord], str] = lambda r: r.id,
                  limit: int | None = None, seed: int = 0,
                  ) -> tuple[list[Clip], list[dict[str, str]]]:
    """(clips, skipped [{item, reason}]). `label_of` returns None (or an empty list) for a clip
    without a usable label; `annotation_of` names a track's annotation in error messages."""
    clips: list[Clip] = []
    skipped: list[dict[str, str]] = []
    records = []
    for item in items:
        if isinstance(item, RowSkip):
            skipped.append({"item": item.item, "reason": item.reason})
        else:
            records.append(item)
    for record in records[:limit]:
        if not Path(record.audio_path).exists():
            raise DatasetFormatError(record.audio_path, f"no audio for the annotated track "
                                                        f"{record.id} ({annotation_of(record)})")
    for record in records[:limit]:
        try:
            duration_s = check_audio(record.audio_path)
        except AudioError as err:
            skipped.append({"item": record.id, "reason": str(err)})
            continue
        for window in crop.windows(record.id, duration_s, seed):
            name = clip_id(record.id, window)
            if window.duration_s < MIN_DURATION_S:
                skipped.append({"item": name, "reason": f"crop of {window.duration_s:.3f} s"})
                continue
            label = label_of(record, window)
            if label is None or label == []:
                skipped.append({"item": name, "reason": "no label for this crop"})
                continue
            clips.append(Clip(name, record.id, record.audio_path, window, label))
    return clips, skipped
