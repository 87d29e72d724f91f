"""Captioning datasets: MusicCaps and YT8M-MusicTextClips (all CSV columns kept).

MusicCaps (``musiccaps-public.csv``): id ``ytid``, caption column ``caption``; split from
``is_audioset_eval`` (``"True"`` -> test, else train), done on the parsed value (the reference's
``df.is_audioset_eval is True`` compared a Series by identity and selected nothing). Booleans and
``start_s``/``end_s`` are typed, ``aspect_list`` is parsed into a list.

YT8M-MusicTextClips (``train.csv``, ``test.csv``): id ``video_id``, caption column ``text``; the
split ``all`` (the paper trains on both files) reads both, each record keeping its file's split.

Audio: ``{audio_root}/{id}.wav`` (the reference converts every source to ``{id}.wav`` first).
"""

from __future__ import annotations

from collections.abc import Iterator

from data_prep.datasets.base import (
    JsonifyContext,
    RowSkip,
    TrackRecord,
    parse_python_list,
    read_table,
)

MUSICCAPS = "musiccaps"
YT8M = "yt8m-musictextclips"
MUSICCAPS_COLUMNS = ("ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list",
                     "caption", "author_id", "is_balanced_subset", "is_audioset_eval")


def _bool(text: str) -> bool:
    if text not in ("True", "False"):
        raise ValueError(f"not a boolean: {text!r}")
    return text == "True"


def read_musiccaps(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    for row in read_table(ctx.root / "musiccaps-public.csv", required=MUSICCAPS_COLUMNS):
        try:
            metadata = {**row, "start_s": int(float(row["start_s"])),
                        "end_s": int(float(row["end_s"])),
                        "aspect_list": parse_python_list(row["aspect_list"]),
                        "is_balanced_subset": _bool(row["is_balanced_subset"]),
                        "is_audioset_eval": _bool(row["is_audioset_eval"])}
        except (ValueError, SyntaxError) as err:
            yield RowSkip(row["ytid"], f"unparsable row: {err}")
            continue
        split = "test" if metadata["is_audioset_eval"] else "train"
        if ctx.wants(split):
            yield TrackRecord(row["ytid"], MUSICCAPS, split, ctx.audio(f"{row['ytid']}.wav"),
                             metadata)


def read_yt8m(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    for split in ("train", "test"):
        if not ctx.wants(split):
            continue
        for row in read_table(ctx.root / f"{split}.csv", required=("video_id", "text")):
            if not row["text"].strip():
                yield RowSkip(row["video_id"], "empty caption")
                continue
            yield TrackRecord(row["video_id"], YT8M, split, ctx.audio(f"{row['video_id']}.wav"),
                             dict(row))
