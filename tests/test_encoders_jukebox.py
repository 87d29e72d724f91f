"""Jukebox encoder on a tiny random Jukebox saved in the official checkpoint layout.

Real code path: 44.1 kHz, hop 128, 8192-token windows (2^20 samples), the real label/timing
conditioning; only widths and depths are tiny (tests/jukebox_fixtures.py). TINY_LAYER plays the
role of layer 36.
"""

import copy
import fractions
import os
import shutil

import numpy as np
import pytest
import torch
from jukebox_fixtures import (
    TINY_DEPTH,
    TINY_LAYER,
    save_official_layout,
    tiny_encoder_kwargs,
    write_tiny_jukebox,
)

from llark_jax.audio.encoders import get_encoder, pooling
from llark_jax.audio.encoders.base import EncoderError
from llark_jax.audio.encoders.jukebox import stitch_windows, window_starts
from llark_jax.audio.encoders.jukebox_checkpoint import (
    PRIOR_FILE,
    VQVAE_FILE,
    CheckpointKeyError,
    build_empty_models,
    build_models,
    read_state_dict,
)

SR = 44100
WINDOW = 8192 * 128


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("jukebox"))
    vqvae, prior = write_tiny_jukebox(directory)
    return directory, vqvae, prior


@pytest.fixture(scope="module")
def encoder(tiny):
    """The paper's pooling (exact 10 Hz, 25 s); the default is the code's (see below)."""
    return get_encoder("jukebox", **tiny_encoder_kwargs(tiny[0], pooling_mode="paper"))


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(1)
    return [(0.3 * rng.standard_normal(int(s * SR))).astype(np.float32) for s in (5, 10, 25)]


@pytest.fixture(scope="module")
def batch_outputs(encoder, clips):
    return encoder.encode_batch(clips)


# -- loading and the strict key check ---------------------------------------------------------
def test_loader_builds_first_layers_with_checkpoint_values(encoder, tiny):
    _, _, prior = tiny
    blocks = encoder.prior.prior.transformer._attn_mods
    assert len(blocks) == TINY_LAYER < TINY_DEPTH
    loaded = encoder.prior.state_dict()
    for key, value in prior.state_dict().items():
        if key in loaded:
            torch.testing.assert_close(loaded[key].float(), value.float(), rtol=0, atol=0)
    assert blocks[0].attn.c_attn.w.dtype == torch.float16  # stored fp16, computed in fp32
    assert encoder.dim == 16 and encoder.sample_rate == SR and encoder.hop == 128
    assert encoder.version == f"jukebox5b-layer{TINY_LAYER}-paper-max25s-float32"


def _prior_variant(tiny, tmp_path, edit) -> str:
    directory, _, prior = tiny
    shutil.copy(os.path.join(directory, VQVAE_FILE), tmp_path / VQVAE_FILE)
    state = dict(prior.state_dict())
    edit(state)
    save_official_layout(state, str(tmp_path / PRIOR_FILE), legacy_format=False)
    return str(tmp_path)


def _build(directory):
    return build_models(directory, TINY_LAYER, **{k: v for k, v in tiny_encoder_kwargs(
        directory).items() if k.endswith("overrides")})


def test_key_check_catches_missing_key(tiny, tmp_path):
    key = "prior.transformer._attn_mods.1.mlp.c_fc.w"
    directory = _prior_variant(tiny, tmp_path, lambda s: s.pop(key))
    with pytest.raises(CheckpointKeyError, match=r"1 missing key\(s\).*c_fc\.w.*0 unexpected"):
        _build(directory)


def test_key_check_catches_misnamed_key(tiny, tmp_path):
    def rename(state):
        state["prior.x_embedding.weight"] = state.pop("prior.x_emb.weight")

    directory = _prior_variant(tiny, tmp_path, rename)
    with pytest.raises(CheckpointKeyError, match=r"prior\.x_emb\.weight.*prior\.x_embedding"):
        _build(directory)


def test_key_check_allows_extra_keys_only_from_unused_blocks(tiny, tmp_path):
    def add_extra(state):
        state[f"prior.transformer._attn_mods.{TINY_LAYER - 1}.attn.extra"] = torch.zeros(1)

    directory = _prior_variant(tiny, tmp_path, add_extra)
    with pytest.raises(CheckpointKeyError, match="1 unexpected key"):
        _build(directory)
    # The fixture's prior holds TINY_DEPTH > TINY_LAYER blocks: those extra keys are accepted.
    assert len(_build(tiny[0]).prior.prior.transformer._attn_mods) == TINY_LAYER


