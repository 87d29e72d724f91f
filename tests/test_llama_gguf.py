"""SmolLM2-135M-Instruct from its GGUF (embedded default LM): Flax vs transformers GGUF loader."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from llark_jax.checkpoints.gguf import (
    default_gguf_path,
    load_gguf_llama,
    load_gguf_tokenizer,
    unpermute_rows,
)
from llark_jax.infer.generate import Generator, Prompt, SamplingConfig

PROMPT = "What is the capital of France? Answer in one sentence."


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """What llama.cpp's convert script does to HF q/k rows (rotate-half -> interleaved pairs)."""
    return (w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def test_unpermute_rows_inverts_llama_cpp_permutation():
    w = np.random.default_rng(0).normal(size=(3 * 8, 5)).astype(np.float32)
    np.testing.assert_array_equal(unpermute_rows(_llama_cpp_permute(w, 3), 3), w)
    assert not np.array_equal(_llama_cpp_permute(w, 3), w)


@pytest.fixture(scope="module")
def smollm2():
    """(Flax model, tokenizer, torch model) loaded once: ~15 s each on an idle 2-core machine."""
    import transformers

    model, tokenizer = load_gguf_llama()
    path = default_gguf_path()
    torch_model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    return model, tokenizer, torch_model


@pytest.mark.slow
def test_smollm2_gguf_logits_and_greedy_text_match_torch(smollm2):
    model, tokenizer, torch_model = smollm2
    cfg = model.config
    assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.vocab_size) == (
        30, 576, 9, 3, 49152)
    assert cfg.tie_word_embeddings
    ids = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}],
                                        add_generation_prompt=True, return_dict=False)
    ids = np.asarray([ids], np.int32)
    eos = tokenizer.eos_token_id
    [output] = Generator(model, SamplingConfig(max_new_tokens=32, eos_ids=(eos,)), batch_size=1,
                         length_buckets=(ids.shape[1],)).generate([Prompt(ids[0])])
    with torch.no_grad():
        ref = torch_model.generate(torch.from_numpy(ids).long(), max_new_tokens=32,
                                   do_sample=False, output_logits=True,
                                   return_dict_in_generate=True, pad_token_id=eos)
    ref_tokens = ref.sequences[0, ids.shape[1]:].numpy()
    n = len(ref_tokens)
    ended = ref_tokens[-1] == eos
    assert output.finish_reason == ("eos" if ended else "length")
    np.testing.assert_array_equal(output.token_ids, ref_tokens[: n - 1] if ended else ref_tokens)
    # the logits that chose each token: one uncached forward over prompt + continuation
    full_ids = np.concatenate([ids[0], ref_tokens[: n - 1]])[None]
    our_logits = np.asarray(model(jnp.asarray(full_ids)))[0, ids.shape[1] - 1 :]
    ref_logits = torch.stack(ref.logits, dim=1)[0].numpy()
    diff = np.abs(our_logits - ref_logits).max()
    scale = np.abs(ref_logits).max()
    print(f"SmolLM2 GGUF: {n} tokens, max|diff| {diff:.2e}, max|logit| {scale:.1f}")
    assert diff <= 1e-4 * scale
    text = tokenizer.decode(ref_tokens, skip_special_tokens=True)
    assert "Paris" in text


def test_keep_layers_reads_the_first_blocks_only(smollm2):
    model = smollm2[0]
    cut, _ = load_gguf_llama(keep_layers=2)
    assert cut.config.num_layers == 2
    np.testing.assert_array_equal(np.asarray(cut.layers.attn.q[...]),
                                  np.asarray(model.layers.attn.q[...])[:2])
    np.testing.assert_array_equal(np.asarray(cut.embed[...]), np.asarray(model.embed[...]))


def test_the_gguf_tokenizer_is_parsed_once_and_each_caller_gets_its_own(smollm2):
    """The trainer reads the tokenizer for its config and again with the weights: the second
    read is the cached parse, and extending one copy (LLark tokens) leaves the others alone."""
    first, second = load_gguf_tokenizer(), load_gguf_tokenizer()
    assert first is not second and len(first) == len(second)
    first.add_tokens(["<audio_patch>"])
    assert len(first) == len(second) + 1 == len(load_gguf_tokenizer()) + 1
    assert second(PROMPT).input_ids == smollm2[1](PROMPT).input_ids
