"""Uploaded audio bytes -> validated mono waveform -> encoder features `[T, D]` for the prompt.

Content is validated by decoding, never by a file name or the request's `format` field: the bytes
are written to a file the server names itself (a private temporary directory; nothing from the
request becomes a path) and read with `llark_jax.audio.io` (libsndfile: wav, flac, ogg/vorbis/opus,
mp3, aiff), whose typed `AudioError`s become HTTP errors:

    more than `max_audio_bytes`                  -> 413 audio_too_large
    more than `max_audio_samples` frames x channels
      (read from the header, before decoding)     -> 413 audio_too_large
    0 bytes, truncated, undecodable, no frames,
    NaN/inf, all-zero, bad channel count/rate     -> 422 invalid_audio
    a heard span longer than `max_audio_seconds`  -> 422 audio_too_long (only `--span all`:
                                                    a crop is one training window)

The server hears the span of each clip that `infer` hears (`llark_jax.infer.windows`; `--span`,
default one training window by the paper's crop rule), and only that span is decoded. Features
come from the model's feature pipeline (`llark_jax.data.features.FeatureSpec`, saved with the
model): its encoder with the training arguments (`llark_jax.audio.encoders.get_encoder`; a torch
encoder imports torch only when built), then the same pooling and standardisation the training
records went through; each window is one audio block of the prompt.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import os
import tempfile
import threading

import numpy as np

from llark_jax.infer.windows import Windowing


class AudioInputError(Exception):
    """Unusable audio in a request: an HTTP status, an OpenAI-style error code and a reason."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class AudioLimits:
    """Per-clip bounds (bytes of the encoded file, seconds of audio).

    The decoded size is bounded too, from the header before any sample is read: frames x
    channels at most `max_audio_seconds` of mono audio at the highest accepted sample rate
    (`llark_jax.audio.io.MAX_SOURCE_RATE`, 384 kHz), i.e. 46 MB of float32 for 30 s. A 30 s,
    8-channel, 384 kHz file (367 MB decoded) is refused; 30 s of 192 kHz stereo is accepted."""

    max_audio_bytes: int = 10 * 2**20
    max_audio_seconds: float = 30.0

    @property
    def max_audio_samples(self) -> int:
        from llark_jax.audio.io import MAX_SOURCE_RATE

        return int(self.max_audio_seconds * MAX_SOURCE_RATE)


def decode_base64_audio(data: str, limits: AudioLimits) -> bytes:
    """The bytes of an `input_audio.data` field; 422 when not base64, 413 when too large."""
    if not isinstance(data, str):
        raise AudioInputError(400, "invalid_request", "input_audio.data must be a base64 string")
    if len(data) * 3 // 4 > limits.max_audio_bytes + 3:
        raise AudioInputError(413, "audio_too_large", f"audio is larger than the limit of "
                                                      f"{limits.max_audio_bytes} bytes")
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        message = f"input_audio.data is not base64: {err}"
        raise AudioInputError(422, "invalid_audio", message) from None


class AudioFeaturizer:
    """Bytes -> the audio-token windows `[T_i, D]` of the part of a clip the model hears
    (`llark_jax.infer.windows`, the span `infer` uses too), through the model's feature
    pipeline (thread-safe)."""

    def __init__(self, windowing: Windowing, limits: AudioLimits, span: str = "crop"):
        self.windowing = windowing
        self.encoder = windowing.encoder
        self.limits = limits
        self.span = span
        self._tmpdir = tempfile.TemporaryDirectory(prefix="llark-serve-")
        self._lock = threading.Lock()
        self._counter = 0

    def waveform(self, data: bytes) -> np.ndarray:
        """The validated mono float32 waveform of the heard span, at the encoder's rate (raises
        `AudioInputError`). Only the span is decoded, so with span ``crop`` a recording of any
        length costs one training window."""
        from llark_jax.audio import io as audio

        if len(data) > self.limits.max_audio_bytes:
            raise AudioInputError(413, "audio_too_large", f"audio of {len(data)} bytes exceeds "
                                  f"the limit of {self.limits.max_audio_bytes} bytes")
        if not data:
            raise AudioInputError(422, "invalid_audio", "audio is empty (0 bytes)")
        with self._lock:
            self._counter += 1
            path = os.path.join(self._tmpdir.name, f"upload-{self._counter}")
        with open(path, "wb") as f:
            f.write(data)
        try:
            info = audio.probe_audio(path)  # the header only: nothing decoded yet
            heard = self.windowing.span(info.frames / info.samplerate, self.span)
            if heard.duration_s > self.limits.max_audio_seconds:
                raise AudioInputError(422, "audio_too_long", f"audio is {heard.duration_s:.1f} s "
                                      f"long; the limit is {self.limits.max_audio_seconds:g} s")
            samples = int(heard.duration_s * info.samplerate) * info.channels
            if samples > self.limits.max_audio_samples:
                raise AudioInputError(
                    413, "audio_too_large", f"audio would decode to {samples} samples "
                    f"({heard.duration_s:.1f} s x {info.channels} channels at "
                    f"{info.samplerate} Hz); the limit is {self.limits.max_audio_samples} samples")
            waveform = audio.load_audio(path, heard.start_s, heard.end_s)
        except audio.AudioError as err:
            reason = err.reason.replace(path, "the upload")  # no server paths in replies
            raise AudioInputError(422, "invalid_audio", f"audio rejected: {reason}") from None
        finally:
            os.remove(path)
        if self.encoder.sample_rate != audio.SAMPLE_RATE:
            waveform = audio.resample(waveform, audio.SAMPLE_RATE, self.encoder.sample_rate)
        return waveform

    def windows(self, data: bytes) -> list[np.ndarray]:
        """Audio-token features `[T_i, D]` float32 (each T_i >= 1) of every window heard."""
        windows = self.windowing.encode(self.waveform(data))
        if any(w.shape[0] == 0 for w in windows):
            raise AudioInputError(422, "invalid_audio", "audio is shorter than one encoder frame "
                                  f"({1 / self.encoder.frame_rate_hz:g} s)")
        return windows

    def close(self) -> None:
        self._tmpdir.cleanup()
