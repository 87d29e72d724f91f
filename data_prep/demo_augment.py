"""Seeded audio distortions for the demo: what training varies and what the OOD set adds.

Each function maps a mono float32 signal `x_n` at `rate` Hz to a new float32 signal of the same
length and rate. `draw_train_distortions` draws the training chain per clip (reverb, band-limiting,
noise, gain, a Vorbis round trip) and `apply_distortions` applies such a record. The
out-of-distribution set (`data_prep.demo_ood`) uses what training never does: another
synthesiser, 22.05 kHz sources and MP3. `write_user_file` writes a clip as a file that went
through one of `USER_FILE_DISTORTIONS` (what ordinary users' files have been through), for the
feature robustness tests and `bench/demo_distortions.py`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy import signal

CODECS = {"mp3": ("MP3", "MPEG_LAYER_III"), "ogg": ("OGG", "VORBIS")}
FILE_FORMATS = {"wav": ("WAV", "PCM_16"), **CODECS}


def gain(x_n: np.ndarray, db: float) -> np.ndarray:
    """x * 10^(db / 20)."""
    return (x_n * 10.0 ** (db / 20.0)).astype(np.float32)


def lowpass(x_n: np.ndarray, rate: int, cutoff_hz: float) -> np.ndarray:
    """8th-order Butterworth low-pass, zero phase (what a band-limited source or codec leaves)."""
    if cutoff_hz >= 0.49 * rate:
        return x_n.astype(np.float32)
    sos = signal.butter(8, cutoff_hz, btype="low", fs=rate, output="sos")
    return signal.sosfiltfilt(sos, x_n).astype(np.float32)


def through_rate(x_n: np.ndarray, rate: int, source_rate: int) -> np.ndarray:
    """Down to `source_rate` and back (soxr): a file recorded at that rate."""
    import soxr

    low = soxr.resample(x_n, rate, source_rate, quality="HQ")
    return _same_length(soxr.resample(low, source_rate, rate, quality="HQ"), x_n.shape[0])


def add_noise(x_n: np.ndarray, rng: np.random.Generator, snr_db: float) -> np.ndarray:
    """White noise at `snr_db` below the signal's mean power."""
    power = float(np.mean(x_n.astype(np.float64) ** 2)) + 1e-12
    noise = rng.standard_normal(x_n.shape[0]) * np.sqrt(power / 10.0 ** (snr_db / 10.0))
    return (x_n + noise).astype(np.float32)


def reverb(x_n: np.ndarray, rate: int, rng: np.random.Generator, rt60_s: float,
           wet: float) -> np.ndarray:
    """Mix of dry and a decaying-noise room response (60 dB down after `rt60_s`)."""
    t = np.arange(int(rt60_s * rate)) / rate
    ir = rng.standard_normal(t.shape[0]) * np.exp(-6.91 * t / rt60_s)
    wet_n = signal.fftconvolve(x_n, ir / np.sqrt(np.sum(ir**2)))[: x_n.shape[0]]
    dry_rms, wet_rms = np.std(x_n) + 1e-12, np.std(wet_n) + 1e-12
    return ((1 - wet) * x_n + wet * wet_n * (dry_rms / wet_rms)).astype(np.float32)


def codec_round_trip(x_n: np.ndarray, rate: int, codec: str) -> np.ndarray:
    """Encode to `codec` ("mp3" or "ogg", libsndfile) in memory and decode back."""
    fmt, subtype = CODECS[codec]
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(x_n, -1.0, 1.0), rate, format=fmt, subtype=subtype)
    buffer.seek(0)
    y_n, _ = sf.read(buffer, dtype="float32")
    return _same_length(y_n, x_n.shape[0])


