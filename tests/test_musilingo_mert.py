"""MERT encoder: a tiny random MERT-v1-shaped checkpoint in the released layout loads, equals
transformers' own HubertModel forward, has the right shapes/frame rates, and batches exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from musilingo_fixtures import write_mert_checkpoint

from llark_jax.audio.encoders import get_encoder
from llark_jax.audio.encoders.mert import MertConfigError, MertEncoder

SR = 24000
N_STATES, WIDTH = 4, 32  # tiny: 3 layers + input state, hidden 32


def _clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.4 * np.sin(2 * np.pi * 220 * t) + 0.1 * rng.standard_normal(t.size)).astype(
        np.float32)


@pytest.mark.parametrize(("variant", "fmt"), [("95M", "bin"), ("330M", "safetensors")])
def test_states_equal_transformers_forward(tmp_path, variant, fmt):
    """State l < L-1 == HubertModel hidden_states[l]; last == last_hidden_state (after the final
    LayerNorm for pre-LN 330M, as MERT defines it); input normalised by Wav2Vec2FeatureExtractor."""
    from transformers import Wav2Vec2FeatureExtractor

    folder, reference = write_mert_checkpoint(tmp_path / variant, variant, fmt)
    encoder = MertEncoder(folder, frame_rate="native", max_seconds=0)
    x_n = _clip(2.0)
    y_tld = encoder.encode_batch([x_n])[0].reshape(-1, N_STATES, WIDTH)
    features = Wav2Vec2FeatureExtractor(do_normalize=True, sampling_rate=SR)
    inputs = features(x_n, sampling_rate=SR, return_tensors="pt").input_values
    with torch.no_grad():
        out = reference(inputs, output_hidden_states=True)
    assert y_tld.shape[0] == out.last_hidden_state.shape[1]
    for layer in range(N_STATES - 1):
        np.testing.assert_allclose(y_tld[:, layer], out.hidden_states[layer][0].numpy(),
                                   atol=1e-5, rtol=0)
    np.testing.assert_allclose(y_tld[:, -1], out.last_hidden_state[0].numpy(), atol=1e-5, rtol=0)
    assert not np.allclose(y_tld[:, 0], y_tld[:, -1], atol=1e-2)  # layers differ


def test_shapes_frame_rates_and_reductions(tmp_path):
    folder, _ = write_mert_checkpoint(tmp_path / "m")
    native = MertEncoder(folder, frame_rate="native")
    pooled = MertEncoder(folder, frame_rate="10")
    assert (native.frame_rate_hz, pooled.frame_rate_hz) == (75.0, 10.0)
    assert native.dim == pooled.dim == N_STATES * WIDTH
    x_n = _clip(5.0)
    y_native = native.encode_batch([x_n])[0]
    y_10hz = pooled.encode_batch([x_n])[0]
    assert y_native.shape == ((5 * SR - 400) // 320 + 1, N_STATES * WIDTH) == (374, 128)
    assert y_10hz.shape == (50, 128)
    frame_of_token = np.arange(374) * 2 // 15  # token t starts at 320 t samples = t / 75 s
    for k in (0, 1, 17, 49):
        np.testing.assert_allclose(y_10hz[k], y_native[frame_of_token == k].mean(0), atol=1e-5)
    assert (frame_of_token == 49).sum() == 6  # the last frame averages the tokens that exist

    mean = MertEncoder(folder, layers="mean").encode_batch([x_n])[0]
    np.testing.assert_allclose(mean, y_10hz.reshape(50, N_STATES, WIDTH).mean(1), atol=1e-5)
    picked = MertEncoder(folder, layers="0,3")
    assert picked.dim == 2 * WIDTH
    y_picked = picked.encode_batch([x_n])[0].reshape(50, 2, WIDTH)
    np.testing.assert_allclose(y_picked, y_10hz.reshape(50, N_STATES, WIDTH)[:, [0, 3]],
                               atol=1e-6)
    grouped = MertEncoder(folder, frame_rate="group100")  # MusiLingo's compression, N=100 here
    assert grouped.frame_rate_hz == pytest.approx(0.75)
    y_grouped = grouped.encode_batch([x_n])[0]
    assert y_grouped.shape == (4, 128)  # ceil(374 / 100): the last group averages 74 frames
    np.testing.assert_allclose(y_grouped[1], y_native[100:200].mean(0), atol=1e-5)
    np.testing.assert_allclose(y_grouped[3], y_native[300:].mean(0), atol=1e-5)
    with pytest.raises(MertConfigError, match="frame_rate"):
        MertEncoder(folder, frame_rate="group0")

    cropped = MertEncoder(folder, max_seconds=2.0).encode_batch([x_n])[0]
    assert cropped.shape == (20, 128)
    assert native.describe()["mert_states"] == N_STATES


def test_batch_equals_singles(tmp_path):
    folder, _ = write_mert_checkpoint(tmp_path / "m", "95M")
    encoder = MertEncoder(folder)
    clips = [_clip(2.0, 1), _clip(3.0, 2), _clip(2.0, 3), np.zeros(100, np.float32)]
    batch = encoder.encode_batch(clips)
    singles = [encoder.encode_batch([x_n])[0] for x_n in clips]
    assert [y.shape[0] for y in batch] == [20, 30, 20, 0]
    for y_b, y_s in zip(batch, singles, strict=True):
        np.testing.assert_allclose(y_b, y_s, atol=1e-5, rtol=0)


def test_normalisation_follows_preprocessor_or_override(tmp_path):
    """do_normalize false: the raw waveform goes in, so a clip with a DC offset gives different
    states; with normalisation the states ignore offset and scale."""
    folder, _ = write_mert_checkpoint(tmp_path / "m", do_normalize=False)
    x_n = _clip(1.0)
    raw = MertEncoder(folder)
    assert not raw.do_normalize
    shifted = 3 * x_n + 0.5
    assert not np.allclose(raw.encode_batch([x_n])[0], raw.encode_batch([shifted])[0], atol=1e-3)
    normed = MertEncoder(folder, normalize=True)
    np.testing.assert_allclose(normed.encode_batch([x_n])[0], normed.encode_batch([shifted])[0],
                               atol=1e-4)
    assert raw.version != normed.version


def test_registry_env_default_and_version(tmp_path, monkeypatch):
    folder, _ = write_mert_checkpoint(tmp_path / "m")
    monkeypatch.setenv("MERT_DIR", str(folder))
    encoder = get_encoder("mert", frame_rate="native")
    assert isinstance(encoder, MertEncoder) and encoder.sample_rate == 24000
    assert encoder.version != MertEncoder(folder, layers="mean").version


def test_bad_checkpoints_raise_typed_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("MERT_DIR", raising=False)
    with pytest.raises(MertConfigError, match="no checkpoint folder"):
        MertEncoder()
    with pytest.raises(MertConfigError, match="config.json"):
        MertEncoder(tmp_path / "missing")
    folder, _ = write_mert_checkpoint(tmp_path / "cqt", feature_extractor_cqt=True)
    with pytest.raises(MertConfigError, match="feature_extractor_cqt"):
        MertEncoder(folder)
    folder, _ = write_mert_checkpoint(tmp_path / "keys")
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del state["encoder.layers.0.attention.q_proj.weight"]
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(MertConfigError, match="q_proj"):
        MertEncoder(folder)
    folder, _ = write_mert_checkpoint(tmp_path / "type")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "wav2vec2"}))
    with pytest.raises(MertConfigError, match="model_type"):
        MertEncoder(folder)
    with pytest.raises(MertConfigError, match="layers"):
        MertEncoder(write_mert_checkpoint(tmp_path / "ok")[0], layers="0,9")


def test_embed_stage_with_encoder_args(tmp_path):
    """`python -m data_prep embed --encoder mert --encoder-arg ...`: 44.1 kHz files are resampled
    to 24 kHz; arrays + sidecars in the stored layout; a rerun skips done clips."""
    import soundfile

    from data_prep.cli import main as data_prep_main

    folder, _ = write_mert_checkpoint(tmp_path / "m")
    audio = tmp_path / "audio"
    audio.mkdir()
    t = np.arange(2 * 44100) / 44100
    soundfile.write(audio / "clip.wav", (0.4 * np.sin(2 * np.pi * 220 * t)).astype(np.float32),
                    44100)
    out = tmp_path / "emb"
    argv = ["embed", "--encoder", "mert", "--audio-dir", str(audio), "--output-dir", str(out),
            "--encoder-arg", f"mert_dir={folder}", "--encoder-arg", "frame_rate=group75",
            "--encoder-arg", "max_seconds=0"]
    assert data_prep_main(argv) == 0
    y = np.load(out / "clip.npy")
    meta = json.loads((out / "clip.json").read_text())
    assert y.shape == (2, N_STATES * WIDTH)  # 2 s -> 149 native frames -> ceil(149 / 75)
    assert meta["encoder"] == "mert" and meta["mert_states"] == N_STATES
    assert meta["frame_rate_hz"] == pytest.approx(1.0)
    mtime = (out / "clip.npy").stat().st_mtime_ns
    assert data_prep_main(argv) == 0 and (out / "clip.npy").stat().st_mtime_ns == mtime
