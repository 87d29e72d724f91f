"""LP-MusicCaps-MSD (Doh et al. 2023): LLM pseudo-captions for ~0.5M Million Song Dataset clips,
MusiLingo's caption pre-training data (stage 1).

Files: the Hugging Face release's parquet shards,
``data/{train,valid,test}-NNNNN-of-NNNNN-*.parquet`` (also ``{split}.parquet`` or
``{split}/NNNN.parquet``), anywhere under ``root``, with columns
``track_id, title, artist_name, release, year, tag, caption_writing, caption_summary,
caption_paraphrase, caption_attribute_prediction, path``. Split from the file name (or its folder):
train -> `train`, valid -> `validation`, test -> `test`; MusiLingo pre-trains on `train`.

One record per track (id = track_id); all columns are kept in the metadata. MusiLingo uses only
`caption_writing` as the target (§4.1: the other three rephrase it), so ``metadata["qa"]`` holds
one pair ``{"question": "", "answer": caption_writing, "task": "caption_pretrain"}``: stage 1 has
no instruction (the audio is followed directly by the caption). Tracks without a caption_writing
are skipped. Audio: ``{audio_root}/{path}`` (the release's relative MP3 path), else
``{audio_root}/{track_id}.mp3``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from data_prep.datasets.base import DatasetFormatError, JsonifyContext, RowSkip, TrackRecord

DATASET = "lp-musiccaps-msd"
TASK = "caption_pretrain"
CAPTION = "caption_writing"
SPLITS = {"train": "train", "valid": "validation", "validation": "validation", "test": "test"}
_SPLIT_PREFIX = re.compile(r"^(train|valid|validation|test)(?=$|[-_.])")
BATCH_ROWS = 4096


def split_of(path: Path) -> str | None:
    """`train`/`validation`/`test` from a shard's file name or, failing that, its folder."""
    for name in (path.stem, path.parent.name):
        match = _SPLIT_PREFIX.match(name)
        if match:
            return SPLITS[match.group(1)]
    return None


def read_records(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    import pyarrow.parquet as pq

    shards = sorted(p for p in ctx.root.rglob("*.parquet") if split_of(p) is not None)
    if not shards:
        raise DatasetFormatError(ctx.root, "no {train,valid,test}*.parquet shards "
                                           "(LP-MusicCaps-MSD release) found")
    for path in shards:
        split = split_of(path)
        if not ctx.wants(split):
            continue
        try:
            shard = pq.ParquetFile(path)
        except Exception as err:  # noqa: BLE001 - pyarrow raises several types for bad files
            raise DatasetFormatError(path, f"not a readable parquet file: {err}") from err
        missing = {"track_id", CAPTION} - set(shard.schema_arrow.names)
        if missing:
            raise DatasetFormatError(path, f"missing columns {sorted(missing)}")
        for batch in shard.iter_batches(batch_size=BATCH_ROWS):
            for row in batch.to_pylist():
                track_id, caption = row["track_id"], (row[CAPTION] or "").strip()
                if not track_id or not caption:
                    yield RowSkip(str(track_id), f"empty track_id or {CAPTION}")
                    continue
                audio = row.get("path") or f"{track_id}.mp3"
                metadata = {**row, "qa": [{"question": "", "answer": caption, "task": TASK}]}
                yield TrackRecord(track_id, DATASET, split, ctx.audio(audio), metadata)
