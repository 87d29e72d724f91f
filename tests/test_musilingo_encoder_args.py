"""A training config's `data.encoder_args` reach every `get_encoder` built from it: infer --audio,
served model directories and served training workdirs (tiny real MERT checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

import ml_collections
import numpy as np
import pytest
import soundfile as sf
from musilingo_fixtures import write_mert_checkpoint

from llark_jax.config import config_to_json, load_config
from llark_jax.infer.cli import config_encoder, encode_audio_file

REPO = Path(__file__).resolve().parents[1]


def test_config_encoder_uses_the_configs_arguments_for_its_own_encoder_only():
    config = load_config(f"{REPO / 'configs' / 'musilingo.py'}:instruct")
    expected = ("mert", {"frame_rate": "group325", "layers": "mean"})
    assert config_encoder(config) == expected
    saved = ml_collections.ConfigDict(json.loads(config_to_json(config)))  # as a workdir stores it
    assert config_encoder(saved) == expected == config_encoder(saved, "mert")
    assert config_encoder(saved, "mel") == ("mel", {})  # another encoder: its defaults
    assert config_encoder(load_config(REPO / "configs" / "tiny.py")) == ("mel", {})
    assert config_encoder(ml_collections.ConfigDict()) == ("mel", {})


@pytest.fixture(scope="module")
def mert_dir(tmp_path_factory):
    folder, _ = write_mert_checkpoint(tmp_path_factory.mktemp("mert") / "m")
    return str(folder)


def test_infer_encodes_audio_with_the_encoder_args(tmp_path, mert_dir):
    wav = tmp_path / "clip.wav"
    t = np.arange(24000) / 24000.0  # 1 s at MERT's 24 kHz: 75 native frames
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32), 24000)
    config = ml_collections.ConfigDict({"data": {"encoder": "mert", "encoder_args": {
        "mert_dir": mert_dir, "frame_rate": "group25", "layers": "mean"}}})
    name, args = config_encoder(config)
    (mean_td,) = encode_audio_file(str(wav), name, 3, args)  # one window of 3 groups of 25
    assert mean_td.shape == (3, 32)  # the layer mean: D = hidden size 32
    args["layers"] = "all"
    (all_tf,) = encode_audio_file(str(wav), name, 3, args)
    assert all_tf.shape == (3, 4 * 32)  # 3 transformer layers + the input state, layer-major
    np.testing.assert_allclose(all_tf.reshape(3, 4, 32).mean(1), mean_td, atol=1e-5)


def test_served_model_dir_records_and_applies_the_encoder_args(tmp_path, mert_dir):
    from flax import nnx
    from tokenizer_fixtures import make_llark_tokenizer

    from llark_jax.data.conversation import AudioTokenIds
    from llark_jax.model.llama import Llama, LlamaConfig
    from llark_jax.model.llark import LLark
    from llark_jax.serve.audio_input import AudioFeaturizer, AudioLimits
    from llark_jax.serve.model_dir import ServingOverrides, load_served, save_model_dir

    tokenizer = make_llark_tokenizer()
    ids = AudioTokenIds.from_tokenizer(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                      num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
    model = LLark(Llama(cfg, rngs=nnx.Rngs(0)), 32, audio_patch_id=ids.patch,
                  audio_start_id=ids.start, audio_end_id=ids.end, rngs=nnx.Rngs(1))
    args = {"mert_dir": mert_dir, "frame_rate": "group25", "layers": "mean"}
    directory = save_model_dir(tmp_path / "model", model, tokenizer, encoder="mert",
                               encoder_args=args)
    assert json.loads((directory / "serving.json").read_text())["encoder_args"] == args
    served = load_served(directory)
    assert (served.encoder, served.encoder_args) == ("mert", args)
    featurizer = AudioFeaturizer(served.encoder, served.feature_pool, AudioLimits(),
                                 served.encoder_args)
    assert featurizer.encoder.dim == 32 and featurizer.encoder.group == 25
    other = load_served(directory, ServingOverrides(encoder="mel"))
    assert (other.encoder, other.encoder_args) == ("mel", {})
