"""A recording of any length -> the audio-token windows a model is asked about (infer, serve).

A model is trained on one clip per example: `data.audio_frames` audio tokens, a *training window*
(10 s for the demo model; 23.7 s for Jukebox's 240 frames at 10.13 Hz). Which part of a longer
recording the model hears is the *span*, one policy for `infer` and `serve`:

- ``crop`` (default): one training window placed by the paper's crop rule without its coin
  (`llark_jax.audio.crop.choose_crop` with p_middle = 1, the reference's ``--p 0.0``): a recording
  longer than 60 s is heard from 30 s on, a shorter one from its start. This is the input the
  model was trained on.
- ``all``: the whole recording cut into consecutive training windows, one audio block each (the
  paper's §7 future work). Training never shows more than one block: on the demo model (8
  held-out clips of 10 s, each repeated k times, asked their key) 4 keys are right for k <= 6,
  but at k = 12 (two minutes) only 1 is and 3 answers are garbled or off task; with ``crop``
  all 4 stay right (docs/eval.md).

`benchmark` hears each track's crop by the benchmark's own rule (the paper's protocol), cut into
windows the same way. Each window is encoded on its own (the encoder sees what a training clip
of that length gives it), then goes through the model's feature pipeline (`FeatureSpec.apply`:
pool, standardise).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from llark_jax.audio.crop import CropWindow, choose_crop
from llark_jax.audio.encoders.base import AudioEncoder
from llark_jax.data.features import FeatureSpec

SPANS = ("crop", "all")


def split_waveform(waveform_n: np.ndarray, window_samples: int) -> list[np.ndarray]:
    """Consecutive windows of `window_samples`; a last partial window is kept if >= 1/10 window."""
    starts = range(0, len(waveform_n), window_samples)
    windows = [waveform_n[s : s + window_samples] for s in starts]
    if len(windows) > 1 and len(windows[-1]) < window_samples // 10:
        windows.pop()
    return windows


@dataclasses.dataclass(frozen=True)
class Windowing:
    """A model's training window and feature pipeline: recordings -> audio-token windows.

    Attributes:
      features: the model's feature pipeline (encoder name and arguments, pool, statistics).
      encoder: the encoder `features` names, built once.
      window_tokens: audio tokens of a training window (`config.data.audio_frames`).
    """

    features: FeatureSpec
    encoder: AudioEncoder
    window_tokens: int

    @classmethod
    def for_model(cls, loaded: Any) -> Windowing:
        """The windowing of a loaded model (`llark_jax.checkpoints.model_dir.LoadedModel`)."""
        from llark_jax.audio.encoders import get_encoder

        features = loaded.features
        return cls(features, get_encoder(features.encoder, **features.encoder_args),
                   int(loaded.config.data.audio_frames))

    @property
    def window_seconds(self) -> float:
        """Seconds of audio in one training window."""
        return self.window_tokens * self.features.pool / self.encoder.frame_rate_hz

    def span(self, duration_s: float, span: str) -> CropWindow:
        """The part [start_s, end_s) of a `duration_s` recording that `span` (``SPANS``) hears."""
        if span == "all":
            return CropWindow(0.0, duration_s)
        if span == "crop":
            return choose_crop("", duration_s, crop_s=self.window_seconds, p_middle=1.0)
        raise ValueError(f"span {span!r}: expected one of {', '.join(SPANS)}")

    def encode(self, waveform_n: np.ndarray) -> list[np.ndarray]:
        """Mono float32 [n] at `encoder.sample_rate` -> audio-token features [T_i, D] of each
        consecutive training window."""
        window_samples = int(round(self.window_seconds * self.encoder.sample_rate))
        frames = self.encoder.encode_batch(split_waveform(waveform_n, window_samples))
        return [self.features.apply(frames_td) for frames_td in frames]

    def file_windows(self, path: Path, start_s: float = 0.0,
                     end_s: float | None = None) -> list[np.ndarray]:
        """`encode` of the part [start_s, end_s) s of an audio file (None: to its end).
        Raises `llark_jax.audio.io.AudioError` for unusable audio."""
        from llark_jax.audio.io import SAMPLE_RATE, load_audio, resample

        waveform = load_audio(str(path), start_s, end_s)
        return self.encode(resample(waveform, SAMPLE_RATE, self.encoder.sample_rate))
