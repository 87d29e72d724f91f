"""MagnaTagATune: ``clip_info_final.csv`` joined with ``annotations_final.csv`` (both tab-separated;
clip_info's cells are double-quoted) on ``clip_id`` and ``mp3_path``.

All columns are kept (clip info incl. title/artist/album/url/segment bounds, and every tag column
as 0/1 ints), plus ``chunk`` (the mp3 folder, ``0``-``f``) and ``example_id`` (mp3 basename without
``.mp3``, also the record id). Splits by folder as the reference: train ``0-9, a``, validation
``b, c``, test ``d, e, f``. Audio: ``{audio_root}/{mp3_path}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import PurePosixPath

from data_prep.datasets.base import JsonifyContext, RowSkip, TrackRecord, read_table

DATASET = "magnatagatune"
SPLIT_OF_CHUNK = {**{c: "train" for c in "0123456789a"}, "b": "validation", "c": "validation",
                  "d": "test", "e": "test", "f": "test"}
KEY = ("clip_id", "mp3_path")


def read_records(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    info_rows = read_table(ctx.root / "clip_info_final.csv", "\t", required=KEY)
    tag_rows = read_table(ctx.root / "annotations_final.csv", "\t", required=KEY)
    info = {(r["clip_id"], r["mp3_path"]): r for r in info_rows}
    for tags in tag_rows:
        key = (tags["clip_id"], tags["mp3_path"])
        if key not in info:
            yield RowSkip(tags["clip_id"], f"no clip_info_final.csv row for {key}")
            continue
        mp3 = PurePosixPath(tags["mp3_path"])
        chunk = mp3.parent.name
        if mp3.suffix != ".mp3" or chunk not in SPLIT_OF_CHUNK:
            yield RowSkip(tags["clip_id"], f"mp3_path {tags['mp3_path']!r} not in a 0-f folder")
            continue
        split = SPLIT_OF_CHUNK[chunk]
        if not ctx.wants(split):
            continue
        try:
            tag_values = {k: int(v) for k, v in tags.items() if k not in KEY}
        except ValueError as err:
            yield RowSkip(tags["clip_id"], f"non-integer tag value: {err}")
            continue
        example_id = mp3.stem
        metadata = {**info[key], **tag_values, "chunk": chunk, "example_id": example_id}
        yield TrackRecord(example_id, DATASET, split, ctx.audio(tags["mp3_path"]), metadata)
