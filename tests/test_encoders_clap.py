"""CLAP encoder (the paper's audio-encoder ablation): a tiny random `ClapModel` saved in the
Hugging Face layout loads, equals transformers' own `get_audio_features`, keeps the reference's
one-token-per-clip grid (or every 10 s window), batches exactly, and runs through `embed`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile
import torch

from data_prep.cli import main as data_prep_main
from llark_jax.audio.encoders import get_encoder
from llark_jax.audio.encoders.base import EncoderError

SR = 48000
PROJECTION = 24


@pytest.fixture(scope="module")
def clap_dir(tmp_path_factory):
    """A tiny unfused HTSAT CLAP (real spec size: the 10 s mel must fit the Swin input)."""
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel

    config = ClapConfig(
        text_config=dict(vocab_size=100, hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=32,
                         max_position_embeddings=64),
        audio_config=dict(depths=[1, 1], num_attention_heads=[1, 2], hidden_size=32,
                          patch_embeds_hidden_size=16, window_size=8, spec_size=256,
                          num_mel_bins=64, enable_fusion=False, projection_dim=PROJECTION),
        projection_dim=PROJECTION)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clap")
    ClapModel(config).eval().save_pretrained(folder)
    ClapFeatureExtractor(feature_size=64, sampling_rate=SR, max_length_s=10).save_pretrained(folder)
    return folder


def _clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    return (0.4 * np.sin(2 * np.pi * (220 + 40 * seed) * t)
            + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _reference(clap_dir, pieces: list[np.ndarray]) -> np.ndarray:
    """transformers' own pipeline: feature extractor (repeat-pad) -> get_audio_features."""
    from transformers import ClapFeatureExtractor, ClapModel

    model = ClapModel.from_pretrained(str(clap_dir)).eval()
    inputs = ClapFeatureExtractor.from_pretrained(str(clap_dir))(
        pieces, sampling_rate=SR, return_tensors="pt", truncation="rand_trunc",
        padding="repeatpad")
    with torch.no_grad():
        return model.get_audio_features(**inputs).pooler_output.numpy()


def test_one_token_per_clip_equals_transformers(clap_dir):
    encoder = get_encoder("clap", clap_dir=str(clap_dir))
    assert (encoder.dim, encoder.sample_rate, encoder.frame_rate_hz) == (PROJECTION, SR, 0.1)
    short, long = _clip(3.0), _clip(25.0, seed=1)
    y_short, y_long = encoder.encode_batch([short, long])
    assert y_short.shape == y_long.shape == (1, PROJECTION)  # the reference: T = 1
    expected = _reference(clap_dir, [short, long[: 10 * SR]])  # first 10 s of a longer clip
    np.testing.assert_allclose(np.concatenate([y_short, y_long]), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(y_long, axis=1), 1.0, atol=1e-5)  # L2-normalised
    assert not np.allclose(y_short, y_long, atol=1e-3)


def test_every_window_grid_and_batching(clap_dir):
    encoder = get_encoder("clap", clap_dir=str(clap_dir), max_windows=0)
    clip_25, clip_21 = _clip(25.0, seed=2), _clip(21.0, seed=3)
    y_25, y_21 = encoder.encode_batch([clip_25, clip_21])
    # 25 s: windows 0-10, 10-20, 20-25 (half a window: kept); 21 s: the 1 s tail is dropped
    assert y_25.shape == (3, PROJECTION) and y_21.shape == (2, PROJECTION)
    pieces = [clip_25[:10 * SR], clip_25[10 * SR: 20 * SR], clip_25[20 * SR:]]
    np.testing.assert_allclose(y_25, _reference(clap_dir, pieces), atol=1e-5, rtol=0)
    np.testing.assert_allclose(encoder.encode_batch([clip_21])[0], y_21, atol=1e-5, rtol=0)
    assert encoder.version != get_encoder("clap", clap_dir=str(clap_dir)).version