@pytest.mark.slow
def test_real_5b_config_builds_36_blocks_on_meta_device():
    models = build_empty_models(36)
    state = models.prior.state_dict()
    assert len(models.prior.prior.transformer._attn_mods) == 36
    assert state["prior.pos_emb.pos_emb"].shape == (8192, 4800)
    assert state["prior.transformer._attn_mods.35.mlp.c_fc.w"].dtype == torch.float16
    assert 2.5e9 < sum(v.numel() for v in state.values()) < 2.6e9  # 36 of 72 blocks of 5.06 B
    assert (models.sample_rate, models.hop) == (SR, 128)


@pytest.mark.parametrize("legacy_format", [False, True])
def test_weights_only_refuses_arbitrary_objects(tmp_path, legacy_format):
    path = tmp_path / "odd.pth.tar"
    torch.save({"model": {"w": torch.ones(1)}, "odd": fractions.Fraction(1, 3)}, path,
               _use_new_zipfile_serialization=not legacy_format)
    with pytest.raises(EncoderError, match="jukebox-trust-pickle"):
        read_state_dict(str(path))
    assert list(read_state_dict(str(path), trust_pickle=True)) == ["w"]


# -- outputs --------------------------------------------------------------------------------------
def test_paper_shapes_for_5_10_25_seconds(batch_outputs):
    assert [y.shape for y in batch_outputs] == [(50, 16), (100, 16), (250, 16)]
    assert all(y.dtype == np.float32 and np.isfinite(y).all() for y in batch_outputs)


def test_window_plan_for_25_seconds(encoder):
    plan, starts = encoder.plan(25 * SR)
    assert (plan.n_frames, plan.n_tokens, starts) == (250, 8614, [0, 422])
    assert window_starts(8192, 8192) == [0] and window_starts(20000, 8192) == [0, 8192, 11808]


def test_paper_mode_feeds_only_the_first_25_seconds(encoder, monkeypatch):
    seen = []

    def record(audio_bn, offsets_b):
        seen.append((audio_bn.copy(), list(offsets_b)))
        return np.zeros((len(offsets_b), 8192, encoder.dim), np.float32)

    monkeypatch.setattr(encoder, "window_activations", record)
    x_n = (0.1 * np.random.default_rng(4).standard_normal(30 * SR)).astype(np.float32)
    x_n[1000] = 2.0  # the peak lies in the first 25 s, so normalisation is the same for both
    assert encoder.encode_batch([x_n])[0].shape == (250, 16)
    encoder.encode_batch([x_n[: 25 * SR]])
    (long_bn, long_offsets), (short_bn, short_offsets) = seen
    assert long_offsets == short_offsets == [0, 422 * 128]
    np.testing.assert_array_equal(long_bn, short_bn)
    assert not long_bn[1, 25 * SR - 422 * 128 :].any()  # zero padding after 25 s
    np.testing.assert_array_equal(long_bn[0], x_n[:WINDOW] / 2.0)


def test_stitch_takes_each_token_from_earliest_window():
    a_td, b_td = np.zeros((4, 1), np.float32), np.ones((4, 1), np.float32)
    np.testing.assert_array_equal(stitch_windows([a_td, b_td], [0, 2], 6)[:, 0], [0, 0, 0, 0, 1, 1])


def test_batch_of_three_equals_three_single_runs(encoder, clips, batch_outputs):
    for x_n, batched in zip(clips, batch_outputs, strict=True):
        np.testing.assert_allclose(encoder.encode_batch([x_n])[0], batched, rtol=1e-5, atol=1e-5)


def test_reference_pooling_is_the_default_and_its_shapes(tiny, clips):
    ref = get_encoder("jukebox", **tiny_encoder_kwargs(tiny[0]))  # no pooling_mode: the default
    assert ref.pooling_mode == "reference"  # the code's grid, what configs/llark_7b.py trains on
    assert ref.version == f"jukebox5b-layer{TINY_LAYER}-reference-float32"
    assert ref.frame_rate_hz == pytest.approx(344.53125 / 34)
    assert [y.shape for y in ref.encode_batch(clips[1:])] == [(101, 16), (240, 16)]


