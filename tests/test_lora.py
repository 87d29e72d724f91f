"""LoRA (`llark_jax.model.lora`, `model.trainable = "lora"`): zero-initialised adapters leave
the model unchanged, training moves only the adapters, the projector and the two audio rows,
and `export` folds the adapters into a plain Llama that torch loads with the same logits.

Uses the exported-model fixtures of tests/test_export.py (2-layer E=64 LLark, ~300-token
right-padded conversations with 200 audio frames)."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_export import (
    FP32_REL_TOL,
    MODELS,
    _batch,
    _compare,
    _flax_logits,
    _load_modeling,
    _tiny_llark,
    _torch_logits,
)
from tokenizer_fixtures import make_llark_tokenizer
from train_helpers import run_steps, tiny_config

from llark_jax.checkpoints import export
from llark_jax.model.lora import TARGETS, add_lora, has_lora, merged


def _randomise_b(llama, seed: int = 0) -> None:
    """Non-zero B matrices (a trained adapter) so the adapters change the logits."""
    rng = np.random.default_rng(seed)
    for module in (llama.layers.attn, llama.layers.mlp):
        for name, adapter in vars(module).items():
            if name.endswith("_lora"):
                shape = adapter.b.get_value().shape
                adapter.b.set_value(jnp.asarray(0.05 * rng.normal(size=shape), jnp.float32))


def test_zero_init_is_the_base_model_and_merge_and_export_keep_the_adapters(tmp_path):
    tokenizer = make_llark_tokenizer()
    model = _tiny_llark(tokenizer, MODELS["untied_plain"])
    batch = _batch(tokenizer, "untied_plain")
    assert batch["ids"].shape[1] >= 250  # a prompt of hundreds of tokens
    base = _flax_logits(model, batch)
    add_lora(model.llama, rank=4, alpha=8.0, targets=TARGETS, seed=3)
    assert model.llama.layers.attn.q_lora.a.get_value().shape == (2, 64, 4)  # [L, embed, r]
    assert model.llama.layers.attn.o_lora.a.get_value().shape == (2, 4, 16, 4)  # [L, n, h, r]
    np.testing.assert_array_equal(_flax_logits(model, batch), base)  # B = 0: exactly the base

    _randomise_b(model.llama)
    adapted = _flax_logits(model, batch)
    assert np.abs(adapted - base).max() > 0.05  # the adapters reach the logits
    folded = nnx.clone(model)
    folded.llama = merged(model.llama)
    assert not has_lora(folded.llama) and has_lora(model.llama)
    np.testing.assert_allclose(_flax_logits(folded, batch), adapted, atol=2e-5, rtol=0)

    out = export.export_hf(model, tokenizer, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "lora" not in json.dumps(config)
    torch_model = _load_modeling(out).LlarkForCausalLM.from_pretrained(out)
    diff, scale, top1 = _compare(adapted, _torch_logits(torch_model, batch), batch["mask"])
    assert diff <= FP32_REL_TOL * max(1.0, scale), (diff, scale)


def _flat(state) -> dict[str, np.ndarray]:
    def name(path) -> str:
        return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)

    return {name(path): np.asarray(leaf)
            for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]}


def test_lora_training_on_an_int8_base_moves_only_adapters_projector_and_audio_rows():
    """2 steps of `trainable=lora` over an int8 base on a 2-way FSDP mesh: the int8 weights and
    their scales, norms and the other embedding rows are bit-for-bit the initial ones; every
    adapter B and the projector moved."""
    config = tiny_config(model__trainable="lora", model__lora__rank="4",
                         model__lora__targets="q,v,gate,down", model__quantize_base="int8")
    setup, final, losses = run_steps(config, {"fsdp": 2}, 2, devices=jax.devices()[:2])
    assert np.all(np.isfinite(losses))
    initial = _flat(setup.fresh_state()["params"])
    trained = _flat(final["params"])
    assert initial.keys() == trained.keys()
    adapters = [k for k in initial if "_lora" in k]
    assert len(adapters) == 8  # (a, b) x 4 targets
    assert trained["llama/layers/attn/q/value"].dtype == np.int8
    assert len([k for k in initial if "_scale" in k]) == 7  # every projection quantised
    for key, before in initial.items():
        moved = not np.array_equal(before, trained[key])
        if "_lora" in key and key.endswith("b"):
            assert moved, key
        elif "projector" in key:
            assert moved, key
        elif key.startswith("llama/embed"):
            changed = np.flatnonzero(np.any(before != trained[key], axis=1))
            assert set(changed) <= {config.model.audio_start_id, config.model.audio_end_id}
        elif "_lora" not in key:
            assert not moved, key


@pytest.mark.parametrize("bits, rel_tol, top1_min", [(8, 0.02, 0.97), (4, 0.5, 0.6)])
def test_quantised_base_is_close_to_the_float_model(bits, rel_tol, top1_min):
    """Per-channel int8 / int4 weights: logits near the float model's (bounds measured with
    margin), and `plain` (dequantised, as exported) gives the quantised model's logits."""
    from llark_jax.model.quant import plain, quantize_base

    tokenizer = make_llark_tokenizer()
    model = _tiny_llark(tokenizer, MODELS["untied_plain"])
    batch = _batch(tokenizer, "untied_plain")
    reference = _flax_logits(model, batch)
    quantize_base(model.llama, bits)
    assert model.llama.layers.mlp.down[...].dtype == (jnp.int8 if bits == 8 else jnp.int4)
    quantised = _flax_logits(model, batch)
    diff, scale, top1 = _compare(quantised, reference, batch["mask"])
    print(f"int{bits}: max|diff| {diff:.3f} / max|logit| {scale:.2f}, top-1 {top1:.3f}")
    assert 0 < diff <= rel_tol * scale and top1 >= top1_min, (diff, scale, top1)
    folded = nnx.clone(model)
    folded.llama = plain(model.llama)
    assert folded.llama.layers.mlp.down[...].dtype == jnp.float32
    np.testing.assert_allclose(_flax_logits(folded, batch), quantised, atol=1e-5, rtol=0)


