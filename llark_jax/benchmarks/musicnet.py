"""MusicNet in its published layout: ``test_data/{id}.wav`` with ``test_labels/{id}.csv``.

A label file has one row per note: ``start_time,end_time,instrument,note,start_beat,end_beat,
note_value``, times in samples at 44.1 kHz and ``instrument`` a General MIDI program number
(1-based, MusicNet's 11: piano, harpsichord, violin, viola, cello, contrabass, horn, oboe,
bassoon, clarinet, flute). The instruments of a crop are those with a note sounding in it; the
candidate vocabulary adds the reference's distractors (`DISTRACTORS`), so naming an instrument
that is not playing costs a false positive.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from llark_jax.benchmarks.tracks import DatasetFormatError, RowSkip, TrackRecord

LABEL_RATE = 44100
PROGRAMS = {1: "piano", 7: "harpsichord", 41: "violin", 42: "viola", 43: "cello",
            44: "double bass", 61: "french horn", 69: "oboe", 71: "bassoon", 72: "clarinet",
            74: "flute"}
DISTRACTORS = ("fiddle", "guitar", "double bass", "banjo", "mandolin")  # reference notebook


def read_notes(path: Path) -> list[tuple[float, float, str]]:
    """(start_s, end_s, instrument) per note row; a malformed file is a `DatasetFormatError`."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [(int(r["start_time"]) / LABEL_RATE, int(r["end_time"]) / LABEL_RATE,
                 PROGRAMS.get(int(r["instrument"]), f"program {int(r['instrument'])}"))
                for r in rows]
    except (KeyError, ValueError, TypeError) as err:
        raise DatasetFormatError(path, f"not a MusicNet label file ({err!r}); expected columns "
                                       "start_time,end_time,instrument,...") from err


def read_musicnet(root: Path, split: str = "test") -> Iterator[TrackRecord | RowSkip]:
    root = Path(root)
    labels = root / f"{split}_labels"
    if not labels.is_dir():
        raise DatasetFormatError(labels, "label directory not found")
    for path in sorted(labels.glob("*.csv")):
        notes = read_notes(path)
        if not notes:
            yield RowSkip(path.stem, f"{path}: no notes")
            continue
        yield TrackRecord(path.stem, "musicnet", split, str(root / f"{split}_data" /
                                                            f"{path.stem}.wav"),
                          {"notes": notes, "label_file": str(path)})


def instruments_in(notes: list[tuple[float, float, str]], start_s: float,
                   end_s: float) -> list[str]:
    """Instruments with a note sounding in ``[start_s, end_s)``, sorted."""
    return sorted({name for a, b, name in notes if a < end_s and b > start_s})
