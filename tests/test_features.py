"""The feature pipeline saved with every model (`llark_jax.data.features`): pooling,
standardisation, the records' storage dtype, and its JSON round trip."""

import ml_dtypes
import numpy as np
import pytest

from llark_jax.data.features import FeatureSpec, fit_standardization, mean_pool_frames


def test_mean_pool_averages_groups_and_the_partial_tail():
    x_td = np.arange(14, dtype=np.float32).reshape(7, 2)
    pooled = mean_pool_frames(x_td, 3)
    np.testing.assert_array_equal(pooled, [[2, 3], [8, 9], [12, 13]])
    with pytest.raises(ValueError, match="group"):
        mean_pool_frames(x_td, 0)


def test_standardised_spec_pools_then_scales_and_round_trips_through_json():
    rng = np.random.default_rng(0)
    clips = [rng.normal(3.0, 2.0, (20, 4)).astype(np.float32) for _ in range(5)]
    mean, std = fit_standardization(clips, pool=2)
    pooled = np.concatenate([mean_pool_frames(c, 2) for c in clips])
    np.testing.assert_allclose(mean, pooled.astype(np.float64).mean(0), rtol=1e-12)
    spec = FeatureSpec(encoder="mel", encoder_args={"n_mels": 4}, pool=2, mean=mean, std=std)
    out = spec.apply(clips[0])
    assert out.shape == (10, 4) and out.dtype == np.float32
    np.testing.assert_allclose(out, (mean_pool_frames(clips[0], 2) - mean) / std, rtol=1e-6)
    again = FeatureSpec.from_json(spec.to_json())
    np.testing.assert_array_equal(again.apply(clips[1]), spec.apply(clips[1]))
    assert again.encoder_args == {"n_mels": 4} and again.tokens_for(21) == 11


def test_frames_are_rounded_to_the_records_storage_dtype():
    """Training reads bfloat16 records; inference computes float32 frames from audio. With the
    storage dtype in the spec both give the model the same values."""
    rng = np.random.default_rng(1)
    frames = rng.normal(size=(8, 3)).astype(np.float32)
    stored = frames.astype(ml_dtypes.bfloat16)  # what a bf16 record holds
    spec = FeatureSpec(pool=2, mean=np.zeros(3), std=np.full(3, 0.5), storage_dtype="bfloat16")
    np.testing.assert_array_equal(spec.apply(frames), spec.apply(stored))
    plain = FeatureSpec(pool=2, mean=np.zeros(3), std=np.full(3, 0.5))
    assert not np.array_equal(plain.apply(frames), plain.apply(stored))
