"""The demo dataset: music clips composed as MIDI here, rendered with a General-MIDI soundfont.

Every clip has exact ground truth (tempo, key, time signature, instruments, chords), so the demo can
score a trained model without any download. Composition per clip, all drawn from a per-clip seed:

- tempo uniform in [60, 180] BPM, key from all 24 (12 tonics x major/minor), metre 3/4 or 4/4;
- a diatonic chord progression (one chord per bar) voiced by a harmony instrument, a bass line on
  the chord roots, a melody of scale tones, and a General-MIDI drum kit (kick, snare, hi-hat);
- 1-4 pitched instruments (harmony, melody, optionally a second harmony part) plus bass and drums.

Audio is rendered with `tinysoundfont` from the `TimGM6mb.sf2` soundfont that `pretty_midi` ships,
written as 44.1 kHz mono 16-bit WAV. `build_dataset` writes, in its output directory:
`audio/<clip_id>.wav`, `midi/<clip_id>.mid`, and `clips.jsonl` (one ground-truth record per clip,
with its `split`: eval clips are chosen by seed and never appear in training). The stage is
`python -m data_prep demo-data` (`data_prep.stages.demo_data`).
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pretty_midi
import soundfile as sf

from llark_jax.io import atomic_output, atomic_write_text

SAMPLE_RATE = 44100
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
MAJOR_STEPS = (0, 2, 4, 5, 7, 9, 11)
MINOR_STEPS = (0, 2, 3, 5, 7, 8, 10)  # natural minor
# Diatonic progressions as scale degrees (0-based), one chord per bar.
MAJOR_PROGRESSIONS = ((0, 4, 5, 3), (0, 3, 4, 0), (0, 5, 3, 4), (0, 3, 0, 4), (5, 3, 0, 4))
MINOR_PROGRESSIONS = ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2), (0, 5, 3, 4))
# Pitched instruments: the names the ground truth and the QA use, each with the General-MIDI
# programs (0-based) that may play it; every clip draws one program per instrument.
PITCHED_INSTRUMENTS = {
    "piano": (0, 1, 2, 4),
    "organ": (16, 17, 19),
    "acoustic guitar": (24, 25),
    "electric guitar": (26, 27, 28),
    "violin": (40, 110),
    "strings": (48, 49, 50),
    "trumpet": (56, 59),
    "saxophone": (64, 65, 66),
    "flute": (72, 73, 74),
    "synth lead": (80, 81),
}
BASS_PROGRAMS = (32, 33, 34, 38)  # acoustic, finger, pick, synth bass
DRUM_KICK, DRUM_SNARE, DRUM_HAT, DRUM_RIDE = 36, 38, 42, 51
# Drum grooves: which beats of the bar get kick / snare, and hats per beat (0: none).
GROOVES = ("backbeat", "four_on_floor", "half_time")
HAT_DIVISIONS = (0, 1, 2, 4)


@dataclasses.dataclass(frozen=True)
class ClipTruth:
    """Ground truth of one synthesised clip (times in seconds, tempo in BPM)."""

    clip_id: str
    split: str
    seconds: float
    tempo: float
    key: str  # e.g. "A minor", sharps spelled as in PITCH_CLASSES
    time_signature: str  # "3/4" or "4/4"
    instruments: list[str]
    chords: list[dict]  # [{start_time, end_time, chord}] with labels like "A#major" / "Dminor"
    genre: str = "synthetic"
    distortions: dict = dataclasses.field(default_factory=dict)  # augment_train's record


def soundfont_path() -> Path:
    """The General-MIDI soundfont shipped inside the `pretty_midi` package."""
    path = Path(pretty_midi.__file__).parent / "TimGM6mb.sf2"
    if not path.is_file():
        raise FileNotFoundError(f"soundfont not found at {path}; reinstall pretty_midi")
    return path


def _triad(tonic_pc: int, steps: tuple[int, ...], degree: int) -> tuple[list[int], str]:
    """Pitch classes of the diatonic triad on `degree` and its label ("A#major", "Bdiminished")."""
    pcs = [(tonic_pc + steps[(degree + k) % 7]) % 12 for k in (0, 2, 4)]
    third, fifth = (pcs[1] - pcs[0]) % 12, (pcs[2] - pcs[0]) % 12
    quality = {(4, 7): "major", (3, 7): "minor", (3, 6): "diminished"}[(third, fifth)]
    return pcs, PITCH_CLASSES[pcs[0]] + quality


def compose_clip(clip_id: str, split: str, seed: int, seconds: float) -> tuple[
    pretty_midi.PrettyMIDI, ClipTruth
]:
    """Composes one clip from `seed`; returns the MIDI and its ground truth."""
    rng = np.random.default_rng(seed)
    tempo = float(np.round(rng.uniform(60.0, 180.0), 1))
    tonic_pc = int(rng.integers(12))
    is_minor = bool(rng.integers(2))
    steps = MINOR_STEPS if is_minor else MAJOR_STEPS
    beats_per_bar = int(rng.choice([3, 4]))
    progression = (MINOR_PROGRESSIONS if is_minor else MAJOR_PROGRESSIONS)[int(rng.integers(5))]
    n_pitched = int(rng.integers(1, 5))
    names = list(rng.choice(sorted(PITCHED_INSTRUMENTS), size=n_pitched, replace=False))
    programs = {n: int(rng.choice(PITCHED_INSTRUMENTS[n])) for n in names}
    velocity = {n: int(rng.integers(55, 106)) for n in [*names, "bass", "drums"]}
    chord_octave = int(rng.choice([48, 60]))  # harmony voiced from C3 or C4
    chord_style = str(rng.choice(["block", "beats", "arpeggio"]))
    bass_octave = int(rng.choice([28, 36]))
    groove = str(rng.choice(GROOVES))
    hats_per_beat = int(rng.choice(HAT_DIVISIONS))

    beat = 60.0 / tempo
    bar = beat * beats_per_bar
    n_bars = int(np.ceil(seconds / bar))
    midi = pretty_midi.PrettyMIDI(initial_tempo=tempo)
    midi.time_signature_changes.append(pretty_midi.TimeSignature(beats_per_bar, 4, 0.0))
    parts = {n: pretty_midi.Instrument(programs[n], name=n) for n in names}
    bass = pretty_midi.Instrument(int(rng.choice(BASS_PROGRAMS)), name="bass")
    drums = pretty_midi.Instrument(0, is_drum=True, name="drums")
    harmony, melody = names[0], names[-1]
    scale_pcs = [(tonic_pc + s) % 12 for s in steps]
    chords = []

    def add(inst: pretty_midi.Instrument, pitch: int, start: float, dur: float, vel: int) -> None:
        if start < seconds:
            end = min(start + dur, seconds)
            vel = int(np.clip(vel + rng.integers(-8, 9), 20, 127))
            inst.notes.append(pretty_midi.Note(vel, int(pitch), float(start), float(end)))

    for b in range(n_bars):
        t0 = b * bar
        pcs, label = _triad(tonic_pc, steps, progression[b % len(progression)])
        chords.append({"start_time": round(t0, 3), "end_time": round(min(t0 + bar, seconds), 3),
                       "chord": label})
        voiced = [chord_octave + (pc - chord_octave) % 12 for pc in pcs]
        if chord_style == "block":
            for pitch in voiced:
                add(parts[harmony], pitch, t0, bar * 0.95, velocity[harmony])
        elif chord_style == "beats":
            for k in range(beats_per_bar):
                for pitch in voiced:
                    add(parts[harmony], pitch, t0 + k * beat, beat * 0.9, velocity[harmony])
        else:  # arpeggio on eighth notes
            for k in range(beats_per_bar * 2):
                add(parts[harmony], voiced[k % 3], t0 + k * beat / 2, beat / 2 * 0.95,
                    velocity[harmony])
        if len(names) >= 3:  # a second harmony part plays the chord an octave up on each beat
            for k in range(beats_per_bar):
                for pc in pcs:
                    add(parts[names[1]], 72 + (pc - 72) % 12, t0 + k * beat, beat * 0.8,
                        velocity[names[1]])
        for k in range(beats_per_bar):  # bass on the root, every beat
            add(bass, bass_octave + (pcs[0] - bass_octave) % 12, t0 + k * beat, beat * 0.9,
                velocity["bass"])
            _drum_beat(add, drums, groove, hats_per_beat, k, t0 + k * beat, beat,
                       velocity["drums"])
        if melody != harmony:  # melody: chord tones and scale steps on eighth notes
            pitch = 72 + pcs[0] % 12
            for k in range(beats_per_bar * 2):
                step = int(rng.integers(-2, 3))
                idx = (scale_pcs.index(pitch % 12) + step) % 7
                pitch = 72 + scale_pcs[idx] % 12
                add(parts[melody], pitch, t0 + k * beat / 2, beat / 2 * 0.9, velocity[melody])
    midi.instruments.extend([*parts.values(), bass, drums])
    truth = ClipTruth(
        clip_id=clip_id,
        split=split,
        seconds=float(seconds),
        tempo=tempo,
        key=f"{PITCH_CLASSES[tonic_pc]} {'minor' if is_minor else 'major'}",
        time_signature=f"{beats_per_bar}/4",
        instruments=sorted([*names, "bass", "drums"]),
        chords=chords,
    )
    return midi, truth


def _drum_beat(add, drums: pretty_midi.Instrument, groove: str, hats_per_beat: int, k: int,
               start: float, beat: float, vel: int) -> None:
    """Beat `k` of a bar: kick/snare by `groove`, then `hats_per_beat` hi-hats (ride when 1)."""
    if groove == "four_on_floor":
        hits = [DRUM_KICK] + ([DRUM_SNARE] if k % 2 == 1 else [])
    elif groove == "half_time":
        hits = [DRUM_KICK] if k == 0 else ([DRUM_SNARE] if k == 2 else [])
    else:  # backbeat
        hits = [DRUM_SNARE if k % 2 == 1 else DRUM_KICK]
    for drum in hits:
        add(drums, drum, start, 0.1, vel if k == 0 else vel - 15)
    for h in range(hats_per_beat):
        add(drums, DRUM_RIDE if hats_per_beat == 1 else DRUM_HAT, start + h * beat / hats_per_beat,
            0.05, vel - 35)


def render(midi: pretty_midi.PrettyMIDI, seconds: float, soundfont: Path) -> np.ndarray:
    """Renders `midi` to float32 mono [seconds * 44100] with tinysoundfont, peak 0.9."""
    import tinysoundfont

    synth = tinysoundfont.Synth(samplerate=SAMPLE_RATE)
    sfid = synth.sfload(str(soundfont))
    events = []  # (sample, order, kind, channel, pitch, velocity); note-offs sort first
    for chan, inst in enumerate(midi.instruments):
        channel = 9 if inst.is_drum else chan
        synth.program_select(channel, sfid, 128 if inst.is_drum else 0,
                             0 if inst.is_drum else inst.program, is_drums=inst.is_drum)
        for note in inst.notes:
            on, off = int(note.start * SAMPLE_RATE), int(note.end * SAMPLE_RATE)
            events.append((on, 1, "on", channel, note.pitch, note.velocity))
            events.append((off, 0, "off", channel, note.pitch, 0))
    events.sort()
    total = int(seconds * SAMPLE_RATE)
    chunks, cursor = [], 0
    for sample, _, kind, channel, pitch, velocity in events:
        if sample > cursor:
            chunks.append(np.frombuffer(synth.generate(sample - cursor), dtype=np.float32))
            cursor = sample
        if kind == "on":
            synth.noteon(channel, pitch, velocity)
        else:
            synth.noteoff(channel, pitch)
    if total > cursor:
        chunks.append(np.frombuffer(synth.generate(total - cursor), dtype=np.float32))
    stereo = np.concatenate(chunks).reshape(-1, 2)[:total]
    mono = stereo.mean(axis=1)
    peak = float(np.abs(mono).max())
    return (mono * (0.9 / peak) if peak > 0 else mono).astype(np.float32)


def clip_plan(n_clips: int, eval_fraction: float, seed: int) -> list[tuple[str, str, int]]:
    """(clip_id, split, clip_seed) for every clip; the split is a function of (seed, index) only."""
    plan = []
    for i in range(n_clips):
        clip_seed = zlib.crc32(f"{seed}:{i}".encode())
        split = "eval" if (clip_seed % 1000) < eval_fraction * 1000 else "train"
        plan.append((f"demo{i:05d}", split, clip_seed))
    return plan


ClipPlan = tuple[str, str, int]  # (clip_id, split, seed)


def synthesise_clips(plans: list[ClipPlan], work: Callable[[ClipPlan], dict], output_dir: Path,
                     workers: int, stage: str, settings: str) -> list[ClipTruth]:
    """Runs `work` (a clip plan (clip_id, split, seed) -> its truth as a dict) over `plans` on
    `workers` processes through `run_cached` (one truth JSON per clip in
    `output_dir/synth.cache/<settings>`, reused by a rerun with the same settings), writes
    `clips.jsonl` and returns the truths in plan order. A clip that fails stops the stage with
    its reason."""
    from data_prep.stages.runner import run_cached

    result = run_cached(plans, work, key=lambda plan: plan[0],
                        cache_dir=Path(output_dir) / "synth.cache" / settings, stage=stage,
                        workers=workers)
    if result.failures:
        failure = result.failures[0]
        raise RuntimeError(f"{stage}: {len(result.failures)} clip(s) failed; {failure.item}: "
                           f"{failure.error}: {failure.reason}")
    truths = [ClipTruth(**result.results[plan[0]]) for plan in plans]
    lines = "".join(json.dumps(dataclasses.asdict(t)) + "\n" for t in truths)
    atomic_write_text(Path(output_dir) / "clips.jsonl", lines)
    return truths


def synth_clip(plan: ClipPlan, output_dir: Path, seconds: float,
               augment: bool) -> dict:
    """Composes one clip, renders it (and, with `augment`, applies the distortions drawn from its
    seed) unless its WAV is on disk; returns its truth as a dict."""
    from data_prep.demo_augment import apply_distortions, draw_train_distortions

    clip_id, split, clip_seed = plan
    midi, truth = compose_clip(clip_id, split, clip_seed, seconds)
    if augment:
        truth = dataclasses.replace(truth, distortions=draw_train_distortions(
            np.random.default_rng([clip_seed, 1])))
    wav = Path(output_dir) / "audio" / f"{clip_id}.wav"
    if not wav.exists():
        audio = render(midi, seconds, soundfont_path())
        if augment:
            audio = apply_distortions(audio, SAMPLE_RATE, truth.distortions, clip_seed)
        with atomic_output(Path(output_dir) / "midi" / f"{clip_id}.mid") as tmp:
            midi.write(str(tmp))
        with atomic_output(wav) as tmp:
            sf.write(str(tmp), audio, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return dataclasses.asdict(truth)


def build_dataset(output_dir: Path, n_clips: int, seconds: float, seed: int,
                  eval_fraction: float = 0.2, augment: bool = False,
                  workers: int = 1) -> list[ClipTruth]:
    """Composes and renders every clip (skipping those already on disk) on `workers` processes;
    writes `clips.jsonl`. `augment`: each clip gets the distortions
    `demo_augment.draw_train_distortions` draws from its seed, recorded in its truth's
    `distortions`."""
    output_dir = Path(output_dir)
    (output_dir / "audio").mkdir(parents=True, exist_ok=True)
    (output_dir / "midi").mkdir(parents=True, exist_ok=True)
    soundfont_path()  # fails here, before any process starts, when the soundfont is missing
    work = partial(synth_clip, output_dir=output_dir, seconds=seconds, augment=augment)
    return synthesise_clips(clip_plan(n_clips, eval_fraction, seed), work, output_dir, workers,
                            "synth", f"{seconds}s" + ("-augment" if augment else ""))