@pytest.mark.parametrize("override, match", [
    ("model.trainable=lora", "needs model.lora.rank > 0"),
    ("model.lora.targets=q,qkv", "model.lora.targets='q,qkv'"),
    ("model.quantize_base=int3", "choose '', 'int8' or 'int4'"),
    ("model.quantize_base=int8", "trains them"),
])
def test_lora_config_mistakes(override, match):
    from llark_jax.config import ConfigError, load_config, validate_config

    key, value = override.split("=", 1)
    overrides = [(key, value)] + ([] if "trainable" in key else [("model.lora.rank", "4")])
    if value == "int3":
        overrides.append(("model.trainable", "lora"))
    with pytest.raises(ConfigError, match=match):
        validate_config(load_config("tiny", overrides))


def test_generation_uses_the_adapters():
    """Greedy KV-cache generation of an adapted model equals that of its merged copy (and not the
    base model's): the decode loop sees the adapters."""
    from llark_jax.infer.generate import Generator, Prompt, SamplingConfig

    tokenizer = make_llark_tokenizer()
    model = _tiny_llark(tokenizer, MODELS["untied_plain"])
    base = nnx.clone(model.llama)
    add_lora(model.llama, rank=4, alpha=8.0, targets=TARGETS, seed=3)
    _randomise_b(model.llama, seed=1)
    rng = np.random.default_rng(0)
    prompts = [Prompt(rng.integers(1, 200, n).astype(np.int32)) for n in (40, 31)]

    def greedy(llama) -> np.ndarray:
        generator = Generator(llama, SamplingConfig(max_new_tokens=12), batch_size=2,
                              length_buckets=(48,))
        return np.asarray([out.token_ids for out in generator.generate(prompts)])

    adapted, folded = greedy(model.llama), greedy(merged(model.llama))
    np.testing.assert_array_equal(adapted, folded)
    assert not np.array_equal(adapted, greedy(base))  # control: the adapters change the text
