"""MedleyDB in its published layout, its instrument-name mapping and per-crop active instruments.

Layout: ``Metadata/{track}_METADATA.yaml`` (genre, stems with instruments) and, if present,
``Annotations/Instrument_Activations/ACTIVATION_CONF/{track}_ACTIVATION_CONF.lab`` (``time,S01,
...`` confidence rows) -> ``{"genre", "instruments", "instrument_activations": {instrument:
[[start_s, end_s], ...]}}`` with a stem active where its confidence >= 0.5; audio
``{audio_root}/Audio/{track}/{track}_MIX.wav``.

Instrument identification (paper §D.1.4): the instruments of a crop are those whose activation
intervals overlap it (the whole track's stems when the track has no activation file), mapped by
`INSTRUMENT_MAP` from MedleyDB's raw names onto the paper's 18 canonical instruments, or to None
(ignored: not in the General MIDI set, or an ensemble "section"). A raw name the map does not
know is reported (`unknown_instruments`) and ignored.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

from llark_jax.benchmarks.giantsteps import label_files
from llark_jax.benchmarks.tracks import RowSkip, TrackRecord

ACTIVATION_THRESHOLD = 0.5

# The paper's 18 canonical instruments (spec §9.4).
CANONICAL = ("bass", "bassoon", "cello", "clarinet", "drum", "flute", "guitar", "harp", "horn",
             "oboe", "piano", "saxophone", "synthesizer", "trumpet", "tuba", "viola", "violin",
             "vocals")
_GROUPS: dict[str | None, tuple[str, ...]] = {
    "bass": ("electric bass", "double bass"),
    "bassoon": ("bassoon",),
    "cello": ("cello",),
    "clarinet": ("clarinet", "bass clarinet"),
    "drum": ("drum set", "drum machine", "kick drum", "bass drum", "snare drum", "toms",
             "cymbal", "high hat", "auxiliary percussion", "tambourine", "shaker", "claps",
             "bongo", "conga", "cowbell"),
    "flute": ("flute", "piccolo"),
    "guitar": ("acoustic guitar", "clean electric guitar", "distorted electric guitar",
               "electric guitar", "lap steel guitar", "mandolin", "banjo"),
    "harp": ("harp",),
    "horn": ("french horn",),
    "oboe": ("oboe",),
    "piano": ("piano", "electric piano", "tack piano"),
    "saxophone": ("alto saxophone", "tenor saxophone", "baritone saxophone",
                  "soprano saxophone"),
    "synthesizer": ("synthesizer",),
    "trumpet": ("trumpet",),
    "tuba": ("tuba",),
    "viola": ("viola",),
    "violin": ("violin",),
    "vocals": ("female singer", "male singer", "male rapper", "female rapper", "vocalists",
               "choir", "male speaker", "female speaker"),
    None: ("string section", "violin section", "viola section", "cello section",
           "brass section", "horn section", "trumpet section", "trombone section",
           "french horn section", "clarinet section", "flute section", "trombone",
           "tabla", "darbuka", "doumbek", "timpani", "gong", "glockenspiel", "vibraphone",
           "chimes", "accordion", "harmonica", "melodica", "organ", "sampler",
           "fx/processed sound", "scratches", "erhu", "guzheng", "yangqin", "liuqin",
           "zhongruan", "dizi", "gu", "oud", "bamboo flute", "beatboxing", "Main System"),
}
INSTRUMENT_MAP: dict[str, str | None] = {
    raw.lower(): canonical for canonical, names in _GROUPS.items() for raw in names}


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


def read_medleydb(root: Path, audio_root: Path | None = None) -> Iterator[TrackRecord | RowSkip]:
    import yaml

    root = Path(root)
    audio_root = Path(audio_root or root)
    activations = root / "Annotations" / "Instrument_Activations" / "ACTIVATION_CONF"
    for path in label_files(root / "Metadata", "_METADATA.yaml"):
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
        yield TrackRecord(track, "medleydb", "test",
                          str(audio_root / "Audio" / track / f"{track}_MIX.wav"), metadata)


def metadata_file(root: Path, track: str) -> Path:
    return Path(root) / "Metadata" / f"{track}_METADATA.yaml"


def active_instruments(metadata: dict, start_s: float, end_s: float) -> list[str]:
    """Raw instrument names active in ``[start_s, end_s)`` (every stem without activations)."""
    spans = metadata.get("instrument_activations")
    if spans is None:
        return list(metadata.get("instruments", []))
    return sorted(name for name, intervals in spans.items()
                  if any(a < end_s and b > start_s for a, b in intervals))


def canonical_instruments(raw: Iterable[str]) -> tuple[list[str], list[str]]:
    """(sorted canonical names of `raw` via `INSTRUMENT_MAP`, raw names the map does not know)."""
    known, unknown = set(), set()
    for name in raw:
        key = name.lower()
        if key not in INSTRUMENT_MAP:
            unknown.add(name)
        elif INSTRUMENT_MAP[key] is not None:
            known.add(INSTRUMENT_MAP[key])
    return sorted(known), sorted(unknown)
