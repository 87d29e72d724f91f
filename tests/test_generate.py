"""Batched KV-cache generation vs uncached step-by-step decoding on tiny random Llama / LLark."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llark_jax.infer.generate import (
    Generator,
    Prompt,
    PromptTooLong,
    RowSettings,
    SamplingConfig,
    _generate_batch,
    bucket_length,
)
from llark_jax.model.decode import decode_step, decode_weights, unstack_cache
from llark_jax.model.llama import Llama, LlamaConfig, init_cache
from llark_jax.model.llark import LLark

VOCAB = 101
BUCKETS = (16, 32, 64)
PATCH, START, END = 98, 99, 100
N_NEW = 12  # one max_new_tokens everywhere: compiled programs are shared across tests


def tiny_llama(seed: int = 0) -> Llama:
    """2-layer GQA Llama with large random weights (peaked logits, so argmax has no near-ties)."""
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, initializer_range=0.3, vocab_multiple=8,
    )  # fmt: skip
    return Llama(config, rngs=nnx.Rngs(seed))


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


def random_prompts(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [Prompt(rng.integers(1, 90, n).astype(np.int32)) for n in lengths]


@functools.partial(jax.jit, static_argnums=0)
def _last_logits(graphdef, state, ids_bt, mask_bt, n, audio):
    model = nnx.merge(graphdef, state)
    if audio is None:
        return model(ids_bt, attention_mask=mask_bt)[0, n - 1]
    return model(ids_bt, audio, attention_mask=mask_bt)[0, n - 1]


def uncached_greedy(model, ids, n_new, audio=None, width=64):
    """Reference: a full forward (no cache) over the whole sequence for every new token.

    The sequence is right-padded to `width` with an attention mask so that one compilation serves
    every step; logits are read at the last real token."""
    graphdef, state = nnx.split(model)
    audio = None if audio is None else jnp.asarray(audio)[None]
    ids = list(ids)
    for _ in range(n_new):
        padded = np.zeros((1, width), np.int32)
        padded[0, : len(ids)] = ids
        mask = (np.arange(width) < len(ids)).astype(np.int32)[None]
        ids.append(int(jnp.argmax(_last_logits(graphdef, state, padded, mask, len(ids), audio))))
    return ids[-n_new:]


def test_bucket_length():
    assert bucket_length(1, BUCKETS) == 16 and bucket_length(17, BUCKETS) == 32
    with pytest.raises(PromptTooLong, match="65 tokens"):
        bucket_length(65, BUCKETS)


def test_cached_batched_greedy_equals_uncached(llama):
    prompts = random_prompts([5, 23, 40, 9])
    generator = Generator(
        llama, SamplingConfig(max_new_tokens=N_NEW), batch_size=4, length_buckets=BUCKETS
    )
    outputs = generator.generate(prompts)
    for prompt, output in zip(prompts, outputs, strict=True):
        assert output.finish_reason == "length"
        assert output.token_ids == uncached_greedy(llama, prompt.input_ids, N_NEW)


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=0.9, top_p=0.8, seed=3)])
def test_mixed_length_batch_equals_one_by_one(llama, sampling):
    prompts = random_prompts([3, 30, 12, 7, 20], seed=1)
    config = SamplingConfig(max_new_tokens=N_NEW, **sampling)
    batched = Generator(llama, config, batch_size=4, length_buckets=BUCKETS).generate(prompts)
    single = Generator(llama, config, batch_size=1, length_buckets=BUCKETS)
    for i, prompt in enumerate(prompts):
        assert single.generate([prompt], keys=[i])[0] == batched[i]


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(llama):
    prompts = random_prompts([6, 11], seed=2)
    greedy = Generator(llama, SamplingConfig(max_new_tokens=N_NEW), batch_size=4,
                       length_buckets=BUCKETS).generate(prompts)  # fmt: skip

    def sample(seed, top_p=1.0):
        config = SamplingConfig(max_new_tokens=N_NEW, temperature=1.5, top_p=top_p, seed=seed)
        return Generator(llama, config, batch_size=4, length_buckets=BUCKETS).generate(prompts)

    assert sample(0, top_p=1e-6) == greedy  # the nucleus holds only the argmax
    assert sample(5) == sample(5)
    assert sample(5) != sample(6)


def test_stop_sequence_and_eos_end_outputs_exactly(llama):
    prompt = random_prompts([10], seed=4)[0]
    free = Generator(llama, SamplingConfig(max_new_tokens=N_NEW), batch_size=1,
                     length_buckets=BUCKETS).generate([prompt])[0].token_ids  # fmt: skip
    # stop on the pair of tokens at positions (4, 5): output must end right before position 4
    stop = tuple(free[4:6])
    first = next(i for i in range(len(free) - 1) if tuple(free[i : i + 2]) == stop)
    out = Generator(llama, SamplingConfig(max_new_tokens=N_NEW, stop_sequences=((999,), stop)),
                    batch_size=1, length_buckets=BUCKETS).generate([prompt])[0]  # fmt: skip
    assert out.finish_reason == "stop" and out.token_ids == free[:first]
    eos = free[6]
    out = Generator(llama, SamplingConfig(max_new_tokens=N_NEW, eos_ids=(eos,)), batch_size=1,
                    length_buckets=BUCKETS).generate([prompt])[0]  # fmt: skip
    assert out.finish_reason == "eos" and out.token_ids == free[: free.index(eos)]


def test_llark_audio_prompt_equals_uncached():
    model = LLark(
        tiny_llama(seed=1), 12, audio_patch_id=PATCH, audio_start_id=START, audio_end_id=END,
        rngs=nnx.Rngs(2),
    )  # fmt: skip
    rng = np.random.default_rng(0)
    audio = rng.normal(size=(6, 12)).astype(np.float32)
    ids = np.array([1, 5, START, *[PATCH] * 6, END, 7, 8, 9], np.int32)
    other = np.array([1, 3, START, *[PATCH] * 6, END, 4], np.int32)
    prompts = [Prompt(ids, audio), Prompt(other, audio[::-1].copy())]
    outputs = Generator(model, SamplingConfig(max_new_tokens=N_NEW), batch_size=4,
                        length_buckets=BUCKETS).generate(prompts)  # fmt: skip
    for prompt, output in zip(prompts, outputs, strict=True):
        assert PATCH not in output.token_ids  # else the uncached reference would splice it
        assert output.token_ids == uncached_greedy(model, prompt.input_ids, N_NEW, prompt.audio)


def test_row_buckets_step_buckets_and_per_row_settings(llama):
    """Three prompts in a generator of up to 8 rows run as one 4-row batch (never 8 copies); each
    row keeps its own token limit, temperature, top-p and seed inside one compiled program, and
    equals the prompt generated alone with those settings."""
    prompts = random_prompts([5, 23, 9], seed=5)
    rows = [RowSettings(3), RowSettings(N_NEW, temperature=0.9, top_p=0.8, seed=3),
            RowSettings(7, temperature=1.2, seed=4)]
    generator = Generator(llama, SamplingConfig(max_new_tokens=N_NEW), batch_size=8,
                          length_buckets=BUCKETS, batch_buckets=(1, 2, 4), step_buckets=(8,))
    assert generator.batch_buckets == (1, 2, 4, 8) and generator.step_buckets == (8, N_NEW)
    outputs = generator.generate(prompts, rows=rows)
    assert generator.rows_computed == 4
    for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
        config = SamplingConfig(max_new_tokens=row.max_new_tokens, temperature=row.temperature,
                                top_p=row.top_p, seed=row.seed)
        alone = Generator(llama, config, batch_size=1, length_buckets=BUCKETS)
        assert outputs[i] == alone.generate([prompt], keys=[i])[0]
        assert len(outputs[i].token_ids) == row.max_new_tokens  # "length" at its own limit
    compiled = _generate_batch._cache_size()
    other = [RowSettings(2, temperature=0.3, top_p=0.5, seed=9), RowSettings(10), RowSettings(1)]
    assert [len(o.token_ids) for o in generator.generate(prompts, rows=other)] == [2, 10, 1]
    assert _generate_batch._cache_size() == compiled  # new settings, same program (12 steps)
    generator.generate(prompts[:1], rows=[RowSettings(2)])
    assert generator.rows_computed == 9  # one prompt: one row
    with pytest.raises(ValueError, match="max_new_tokens 13"):
        generator.generate(prompts[:1], rows=[RowSettings(N_NEW + 1)])


@pytest.mark.parametrize("dtype,variant", [(jnp.float32, {}), (jnp.bfloat16, {}),
                                           (jnp.float32, dict(attention_bias=True)),
                                           (jnp.float32, dict(qk_norm=True))])
def test_fused_decode_steps_equal_the_models_cached_forward(dtype, variant):
    """`decode_step` on fused per-layer weights vs `Llama.decode_embeddings` with the stacked
    cache: same logits after a right-padded prefill, step after step (fp32 1e-5 of the logit
    scale; bf16: same compute dtype on both sides, 5e-2: a wrong position or head is O(1)).
    Qwen2 biases and Qwen3 q/k norm scales are set to random values, so leaving one out fails."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=3,
                         num_heads=4, num_kv_heads=2, head_dim=8, initializer_range=0.3,
                         dtype=dtype, **variant)
    model = Llama(config, rngs=nnx.Rngs(5))
    attn = model.layers.attn
    for i, name in enumerate(("q_bias", "k_bias", "v_bias", "q_norm", "k_norm")):
        if hasattr(attn, name):
            param = getattr(attn, name)
            param.set_value(1 + jax.random.normal(jax.random.key(i), param.get_value().shape))
    _assert_fused_decode_equals_cached(model, 1e-5 if dtype == jnp.float32 else 5e-2)


