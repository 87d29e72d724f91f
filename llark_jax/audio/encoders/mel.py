"""`mel`: the weight-free embedded default encoder (log-mel + chroma + onset envelope at 10 Hz).

Features are computed at 44.1 kHz from one STFT (n_fft 2048, hop 441 = 10 ms, Hann window,
centred) of the peak-normalised clip, then grouped into 100 ms frames of 10 STFT sub-frames.
Frame k (covering [0.1 k, 0.1 (k+1)) s) has D = 160 float32 features, in this column order:

  [0:128)    log-mel: mean over the 10 sub-frames of ln(mel power + 1e-6), 128 Slaney mel bands
             (20 Hz - 16 kHz), scaled by 1/10 to keep values near unit range;
  [128:140)  chroma: mean of the per-sub-frame chroma (librosa `chroma_stft`, C..B) -> key;
  [140:150)  onset envelope: the 10 sub-frame spectral-flux onset strengths (100 Hz), unpooled,
             so beat positions within a frame survive -> tempo and metre;
  [150:160)  loudness: the 10 sub-frame ln(RMS + 1e-6) values / 10.

A clip of n samples gives T = floor(n / 4410) frames (250 for 25 s). The slices are exported as
`MelEncoder.FEATURE_SLICES`.
"""

from __future__ import annotations

from collections.abc import Sequence

import librosa
import numpy as np

from llark_jax.audio.encoders.base import AudioEncoder, as_mono_float32, peak_normalise

SAMPLE_RATE = 44100
FRAME_RATE_HZ = 10
SUBFRAMES = 10
HOP = SAMPLE_RATE // (FRAME_RATE_HZ * SUBFRAMES)  # 441 samples = 10 ms
N_FFT = 2048
N_MELS = 128
LOG_FLOOR = 1e-6
LOG_SCALE = 0.1


class MelEncoder(AudioEncoder):
    """Log-mel/chroma/onset features on the 10 Hz grid; no weights, ~0.1 s per 25 s clip."""

    name = "mel"
    version = "mel-v1-sr44100-fft2048-hop441-mel128-chroma12-onset10-rms10"
    frame_rate_hz = float(FRAME_RATE_HZ)
    sample_rate = SAMPLE_RATE
    FEATURE_SLICES = {
        "log_mel": slice(0, 128),
        "chroma": slice(128, 140),
        "onset": slice(140, 150),
        "log_rms": slice(150, 160),
    }
    dim = 160

    def __init__(self) -> None:
        self._mel_fb = librosa.filters.mel(
            sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS, fmin=20.0, fmax=16000.0
        ).astype(np.float32)
        self._chroma_fb = librosa.filters.chroma(sr=SAMPLE_RATE, n_fft=N_FFT).astype(np.float32)

    def encode_batch(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.encode_one(x_n) for x_n in waveforms]

    def encode_one(self, waveform: np.ndarray) -> np.ndarray:
        """float32 [n_samples] at 44.1 kHz -> float32 [floor(n / 4410), 160]."""
        x_n = peak_normalise(as_mono_float32(waveform))
        n_frames = x_n.shape[0] // (HOP * SUBFRAMES)
        if n_frames == 0:
            return np.zeros((0, self.dim), np.float32)
        n_sub = n_frames * SUBFRAMES
        power_fs = np.abs(librosa.stft(x_n, n_fft=N_FFT, hop_length=HOP, center=True)) ** 2
        power_fs = power_fs[:, :n_sub]
        mel_ms = self._mel_fb @ power_fs
        log_mel_ms = np.log(mel_ms + LOG_FLOOR)
        chroma_cs = self._chroma_fb @ power_fs
        chroma_cs = chroma_cs / np.maximum(chroma_cs.max(axis=0, keepdims=True), 1e-10)
        # Spectral flux on the log-mel (half-wave rectified first difference), sub-frame 0 = 0.
        flux_ms = np.maximum(np.diff(log_mel_ms, axis=1, prepend=log_mel_ms[:, :1]), 0.0)
        onset_s = flux_ms.mean(axis=0)
        rms_s = np.sqrt(power_fs.sum(axis=0) * 2.0) / N_FFT  # Parseval for a Hann-windowed frame
        features = [
            LOG_SCALE * _frame_mean(log_mel_ms, n_frames),
            _frame_mean(chroma_cs, n_frames),
            onset_s.reshape(n_frames, SUBFRAMES),
            LOG_SCALE * np.log(rms_s + LOG_FLOOR).reshape(n_frames, SUBFRAMES),
        ]
        return np.concatenate(features, axis=1).astype(np.float32)


def _frame_mean(values_fs: np.ndarray, n_frames: int) -> np.ndarray:
    """[F, n_frames * SUBFRAMES] -> [n_frames, F]: mean over each frame's 10 sub-frames."""
    return values_fs.reshape(values_fs.shape[0], n_frames, SUBFRAMES).mean(axis=2).T
