"""GTZAN in its published layout: ``genres/{genre}/{genre}.{nnnnn}.{wav,au}`` (or the genre
folders directly under the root) -> id ``{genre}.{nnnnn}``, ``{"genre"}``; the file is the audio."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llark_jax.benchmarks.tracks import DatasetFormatError, RowSkip, TrackRecord

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae",
          "rock")


def read_gtzan(root: Path) -> Iterator[TrackRecord | RowSkip]:
    root = Path(root)
    genres_dir = root / "genres" if (root / "genres").is_dir() else root
    files = sorted(p for p in genres_dir.glob("*/*") if p.suffix in (".wav", ".au"))
    if not files:
        raise DatasetFormatError(genres_dir, "no genres/<genre>/<genre>.<n>.wav files")
    for path in files:
        genre = path.parent.name
        if not path.name.startswith(f"{genre}."):
            yield RowSkip(path.name, f"file name does not start with its genre folder {genre!r}")
            continue
        yield TrackRecord(path.stem, "gtzan", "test", str(path), {"genre": genre})