def draw_train_distortions(rng: np.random.Generator) -> dict[str, Any]:
    """The training chain for one clip (each step drawn): reverb, low-pass, noise, gain, Vorbis."""
    applied: dict[str, Any] = {}
    if rng.random() < 0.5:
        applied["reverb_rt60_s"] = round(float(rng.uniform(0.2, 1.2)), 2)
        applied["reverb_wet"] = round(float(rng.uniform(0.1, 0.4)), 2)
    if rng.random() < 0.5:
        applied["lowpass_hz"] = int(rng.choice([5000, 7000, 9000, 12000, 16000]))
    if rng.random() < 0.5:
        applied["noise_snr_db"] = round(float(rng.uniform(15.0, 45.0)), 1)
    applied["gain_db"] = round(float(rng.uniform(-30.0, 0.0)), 1)
    if rng.random() < 0.3:
        applied["codec"] = "ogg"
    return applied


def apply_distortions(x_n: np.ndarray, rate: int, applied: dict[str, Any],
                      seed: int) -> np.ndarray:
    """Applies a `draw_train_distortions` record in its order (reverb, low-pass, source rate,
    noise, peak-normalised gain, codec); `seed` draws the room response and the noise."""
    rng = np.random.default_rng(seed)
    if "reverb_rt60_s" in applied:
        x_n = reverb(x_n, rate, rng, applied["reverb_rt60_s"], applied["reverb_wet"])
    if "lowpass_hz" in applied:
        x_n = lowpass(x_n, rate, applied["lowpass_hz"])
    if "source_rate" in applied:
        x_n = through_rate(x_n, rate, applied["source_rate"])
    if "noise_snr_db" in applied:
        x_n = add_noise(x_n, rng, applied["noise_snr_db"])
    if "gain_db" in applied:
        x_n = gain(x_n / max(float(np.max(np.abs(x_n))), 1e-9), applied["gain_db"])
    if "codec" in applied:
        x_n = codec_round_trip(x_n, rate, applied["codec"])
    return x_n


def _same_length(y_n: np.ndarray, n: int) -> np.ndarray:
    y_n = np.asarray(y_n, np.float32)[:n]
    return np.pad(y_n, (0, n - y_n.shape[0])) if y_n.shape[0] < n else y_n


def _unchanged(x_n: np.ndarray, rate: int) -> np.ndarray:
    return x_n


SignalChange = Callable[[np.ndarray, int], np.ndarray]
# name -> (signal change at the clip's rate, the file's sample rate (None: the clip's), format)
USER_FILE_DISTORTIONS: dict[str, tuple[SignalChange, int | None, str]] = {
    "lowpass_8k": (lambda x, rate: lowpass(x, rate, 8000), None, "wav"),
    "lowpass_11k": (lambda x, rate: lowpass(x, rate, 11000), None, "wav"),
    "lowpass_16k": (lambda x, rate: lowpass(x, rate, 16000), None, "wav"),
    "gain_-30dB": (lambda x, rate: gain(x, -30.0), None, "wav"),
    "noise_30dB": (lambda x, rate: add_noise(x, np.random.default_rng(0), 30.0), None, "wav"),
    "source_22050": (_unchanged, 22050, "wav"),
    "source_32000": (_unchanged, 32000, "wav"),
    "source_48000": (_unchanged, 48000, "wav"),
    "mp3_22050": (_unchanged, 22050, "mp3"),
    "mp3_44100": (_unchanged, None, "mp3"),
    "vorbis_44100": (_unchanged, None, "ogg"),
}


def write_user_file(x_n: np.ndarray, rate: int, distortion: str, stem: Path) -> Path:
    """Writes mono `x_n` at `rate` Hz to `stem`.<format> through `distortion` (a key of
    `USER_FILE_DISTORTIONS`: the signal change, then the file's rate and codec); returns the path.
    Read it back with `llark_jax.audio.io.load_audio`, as the product reads a user's file."""
    from llark_jax.audio.io import resample

    change, file_rate, fmt = USER_FILE_DISTORTIONS[distortion]
    file_rate = file_rate or rate
    y_n = resample(change(np.asarray(x_n, np.float32), rate), rate, file_rate)
    path = Path(f"{stem}.{fmt}")
    sf.write(path, np.clip(y_n, -1.0, 1.0), file_rate, format=FILE_FORMATS[fmt][0],
             subtype=FILE_FORMATS[fmt][1])
    return path