def test_bfloat16_compute_tracks_float32(tiny, encoder):
    low = get_encoder("jukebox", **tiny_encoder_kwargs(tiny[0], dtype="bfloat16"))
    assert low.version.endswith("-bfloat16")
    audio_bn = (0.3 * np.random.default_rng(3).standard_normal((1, WINDOW))).astype(np.float32)
    ref = encoder.window_activations(audio_bn, [0])
    rel = np.linalg.norm(low.window_activations(audio_bn, [0]) - ref) / np.linalg.norm(ref)
    assert rel < 0.03, rel


# -- pooling --------------------------------------------------------------------------------------
def numpy_reference_pool(acts_td, bounds):
    return np.stack([acts_td[a:b].astype(np.float64).mean(axis=0) for a, b in bounds]).astype(
        np.float32)


def test_paper_pooling_equals_numpy_reference_exactly():
    acts_td = np.random.default_rng(0).integers(-1000, 1000, (8614, 5)).astype(np.float32)
    plan = pooling.paper_plan(25 * SR, SR, 128)
    # Frame k: tokens whose first sample t*128 lies in [4410 k, 4410 (k+1)).
    bounds = [(-(-4410 * k // 128), -(-4410 * (k + 1) // 128)) for k in range(250)]
    assert {b - a for a, b in bounds} == {34, 35} and bounds[-1][1] == plan.n_tokens == 8614
    np.testing.assert_array_equal(pooling.mean_pool(acts_td, plan),
                                  numpy_reference_pool(acts_td, bounds))


def test_reference_pooling_equals_avgpool_34_exactly():
    acts_td = np.random.default_rng(1).integers(-1000, 1000, (8192, 3)).astype(np.float32)
    plan = pooling.reference_plan(WINDOW + 5000, 128, 8192, 34)
    expected = torch.nn.AvgPool1d(34, 34)(torch.from_numpy(acts_td).T[None])[0].T.numpy()
    np.testing.assert_array_equal(pooling.mean_pool(acts_td, plan), expected)
    assert plan.n_frames == 240 and pooling.reference_window_tokens(SR, 128) == 34


# -- the block output against the package's own forward -----------------------------------------
class _Int64Meta(type):
    def __instancecheck__(cls, x):
        return isinstance(x, torch.Tensor) and x.dtype == torch.int64


def package_block_output(vqvae, prior, audio_bn, offsets):
    """The reference procedure through jukebox_infer's own code: `vqvae.encode` -> top codes,
    labeller + `get_cond`, `prior.forward(only_encode=True)` on a prior cut to TINY_LAYER."""
    prior = copy.deepcopy(prior)
    prior.prior.transformer._attn_mods = prior.prior.transformer._attn_mods[:TINY_LAYER]
    prior.prior.only_encode = True
    z_bt = vqvae.encode(torch.from_numpy(audio_bn)[:, :, None])[-1]
    total_length = (int(62 * SR) // 128) * 128
    metas = [dict(artist="unknown", genre="unknown", total_length=total_length, offset=o,
                  lyrics="placeholder") for o in offsets]
    x_cond, y_cond, _ = prior.get_cond(None, prior.get_y(prior.labeller.get_batch_labels(metas), 0))
    with torch.no_grad():
        return z_bt, prior.prior.forward(z_bt, x_cond, y_cond, encoder_kv=None, fp16=False).numpy()


def test_block_output_equals_package_forward(encoder, tiny, monkeypatch):
    _, vqvae, prior = tiny
    monkeypatch.setattr(torch.cuda, "LongTensor", _Int64Meta("LongTensor", (), {}))
    audio_bn = (0.3 * np.random.default_rng(2).standard_normal((1, WINDOW))).astype(np.float32)
    offsets = [422 * 128]  # a second window's timing (the first window's offset is 0)
    z_ref, acts_ref = package_block_output(vqvae, prior, audio_bn, offsets)
    torch.testing.assert_close(encoder.top_codes(torch.from_numpy(audio_bn)), z_ref, rtol=0, atol=0)
    acts = encoder.window_activations(audio_bn, offsets)
    assert acts.shape == (1, 8192, 16)
    np.testing.assert_allclose(acts, acts_ref, rtol=1e-4, atol=1e-4)
    # Control: the comparison is sensitive to the conditioning (another timing offset).
    assert np.abs(encoder.window_activations(audio_bn, [0]) - acts_ref).max() > 1e-2
