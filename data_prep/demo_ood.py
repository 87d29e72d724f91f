"""The demo's out-of-distribution set: the same kind of music, made the ways training never is.

Clips are composed like the training clips (`demo_dataset.compose_clip`, own seeds, ids `oodNNNNN`,
split `ood`), so key, tempo and instrument truth are exact; but they are rendered by a small numpy
synthesiser instead of the General-MIDI soundfont (additive piano and organ, Karplus-Strong
guitars, bowed sawtooth strings with vibrato, FM brass and reed, breathy flute, square-wave lead,
a sine bass, noise-and-sweep drums), at a 22.05 kHz source rate, and stored as MP3 (libsndfile's
LAME encoder): a synthesiser, a rate and a codec that no training clip has. `build_ood_dataset`
writes `audio/<clip_id>.mp3` and `clips.jsonl` (truth records as `demo_dataset` writes them).
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pretty_midi
import soundfile as sf
from scipy import signal

from data_prep.demo_dataset import ClipPlan, ClipTruth, compose_clip, synthesise_clips
from llark_jax.io import atomic_output

OOD_RATE = 22050


def _hz(pitch: int) -> float:
    return 440.0 * 2.0 ** ((pitch - 69) / 12.0)


def _time(seconds: float) -> np.ndarray:
    return np.arange(max(int(seconds * OOD_RATE), 1)) / OOD_RATE


def _envelope(t: np.ndarray, attack_s: float, decay_s: float | None) -> np.ndarray:
    """Linear attack, then exponential decay (None: sustained), 20 ms release at the end."""
    env = np.minimum(t / max(attack_s, 1e-4), 1.0)
    if decay_s is not None:
        env = env * np.exp(-np.maximum(t - attack_s, 0.0) / decay_s)
    return env * np.clip((t[-1] - t) / 0.02, 0.0, 1.0)


def _additive(f0: float, t: np.ndarray, amps: list[float], vibrato: float = 0.0,
              decay_per_partial: float | None = None) -> np.ndarray:
    """Sum of harmonics k * f0 (below Nyquist) with amplitudes `amps`, optional vibrato (depth in
    semitones, 5.5 Hz) and partial k decaying with time constant decay_per_partial / k."""
    f_t = f0 * 2.0 ** (vibrato * np.sin(2 * np.pi * 5.5 * t) / 12)
    phase = 2 * np.pi * np.cumsum(f_t) / OOD_RATE
    out = np.zeros_like(t)
    for k, amp in enumerate(amps, start=1):
        if k * f0 < 0.45 * OOD_RATE and amp:
            decay = 1.0 if decay_per_partial is None else np.exp(-t * k / decay_per_partial)
            out += amp * decay * np.sin(k * phase)
    return out


def _karplus_strong(f0: float, t: np.ndarray, rng: np.random.Generator,
                    damping: float = 0.996) -> np.ndarray:
    """Plucked string: a noise burst through a damped delay-line loop of one period."""
    period = max(int(round(OOD_RATE / f0)), 2)
    excitation = np.zeros_like(t)
    excitation[:period] = rng.uniform(-1, 1, min(period, t.shape[0]))
    a = np.zeros(period + 2)
    a[0], a[period], a[period + 1] = 1.0, -0.5 * damping, -0.5 * damping
    return signal.lfilter([1.0], a, excitation)


def _fm(f0: float, t: np.ndarray, ratio: float, index: np.ndarray) -> np.ndarray:
    return np.sin(2 * np.pi * f0 * t + index * np.sin(2 * np.pi * ratio * f0 * t))


def _voice(name: str, f0: float, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One note of instrument `name` at f0 Hz over times `t` (s), peak about 1."""
    if name == "piano":
        return _envelope(t, 0.005, 1.2) * _additive(f0, t, [1 / k**1.3 for k in range(1, 12)],
                                                    decay_per_partial=2.0)
    if name == "organ":
        return _envelope(t, 0.01, None) * _additive(f0, t, [1, 0.6, 0, 0.4, 0, 0.3, 0, 0.2])
    if name == "acoustic guitar":
        return _karplus_strong(f0, t, rng)
    if name == "electric guitar":
        return np.tanh(3.0 * _karplus_strong(f0, t, rng, damping=0.998))
    if name in ("violin", "strings"):
        detunes = (0.0,) if name == "violin" else (-0.004, 0.0, 0.004)
        attack = 0.06 if name == "violin" else 0.2
        saw = sum(_additive(f0 * (1 + d), t, [1 / k for k in range(1, 16)],
                            vibrato=0.25 if name == "violin" else 0.08) for d in detunes)
        return _envelope(t, attack, None) * saw / len(detunes)
    if name == "trumpet":
        return _envelope(t, 0.03, None) * _fm(f0, t, 1.0, 3.5 * np.minimum(t / 0.08, 1.0))
    if name == "saxophone":
        return _envelope(t, 0.02, None) * _fm(f0, t, 2.0, 1.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    if name == "flute":
        breath = signal.lfilter([0.1], [1, -0.9], rng.standard_normal(t.shape[0]))
        return _envelope(t, 0.05, None) * (_additive(f0, t, [1, 0.15, 0.05], vibrato=0.15)
                                           + breath)
    if name == "synth lead":
        return _envelope(t, 0.005, None) * _additive(f0, t, [1 / k if k % 2 else 0
                                                             for k in range(1, 20)])
    if name == "bass":
        return _envelope(t, 0.005, 0.6) * _additive(f0, t, [1, 0.5, 0.2])
    raise ValueError(f"no OOD voice for instrument {name!r}")


def _drum(pitch: int, velocity: int, rng: np.random.Generator) -> np.ndarray:
    """Kick (sine sweep), snare (noise + tone), hats/ride (differentiated noise)."""
    gain = velocity / 127.0
    if pitch == 36:
        t = _time(0.3)
        return gain * np.sin(2 * np.pi * np.cumsum(45 + 90 * np.exp(-t / 0.03)) / OOD_RATE) \
            * np.exp(-t / 0.12)
    if pitch == 38:
        t = _time(0.2)
        return gain * (0.7 * rng.standard_normal(t.shape[0]) * np.exp(-t / 0.05)
                       + 0.5 * np.sin(2 * np.pi * 190 * t) * np.exp(-t / 0.03))
    t = _time(0.4 if pitch == 51 else 0.08)
    noise = np.diff(rng.standard_normal(t.shape[0] + 1))
    return gain * 0.4 * noise * np.exp(-t / (0.15 if pitch == 51 else 0.015))


def render_numpy(midi: pretty_midi.PrettyMIDI, seconds: float, seed: int) -> np.ndarray:
    """Renders `midi` with the numpy voices at 22.05 kHz: float32 mono, peak 0.9."""
    rng = np.random.default_rng(seed)
    total = int(seconds * OOD_RATE)
    mix = np.zeros(total + OOD_RATE)
    for inst in midi.instruments:
        render: Callable[[pretty_midi.Note], np.ndarray] = (
            (lambda n: _drum(n.pitch, n.velocity, rng)) if inst.is_drum else
            (lambda n, name=inst.name: (n.velocity / 127.0) ** 1.5
             * _voice(name, _hz(n.pitch), _time(n.end - n.start), rng)))
        for note in inst.notes:
            start = int(note.start * OOD_RATE)
            wave = render(note)[: mix.shape[0] - start]
            mix[start : start + wave.shape[0]] += wave
    mix = mix[:total]
    return (0.9 * mix / max(float(np.max(np.abs(mix))), 1e-9)).astype(np.float32)


def ood_clip(plan: ClipPlan, output_dir: Path, seconds: float) -> dict:
    """Composes one OOD clip and writes it as MP3 (numpy synthesiser, 22.05 kHz) unless it is on
    disk; returns its truth as a dict."""
    clip_id, split, clip_seed = plan
    midi, truth = compose_clip(clip_id, split, clip_seed, seconds)
    truth = dataclasses.replace(truth, genre="synthetic-ood",
                                distortions={"synth": "numpy", "source_rate": OOD_RATE,
                                             "codec": "mp3"})
    path = Path(output_dir) / "audio" / f"{clip_id}.mp3"
    if not path.exists():
        audio = render_numpy(midi, seconds, clip_seed)
        with atomic_output(path) as tmp:
            sf.write(str(tmp), audio, OOD_RATE, format="MP3", subtype="MPEG_LAYER_III",
                     bitrate_mode="CONSTANT", compression_level=0.75)  # 48 kbit/s
    return dataclasses.asdict(truth)


def build_ood_dataset(output_dir: Path, n_clips: int, seconds: float, seed: int,
                      workers: int = 1) -> list[ClipTruth]:
    """Composes, renders (numpy, 22.05 kHz) and writes MP3 clips on `workers` processes; skips
    clips on disk; writes `clips.jsonl`."""
    output_dir = Path(output_dir)
    (output_dir / "audio").mkdir(parents=True, exist_ok=True)
    plans = [(f"ood{i:05d}", "ood", zlib.crc32(f"ood:{seed}:{i}".encode()))
             for i in range(n_clips)]
    return synthesise_clips(plans, partial(ood_clip, output_dir=output_dir, seconds=seconds),
                            output_dir, workers, "ood synth", f"{seconds}s")
