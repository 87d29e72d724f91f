"""masked_lm_loss (shift, segments, normalisations) and trainable-set presets."""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from llark_helpers import tiny_llark
from tokenizer_fixtures import make_llark_tokenizer

from llark_jax.model import trainable
from llark_jax.model.loss import IGNORE_INDEX, masked_lm_loss, masked_lm_loss_at, scored_positions


def _numpy_nll(logits, labels, segs):
    """Per-pair nll with an explicit Python loop (the spec: shift by one, same segment, != -100)."""
    out = []
    for b in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = labels[b, t + 1]
            if y == IGNORE_INDEX or segs[b, t + 1] != segs[b, t] or segs[b, t + 1] == 0:
                continue
            z = logits[b, t].astype(np.float64)
            out.append(np.log(np.exp(z - z.max()).sum()) + z.max() - z[y])
    return np.array(out)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 12, 30)).astype(np.float32) * 3
    labels = rng.integers(0, 30, size=(4, 12)).astype(np.int32)
    labels[rng.random((4, 12)) < 0.3] = IGNORE_INDEX
    segs = np.array([[1] * 5 + [2] * 5 + [0] * 2] * 2 + [[1] * 12] * 2, np.int32)
    return logits, labels, segs


def test_loss_matches_loop_reference_and_skips_segment_boundaries(batch):
    logits, labels, segs = batch
    nll = _numpy_nll(logits, labels, segs)
    loss, m = masked_lm_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(segs))
    assert int(m["n_tokens"]) == len(nll)
    np.testing.assert_allclose(float(loss), nll.mean(), rtol=1e-6)
    np.testing.assert_allclose(float(m["loss_sum"]), nll.sum(), rtol=1e-6)
    no_seg, m2 = masked_lm_loss(jnp.asarray(logits), jnp.asarray(labels))
    assert int(m2["n_tokens"]) > int(m["n_tokens"])  # boundary + padding pairs are counted
    bf16, _ = masked_lm_loss(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels),
                             jnp.asarray(segs))
    np.testing.assert_allclose(float(bf16), nll.mean(), rtol=2e-2)


def test_global_token_normalisation_is_split_invariant(batch):
    logits, labels, segs = batch
    full, m = masked_lm_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(segs))
    total = m["n_tokens"]
    accumulated = sum(
        masked_lm_loss(jnp.asarray(logits[i : i + 1]), jnp.asarray(labels[i : i + 1]),
                       jnp.asarray(segs[i : i + 1]), normalization="global_tokens",
                       global_token_count=total)[0]
        for i in range(4)
    )
    np.testing.assert_allclose(float(accumulated), float(full), rtol=1e-6)
    per_micro_mean = np.mean([
        float(masked_lm_loss(jnp.asarray(logits[i : i + 1]), jnp.asarray(labels[i : i + 1]),
                             jnp.asarray(segs[i : i + 1]))[0]) for i in range(4)
    ])
    assert abs(per_micro_mean - float(full)) > 1e-4  # the reference's averaging differs
    with pytest.raises(ValueError, match="normalization"):
        masked_lm_loss(jnp.asarray(logits), jnp.asarray(labels), normalization="sum")


