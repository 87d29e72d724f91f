"""MTG-Jamendo: ``autotagging.tsv`` (``TRACK_ID, ARTIST_ID, ALBUM_ID, PATH, DURATION, TAGS...``).

Each row carries a variable number of tab-separated tags ``category---tag`` after the first five
columns. Record id: the integer track id as a string (``track_0000214`` -> ``"214"``); metadata
``{"genre", "instrument", "mood/theme"}`` with sorted tag lists (the reference used set order).
No official split exists: the paper's 1,000-track test set is drawn with a seeded generator and
written to ``{work_dir}/mtg-jamendo-test-ids.txt``; an existing file is reused, so the split never
changes between runs. Audio: ``{audio_root}/{PATH}``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_prep.datasets.base import (
    DatasetFormatError,
    JsonifyContext,
    RowSkip,
    TrackRecord,
    require_file,
)
from llark_jax.io import atomic_write_text

DATASET = "mtg-jamendo"
HEADER = ["TRACK_ID", "ARTIST_ID", "ALBUM_ID", "PATH", "DURATION", "TAGS"]
CATEGORIES = ("genre", "instrument", "mood/theme")
TEST_SPLIT_FILE = "mtg-jamendo-test-ids.txt"
DEFAULT_TEST_SIZE = 1000


def test_split(track_ids: list[str], work_dir: Path, size: int, seed: int) -> set[str]:
    """The seeded test ids, read from ``work_dir`` if present, else drawn and written there."""
    path = work_dir / TEST_SPLIT_FILE
    if path.exists():
        return set(path.read_text().split())
    rng = np.random.default_rng(seed)
    chosen = rng.choice(sorted(track_ids, key=int), size=min(size, len(track_ids)), replace=False)
    atomic_write_text(path, "".join(f"{i}\n" for i in sorted(chosen.tolist(), key=int)))
    return set(chosen.tolist())


def read_records(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    path = ctx.root / "autotagging.tsv"
    if not path.exists() and (ctx.root / "data" / "autotagging.tsv").exists():
        path = ctx.root / "data" / "autotagging.tsv"
    with open(require_file(path), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or rows[0][: len(HEADER)] != HEADER:
        raise DatasetFormatError(path, f"header is not {HEADER}")
    parsed: list[tuple[str, str, dict[str, list[str]]]] = []
    for row in rows[1:]:
        if not row:
            continue
        try:
            track_id = str(int(row[0].removeprefix("track_")))
            tags: dict[str, set[str]] = {c: set() for c in CATEGORIES}
            for tag in row[5:]:
                category, value = tag.split("---", 1)
                tags[category].add(value)
        except (ValueError, KeyError, IndexError) as err:
            yield RowSkip(row[0], f"unparsable row: {err!r}")
            continue
        parsed.append((track_id, row[3], {c: sorted(v) for c, v in tags.items()}))
    size = int(ctx.options.get("test_size", DEFAULT_TEST_SIZE))
    test_ids = test_split([t for t, _, _ in parsed], ctx.work_dir, size, ctx.seed)
    for track_id, audio, tags in parsed:
        split = "test" if track_id in test_ids else "train"
        if ctx.wants(split):
            yield TrackRecord(track_id, DATASET, split, ctx.audio(audio), {**tags, "id": track_id})
