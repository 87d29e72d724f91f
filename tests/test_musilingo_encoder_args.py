"""A training config's `data.encoder_args` reach every `get_encoder` built from it: the feature
spec a run saves, infer --audio (`Windowing.file_windows`) and served model directories (tiny real
MERT checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import ml_collections
import numpy as np
import pytest
import soundfile as sf
from musilingo_fixtures import write_mert_checkpoint

from llark_jax.config import config_to_json, load_config
from llark_jax.data.features import FeatureSpec, spec_from_config
from llark_jax.infer.windows import Windowing

REPO = Path(__file__).resolve().parents[1]


def test_feature_spec_takes_the_configs_encoder_and_arguments():
    config = load_config(f"{REPO / 'configs' / 'musilingo.py'}:instruct")
    expected = ("mert", {"frame_rate": "group325", "layers": "mean"})
    spec = spec_from_config(config.data)
    assert (spec.encoder, spec.encoder_args) == expected
    saved = ml_collections.ConfigDict(json.loads(config_to_json(config)))  # as a workdir stores it
    again = spec_from_config(saved.data)
    assert (again.encoder, again.encoder_args) == expected
    restored = FeatureSpec.from_json(json.loads(json.dumps(spec.to_json())))  # the manifest's
    assert (restored.encoder, restored.encoder_args, restored.pool) == (*expected, 1)
    tiny = spec_from_config(load_config(REPO / "configs" / "tiny.py").data)
    assert (tiny.encoder, tiny.encoder_args) == ("mel", {})
    empty = spec_from_config(ml_collections.ConfigDict())
    assert (empty.encoder, empty.encoder_args) == ("mel", {})


def test_training_run_saves_the_encoder_args_in_its_feature_spec(tmp_path):
    from llark_jax.train.loop import feature_spec

    config = load_config(f"{REPO / 'configs' / 'musilingo.py'}:instruct")
    spec = feature_spec(config, tmp_path)  # what `train` writes into the workdir's manifest
    assert (spec.encoder, spec.encoder_args) == ("mert", {"frame_rate": "group325",
                                                          "layers": "mean"})


@pytest.fixture(scope="module")
def mert_dir(tmp_path_factory):
    folder, _ = write_mert_checkpoint(tmp_path_factory.mktemp("mert") / "m")
    return str(folder)


def one_second_wav(path: Path) -> Path:
    t = np.arange(24000) / 24000.0  # 1 s at MERT's 24 kHz: 75 native frames
    sf.write(path, (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32), 24000)
    return path


def test_infer_encodes_audio_with_the_encoder_args(tmp_path, mert_dir):
    wav = one_second_wav(tmp_path / "clip.wav")
    args = {"mert_dir": mert_dir, "frame_rate": "group25", "layers": "mean"}

    def windowing(encoder_args):  # reads only the feature spec and audio_frames of a model
        return Windowing.for_model(SimpleNamespace(
            features=FeatureSpec("mert", dict(encoder_args)),
            config=ml_collections.ConfigDict({"data": {"audio_frames": 3}})))

    (mean_td,) = windowing(args).file_windows(wav)  # one window of 3 groups of 25
    assert mean_td.shape == (3, 32)  # the layer mean: D = hidden size 32
    (all_tf,) = windowing({**args, "layers": "all"}).file_windows(wav)
    assert all_tf.shape == (3, 4 * 32)  # 3 transformer layers + the input state, layer-major
    np.testing.assert_allclose(all_tf.reshape(3, 4, 32).mean(1), mean_td, atol=1e-5)


def test_served_model_dir_records_and_applies_the_encoder_args(tmp_path, mert_dir):
    from flax import nnx
    from tokenizer_fixtures import make_llark_tokenizer

    from llark_jax.checkpoints.model_dir import load_model, new_model_dir
    from llark_jax.data.conversation import AudioTokenIds
    from llark_jax.model.llama import Llama, LlamaConfig
    from llark_jax.model.llark import LLark
    from llark_jax.serve.audio_input import AudioFeaturizer, AudioLimits

    tokenizer = make_llark_tokenizer()
    ids = AudioTokenIds.from_tokenizer(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                      num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
    model = LLark(Llama(cfg, rngs=nnx.Rngs(0)), 32, audio_patch_id=ids.patch,
                  audio_start_id=ids.start, audio_end_id=ids.end, rngs=nnx.Rngs(1))
    args = {"mert_dir": mert_dir, "frame_rate": "group25", "layers": "mean"}
    directory = new_model_dir(tmp_path / "model", model, tokenizer, FeatureSpec("mert", args),
                              audio_frames=3)
    manifest = json.loads((directory / "llark.json").read_text())
    assert manifest["features"]["encoder"] == "mert"
    assert manifest["features"]["encoder_args"] == args
    served = load_model(directory)
    assert (served.features.encoder, served.features.encoder_args) == ("mert", args)
    windowing = Windowing.for_model(served)
    featurizer = AudioFeaturizer(windowing, AudioLimits())
    try:
        assert featurizer.encoder.dim == 32 and featurizer.encoder.group == 25
        # serve (uploaded bytes) and infer (a file) compute the same features from the same clip
        wav = one_second_wav(tmp_path / "clip.wav")
        (from_infer,) = windowing.file_windows(wav)
        (from_serve,) = featurizer.windows(wav.read_bytes())
    finally:
        featurizer.close()
    assert from_infer.shape == (3, 32)
    np.testing.assert_array_equal(from_serve, from_infer)
