"""Synthesised audio with known truth for the audio/annotation/stage tests (mono float32, 44.1 kHz).

* `drum_pattern`: kick/snare/hi-hat groove at a given tempo and meter, with a bass note on each
  downbeat so the downbeat network has harmonic cues for the bar.
* `chord_progression`: harmonic-rich (sawtooth-like, 10 partials) triads with a bass root;
  pure sines are not recognised as chords by madmom's chord CNN.
* `write_bad_corpus`: one file per kind of broken input, returned with the expected error type.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100
NOTE_INDEX = {"C": 0, "C#": 1, "D": 2, "Eb": 3, "E": 4, "F": 5, "F#": 6, "G": 7, "Ab": 8, "A": 9,
              "Bb": 10, "B": 11}


def _midi_hz(midi: float) -> float:
    return 440.0 * 2.0 ** ((midi - 69) / 12)


def _tone(midi: int, seconds: float, partials: int = 10) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f0 = _midi_hz(midi)
    harmonics = [k for k in range(1, partials + 1) if k * f0 < SR / 2]
    wave = sum(np.sin(2 * np.pi * k * f0 * t) / k for k in harmonics)
    envelope = np.minimum(1.0, t / 0.01) * np.exp(-t * 1.5)
    return (wave * envelope).astype(np.float32)


def _kick() -> np.ndarray:
    t = np.arange(int(0.25 * SR)) / SR
    phase = 2 * np.pi * (50 * t + 100 * (1 - np.exp(-t * 30)) / 30)
    return (np.sin(phase) * np.exp(-t * 18)).astype(np.float32)


def _noise_hit(rng: np.random.Generator, seconds: float, decay: float, highpass: bool
               ) -> np.ndarray:
    noise = rng.standard_normal(int(seconds * SR)).astype(np.float32)
    if highpass:
        noise = np.diff(noise, prepend=0.0)
    return noise * np.exp(-np.arange(noise.size) / SR * decay).astype(np.float32)


def _add(track: np.ndarray, sound: np.ndarray, at_s: float, gain: float) -> None:
    start = int(at_s * SR)
    end = min(track.size, start + sound.size)
    if start < track.size:
        track[start:end] += gain * sound[: end - start]


def drum_pattern(bpm: float, seconds: float, beats_per_bar: int = 4, seed: int = 0) -> np.ndarray:
    """A groove at ``bpm``: kick on beat 1 (and 3 in 4/4), snare on the other beats, eighth-note
    hi-hats, a bass note on every downbeat. Returns ``[seconds * 44100]`` float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    track = np.zeros(int(seconds * SR), np.float32)
    beat_s = 60.0 / bpm
    kick, snare = _kick(), _noise_hit(rng, 0.2, 25, highpass=False)
    hat = _noise_hit(rng, 0.05, 80, highpass=True)
    bass_notes = [36, 41, 43, 36]
    for i in range(int(seconds / beat_s) + 1):
        at = i * beat_s
        position = i % beats_per_bar
        if position == 0 or (beats_per_bar == 4 and position == 2):
            _add(track, kick, at, 0.9)
        else:
            _add(track, snare, at, 0.4)
        if position == 0:
            bar = i // beats_per_bar
            _add(track, _tone(bass_notes[bar % 4], beat_s * beats_per_bar), at, 0.3)
        _add(track, hat, at, 0.15)
        _add(track, hat, at + beat_s / 2, 0.1)
    return (track / np.abs(track).max() * 0.9).astype(np.float32)


def triad(root: str, quality: str) -> list[int]:
    """MIDI pitches of a root-position triad in octave 4 (``quality`` is "maj" or "min")."""
    base = 60 + NOTE_INDEX[root]
    return [base, base + (4 if quality == "maj" else 3), base + 7]


def chord_progression(chords: list[tuple[str, str]], seconds_per_chord: float) -> np.ndarray:
    """Each (root, "maj"|"min") chord held for ``seconds_per_chord``, restruck every beat at
    120 BPM, with the root doubled two octaves below. Shape ``[n_chords * seconds * 44100]``."""
    pieces = []
    for root, quality in chords:
        segment = np.zeros(int(seconds_per_chord * SR), np.float32)
        for at in np.arange(0.0, seconds_per_chord, 0.5):
            for midi in [*triad(root, quality), triad(root, quality)[0] - 24]:
                _add(segment, _tone(midi, seconds_per_chord - at), at, 0.2)
        pieces.append(segment)
    audio = np.concatenate(pieces)
    return (audio / np.abs(audio).max() * 0.9).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int = SR, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, rate, subtype=subtype, format="WAV")
    return path


def write_bad_corpus(directory: Path) -> dict[str, str]:
    """Write one broken file per kind; returns ``{file name: expected AudioError subclass}``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    good = (0.1 * rng.standard_normal(SR * 2)).astype(np.float32)
    expected: dict[str, str] = {}

    def bad(name: str, error: str) -> Path:
        expected[name] = error
        return directory / name

    bad("empty.wav", "EmptyAudioError").write_bytes(b"")
    bad("text.wav", "UndecodableAudioError").write_text("this is not audio\n" * 50)
    bad("random.flac", "UndecodableAudioError").write_bytes(rng.bytes(4096))
    bad("zeros.mp3", "UndecodableAudioError").write_bytes(b"\x00" * 4096)
    bad("bad_header.wav", "UndecodableAudioError").write_bytes(
        b"RIFF\x00\x00\x00\x00WAVEfmt " + rng.bytes(200))
    full = write_wav(directory / "full.tmp", good).read_bytes()
    (directory / "full.tmp").unlink()
    bad("truncated.wav", "TruncatedAudioError").write_bytes(full[: len(full) // 3])
    write_wav(bad("no_frames.wav", "EmptyAudioError"), np.zeros(0, np.float32))
    nan = good.copy()
    nan[1000:1010] = np.nan
    write_wav(bad("nan.wav", "NonFiniteAudioError"), nan, subtype="FLOAT")
    inf = good.copy()
    inf[5] = np.inf
    write_wav(bad("inf.wav", "NonFiniteAudioError"), inf, subtype="FLOAT")
    write_wav(bad("silent.wav", "SilentAudioError"), np.zeros(SR * 2, np.float32))
    write_wav(bad("too_short.wav", "TooShortAudioError"), good[:2000])
    write_wav(bad("many_channels.wav", "InvalidFormatError"), np.zeros((SR, 200), np.float32) + 0.1)
    write_wav(bad("rate_1hz.wav", "InvalidFormatError"), good[:200], rate=1)
    write_wav(bad("rate_huge.wav", "InvalidFormatError"), good, rate=2_000_000)
    bad("directory.wav", "MissingAudioError").mkdir()
    os.symlink(directory / "does_not_exist.wav", bad("dangling_link.wav", "MissingAudioError"))
    return expected

