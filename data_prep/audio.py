"""Audio loading, validation and the paper's crop rule.

Everything downstream (madmom, encoders) expects mono float32 at 44.1 kHz, so `load_audio` returns
exactly that: a 1-D ``np.ndarray`` of shape ``[n_samples]`` in [-1, 1]-ish units, resampled with
soxr's very-high-quality filter when the file has another rate. Decoding is libsndfile's (via
soundfile), which reads wav/flac/ogg/aiff and, since 1.1, mp3, so no second decoder is needed.
Bad files raise an `AudioError` subclass that names the file and the reason; stage runners record
it and carry on.

Crop rule (paper §G.1; the reference's `crop_audio.py` is the 30 s setting of the same rule):
a track of duration <= ``long_threshold_s`` (60 s) keeps its first ``crop_s`` seconds (all of it if
shorter); a longer track gets ``[30, 30 + crop_s)`` with probability ``p_middle`` (0.8) and
``[0, crop_s)`` otherwise. The coin is seeded by the clip's track id, so reruns crop identically.
Multicrop (MusicNet captioning) emits every full window ``[i * crop_s, (i + 1) * crop_s)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 44100
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
MAX_CHANNELS = 32
MIN_SOURCE_RATE = 4000
MAX_SOURCE_RATE = 384000


class AudioError(Exception):
    """A file that cannot become a usable clip. ``str(err)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class MissingAudioError(AudioError):
    """The path does not exist or is not a regular file."""


class EmptyAudioError(AudioError):
    """Zero bytes, or a valid header with zero frames."""


class TruncatedAudioError(AudioError):
    """The header promises more sample data than the file holds."""


class UndecodableAudioError(AudioError):
    """No decoder could read the file (wrong format, corrupt header, random bytes)."""


class InvalidFormatError(AudioError):
    """Decodable but absurd: too many channels or an implausible sample rate."""


class NonFiniteAudioError(AudioError):
    """NaN or infinite samples."""


class SilentAudioError(AudioError):
    """Every sample is exactly zero (nothing to annotate or embed)."""


class TooShortAudioError(AudioError):
    """Shorter than the minimum clip length."""


def _check_wav_truncation(path: Path) -> None:
    """Raise `TruncatedAudioError` when a RIFF/WAVE data chunk is longer than the file.

    libsndfile silently clamps the frame count to what is present, so truncation is only visible
    by comparing the declared chunk size with the bytes on disk.
    """
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return
        size_on_disk = path.stat().st_size
        while True:
            chunk = f.read(8)
            if len(chunk) < 8:
                return
            chunk_id, chunk_size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if chunk_id == b"data":
                # 0 and 0xFFFFFFFF mark streamed files whose size was never patched.
                if chunk_size not in (0, 0xFFFFFFFF) and f.tell() + chunk_size > size_on_disk:
                    raise TruncatedAudioError(
                        path,
                        f"data chunk declares {chunk_size} bytes but only "
                        f"{size_on_disk - f.tell()} are present",
                    )
                return
            f.seek(chunk_size + (chunk_size & 1), os.SEEK_CUR)


