"""The Flax decoder on Qwen-family checkpoints vs the real `transformers` Qwen2/Qwen3 models.

Tiny random `Qwen2ForCausalLM` (q/k/v biases, tied embeddings, theta 1e6, GQA) and
`Qwen3ForCausalLM` (per-head q/k RMSNorm, explicit head_dim != hidden/heads, untied) saved with
`save_pretrained`, loaded with `load_llama`: fp32 logits within 1e-4 x max|logit| on ~300-token
right-padded batches, KV-cache greedy decoding equal to HF `generate`, and `save_llama` writes
back a checkpoint transformers loads with the same tensors (bit exact)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from llama_helpers import random_batch, torch_logits
from safetensors.numpy import load_file

from llark_jax.checkpoints.hf import load_llama, save_llama
from llark_jax.infer.generate import Generator, Prompt, SamplingConfig

FP32_REL_TOL = 1e-4
VOCAB = 384
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
              max_position_embeddings=1024, rms_norm_eps=1e-6)
FAMILIES = {
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM,
              dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                   rope_theta=1e6)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM,
              dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                   tie_word_embeddings=False, rope_theta=1e6)),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request, tmp_path_factory):
    """(name, torch model, checkpoint dir, Flax model)."""
    name = request.param
    config_cls, model_cls, extra = FAMILIES[name]
    extra = dict(extra)
    rope = {"rope_type": "default", "rope_theta": extra.pop("rope_theta")}
    config = config_cls(**COMMON, **extra, rope_parameters=rope)
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = model_cls(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:  # biases too: they must matter
                p.normal_(0.0, 0.08)
    path = tmp_path_factory.mktemp(name)
    model.save_pretrained(path)
    return name, model, path, load_llama(path)


def test_logits_match_transformers(family):
    name, torch_model, _, model = family
    cfg = model.config
    assert cfg.model_type == name
    assert (cfg.attention_bias, cfg.qk_norm) == (name == "qwen2", name == "qwen3")
    ids, mask = random_batch(VOCAB, [320, 290], seed=1)
    ours = np.asarray(model(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))[..., :VOCAB]
    ref = torch_logits(torch_model, ids, mask)
    valid = mask.astype(bool)
    diff, scale = float(np.abs(ours - ref)[valid].max()), float(np.abs(ref[valid]).max())
    print(f"{name}: max|diff| {diff:.2e} at max|logit| {scale:.2f}")
    assert diff <= FP32_REL_TOL * scale, (diff, scale)


def test_greedy_decoding_matches_generate(family):
    _, torch_model, _, model = family
    ids, mask = random_batch(VOCAB, [300, 280], seed=2)
    generator = Generator(model, SamplingConfig(max_new_tokens=16), batch_size=2,
                          length_buckets=(ids.shape[1],))
    outputs = generator.generate([Prompt(ids[row, :n]) for row, n in enumerate(mask.sum(1))])
    for row, n in enumerate(mask.sum(1)):
        with torch.no_grad():
            ref = torch_model.generate(torch.from_numpy(ids[row: row + 1, :n]).long(),
                                       max_new_tokens=16, min_new_tokens=16, do_sample=False,
                                       pad_token_id=0)[0, n:].numpy()
        np.testing.assert_array_equal(np.asarray(outputs[row].token_ids), ref)


def test_save_llama_round_trips_to_transformers(family, tmp_path):
    name, _, path, model = family
    save_llama(model, tmp_path)
    written, original = load_file(str(tmp_path / "model.safetensors")), load_file(
        str(path / "model.safetensors"))
    assert written.keys() == original.keys()
    for key, value in original.items():
        np.testing.assert_array_equal(written[key], value, err_msg=key)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(reloaded).__name__ == FAMILIES[name][1].__name__


def test_unsupported_qwen_options_are_clear_errors(tmp_path):
    from llark_jax.model.llama import LlamaConfig

    base = {**COMMON, "num_attention_heads": 4, "num_key_value_heads": 2}
    with pytest.raises(ValueError, match="use_sliding_window"):
        LlamaConfig.from_hf_dict({**base, "model_type": "qwen2", "use_sliding_window": True})
    with pytest.raises(ValueError, match="model_type 'mpt'"):
        LlamaConfig.from_hf_dict({**base, "model_type": "mpt"})
    with pytest.raises(ValueError, match="attention_bias"):
        LlamaConfig.from_hf_dict({**base, "model_type": "qwen3", "attention_bias": True})


def test_llark_on_qwen2_exports_to_torch(tmp_path):
    """An LLark whose LM is a Qwen2 checkpoint: `export` writes a `Qwen2ForCausalLM` that the
    shipped `modeling_llark.py` loads, with the Flax logits (audio spliced) within 1e-4."""
    from flax import nnx
    from test_export import FP32_REL_TOL as EXPORT_TOL
    from test_export import _batch, _compare, _flax_logits, _load_modeling, _torch_logits
    from tokenizer_fixtures import make_llark_tokenizer

    from llark_jax.checkpoints import export
    from llark_jax.data.conversation import AudioTokenIds
    from llark_jax.model.llark import LLark

    tokenizer = make_llark_tokenizer()
    config = transformers.Qwen2Config(
        **{**COMMON, "vocab_size": len(tokenizer)}, num_attention_heads=4, num_key_value_heads=2,
        tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    torch.manual_seed(1)
    qwen = transformers.Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for pname, p in qwen.named_parameters():
            p.copy_(1.0 + 0.2 * torch.randn_like(p)) if pname.endswith("norm.weight") else (
                p.normal_(0.0, 0.08))
    qwen.save_pretrained(tmp_path / "qwen")
    ids = AudioTokenIds.from_tokenizer(tokenizer)
    model = LLark(load_llama(tmp_path / "qwen"), 48, audio_patch_id=ids.patch,
                  audio_start_id=ids.start, audio_end_id=ids.end, rngs=nnx.Rngs(2))
    out = export.export_hf(model, tokenizer, tmp_path / "export")
    torch_model = _load_modeling(out).LlarkForCausalLM.from_pretrained(out)
    assert type(torch_model.lm).__name__ == "Qwen2ForCausalLM"
    batch = _batch(tokenizer, "untied_plain")
    diff, scale, _ = _compare(_flax_logits(model, batch), _torch_logits(torch_model, batch),
                              batch["mask"])
    assert diff <= EXPORT_TOL * max(1.0, scale), (diff, scale)
