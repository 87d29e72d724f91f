"""Flax Llama vs the real `transformers.LlamaForCausalLM` on tiny random checkpoints.

Contract (fp32): max |logit diff| <= 1e-4 * max |logit| on >= 300-token right-padded batches;
identical greedy continuations; KV-cache decoding equals the full forward; packed segments equal
separate forwards. bf16 contract: see `test_bf16_next_token_kl`.
"""

from __future__ import annotations

import copy

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from llama_helpers import (
    CONFIGS,
    TINY,
    cached_checkpoint,
    cast_torch_llama,
    make_torch_llama,
    random_batch,
    torch_logits,
)

from llark_jax.checkpoints.hf import load_llama
from llark_jax.infer.generate import Generator, Prompt, SamplingConfig
from llark_jax.model.llama import init_cache

FP32_REL_TOL = 1e-4
V = TINY["vocab_size"]


@nnx.jit
def forward(model, ids, mask):
    return model(ids, attention_mask=mask)


@nnx.jit
def forward_packed(model, ids, segment_ids):
    return model(ids, segment_ids=segment_ids)


@nnx.jit
def forward_cached(model, ids, mask, cache, logits_at=None):
    """Cached call on token ids [B, T] (mask None = all real) -> (logits, advanced cache)."""
    return model.decode_embeddings(model.embed_tokens(ids), attention_mask_bt=mask, cache=cache,
                                   logits_at=logits_at)


@pytest.fixture(scope="module")
def reference():
    """name -> (torch model, checkpoint dir, Flax model), built once per module."""
    cache = {}

    def get(name: str):
        if name not in cache:
            path = cached_checkpoint(name, sharded=name == "gqa_llama3")
            cache[name] = (make_torch_llama(name), path, load_llama(path))
        return cache[name]

    return get


def _assert_close(out: np.ndarray, ref: np.ndarray, valid: np.ndarray) -> float:
    diff = float(np.abs(out - ref)[valid].max())
    scale = float(np.abs(ref[valid]).max())
    assert diff <= FP32_REL_TOL * scale, (diff, scale)
    return diff


@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_torch(reference, name):
    tm, _, model = reference(name)
    ids, mask = random_batch(V, [320, 300], seed=1)
    out = np.asarray(forward(model, jnp.asarray(ids), jnp.asarray(mask)))
    _assert_close(out, torch_logits(tm, ids, mask), mask.astype(bool))


@pytest.mark.parametrize("name", ["gqa_llama3"])
def test_greedy_continuation_matches_torch(reference, name):
    tm, _, model = reference(name)
    ids, mask = random_batch(V, [310, 300], seed=2)
    generator = Generator(model, SamplingConfig(max_new_tokens=32), batch_size=2,
                          length_buckets=(ids.shape[1],))
    outputs = generator.generate([Prompt(ids[row, :n]) for row, n in enumerate(mask.sum(1))])
    ours = np.asarray([output.token_ids for output in outputs])
    assert ours.shape == (2, 32)
    for row, n in enumerate(mask.sum(1)):
        prompt = torch.from_numpy(ids[row : row + 1, :n]).long()
        with torch.no_grad():
            ref = tm.generate(prompt, max_new_tokens=32, do_sample=False, min_new_tokens=32,
                              pad_token_id=0)[0, n:].numpy()
        np.testing.assert_array_equal(ours[row], ref)


def test_kv_cache_decode_equals_full_forward(reference):
    _, _, model = reference("gqa_untied_5e5")
    lengths, steps = [320, 300], 8
    ids, mask = random_batch(V, lengths, seed=3)
    new_tokens = np.random.default_rng(4).integers(1, V, (2, steps)).astype(np.int32)
    full_ids, full_mask = random_batch(V, [n + steps for n in lengths])
    for row, n in enumerate(lengths):
        full_ids[row, :n] = ids[row, :n]
        full_ids[row, n : n + steps] = new_tokens[row]
    full = np.asarray(forward(model, jnp.asarray(full_ids), jnp.asarray(full_mask)))

    empty = init_cache(model.config, 2, ids.shape[1] + steps)
    last, _ = forward_cached(model, jnp.asarray(ids), jnp.asarray(mask), empty,
                             jnp.asarray(mask.sum(1) - 1))
    assert last.shape == (2, 1, model.config.padded_vocab_size)
    logits, cache = forward_cached(model, jnp.asarray(ids), jnp.asarray(mask), empty)
    logits = np.asarray(logits)
    for row, n in enumerate(lengths):
        _assert_close(logits[row, :n], full[row, :n], np.ones((n,), bool))
        np.testing.assert_allclose(np.asarray(last)[row, 0], logits[row, n - 1], rtol=0, atol=1e-5)
    for k in range(steps):
        step_logits, cache = forward_cached(model, jnp.asarray(new_tokens[:, k : k + 1]), None,
                                            cache)
        for row, n in enumerate(lengths):
            _assert_close(np.asarray(step_logits)[row, 0], full[row, n + k], np.ones((V,), bool))
    assert int(cache.index) == ids.shape[1] + steps