def probe_audio(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Validate a file's container without decoding it; returns soundfile's info (rate, frames).

    Raises the `AudioError` subclass describing the first problem found.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingAudioError(path, "no such file" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise EmptyAudioError(path, "file is 0 bytes")
    _check_wav_truncation(path)
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise UndecodableAudioError(path, f"cannot decode: {err}") from err
    if not 1 <= info.channels <= MAX_CHANNELS:
        raise InvalidFormatError(path, f"{info.channels} channels (allowed 1..{MAX_CHANNELS})")
    if not MIN_SOURCE_RATE <= info.samplerate <= MAX_SOURCE_RATE:
        raise InvalidFormatError(
            path, f"sample rate {info.samplerate} Hz (allowed {MIN_SOURCE_RATE}..{MAX_SOURCE_RATE})"
        )
    if info.frames <= 0:
        raise EmptyAudioError(path, "header is valid but holds no audio frames")
    return info


def audio_duration(path: str | os.PathLike) -> float:
    """Duration in seconds from the header (validated by `probe_audio`)."""
    info = probe_audio(path)
    return info.frames / info.samplerate


def resample(audio_n: np.ndarray, source_rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample a mono float32 signal with soxr's very-high-quality filter."""
    if source_rate == target_rate:
        return audio_n
    import soxr

    return soxr.resample(audio_n, source_rate, target_rate, quality="VHQ").astype(np.float32)


def load_audio(
    path: str | os.PathLike,
    start_s: float = 0.0,
    end_s: float | None = None,
    *,
    min_duration_s: float = 0.0,
) -> np.ndarray:
    """Read ``[start_s, end_s)`` of a file as mono float32 at 44.1 kHz, shape ``[n_samples]``.

    ``end_s=None`` reads to the end. Multichannel input is averaged to mono. Raises an
    `AudioError` subclass for every kind of unusable input (see the module docstring).
    """
    info = probe_audio(path)
    duration_s = info.frames / info.samplerate
    if duration_s < min_duration_s:
        raise TooShortAudioError(path, f"{duration_s:.3f} s < minimum {min_duration_s:.3f} s")
    first = int(round(start_s * info.samplerate))
    last = info.frames if end_s is None else min(info.frames, int(round(end_s * info.samplerate)))
    try:
        data_nc, rate = sf.read(
            str(path), start=first, stop=last, dtype="float32", always_2d=True
        )
    except (sf.LibsndfileError, RuntimeError) as err:
        raise UndecodableAudioError(path, f"decoding failed: {err}") from err
    if data_nc.shape[0] == 0:
        raise EmptyAudioError(path, f"no frames in [{start_s:.3f}, {end_s}) s")
    if not np.isfinite(data_nc).all():
        bad = int((~np.isfinite(data_nc)).sum())
        raise NonFiniteAudioError(path, f"{bad} NaN/inf samples")
    if not data_nc.any():
        raise SilentAudioError(path, "all samples are zero")
    return resample(data_nc.mean(axis=1).astype(np.float32), rate)


def write_wav_atomic(path: str | os.PathLike, audio_n: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write a float32 WAV (like the reference's scipy writer) via tmp file + ``os.replace``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    sf.write(str(tmp), np.asarray(audio_n, np.float32), rate, subtype="FLOAT", format="WAV")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- crop rule


@dataclass(frozen=True)
class CropWindow:
    """A clip window in seconds, ``[start_s, end_s)`` on the source track's time axis."""

    start_s: float
    end_s: float

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def _unit_uniform(track_id: str, seed: int) -> float:
    """A U(0, 1) draw that depends only on ``(track_id, seed)``: stable across runs and hosts."""
    digest = hashlib.sha256(f"{seed}:{track_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def choose_crop(
    track_id: str,
    duration_s: float,
    *,
    crop_s: float = 25.0,
    p_middle: float = 0.8,
    middle_start_s: float = 30.0,
    long_threshold_s: float = 60.0,
    seed: int = 0,
) -> CropWindow:
    """The paper's single-crop rule (module docstring), seeded by ``track_id``.

    The reference's 30 s files are ``crop_s=30``; its ``--p 0.0`` (GiantSteps key, MedleyDB) is
    ``p_middle=1.0`` here.
    """
    if duration_s <= long_threshold_s or _unit_uniform(track_id, seed) >= p_middle:
        return CropWindow(0.0, min(crop_s, duration_s))
    return CropWindow(middle_start_s, min(middle_start_s + crop_s, duration_s))


def multicrop_windows(duration_s: float, crop_s: float = 25.0) -> list[CropWindow]:
    """Every full window ``[i * crop_s, (i + 1) * crop_s)``; a partial last window is dropped."""
    count = int(np.floor(duration_s / crop_s + 1e-9))
    return [CropWindow(i * crop_s, (i + 1) * crop_s) for i in range(count)]


_CLIP_ID = re.compile(r"^(?P<uid>.+)-start(?P<start>\d+\.\d{3})-end(?P<end>\d+\.\d{3})$")


def clip_id(track_id: str, window: CropWindow) -> str:
    """The reference's clip uri: ``f"{track_id}-start{start:.3f}-end{end:.3f}"``."""
    return f"{track_id}-start{window.start_s:.3f}-end{window.end_s:.3f}"


def parse_clip_id(clip: str) -> tuple[str, CropWindow]:
    """Inverse of `clip_id`; anchored at the end, so track ids containing ``-`` survive."""
    match = _CLIP_ID.match(clip)
    if match is None:
        raise ValueError(f"not a clip id of the form '<id>-startS.SSS-endE.EEE': {clip!r}")
    return match["uid"], CropWindow(float(match["start"]), float(match["end"]))


def list_audio_files(directory: str | os.PathLike) -> list[Path]:
    """Audio files (by extension, case-insensitive) under ``directory``, recursively, sorted."""
    root = Path(directory)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)


def list_tracks(
    audio_dir: str | os.PathLike | None = None, records: str | os.PathLike | None = None
) -> list[tuple[str, str]]:
    """``(track_id, audio_path)`` pairs a stage works on: every audio file under ``audio_dir``
    (id = file stem), or the ``id``/``audio_path`` of each line of a jsonify ``records`` JSONL
    (ids as the dataset defines them, e.g. FMA ``"2"`` for ``000/000002.mp3``)."""
    if (audio_dir is None) == (records is None):
        raise ValueError("give exactly one of audio_dir and records")
    if audio_dir is not None:
        return [(p.stem, str(p)) for p in list_audio_files(audio_dir)]
    with open(records, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(str(row["id"]), str(row["audio_path"])) for row in rows]