def size(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("tie", [False, True])
def test_presets_select_the_documented_groups(tie):
    tok = make_llark_tokenizer()
    model = tiny_llark(tok, tie=tie)
    state = nnx.state(model, nnx.Param)
    e, v = 64, len(tok)
    total, proj = size(state), size(state["projector"])
    lm_head = 0 if tie else e * v
    layers = size(state["llama"]["layers"])
    expected = {
        "all": total,
        "projector_only": proj,
        "llark_reference": proj + layers + e + 2 * e,
        "lm_frozen_new_tokens": proj + 2 * e,
    }
    assert total == proj + layers + e + v * e + lm_head
    for preset, n in expected.items():
        mask = trainable.gradient_mask(model, preset)
        assert trainable.count_trainable(state, mask) == n, preset
    rows = trainable.gradient_mask(model, "lm_frozen_new_tokens", token_ids=[1, 2, 3])
    assert trainable.count_trainable(state, rows) == proj + 3 * e
    with pytest.raises(KeyError, match="unknown trainable preset"):
        trainable.gradient_mask(model, "everything")
    with pytest.raises(ValueError, match="token_ids"):
        trainable.gradient_mask(state, "llark_reference")


def test_scored_positions_give_the_full_loss_and_count_what_they_leave_out(batch):
    logits, labels, segs = batch
    full, m = masked_lm_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(segs))
    per_row = _numpy_supervised_per_row(labels, segs)
    for k in (max(per_row), 11, 40):  # exactly enough, every position (T-1), more than T
        at_bk, targets_bk, valid_bk, unscored = scored_positions(
            jnp.asarray(labels), jnp.asarray(segs), k)
        assert at_bk.shape == (4, min(k, 11)) and int(unscored) == 0
        logits_bkv = jnp.take_along_axis(jnp.asarray(logits), at_bk[..., None], axis=1)
        loss, m_at = masked_lm_loss_at(logits_bkv, targets_bk, valid_bk)
        np.testing.assert_allclose(float(loss), float(full), rtol=1e-6)
        assert int(m_at["n_tokens"]) == int(m["n_tokens"])
    k = max(per_row) - 2
    *_, unscored = scored_positions(jnp.asarray(labels), jnp.asarray(segs), k)
    assert int(unscored) == sum(max(n - k, 0) for n in per_row) > 0


def _numpy_supervised_per_row(labels, segs):
    valid = ((labels[:, 1:] != IGNORE_INDEX) & (segs[:, 1:] == segs[:, :-1]) & (segs[:, 1:] != 0))
    return valid.sum(axis=1).tolist()


def _dot_output_shapes(fn, *args) -> list[tuple[int, ...]]:
    """Output shapes of every dot_general in the jaxpr of `fn(*args)` (nested jaxprs included)."""
    shapes = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                shapes.append(tuple(eqn.outvars[0].aval.shape))
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return shapes


def test_tied_head_trains_the_masked_rows_without_the_full_weight_gradient():
    """`embed_grad_rows` on a tied head: same loss, same masked gradient (the rows of
    `llark_reference` in both roles) as the full [V, D] head gradient, and no [V, D] matmul."""
    from llark_helpers import reference_batch

    tok, _, batch, audio = reference_batch()
    model = tiny_llark(tok, tie=True)
    graphdef, params = nnx.split(model, nnx.Param)
    rows = trainable.trained_rows("llark_reference", (model.audio_start_id, model.audio_end_id))
    assert rows == (model.audio_start_id, model.audio_end_id)
    assert trainable.trained_rows("all", rows) is None
    assert trainable.trained_rows("projector_only", rows) is None
    ids, labels = jnp.asarray(batch["input_ids"]), jnp.asarray(batch["labels"])
    segs = jnp.asarray(batch["attention_mask"])

    def loss(p, grad_rows):
        logits = nnx.merge(graphdef, p)(ids, jnp.asarray(audio), segment_ids=segs,
                                        embed_grad_rows=grad_rows)
        return masked_lm_loss(logits, labels, segs)[0]

    full_loss, full = jax.value_and_grad(loss)(params, None)
    rows_loss, by_rows = jax.value_and_grad(loss)(params, rows)
    assert float(rows_loss) == float(full_loss)
    mask = trainable.gradient_mask(model, "llark_reference")
    full, by_rows = trainable.apply_mask(full, mask), trainable.apply_mask(by_rows, mask)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(full), jax.tree.leaves(by_rows),
                            strict=True):
        scale = float(jnp.abs(a).max()) or 1.0
        assert float(jnp.abs(a - b).max()) <= 1e-6 * scale, jax.tree_util.keystr(path)
    embed = by_rows["llama"]["embed"][...]
    assert set(np.flatnonzero(np.abs(np.asarray(embed)).sum(1))) == set(rows)

    v, d = model.llama.config.padded_vocab_size, model.llama.config.hidden_size
    full_shapes = _dot_output_shapes(jax.grad(loss), params, None)
    rows_shapes = _dot_output_shapes(lambda p: jax.grad(loss)(p, rows), params)
    assert (v, d) in full_shapes or (d, v) in full_shapes  # the check sees the full gradient
    assert (v, d) not in rows_shapes and (d, v) not in rows_shapes