def test_packed_segments_equal_separate_forwards(reference):
    tm, _, model = reference("mqa_linear")
    lengths = [130, 100, 80]
    ids, mask = random_batch(V, lengths, seed=5)
    packed = np.zeros((1, 320), np.int32)
    segments = np.zeros((1, 320), np.int32)
    start = 0
    for i, n in enumerate(lengths):
        packed[0, start : start + n] = ids[i, :n]
        segments[0, start : start + n] = i + 1
        start += n
    out = np.asarray(forward_packed(model, jnp.asarray(packed), jnp.asarray(segments)))
    ref = torch_logits(tm, ids, mask)
    start = 0
    for i, n in enumerate(lengths):
        _assert_close(out[0, start : start + n], ref[i, :n], np.ones((n,), bool))
        start += n


def _kl(p_logits: np.ndarray, q_logits: np.ndarray) -> np.ndarray:
    """KL(p || q) per position, in nats, from float logits [..., V]."""
    logp = p_logits - np.logaddexp.reduce(p_logits, axis=-1, keepdims=True)
    logq = q_logits - np.logaddexp.reduce(q_logits, axis=-1, keepdims=True)
    return np.sum(np.exp(logp) * (logp - logq), axis=-1)


def test_bf16_next_token_kl(reference):
    """bf16 (params + compute) vs the fp32 torch reference.

    bf16 keeps 8 mantissa bits (relative rounding 2^-9), so logits move by ~1e-2 and an absolute
    tolerance is meaningless; what matters is the next-token distribution. Contract: mean KL to
    the fp32 reference <= max(2 x torch's own bf16 mean KL, 1e-3 nats) and max KL <= 2 x torch's
    max + 1e-2 nats: our bf16 path may not be much worse than torch's own bf16 path.
    """
    tm, path, _ = reference("gqa_llama3")
    ids, mask = random_batch(V, [320, 300], seed=6)
    valid = mask.astype(bool)
    ref32 = torch_logits(tm, ids, mask)
    ref16 = torch_logits(cast_torch_llama(copy.deepcopy(tm), torch.bfloat16), ids, mask)
    model16 = load_llama(path, dtype=jnp.bfloat16)
    assert model16.embed[...].dtype == jnp.bfloat16
    ours16 = np.asarray(forward(model16, jnp.asarray(ids), jnp.asarray(mask)))
    kl_ours, kl_torch = _kl(ref32, ours16)[valid], _kl(ref32, ref16)[valid]
    print(f"bf16 KL mean/max: ours {kl_ours.mean():.2e}/{kl_ours.max():.2e}, "
          f"torch {kl_torch.mean():.2e}/{kl_torch.max():.2e}")
    assert kl_ours.mean() <= max(2 * kl_torch.mean(), 1e-3)
    assert kl_ours.max() <= 2 * kl_torch.max() + 1e-2


def test_remat_layers_give_same_logits_and_grads(reference):
    _, path, model = reference("mqa_linear")
    remat_model = load_llama(path, remat=True)
    ids, mask = random_batch(V, [48, 40], seed=7)

    @nnx.jit
    def loss_and_grads(m, ids, mask):
        return nnx.value_and_grad(lambda m: jnp.mean(m(ids, attention_mask=mask) ** 2))(m)

    loss, grads = loss_and_grads(model, jnp.asarray(ids), jnp.asarray(mask))
    loss_r, grads_r = loss_and_grads(remat_model, jnp.asarray(ids), jnp.asarray(mask))
    np.testing.assert_allclose(loss_r, loss, rtol=1e-6)
    g, g_r = nnx.to_flat_state(grads), nnx.to_flat_state(grads_r)
    for (path_a, a), (_, b) in zip(g, g_r, strict=True):
        np.testing.assert_allclose(np.asarray(b[...]), np.asarray(a[...]), rtol=1e-5, atol=1e-7,
                                   err_msg=str(path_a))
