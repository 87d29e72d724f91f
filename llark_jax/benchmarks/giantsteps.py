"""GiantSteps key and tempo in their published layouts (every track is a test track).

* Key (giantsteps-key-dataset): ``annotations/key/{name}.key`` holding e.g. ``"Eb minor"`` ->
  ``{"id", "giantsteps_key"}``; id is the name up to the first dot (``10089.LOFI`` -> ``10089``);
  audio ``{audio_root}/audio/{name}.mp3``.
* Tempo (giantsteps-tempo-dataset): the v2 labels ``annotations_v2/tempo/{name}.bpm`` ->
  ``{"id", "giantsteps_tempo": float}``; tracks labelled 0 BPM (no steady tempo) are skipped with
  the reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from llark_jax.benchmarks.tracks import DatasetFormatError, RowSkip, TrackRecord


def label_files(directory: Path, suffix: str) -> list[Path]:
    """The annotation files of a folder, sorted; a missing folder is a `DatasetFormatError`."""
    if not directory.is_dir():
        raise DatasetFormatError(directory, "annotation directory not found")
    return sorted(directory.glob(f"*{suffix}"))


def read_key(root: Path, audio_root: Path | None = None) -> Iterator[TrackRecord | RowSkip]:
    audio_root = Path(audio_root or root)
    for path in label_files(Path(root) / "annotations" / "key", ".key"):
        label = path.read_text(encoding="utf-8").strip()
        track_id = path.name.split(".")[0]
        if not label:
            yield RowSkip(track_id, f"{path}: empty key label")
            continue
        yield TrackRecord(track_id, "giantsteps-key", "test",
                          str(audio_root / "audio" / f"{path.name.removesuffix('.key')}.mp3"),
                          {"id": track_id, "giantsteps_key": label})


def read_tempo(root: Path, audio_root: Path | None = None) -> Iterator[TrackRecord | RowSkip]:
    audio_root = Path(audio_root or root)
    for path in label_files(Path(root) / "annotations_v2" / "tempo", ".bpm"):
        track_id = path.name.split(".")[0]
        try:
            bpm = float(path.read_text(encoding="utf-8").split()[0])
        except (ValueError, IndexError):
            yield RowSkip(track_id, f"{path}: not a number")
            continue
        if bpm <= 0:
            yield RowSkip(track_id, f"{path}: 0 BPM (no steady tempo), excluded")
            continue
        yield TrackRecord(track_id, "giantsteps-tempo", "test",
                          str(audio_root / "audio" / f"{path.name.removesuffix('.bpm')}.mp3"),
                          {"id": track_id, "giantsteps_tempo": bpm})
