"""MusicCaps in its published layout: ``musiccaps-public.csv`` (``ytid, start_s, end_s, caption,
is_audioset_eval, ...``) with the downloaded 10 s clips as ``{audio_root}/{ytid}.wav`` (the
reference's naming). The benchmark is the AudioSet-eval half (``is_audioset_eval`` True)."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from llark_jax.benchmarks.tracks import DatasetFormatError, RowSkip, TrackRecord

CSV_NAME = "musiccaps-public.csv"
REQUIRED = ("ytid", "caption", "is_audioset_eval")


def read_musiccaps(root: Path, audio_root: Path | None = None,
                   split: str = "test") -> Iterator[TrackRecord | RowSkip]:
    root = Path(root)
    audio_root = Path(audio_root or root)
    path = root / CSV_NAME
    if not path.is_file():
        raise DatasetFormatError(path, "required dataset file not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetFormatError(path, f"missing columns {missing}")
        rows = list(reader)
    for row in rows:
        if row["is_audioset_eval"] not in ("True", "False"):
            yield RowSkip(row["ytid"], f"{path}: is_audioset_eval {row['is_audioset_eval']!r}")
            continue
        if (row["is_audioset_eval"] == "True") != (split == "test"):
            continue
        if not row["caption"].strip():
            yield RowSkip(row["ytid"], "empty caption")
            continue
        yield TrackRecord(row["ytid"], "musiccaps", split,
                          str(audio_root / f"{row['ytid']}.wav"), {"caption": row["caption"]})