def test_fused_decode_folds_lora_adapters_and_a_quantised_base():
    from llark_jax.model.lora import add_lora, owner
    from llark_jax.model.quant import quantize_base

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_layers=2,
                         num_heads=4, num_kv_heads=2, head_dim=8, initializer_range=0.3)
    model = add_lora(quantize_base(Llama(config, rngs=nnx.Rngs(6)), 8), 4, 8.0,
                     ("q", "v", "gate", "down"))
    for i, target in enumerate(("q", "v", "gate", "down")):  # B starts at zero: make it count
        b = getattr(owner(model.layers, target), f"{target}_lora").b
        b.set_value(jax.random.normal(jax.random.key(i), b.get_value().shape))
    _assert_fused_decode_equals_cached(model, 1e-4)  # adapters folded: another rounding


def _assert_fused_decode_equals_cached(model: Llama, tol: float) -> None:
    config = model.config
    ids = jnp.asarray(np.random.default_rng(2).integers(1, VOCAB, (2, 16)), jnp.int32)
    mask = jnp.asarray(np.arange(16)[None] < np.array([[16], [9]]), jnp.int32)
    _, cache = model.decode_embeddings(model.embed_tokens(ids), attention_mask_bt=mask,
                                       cache=init_cache(config, 2, 24))
    weights, layer_cache = decode_weights(model), unstack_cache(cache)
    for token in ([3, 7], [11, 2], [5, 5]):
        x_btd = model.embed_tokens(jnp.asarray(token, jnp.int32)[:, None])
        ref, cache = model.decode_embeddings(x_btd, cache=cache)
        out, layer_cache = decode_step(model, weights, x_btd, layer_cache)
        ref, out = np.asarray(ref), np.asarray(out)
        assert np.abs(out - ref).max() <= tol * np.abs(ref).max()
    np.testing.assert_array_equal(np.asarray(layer_cache.segment_ids), cache.segment_ids)
    for layer in range(config.num_layers):  # the cache holds the same keys, kv heads first
        np.testing.assert_allclose(np.asarray(layer_cache.k[layer], np.float32),
                                   np.asarray(cache.k[layer].transpose(0, 2, 1, 3), np.float32),
                                   rtol=tol, atol=tol)
