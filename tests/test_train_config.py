"""Schedule closed form, config overrides, mesh shapes: fast checks without compiling a model."""

import math

import pytest
from train_helpers import REPO

from llark_jax.config import ConfigError, load_config, split_overrides
from llark_jax.train.mesh import parse_mesh_flag, resolve_mesh_shape
from llark_jax.train.optim import make_schedule, warmup_steps_for


def closed_form_lr(step: int, peak: float, warmup: int, total: int) -> float:
    """The schedule formula of llark_jax/train/optim.py in plain Python (the test's oracle)."""
    if step < warmup:
        return peak * step / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))

def test_llark_7b_schedule_matches_closed_form():
    config = load_config(REPO / "configs" / "llark_7b.py")
    total = config.train.steps
    warmup = warmup_steps_for(config.optim, total)
    assert (total, warmup, config.optim.peak_lr) == (100_000, 3000, 5e-5)
    schedule = make_schedule(config.optim, total)
    expected = {0: 0.0, 1500: 2.5e-5, 3000: 5e-5, 51500: 2.5e-5, 100_000: 0.0}
    for step, value in expected.items():
        formula = closed_form_lr(step, 5e-5, warmup, total)
        assert formula == pytest.approx(value, abs=1e-12)
        assert float(schedule(step)) == pytest.approx(formula, rel=1e-6, abs=1e-12)
    # Cosine part at an arbitrary step, against the formula written out here.
    step = 77_777
    cosine = 5e-5 * 0.5 * (1 + math.cos(math.pi * (step - 3000) / (100_000 - 3000)))
    assert float(schedule(step)) == pytest.approx(cosine, rel=1e-5)


def test_overrides_parse_cast_and_reject_unknown_fields():
    rest, overrides = split_overrides(
        ["--workdir", "w", "--config.train.steps=20", "--config.optim.eps", "1e-6",
         "--config.model.remat=true"])
    assert rest == ["--workdir", "w"]
    config = load_config(REPO / "configs" / "tiny.py", overrides)
    assert (config.train.steps, config.optim.eps, config.model.remat) == (20, 1e-6, True)
    config = load_config(REPO / "configs" / "tiny.py", [("optim.peak_lr", "3")])
    assert isinstance(config.optim.peak_lr, float)
    with pytest.raises(ConfigError, match="unknown field 'stepz'"):
        load_config(REPO / "configs" / "tiny.py", [("train.stepz", "1")])
    with pytest.raises(ConfigError, match="expected a number"):
        load_config(REPO / "configs" / "tiny.py", [("train.steps", "many")])


def test_musilingo_stages_are_configs():
    caption = load_config(f"{REPO / 'configs' / 'musilingo.py'}:caption")
    instruct = load_config(f"{REPO / 'configs' / 'musilingo.py'}:instruct")
    assert caption.model.trainable == instruct.model.trainable == "projector_only"
    assert caption.train.steps == 20_000 and caption.train.init_from == ""
    assert instruct.train.init_from  # stage 2 starts from stage 1's checkpoint
    with pytest.raises(ValueError, match="stage"):
        load_config(f"{REPO / 'configs' / 'musilingo.py'}:rlhf")


def test_mesh_shapes():
    assert resolve_mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
    assert resolve_mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4, 1)
    assert resolve_mesh_shape(parse_mesh_flag("fsdp=4,tensor=2"), 8) == (1, 4, 2)
    with pytest.raises(ValueError, match="needs 6 devices"):
        resolve_mesh_shape({"fsdp": 3, "tensor": 2}, 8)
    with pytest.raises(ValueError, match="only one mesh axis"):
        resolve_mesh_shape({"fsdp": -1, "data": -1}, 8)
    with pytest.raises(ValueError, match="bad mesh spec"):
        parse_mesh_flag("model=8")


def test_configs_record_their_audio_encoder():
    from llark_jax.audio.encoders import available_encoders

    encoders = {name: load_config(REPO / "configs" / f"{name}.py").data.encoder
                for name in ("tiny", "llark_7b")}
    encoders["musilingo"] = load_config(f"{REPO / 'configs' / 'musilingo.py'}:caption").data.encoder
    assert encoders == {"tiny": "mel", "llark_7b": "jukebox", "musilingo": "mert"}
    assert set(encoders.values()) <= set(available_encoders())


@pytest.mark.parametrize("name", ["base", "tiny", "demo", "demo_musilingo", "llark_7b",
                                  "musilingo:caption", "musilingo:instruct"])
def test_shipped_configs_load_by_name_and_validate(name):
    from llark_jax.config import resolve_config, validate_config

    path, arg = resolve_config(name)
    assert path.parent == REPO / "configs" and arg == (name.split(":")[1] if ":" in name else None)
    by_name = load_config(name)
    assert by_name.to_dict() == load_config(f"{path}{':' + arg if arg else ''}").to_dict()
    validate_config(by_name)  # enum fields; paths are placeholders in the paper configs


