"""Audio loading and validation, shared by the offline stage (`data_prep`) and `infer`/`serve`.

Everything downstream (madmom, encoders) expects mono float32 at 44.1 kHz, so `load_audio` returns
exactly that: a 1-D ``np.ndarray`` of shape ``[n_samples]`` in [-1, 1]-ish units, resampled with
soxr's very-high-quality filter when the file has another rate. Decoding is libsndfile's (via
soundfile), which reads wav/flac/ogg/aiff and, since 1.1, mp3, so no second decoder is needed.
Bad files raise an `AudioError` subclass that names the file and the reason; stage runners record
it and carry on, `serve` turns it into an HTTP error.

Compressed formats (MP3, Ogg, FLAC) state their length in a header (MP3: the Xing/Info frame)
that a cut file keeps, and libsndfile reports that length. `probe_audio` therefore decodes such a
file once (about 0.5 ms per second of audio; cached by path, size and mtime) and raises
`TruncatedAudioError` when fewer samples come out than the header promises, so `crop`,
`annotate`, `infer` and `serve` never record a cut file with its header's duration.

The paper's crop rule, which only the offline stage applies, is in `data_prep.clips`.
"""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path

import numpy as np
import soundfile as sf

from llark_jax.errors import MissingInputError

SAMPLE_RATE = 44100
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
MAX_CHANNELS = 32
MIN_SOURCE_RATE = 4000
MAX_SOURCE_RATE = 384000
# Formats whose header length is checked against the decoded stream, and the shortfall allowed
# (decoders differ by up to a frame of encoder delay/padding; a truncated file misses far more).
COMPRESSED_FORMATS = ("MP3", "OGG", "FLAC")
TRUNCATION_TOLERANCE = (4096, 0.01)  # samples, fraction of the header's length
DECODE_BLOCK_FRAMES = 1 << 22  # frames per read of the truncation check (95 s at 44.1 kHz)
# The shortest audio `infer` takes: one frame of the 10 Hz grid every encoder here produces.
MIN_DURATION_S = 0.1


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


@functools.lru_cache(maxsize=512)
def _decoded_frames(path: str, size: int, mtime_ns: int) -> tuple[int, str | None]:
    """(frames the decoder delivers, the decoder's error if it stopped on one).

    Decodes in blocks of `DECODE_BLOCK_FRAMES` int16 frames: every read of an MP3 after the
    first can make libmpg123 print a spurious `error: part2_3_length ... too large` line to stderr
    (the samples are those of one whole read), so a clip is decoded in one read and a song in a
    few, with at most 16 MiB per block of stereo."""
    del size, mtime_ns  # cache key only: a rewritten file is decoded again
    frames = 0
    try:
        with sf.SoundFile(path) as f:  # not `blocks()`: it pads a short read to the header's size
            while block := len(f.read(DECODE_BLOCK_FRAMES, dtype="int16", always_2d=True)):
                frames += block
    except (sf.LibsndfileError, RuntimeError) as err:
        return frames, str(err)
    return frames, None


def _check_decoded_length(path: Path, info: sf._SoundFileInfo) -> None:
    """Raise `TruncatedAudioError` when a compressed file decodes to less than its header says."""
    stat = path.stat()
    frames, error = _decoded_frames(str(path), stat.st_size, stat.st_mtime_ns)
    samples, fraction = TRUNCATION_TOLERANCE
    if frames >= info.frames - max(samples, fraction * info.frames) and error is None:
        return
    rate, stops = info.samplerate, f" (decoder: {error})" if error else ""
    raise TruncatedAudioError(
        path, f"decoded {frames / rate:.3f} s of the {info.frames / rate:.3f} s its {info.format} "
              f"header promises: the file is cut short{stops}")


def probe_audio(path: str | os.PathLike) -> sf._SoundFileInfo:
    """Validate a file; returns soundfile's info (rate, frames). Containers with exact lengths
    (WAV, AIFF) are checked from their headers; compressed streams are decoded once to check the
    header's length (`COMPRESSED_FORMATS`).

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
    if info.format in COMPRESSED_FORMATS:
        _check_decoded_length(path, info)
    return info


def check_audio(path: str | os.PathLike, min_duration_s: float = MIN_DURATION_S) -> float:
    """`probe_audio` plus a minimum length; returns the duration in seconds. What a command that
    takes audio files checks before loading a model."""
    info = probe_audio(path)
    duration_s = info.frames / info.samplerate
    if duration_s < min_duration_s:
        raise TooShortAudioError(path, f"{duration_s:.4f} s ({info.frames} samples) is too "
                                       f"short: the minimum is {min_duration_s} s")
    return duration_s


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
    samples, fraction = TRUNCATION_TOLERANCE
    if data_nc.shape[0] < (last - first) - max(samples, fraction * (last - first)):
        raise TruncatedAudioError(path, f"decoded {data_nc.shape[0]} of the {last - first} "
                                        f"samples its header promises in [{start_s:.3f}, "
                                        f"{end_s}) s")
    if not np.isfinite(data_nc).all():
        bad = int((~np.isfinite(data_nc)).sum())
        raise NonFiniteAudioError(path, f"{bad} NaN/inf samples")
    if not data_nc.any():
        raise SilentAudioError(path, "all samples are zero")
    return resample(data_nc.mean(axis=1).astype(np.float32), rate)


def list_audio_files(directory: str | os.PathLike) -> list[Path]:
    """Audio files (by extension, case-insensitive) under ``directory``, recursively, sorted."""
    root = Path(directory)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)


def require_audio_files(directory: str | os.PathLike, flag: str = "--audio-dir", *,
                        files_only: bool = False) -> list[Path]:
    """`list_audio_files` of a command's input folder. A missing folder, a file in its place or
    a folder without audio files is a user mistake (`MissingInputError`, named by `flag`), never
    an empty, successful run. Entries that are not files (a dangling link, a folder named
    `x.wav`) stay in the list, for the stage to report as skipped, unless `files_only`."""
    root = Path(directory)
    if not root.exists():
        raise MissingInputError(f"{flag} {directory}: no such directory")
    if not root.is_dir():
        raise MissingInputError(f"{flag} {directory}: not a directory")
    files = [p for p in list_audio_files(root) if p.is_file() or not files_only]
    if not files:
        raise MissingInputError(f"{flag} {directory}: no audio files "
                                f"({', '.join(sorted(AUDIO_EXTENSIONS))}, searched recursively)")
    return files
