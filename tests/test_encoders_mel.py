"""`mel` encoder: shapes, determinism, and probes showing tempo and pitch class are recoverable."""

import numpy as np
import pytest

from llark_jax.audio.encoders import available_encoders, get_encoder
from llark_jax.audio.encoders.base import EncoderError
from llark_jax.audio.encoders.mel import MelEncoder

SR = 44100


@pytest.fixture(scope="module")
def mel() -> MelEncoder:
    return get_encoder("mel")


def click_track(bpm: float, seconds: float, phase_s: float = 0.05) -> np.ndarray:
    """Decaying 2 kHz clicks (20 ms) every 60/bpm s over quiet noise."""
    rng = np.random.default_rng(int(bpm))
    x_n = 0.01 * rng.standard_normal(int(seconds * SR)).astype(np.float32)
    t = np.arange(int(0.02 * SR)) / SR
    click = (np.sin(2 * np.pi * 2000 * t) * np.exp(-t / 0.004)).astype(np.float32)
    for onset in np.arange(phase_s, seconds - 0.03, 60.0 / bpm):
        i = int(round(onset * SR))
        x_n[i : i + click.size] += click
    return x_n


def tempo_probe(features_td: np.ndarray) -> float:
    """BPM from the unpooled 100 Hz onset envelope: biased autocorrelation peak, 60..176 BPM."""
    onset_n = features_td[:, MelEncoder.FEATURE_SLICES["onset"]].reshape(-1)
    onset_n = onset_n - onset_n.mean()
    lags = np.arange(34, 101)  # 100 Hz envelope: lag L <-> 6000 / L BPM
    scores = [np.dot(onset_n[:-lag], onset_n[lag:]) for lag in lags]  # biased: favours 1x over 2x
    return 6000.0 / lags[int(np.argmax(scores))]


def test_registry_names_mel_and_jukebox():
    assert {"mel", "jukebox"} <= set(available_encoders())
    with pytest.raises(EncoderError, match="unknown encoder 'nope'"):
        get_encoder("nope")


@pytest.mark.parametrize("seconds,frames", [(25.0, 250), (3.05, 30), (0.099, 0)])
def test_shapes(mel, seconds, frames):
    x_n = np.random.default_rng(0).standard_normal(int(seconds * SR)).astype(np.float32)
    (y_td,) = mel.encode_batch([x_n])
    assert y_td.shape == (frames, 160) == (frames, mel.dim)
    assert y_td.dtype == np.float32 and np.isfinite(y_td).all()
    assert sum(s.stop - s.start for s in MelEncoder.FEATURE_SLICES.values()) == mel.dim


def test_deterministic_and_batch_equals_single(mel):
    xs = [click_track(100, 4.0), click_track(130, 6.0)]
    batch = mel.encode_batch(xs)
    again = [mel.encode_batch([x])[0] for x in xs]
    for a, b in zip(batch, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_level_invariant_by_peak_normalisation(mel):
    x_n = click_track(90, 3.0)
    np.testing.assert_allclose(mel.encode_one(0.1 * x_n), mel.encode_one(x_n), atol=1e-5)


def test_rejects_stereo(mel):
    with pytest.raises(EncoderError, match="mono"):
        mel.encode_one(np.zeros((2, SR), np.float32))


@pytest.mark.parametrize("bpm", [72.0, 96.0, 120.0, 150.0])
def test_tempo_recoverable_from_features(mel, bpm):
    estimate = tempo_probe(mel.encode_one(click_track(bpm, 12.0)))
    assert abs(estimate - bpm) / bpm < 0.02, (bpm, estimate)


@pytest.mark.parametrize("midi,pitch_class", [(57, 9), (60, 0), (66, 6)])
def test_pitch_class_recoverable_from_chroma(mel, midi, pitch_class):
    t = np.arange(3 * SR) / SR
    x_n = np.sin(2 * np.pi * 440.0 * 2 ** ((midi - 69) / 12) * t).astype(np.float32)
    chroma_c = mel.encode_one(x_n)[:, MelEncoder.FEATURE_SLICES["chroma"]].mean(axis=0)
    assert int(np.argmax(chroma_c)) == pitch_class
