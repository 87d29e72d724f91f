"""LLark splice and packing: N-segment splice == manual splice, packed rows == separate runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from llark_helpers import ANSWER, AUDIO_DIM, QUESTION, tiny_llark
from tokenizer_fixtures import make_base_tokenizer, make_llark_tokenizer

from llark_jax.data import conversation as conv
from llark_jax.model.llama import Llama, LlamaConfig
from llark_jax.model.llark import LLark
from llark_jax.model.loss import masked_lm_loss


@pytest.fixture(scope="module")
def tok():
    return make_llark_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_llark(tok, seed=3)


def _projected(model, audio):
    kernel = np.asarray(model.projector.kernel[...])
    return np.asarray(audio) @ kernel + np.asarray(model.projector.bias[...])


def test_multi_segment_splice_equals_manual_splice(tok, model):
    frames, t_a = [5, 7], 8
    ex = conv.build_example(tok, conv.FASTCHAT_V0, QUESTION, ANSWER, frames, False)
    ids = ex["input_ids"][None]
    audio = np.random.default_rng(0).normal(size=(1, 2, t_a, AUDIO_DIM)).astype(np.float32)
    index = conv.audio_frame_index(ids.shape[1], ex["audio_patch_starts"], frames, t_a)[None]

    manual = np.asarray(model.llama.embed_tokens(jnp.asarray(ids))).copy()
    proj = _projected(model, audio[0])
    for s, (start, n) in enumerate(zip(ex["audio_patch_starts"], frames, strict=True)):
        manual[0, start : start + n] = proj[s, :n]
    spliced = model.embed_inputs(jnp.asarray(ids), jnp.asarray(audio), jnp.asarray(index))
    np.testing.assert_allclose(spliced, manual, atol=1e-6)
    # start/end tokens keep their learned embeddings
    table = np.asarray(model.llama.embed[...])
    for start in ex["audio_patch_starts"]:
        np.testing.assert_array_equal(spliced[0, start - 1], table[model.audio_start_id])

    logits = model(jnp.asarray(ids), jnp.asarray(audio), audio_frame_index=jnp.asarray(index))
    expected, _ = model.llama.decode_embeddings(jnp.asarray(manual))
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    # Without an index the k-th patch takes the k-th frame of the flattened audio.
    flat = np.concatenate([audio[0, 0, :5], audio[0, 1, :7]])[None]
    np.testing.assert_allclose(model(jnp.asarray(ids), jnp.asarray(flat)), logits, atol=1e-5)
    text = jnp.asarray(ids[:, :20])  # text only (no audio): the plain Llama
    np.testing.assert_array_equal(model(text, None), model.llama(text))


def test_packing_two_examples_equals_separate_runs(tok, model):
    t_a = 130
    rng = np.random.default_rng(1)
    exs = [
        conv.build_example(tok, conv.FASTCHAT_V0, QUESTION, ANSWER, 130, True),
        conv.build_example(tok, conv.FASTCHAT_V0, "Which key?", ANSWER[:50], 100, False),
    ]
    audio = rng.normal(size=(2, t_a, AUDIO_DIM)).astype(np.float32)
    lens = [len(e["input_ids"]) for e in exs]
    assert min(lens) >= 150 and sum(lens) >= 300
    length = sum(lens) + 9
    ids = np.full((1, length), tok.pad_token_id, np.int32)
    labels = np.full((1, length), conv.IGNORE_INDEX, np.int32)
    seg = np.zeros((1, length), np.int32)
    pos = np.zeros((1, length), np.int32)
    index = np.zeros((1, length), np.int32)
    offset = 0
    for k, e in enumerate(exs):
        n = len(e["input_ids"])
        ids[0, offset : offset + n], labels[0, offset : offset + n] = e["input_ids"], e["labels"]
        seg[0, offset : offset + n], pos[0, offset : offset + n] = k + 1, np.arange(n)
        index[0] += conv.audio_frame_index(length, e["audio_patch_starts"], e["audio_frames"],
                                           t_a, offset=offset, first_segment=k)
        offset += n

    @jax.jit
    def packed_fn(state):
        m = nnx.merge(graphdef, state)
        return m(jnp.asarray(ids), jnp.asarray(audio[None]), jnp.asarray(pos),
                 segment_ids=jnp.asarray(seg), audio_frame_index=jnp.asarray(index))

    graphdef, state = nnx.split(model)
    packed = packed_fn(state)
    _, packed_metrics = masked_lm_loss(packed, jnp.asarray(labels), jnp.asarray(seg),
                                       normalization="global_tokens")
    loss_sum, n_tokens, offset = 0.0, 0, 0
    for k, e in enumerate(exs):
        n = len(e["input_ids"])
        alone = model(jnp.asarray(e["input_ids"][None]), jnp.asarray(audio[k][None]))
        diff = float(jnp.abs(packed[0, offset : offset + n] - alone[0]).max())
        print(f"example {k}: {n} tokens, max |packed - alone| logits {diff:.2e}")
        assert diff < 2e-5
        _, m = masked_lm_loss(alone, jnp.asarray(e["labels"][None]))
        loss_sum, n_tokens = loss_sum + float(m["loss_sum"]), n_tokens + int(m["n_tokens"])
        offset += n
    assert int(packed_metrics["n_tokens"]) == n_tokens
    np.testing.assert_allclose(float(packed_metrics["loss_sum"]), loss_sum, rtol=1e-5)


def test_temporal_pool_masked_mean(tok):
    model = tiny_llark(tok, temporal_pool=2)
    audio = np.random.default_rng(2).normal(size=(1, 2, 6, AUDIO_DIM)).astype(np.float32)
    mask = np.ones((1, 2, 6), bool)
    mask[0, 1, 5] = False  # last frame of segment 1 is padding
    frames = np.asarray(model.project_audio(jnp.asarray(audio), jnp.asarray(mask)))
    proj = _projected(model, audio[0])
    assert frames.shape == (1, 6, 64)
    np.testing.assert_allclose(frames[0, 1], proj[0, 2:4].mean(0), atol=1e-5)
    np.testing.assert_allclose(frames[0, 5], proj[1, 4], atol=1e-5)
    with pytest.raises(ValueError, match="temporal_pool=2"):
        model.project_audio(jnp.asarray(audio[:, :, :5]))


def test_token_extension_then_llark_on_a_pretrained_llama(tok):
    from llark_jax.checkpoints.tokens import extend_with_llark_tokens

    base = make_base_tokenizer()
    cfg = LlamaConfig(vocab_size=len(base), hidden_size=32, intermediate_size=64, num_layers=1,
                      num_heads=2, num_kv_heads=1, head_dim=16, vocab_multiple=128)
    llama = Llama(cfg, rngs=nnx.Rngs(0))
    extended = extend_with_llark_tokens(llama, base)
    model = LLark(llama, 12, audio_patch_id=extended.patch, audio_start_id=extended.start,
                  audio_end_id=extended.end, rngs=nnx.Rngs(1))
    ids = conv.AudioTokenIds.from_tokenizer(base)
    assert ids == conv.AudioTokenIds.from_tokenizer(tok)  # same order as the test fixture
    assert (model.audio_patch_id, model.audio_start_id, model.audio_end_id) == (
        ids.patch, ids.start, ids.end)
    assert model.llama.config.vocab_size == len(base) and model.llama.embed.shape[0] % 128 == 0
    ex = conv.build_example(base, conv.FASTCHAT_V0, QUESTION, "Jazz.", 4, True)
    logits = model(jnp.asarray(ex["input_ids"][None]), jnp.ones((1, 4, 12), jnp.float32))
    assert logits.shape == (1, len(ex["input_ids"]), model.llama.embed.shape[0])
    assert np.isfinite(np.asarray(logits[..., : len(base)])).all()


def test_projector_init_scale_multiplies_the_reference_init():
    """`model.projector_init_scale` scales the torch-default kernel and bias (same draws), and
    reaches the model built from a config."""
    from llark_jax.checkpoints.build import model_fn
    from llark_jax.config import load_config
    from llark_jax.model.llark import AudioProjector

    def projector(scale: float) -> AudioProjector:
        return AudioProjector(12, 8, param_dtype=jnp.float32, dtype=jnp.float32,
                              rngs=nnx.Rngs(0), init_scale=scale)

    ref, small = projector(1.0), projector(0.25)
    np.testing.assert_allclose(small.kernel[...], 0.25 * ref.kernel[...], rtol=1e-6)
    np.testing.assert_allclose(small.bias[...], 0.25 * ref.bias[...], rtol=1e-6)
    cfg = load_config("tiny", [("model.projector_init_scale", "0.5")]).model
    base = load_config("tiny").model
    scaled_kernel = model_fn(cfg, 0)().projector.kernel[...]
    np.testing.assert_allclose(scaled_kernel, 0.5 * model_fn(base, 0)().projector.kernel[...],
                               rtol=1e-6)
