"""MusicNet: ``musicnet_metadata.csv`` joined with MusicNet-EM MIDI (``musicnet_em/**/{id}.mid``).

Kept as the reference: ``id, composer, composition, movement, ensemble, notes``. ``notes`` maps an
instrument name to ``[{"start", "end", "pitch"}]`` (seconds rounded to 0.01; pitch ``NOTE +
str(midi // 12)``, so MIDI 60 -> ``"C5"``). Instrument names are General-MIDI names with the
reference's MusicNet corrections: Pizzicato Strings -> Violin, the word "Synth" removed, and the
n-th (n >= 2) instrument of the same name in a file suffixed ``" n"`` ("Violin 2"). The reference
stored ``notes`` as a JSON string; here it is the dict itself (`crop_annotations` takes both).
Split: official, from where the audio lies: ``{audio_root}/{train,test}_data/{id}.wav``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from data_prep.datasets.base import JsonifyContext, RowSkip, TrackRecord, read_table

DATASET = "musicnet"
KEPT = ("id", "composer", "composition", "movement", "ensemble")
NOTE_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


def pitch_name(midi_pitch: int) -> str:
    """The reference's note naming: ``NOTE_NAMES[p % 12] + str(p // 12)`` (60 -> "C5")."""
    return f"{NOTE_NAMES[midi_pitch % 12]}{midi_pitch // 12}"


def instrument_name(program: int, is_drum: bool) -> str:
    import pretty_midi

    if is_drum:
        return "Drums"
    name = pretty_midi.program_to_instrument_name(program)
    if name == "Pizzicato Strings":
        return "Violin"
    return " ".join(word for word in name.split() if word != "Synth")


def midi_notes(path: Path) -> dict[str, list[dict]]:
    """Instrument name -> notes of one MIDI file (see module docstring)."""
    import pretty_midi

    seen: Counter[str] = Counter()
    notes: dict[str, list[dict]] = {}
    for instrument in pretty_midi.PrettyMIDI(str(path)).instruments:
        base = instrument_name(instrument.program, instrument.is_drum)
        seen[base] += 1
        name = base if seen[base] == 1 else f"{base} {seen[base]}"
        notes[name] = [
            {"start": round(n.start, 2), "end": round(n.end, 2), "pitch": pitch_name(n.pitch)}
            for n in sorted(instrument.notes, key=lambda n: (n.start, n.pitch))
        ]
    return notes


def read_records(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    rows = read_table(ctx.root / "musicnet_metadata.csv", required=KEPT)
    midi_files = {p.stem: p for p in ctx.root.rglob("*.mid") if "musicnet_em" in p.parts}
    for row in rows:
        track_id = row["id"]
        split = next((s for s in ("train", "test")
                      if Path(ctx.audio(f"{s}_data", f"{track_id}.wav")).exists()), None)
        if split is None:
            yield RowSkip(track_id, "no audio in train_data/ or test_data/")
            continue
        if not ctx.wants(split):
            continue
        if track_id not in midi_files:
            yield RowSkip(track_id, "no MusicNet-EM MIDI file (musicnet_em/**/{id}.mid)")
            continue
        try:
            notes = midi_notes(midi_files[track_id])
        except Exception as err:  # noqa: BLE001 - pretty_midi/mido raise many types on bad MIDI
            yield RowSkip(track_id, f"unreadable MIDI {midi_files[track_id]}: {err!r}")
            continue
        metadata = {**{k: row[k] for k in KEPT}, "notes": notes}
        yield TrackRecord(track_id, DATASET, split, ctx.audio(f"{split}_data", f"{track_id}.wav"),
                         metadata)
