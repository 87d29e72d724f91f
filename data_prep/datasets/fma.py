"""FMA (Free Music Archive): ``fma_metadata/tracks.csv`` + ``genres.csv``.

``tracks.csv`` has three header rows: top-level group (``album``, ``artist``, ``set``, ``track``),
field name, and a row holding only ``track_id``; column names are ``group.field`` and the first
column is ``track.id``. Kept fields as the reference: ``track.id, album.information, album.tags,
artist.tags, track.genre_top, track.genres_all`` (ids -> genre titles), ``track.information``
(HTML -> text), ``track.language_code`` (ISO 639-1 -> language name, empty -> "Unknown"). Split
``training`` -> ``train``. Audio: ``{audio_root}/{id:06d}[:3]/{id:06d}.mp3`` (FMA's layout).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from data_prep.datasets.base import (
    DatasetFormatError,
    JsonifyContext,
    RowSkip,
    TrackRecord,
    html_to_text,
    parse_python_list,
    read_table,
    require_file,
)

DATASET = "fma"
KEPT = ("album.information", "album.tags", "artist.tags", "track.genre_top", "track.genres_all",
        "track.information", "track.language_code")
LANGUAGES = {
    "ar": "Arabic", "az": "Azerbaijani", "bg": "Bulgarian", "bm": "Bambara", "bn": "Bengali",
    "ca": "Catalan", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian",
    "fi": "Finnish", "fr": "French", "gu": "Gujarati", "he": "Hebrew", "hi": "Hindi",
    "hr": "Croatian", "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian", "it": "Italian",
    "ja": "Japanese", "ka": "Georgian", "ko": "Korean", "lt": "Lithuanian", "ms": "Malay",
    "nl": "Dutch", "no": "Norwegian", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sk": "Slovak", "sr": "Serbian", "sv": "Swedish", "sw": "Swahili",
    "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}


def _metadata_dir(root: Path) -> Path:
    return root / "fma_metadata" if (root / "fma_metadata").is_dir() else root


def read_tracks_csv(path: Path) -> list[dict[str, str]]:
    """Rows of FMA's ``tracks.csv`` keyed ``group.field`` (three header rows)."""
    with open(require_file(path), newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        try:
            groups, fields, id_row = next(reader), next(reader), next(reader)
        except StopIteration as err:
            raise DatasetFormatError(path, "fewer than the 3 header rows of tracks.csv") from err
        if id_row[:1] != ["track_id"] or len(groups) != len(fields):
            raise DatasetFormatError(path, "header rows are not FMA's (group, field, track_id)")
        names = ["track.id"] + [f"{g}.{f}" for g, f in zip(groups[1:], fields[1:], strict=True)]
        missing = [k for k in (*KEPT, "set.split") if k not in names]
        if missing:
            raise DatasetFormatError(path, f"missing columns {missing}")
        return [dict(zip(names, row, strict=False)) for row in reader]


def read_records(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    meta = _metadata_dir(ctx.root)
    genres = {g["genre_id"]: g["title"] for g in read_table(
        meta / "genres.csv", required=("genre_id", "title"))}
    for row in read_tracks_csv(meta / "tracks.csv"):
        try:
            track_id = int(row["track.id"])
            genre_ids = parse_python_list(row["track.genres_all"])
            album_tags = parse_python_list(row["album.tags"])
            artist_tags = parse_python_list(row["artist.tags"])
        except (ValueError, SyntaxError) as err:
            yield RowSkip(row.get("track.id", "?"), f"unparsable row: {err}")
            continue
        split = "train" if row["set.split"] == "training" else row["set.split"]
        if not ctx.wants(split):
            continue
        unknown = [g for g in genre_ids if str(g) not in genres]
        if unknown:
            yield RowSkip(str(track_id), f"genre ids {unknown} not in genres.csv")
            continue
        code = row["track.language_code"].strip()
        metadata = {
            "track.id": track_id,
            "album.information": html_to_text(row["album.information"]),
            "album.tags": album_tags,
            "artist.tags": artist_tags,
            "track.genre_top": row["track.genre_top"],
            "track.genres_all": [genres[str(g)] for g in genre_ids],
            "track.information": html_to_text(row["track.information"]),
            "track.language_code": LANGUAGES.get(code, code) if code else "Unknown",
        }
        name = f"{track_id:06d}"
        yield TrackRecord(str(track_id), DATASET, split, ctx.audio(name[:3], f"{name}.mp3"),
                         metadata)
