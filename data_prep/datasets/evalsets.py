"""Evaluation datasets: GiantSteps key and tempo, GTZAN, MedleyDB (all records get split "test").

* GiantSteps key: ``annotations/key/{name}.key`` (e.g. ``10089.LOFI.key`` holding ``"Eb minor"``)
  -> ``{"id", "giantsteps_key"}``; id is the name up to the first dot; audio
  ``{audio_root}/audio/{name}.mp3``.
* GiantSteps tempo: the v2 labels ``annotations_v2/tempo/{name}.bpm`` -> ``{"id",
  "giantsteps_tempo": float}``; tracks labelled 0 BPM (no steady tempo) are excluded with a reason.
* GTZAN: ``genres/{genre}/{genre}.{nnnnn}.{wav,au}`` -> id ``{genre}.{nnnnn}``, ``{"genre"}``.
* MedleyDB: ``Metadata/{track}_METADATA.yaml`` (genre, stems with instruments) and, if present,
  ``Annotations/Instrument_Activations/ACTIVATION_CONF/{track}_ACTIVATION_CONF.lab`` (``time,S01,
  ...`` confidence rows) -> ``{"genre", "instruments", "instrument_activations": {instrument:
  [[start_s, end_s], ...]}}`` with a stem active where its confidence >= 0.5; audio
  ``{audio_root}/Audio/{track}/{track}_MIX.wav``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from data_prep.datasets.base import DatasetFormatError, JsonifyContext, RowSkip, TrackRecord

ACTIVATION_THRESHOLD = 0.5


def _label_files(directory: Path, suffix: str) -> list[Path]:
    if not directory.is_dir():
        raise DatasetFormatError(directory, "annotation directory not found")
    return sorted(directory.glob(f"*{suffix}"))


def read_giantsteps_key(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    if not ctx.wants("test"):
        return
    for path in _label_files(ctx.root / "annotations" / "key", ".key"):
        label = path.read_text(encoding="utf-8").strip()
        track_id = path.name.split(".")[0]
        if not label:
            yield RowSkip(track_id, f"{path}: empty key label")
            continue
        yield TrackRecord(track_id, "giantsteps-key", "test",
                         ctx.audio("audio", f"{path.name.removesuffix('.key')}.mp3"),
                         {"id": track_id, "giantsteps_key": label})


def read_giantsteps_tempo(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    if not ctx.wants("test"):
        return
    for path in _label_files(ctx.root / "annotations_v2" / "tempo", ".bpm"):
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
                         ctx.audio("audio", f"{path.name.removesuffix('.bpm')}.mp3"),
                         {"id": track_id, "giantsteps_tempo": bpm})


def read_gtzan(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    genres_dir = ctx.root / "genres" if (ctx.root / "genres").is_dir() else ctx.root
    if not ctx.wants("test"):
        return
    files = sorted(p for p in genres_dir.glob("*/*") if p.suffix in (".wav", ".au"))
    if not files:
        raise DatasetFormatError(genres_dir, "no genres/<genre>/<genre>.<n>.wav files")
    for path in files:
        genre = path.parent.name
        if not path.name.startswith(f"{genre}."):
            yield RowSkip(path.name, f"file name does not start with its genre folder {genre!r}")
            continue
        yield TrackRecord(path.stem, "gtzan", "test", str(path), {"genre": genre})


def activation_intervals(lab: Path, stems: dict[str, str]) -> dict[str, list[list[float]]]:
    """Instrument -> merged ``[start_s, end_s]`` intervals where a stem's confidence >= 0.5."""
    with open(lab, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    header, body = rows[0], [[float(v) for v in r] for r in rows[1:] if r]
    times = [row[0] for row in body]
    hop = times[-1] - times[-2] if len(times) > 1 else 0.0
    times.append(times[-1] + hop)  # the end of the last frame
    spans: dict[str, list[list[float]]] = {}
    for column, stem in enumerate(header[1:], start=1):
        active = [row[column] >= ACTIVATION_THRESHOLD for row in body] + [False]
        start = None
        for i, on in enumerate(active):
            if on and start is None:
                start = times[i]
            elif not on and start is not None:
                spans.setdefault(stems.get(stem, stem), []).append(
                    [round(start, 2), round(times[i], 2)])
                start = None
    return {name: _merge(intervals) for name, intervals in sorted(spans.items())}


def _merge(spans: list[list[float]]) -> list[list[float]]:
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return merged


def read_medleydb(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    import yaml

    if not ctx.wants("test"):
        return
    activations = ctx.root / "Annotations" / "Instrument_Activations" / "ACTIVATION_CONF"
    for path in _label_files(ctx.root / "Metadata", "_METADATA.yaml"):
        track = path.name.removesuffix("_METADATA.yaml")
        try:
            meta = yaml.safe_load(path.read_text(encoding="utf-8"))
            stems = {k: v["instrument"] for k, v in (meta.get("stems") or {}).items()}
        except (yaml.YAMLError, AttributeError, KeyError, TypeError) as err:
            yield RowSkip(track, f"{path}: unreadable metadata: {err!r}")
            continue
        metadata = {"genre": meta.get("genre"), "instruments": sorted(set(stems.values()))}
        lab = activations / f"{track}_ACTIVATION_CONF.lab"
        if lab.exists():
            metadata["instrument_activations"] = activation_intervals(lab, stems)
        yield TrackRecord(track, "medleydb", "test", ctx.audio("Audio", track, f"{track}_MIX.wav"),
                         metadata)
