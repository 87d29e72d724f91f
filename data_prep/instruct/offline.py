"""Offline (no API key) QA generation: deterministic templates over clip metadata.

`generate_offline_qa(record, seed)` turns tempo, key/mode, time signature, chords, instruments,
genre and mood into varied MIR pairs plus one short caption. For key, tempo and instruments it
always emits the paper's evaluation prompts with short, parseable answers ("The key is A minor.",
"The tempo is about 128 BPM.", "piano, bass, drums"), and one seeded paraphrase each. Dataset
fields win over madmom estimates (`tempo_in_beats_per_minute_madmom`, `downbeats_madmom`, the
madmom `chords` and `key`).
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter
from typing import Any

from data_prep.instruct.captions import SHORT_CAPTION_PROMPTS
from llark_jax.eval.prompts import INSTRUMENTS_PROMPT, KEY_PROMPT, TEMPO_PROMPT

OFFLINE_MODEL = "offline-templates-v1"
GENRE_PROMPT = "What genre is this song?"

_KEY_RX = re.compile(r"^\s*([A-Ga-g])\s*([#b♯♭]?)\s*[:_ ]?\s*(major|minor|maj|min|m)?\s*$", re.I)
_TRIAD_RX = re.compile(r"^([A-G][#b]?)\s*:?\s*(major|minor|maj|min|m)?$")
_NUMBERED_RX = re.compile(r"\s+\d+$")
_COMMON_INSTRUMENTS = (
    "piano", "acoustic guitar", "electric guitar", "bass", "drums", "violin", "cello", "flute",
    "trumpet", "saxophone", "organ", "clarinet", "vocals", "synthesizer", "harp",
)


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in re.split(r"[,;]", value) if v.strip()]
    return [str(v).strip() for v in value if str(v).strip()]


def normalize_key(value: Any) -> str | None:
    """"A minor", "a:min", "Bbmaj", "F#m" -> "A minor", "Bb major", "F# minor"; None if unknown."""
    if not isinstance(value, str):
        return None
    match = _KEY_RX.match(value)
    if not match:
        return None
    tonic, accidental, mode = match.groups()
    accidental = {"♯": "#", "♭": "b"}.get(accidental, accidental)
    mode_word = "minor" if mode and mode.lower() in ("minor", "min", "m") else "major"
    return f"{tonic.upper()}{accidental} {mode_word}"


def normalize_chord(label: Any) -> str | None:
    """madmom "A#major", "C:min", "Am", "F" -> "A# major", "C minor", "A minor", "F major";
    "no chord"/"N" -> None; other labels (sevenths, ...) as given."""
    if isinstance(label, dict):
        label = label.get("chord")
    if not isinstance(label, str) or label.strip().lower() in ("", "n", "no chord", "x"):
        return None
    match = _TRIAD_RX.match(label.strip())
    if match:
        root, quality = match.groups()
        return f"{root} {'minor' if quality in ('minor', 'min', 'm') else 'major'}"
    return label.strip()


def _tempo(record: dict[str, Any]) -> float | None:
    for name in ("tempo", "tempo_bpm", "tempo_in_beats_per_minute_madmom"):
        try:
            value = float(record[name])
        except (KeyError, TypeError, ValueError):
            continue
        if value > 0:
            return value
    return None


def _time_signature(record: dict[str, Any]) -> tuple[int, int] | None:
    value = record.get("time_signature")
    if isinstance(value, str) and re.fullmatch(r"\s*\d+\s*/\s*\d+\s*", value):
        num, den = (int(p) for p in value.split("/"))
        return num, den
    if isinstance(value, list | tuple) and len(value) == 2:
        return int(value[0]), int(value[1])
    if isinstance(value, dict) and "numerator" in value:
        return int(value["numerator"]), int(value.get("denominator", 4))
    beats = [
        int(b["beat_number"])
        for b in record.get("downbeats_madmom") or []
        if isinstance(b, dict) and isinstance(b.get("beat_number"), int | float)
    ]
    return (max(beats), 4) if beats else None


def _chord_sequence(record: dict[str, Any]) -> list[str]:
    chords = [normalize_chord(c) for c in record.get("chords") or []]
    sequence: list[str] = []
    for chord in chords:
        if chord and (not sequence or sequence[-1] != chord):
            sequence.append(chord)
    return sequence


def _instruments(record: dict[str, Any]) -> list[str]:
    names = _as_list(record.get("instruments", record.get("instrument")))
    unique: list[str] = []
    for name in names:
        name = _NUMBERED_RX.sub("", name).lower()
        if name not in unique:
            unique.append(name)
    return unique


def _labels(record: dict[str, Any], *names: str) -> list[str]:
    for name in names:
        values = _as_list(record.get(name))
        if values:
            return [v.lower() for v in values]
    return []


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _tempo_word(bpm: int) -> str:
    return "slow" if bpm < 76 else "moderate" if bpm < 108 else "lively" if bpm < 140 else "fast"


def _pair(question: str, answer: str, task: str = "mir") -> dict[str, str]:
    return {"question": question, "answer": answer, "task": task}


def _key_pairs(key: str, rng: random.Random) -> list[dict[str, str]]:
    mode = key.split()[1]
    colour = "brighter" if mode == "major" else "darker, more melancholic"
    return [
        _pair(KEY_PROMPT, f"The key is {key}."),
        _pair(
            rng.choice(["Which key is this piece in?", "What key is this music played in?",
                        "Can you tell me the key of this track?"]),
            rng.choice([f"This piece is in {key}.", f"It is in the key of {key}.",
                        f"The music is centred on {key}."]),
        ),
        _pair(
            rng.choice(["Is this song in a major or a minor key?", "Does this music sound major or "
                        "minor?", "What is the mode of this piece?"]),
            f"It is in a {mode} key ({key}), which gives it a {colour} colour.",
        ),
    ]


def _tempo_pairs(bpm: int, rng: random.Random) -> list[dict[str, str]]:
    word = _tempo_word(bpm)
    return [
        _pair(TEMPO_PROMPT, f"The tempo is about {bpm} BPM."),
        _pair(
            rng.choice(["How fast is this song?", "Roughly how many beats per minute is this clip?",
                        "What is the approximate tempo in BPM?", "At what tempo is this played?"]),
            rng.choice([f"It moves at about {bpm} beats per minute, a {word} tempo.",
                        f"About {bpm} BPM, which feels {word}.", f"Roughly {bpm} BPM."]),
        ),
    ]


def _instrument_pairs(instruments: list[str], rng: random.Random) -> list[dict[str, str]]:
    present = rng.choice(instruments)
    absent = [i for i in _COMMON_INSTRUMENTS if not any(i in x or x in i for x in instruments)]
    pairs = [
        _pair(INSTRUMENTS_PROMPT, ", ".join(instruments)),
        _pair(
            rng.choice(["What instruments are playing?", "Which instruments can you hear in "
                        "this track?", "What instruments do you hear in the provided audio?"]),
            f"I can hear {_join(instruments)}.",
        ),
        _pair(f"Can you hear {present} in this clip?", f"Yes, {present} can be heard."),
    ]
    if absent:
        missing = rng.choice(absent)
        pairs.append(
            _pair(f"Can you hear {missing} in this clip?", f"No, I don't hear any {missing}.")
        )
    return pairs


def _chord_pairs(chords: list[str], rng: random.Random) -> list[dict[str, str]]:
    shown = chords[:8]
    most_common = Counter(chords).most_common(1)[0][0]
    return [
        _pair(
            rng.choice(["What chords are played in this clip?", "What is the chord progression?",
                        "Which chords can you hear?"]),
            f"The harmony moves through {_join(shown)}.",
        ),
        _pair("Which chord is heard most often?", f"The most frequent chord is {most_common}."),
    ]


def _caption(fields: dict[str, Any]) -> str:
    mood = f"{fields['moods'][0]} " if fields["moods"] else ""
    genre = f"{fields['genres'][0]} piece" if fields["genres"] else "piece"
    text = f"A {mood}{genre}"
    if fields["key"]:
        text += f" in {fields['key']}"
    if fields["bpm"]:
        text += f" at about {fields['bpm']} BPM"
    if fields["meter"]:
        text += f" in {fields['meter'][0]}/{fields['meter'][1]} time"
    if fields["instruments"]:
        text += f", featuring {_join(fields['instruments'])}"
    text += "."
    if fields["chords"]:
        text += f" The harmony moves through {_join(fields['chords'][:4])}."
    return text


def generate_offline_qa(record: dict[str, Any], seed: int) -> list[dict[str, str]]:
    """Deterministic MIR pairs plus one caption pair for `record`; same (record, seed) -> same list.

    Returns dicts {question, answer, task} with task "mir" or "captioning"; empty when the record
    has none of the supported fields.
    """
    digest = hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
    rng = random.Random(f"{seed}:{digest}")
    tempo = _tempo(record)
    fields = {
        "key": normalize_key(record.get("key")),
        "bpm": round(tempo) if tempo else None,
        "meter": _time_signature(record),
        "chords": _chord_sequence(record),
        "instruments": _instruments(record),
        "genres": _labels(record, "genre", "track.genre_top", "track.genres_all", "genres"),
        "moods": _labels(record, "mood", "mood/theme", "moods"),
    }
    pairs: list[dict[str, str]] = []
    if fields["key"]:
        pairs += _key_pairs(fields["key"], rng)
    if fields["bpm"]:
        pairs += _tempo_pairs(fields["bpm"], rng)
    if fields["meter"]:
        num, den = fields["meter"]
        question = rng.choice(["What is the time signature of this song?", "What meter is this "
                               "piece in?", "How many beats are there in each bar?"])
        pairs.append(_pair(question, f"It is in {num}/{den} time, with {num} beats per bar."))
    if fields["chords"]:
        pairs += _chord_pairs(fields["chords"], rng)
    if fields["instruments"]:
        pairs += _instrument_pairs(fields["instruments"], rng)
    if fields["genres"]:
        pairs.append(_pair(GENRE_PROMPT, f"The genre is {fields['genres'][0]}."))
    if fields["moods"]:
        question = rng.choice(["What is the mood of this music?", "How does this clip feel?",
                               "What emotions does this music convey?"])
        pairs.append(_pair(question, f"It feels {_join(fields['moods'][:3])}."))
    if pairs:
        pairs.append(_pair(rng.choice(SHORT_CAPTION_PROMPTS), _caption(fields), "captioning"))
    return pairs