def test_bad_folders_are_clear_errors(clap_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("CLAP_DIR", raising=False)
    with pytest.raises(EncoderError, match="no checkpoint folder"):
        get_encoder("clap")
    with pytest.raises(EncoderError, match="config.json: not found"):
        get_encoder("clap", clap_dir=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "hubert"}))
    with pytest.raises(EncoderError, match="not a CLAP model"):
        get_encoder("clap", clap_dir=str(tmp_path))
    with pytest.raises(EncoderError, match="max_windows"):
        get_encoder("clap", clap_dir=str(clap_dir), max_windows=-1)


def test_embed_stage_writes_clap_tokens(clap_dir, tmp_path):
    """`python -m data_prep embed --encoder clap --encoder-arg clap_dir=...`: one [1, 24] array
    per clip, the sidecar records the 0.1 Hz grid."""
    audio = tmp_path / "audio"
    audio.mkdir()
    soundfile.write(audio / "a.wav", _clip(4.0), SR)
    out = tmp_path / "emb"
    assert data_prep_main(["embed", "--encoder", "clap", "--audio-dir", str(audio),
                           "--output-dir", str(out), "--encoder-arg",
                           f"clap_dir={clap_dir}"]) == 0
    assert np.load(out / "a.npy").shape == (1, PROJECTION)
    meta = json.loads((out / "a.json").read_text())
    assert meta["encoder"] == "clap" and meta["frame_rate_hz"] == 0.1 and meta["dim"] == PROJECTION


def test_model_dir_with_clap_features_answers_through_infer_and_serve(clap_dir, tmp_path):
    """The ablation's join: a model directory recording the CLAP encoder; `infer` (a file, one
    token per 10 s window) and `serve` (uploaded bytes) compute the same features, and
    `python -m llark_jax infer --audio` answers."""
    import subprocess
    import sys

    from flax import nnx
    from tokenizer_fixtures import make_llark_tokenizer

    from llark_jax.checkpoints.model_dir import load_model, new_model_dir
    from llark_jax.data.conversation import AudioTokenIds
    from llark_jax.data.features import FeatureSpec
    from llark_jax.infer.windows import Windowing
    from llark_jax.model.llama import Llama, LlamaConfig
    from llark_jax.model.llark import LLark
    from llark_jax.serve.audio_input import AudioFeaturizer, AudioLimits

    tokenizer = make_llark_tokenizer()
    ids = AudioTokenIds.from_tokenizer(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                      num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
    model = LLark(Llama(cfg, rngs=nnx.Rngs(0)), PROJECTION, audio_patch_id=ids.patch,
                  audio_start_id=ids.start, audio_end_id=ids.end, rngs=nnx.Rngs(1))
    args = {"clap_dir": str(clap_dir)}
    directory = new_model_dir(tmp_path / "model", model, tokenizer, FeatureSpec("clap", args),
                              audio_frames=1, encoder="clap")
    wav = tmp_path / "clip.wav"
    soundfile.write(wav, _clip(15.0, seed=4), SR)  # two windows: 0-10 s, 10-15 s
    served = load_model(directory)
    windowing = Windowing.for_model(served)
    from_infer = windowing.file_windows(wav)  # the whole file (infer --span all)
    assert [f.shape for f in from_infer] == [(1, PROJECTION)] * 2
    featurizer = AudioFeaturizer(windowing, AudioLimits())
    try:
        [from_serve] = featurizer.windows(wav.read_bytes())  # the crop: the first window
        np.testing.assert_allclose(from_serve, from_infer[0], atol=1e-6, rtol=0)
    finally:
        featurizer.close()
    done = subprocess.run([sys.executable, "-m", "llark_jax", "infer", "--checkpoint",
                           str(directory), "--audio", str(wav), "--question",
                           "What genre is this song?", "--max-new-tokens", "3"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "clip.wav" in done.stdout
