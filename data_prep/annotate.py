"""madmom annotations (tempo, key, chords, beats with bar positions) as the reference makes them.

Fields of `annotate_audio` / `annotate_file` (reference spec §5.3; same names, types, rounding):

* ``tempo_in_beats_per_minute_madmom``: float, ``round(top tempo, 1)`` from ``RNNBeatProcessor`` ->
  ``TempoEstimationProcessor(fps=100)`` (comb, 40-250 BPM). ``None`` if madmom finds no tempo.
* ``downbeats_madmom``: ``[{"time": s, "beat_number": 1..4}]`` for *every* beat (1 = downbeat),
  from ``RNNDownBeatProcessor`` -> ``DBNDownBeatTrackingProcessor(beats_per_bar=[3, 4], fps=100)``.
* ``chords``: ``[{"start_time": s, "end_time": s, "chord": "A#major" | "C#minor" | "no chord"}]``
  (times rounded to 0.1 s), from ``CNNChordFeatureProcessor`` -> ``CRFChordRecognitionProcessor``.
* ``key``: one of madmom's 24 labels (``"Bb major"``, ``"C# minor"``, ...), ``CNNKeyRecognition``.

Annotation runs on the full track (at most ``MAX_ANNOTATION_S`` = 360 s); `crop_annotations` then
cuts beats, chords and MusicNet notes to a clip window and re-times them to the clip's start, while
tempo and key stay track-level. Processors are built once per process (`get_annotator`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from llark_jax.audio.annotator import (  # noqa: F401 - moved to llark_jax (benchmark baseline)
    MAX_ANNOTATION_S,
    MIN_ANNOTATION_S,
    MadmomAnnotator,
    chord_label,
    get_annotator,
)
from llark_jax.audio.io import SAMPLE_RATE, TooShortAudioError, load_audio

DEFAULT_MAX_CROP_S = 25.0
BEAT_DIGITS = 2  # madmom's beat tracker runs at 100 fps
CHORD_DIGITS = 1  # the reference rounds chord times to 0.1 s
NOTE_DIGITS = 2  # the reference rounds MusicNet note times to 0.01 s


def annotate_audio(audio_n: np.ndarray, name: str = "<array>") -> dict[str, Any]:
    """Annotate in-memory mono float32 audio at 44.1 kHz (at most 360 s are used).

    Raises `TooShortAudioError` (naming ``name``) below ``MIN_ANNOTATION_S``.
    """
    if audio_n.size < MIN_ANNOTATION_S * SAMPLE_RATE:
        raise TooShortAudioError(name, f"{audio_n.size / SAMPLE_RATE:.3f} s is too short to "
                                       f"annotate (minimum {MIN_ANNOTATION_S} s)")
    return get_annotator()(audio_n[: int(MAX_ANNOTATION_S * SAMPLE_RATE)])


def annotate_file(path: str | os.PathLike, max_seconds: float = MAX_ANNOTATION_S) -> dict[str, Any]:
    """Load (mono, 44.1 kHz, first ``max_seconds``) and annotate one file.

    Raises `llark_jax.audio.io.AudioError` subclasses for unusable files.
    """
    return annotate_audio(load_audio(path, 0.0, max_seconds, min_duration_s=MIN_ANNOTATION_S),
                          str(path))


def _clip_interval(
    items: list[dict], start_key: str, end_key: str, start_s: float, end_s: float, digits: int
) -> list[dict]:
    """Keep items overlapping ``[start_s, end_s]`` by more than a point; clamp them to the
    window and re-time them to its start."""
    kept = []
    for item in items:
        if item[end_key] <= start_s or item[start_key] >= end_s:
            continue
        new_start = max(item[start_key] - start_s, 0.0)
        new_end = min(item[end_key] - start_s, end_s - start_s)
        kept.append({**item, start_key: round(new_start, digits), end_key: round(new_end, digits)})
    return kept


def crop_annotations(
    record: dict[str, Any], start_s: float, end_s: float, max_crop_s: float = DEFAULT_MAX_CROP_S
) -> dict[str, Any]:
    """Cut a track-level record to the clip ``[start_s, min(end_s, start_s + max_crop_s)]``.

    As the reference's ``crop_annotations.py``: beats with ``start <= time <= end`` are kept with
    ``time -= start`` (rounded to madmom's 0.01 s frame grid to drop float noise); chords and
    MusicNet ``notes`` (top level or in ``metadata``; dict instrument -> [{start, end, pitch}], or
    its JSON string) overlapping the window are clamped to it and re-timed; tempo, key and all
    other fields are copied. Adds ``start_secs``/``end_secs`` (the window actually used).
    """
    end_s = min(end_s, start_s + max_crop_s)
    out = {**record, "start_secs": start_s, "end_secs": end_s}
    if record.get("downbeats_madmom") is not None:
        out["downbeats_madmom"] = [
            {**beat, "time": round(beat["time"] - start_s, BEAT_DIGITS)}
            for beat in record["downbeats_madmom"]
            if start_s <= beat["time"] <= end_s
        ]
    if record.get("chords") is not None:
        out["chords"] = _clip_interval(record["chords"], "start_time", "end_time", start_s, end_s,
                                       CHORD_DIGITS)
    if record.get("notes") is not None:
        out["notes"] = _crop_notes(record["notes"], start_s, end_s)
    metadata = record.get("metadata")
    if isinstance(metadata, dict) and metadata.get("notes") is not None:
        out["metadata"] = {**metadata, "notes": _crop_notes(metadata["notes"], start_s, end_s)}
    return out


def _crop_notes(notes: dict | str, start_s: float, end_s: float) -> dict[str, list[dict]]:
    """MusicNet notes (dict or JSON string) cut to the window; instruments left empty dropped."""
    notes = json.loads(notes) if isinstance(notes, str) else notes
    clipped = {
        instrument: _clip_interval(events, "start", "end", start_s, end_s, NOTE_DIGITS)
        for instrument, events in notes.items()
    }
    return {name: events for name, events in clipped.items() if events}