def test_config_names_and_paths_fail_with_the_shipped_list(tmp_path):
    from llark_jax.config import ConfigError, resolve_config

    with pytest.raises(ConfigError, match="did you mean --config tiny"):
        resolve_config("tiyn")
    with pytest.raises(ConfigError, match="config file not found: nope/tiny.py.*llark_7b"):
        resolve_config("nope/tiny.py")
    with pytest.raises(ConfigError, match="takes no argument"):
        load_config("tiny:stage")
    own = tmp_path / "tiny"  # an existing file wins over the shipped name
    own.write_text("from llark_jax.config_base import base_config\n"
                   "def get_config():\n    c = base_config()\n    c.seed = 7\n    return c\n")
    assert load_config(str(own)).seed == 7 and load_config("tiny").seed == 0
    broken = tmp_path / "broken.py"
    broken.write_text("def get_config(:\n")
    with pytest.raises(ConfigError, match="broken.py"):
        load_config(str(broken))


@pytest.mark.parametrize("override, match", [
    ("model.source=hug", "model.source='hug'"), ("model.trainable=most", "model.trainable"),
    ("data.template=chatml", "data.template='chatml'"),
    ("logical_axis_rules=[['embed', 'zero3']]", "logical_axis_rules: rule 'embed': unknown mesh"),
    ("logical_axis_rules=[['emb', 'fsdp']]", "unknown logical axis 'emb'"),
    ("logical_axis_rules=[['embed', 'fsdp'], ['embed', None]]", "two rules"),
    ("train.loss_normalization=mean", "loss_normalization"),
    ("model.keep_layers=1", "model.keep_layers=1: .*hf or gguf"),
])
def test_validate_config_names_the_field(override, match):
    from llark_jax.config import ConfigError, validate_config

    key, value = override.split("=", 1)
    config = load_config("tiny", [(key, value)])
    with pytest.raises(ConfigError, match=match):
        validate_config(config)


def test_validate_config_checks_model_and_data_paths(tmp_path):
    from llark_jax.config import ConfigError, validate_config

    hf = load_config("tiny", [("model.source", "hf"), ("model.path", str(tmp_path / "x"))])
    validate_config(hf)  # paths only with check_paths
    with pytest.raises(ConfigError, match="no such directory"):
        validate_config(hf, check_paths=True)
    records = load_config("tiny", [("data.source", "tfrecord")])
    with pytest.raises(ConfigError, match="needs data.path"):
        validate_config(records, check_paths=True)


def test_logical_axis_rules_are_config_data_and_round_trip_through_json():
    """The rules table is a config field: the default is the FSDP table, a config override
    replaces it, and the JSON a manifest stores reads back to the same rules."""
    import json

    import ml_collections

    from llark_jax.config import config_to_json
    from llark_jax.model.sharding import DEFAULT_RULES
    from llark_jax.train.mesh import rules_of

    assert rules_of(load_config("tiny")) == DEFAULT_RULES
    data_parallel = load_config("tiny", [("logical_axis_rules", "[['batch', ['data', 'fsdp']]]")])
    assert rules_of(data_parallel) == (("batch", ("data", "fsdp")),)
    stored = ml_collections.ConfigDict(json.loads(config_to_json(data_parallel)))
    assert rules_of(stored) == rules_of(data_parallel)
    del stored["logical_axis_rules"]  # a manifest written before the field existed
    assert rules_of(stored) == DEFAULT_RULES


@pytest.mark.parametrize("variant, checks", [
    ("clap", {"data.encoder": "clap", "model.audio_dim": 512, "data.audio_frames": 1,
              "model.llama.num_layers": 32}),
    ("small_lm", {"data.encoder": "jukebox", "model.audio_dim": 4800,
                  "model.llama.num_layers": 22, "model.llama.num_kv_heads": 4}),
    ("qwen", {"model.llama.model_type": "qwen2", "model.llama.attention_bias": True,
              "data.template": "tokenizer"}),
    ("data10", {"data.fraction": 0.1, "data.encoder": "jukebox", "model.audio_dim": 4800}),
])
def test_paper_ablation_configs_change_only_their_part(variant, checks):
    """`llark_ablation:VARIANT` and `llark_qwen` are the paper recipe with one part swapped; they
    validate, and the small LMs' dims give TinyLlama-1.1B's and Qwen2.5-0.5B's parameter counts
    (+ the projector)."""
    import jax

    from llark_jax.checkpoints.build import abstract_model, model_fn
    from llark_jax.config import validate_config

    name = "llark_qwen" if variant == "qwen" else f"llark_ablation:{variant}"
    config, paper = load_config(name), load_config("llark_7b")
    validate_config(config)
    for key, value in checks.items():
        node = config
        for part in key.split("."):
            node = node[part]
        assert node == value, key
    assert (config.train.steps, config.optim.peak_lr) == (paper.train.steps, paper.optim.peak_lr)
    expected = {"small_lm": 1_100_048_384 + 4 * 2048 * 2 + 4800 * 2048 + 2048,  # TinyLlama
                "qwen": 494_032_768 + 4800 * 896 + 896}  # Qwen2.5-0.5B (tied) + projector
    if variant in expected:
        _, params, _ = abstract_model(model_fn(config.model, config.seed))
        n = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
        assert abs(n - expected[variant]) < 1e6, n
    with pytest.raises(ConfigError, match="ablation 'mpt'"):
        load_config("llark_ablation:mpt")


def test_keep_layers_cuts_the_checkpoint_dims_when_a_run_resolves():
    from llark_jax.checkpoints.build import resolve_config

    config = load_config("demo", [("model.keep_layers", "12")])
    assert resolve_config(config)[0].model.llama.num_layers == 12
    config = load_config("demo", [("model.keep_layers", "31")])
    with pytest.raises(ValueError, match="keep_layers=31 but the checkpoint has 30"):
        resolve_config(config)
