"""Sharded training equals single-device training; parameters are sharded as the rules say."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from train_helpers import run_steps, tiny_config

from llark_jax.model.loss import supervised_targets
from llark_jax.model.sharding import logical_rules
from llark_jax.train.loop import TrainSetup, make_batches, to_global_batch
from llark_jax.train.step import check_all_scored, make_train_step

STEPS = 5


@pytest.fixture(scope="module")
def single_device_losses():
    _, _, losses = run_steps(tiny_config(), {"fsdp": 1}, STEPS, devices=jax.devices()[:1])
    return losses


@pytest.mark.parametrize(
    "mesh, gate_spec",
    [
        ({"fsdp": 8}, P("fsdp", "tensor")),
        ({"data": 2, "fsdp": 4}, P("fsdp", "tensor")),
        ({"fsdp": 4, "tensor": 2}, P("fsdp", "tensor")),
    ],
)
def test_sharded_losses_equal_single_device(mesh, gate_spec, single_device_losses):
    setup, state, losses = run_steps(tiny_config(), mesh, STEPS)
    # fp32 on CPU; sharded reductions change summation order only.
    np.testing.assert_allclose(losses, single_device_losses, rtol=2e-5, atol=0)
    assert losses[-1] != losses[0]  # training actually moved the parameters

    layers = state["params"]["llama"]["layers"]  # stacked: [L, ...], the layer axis unsplit
    gate = layers["mlp"]["gate"][...]  # [layers 2, embed 32, mlp 64]
    assert gate.sharding.spec == P(None, *gate_spec)
    fsdp, tensor = setup.mesh.shape["fsdp"], setup.mesh.shape["tensor"]
    assert gate.sharding.shard_shape(gate.shape) == (2, 32 // fsdp, 64 // tensor)
    q = layers["attn"]["q"][...]  # [layers, embed, heads 4, head_dim]
    assert q.sharding.shard_shape(q.shape) == (2, 32 // fsdp, 4 // tensor, 8)
    # Adam's first moment of a trained weight is sharded like the weight itself.
    mu = jax.tree.leaves(state["opt_state"][1].inner_states["trained"].inner_state[0].mu)
    assert any(getattr(leaf, "sharding", None) == gate.sharding and leaf.shape == gate.shape
               for leaf in mu)


def test_accumulation_with_data_parallel_rules_matches_full_batch(single_device_losses):
    """2 accumulated micro-batches (token-weighted) == 1 full batch; DP rules replicate params.

    With one micro-batch both normalisations are the same, so the single-device run (default
    `micro_batch_mean`, micro_steps=1) is the full-batch reference.
    """
    accumulated = tiny_config(train__loss_normalization="global_tokens", train__micro_steps="2",
                              logical_axis_rules="[['batch', ['data', 'fsdp']]]")
    _, state, losses = run_steps(accumulated, {"data": 4}, STEPS, devices=jax.devices()[:4])
    np.testing.assert_allclose(losses, single_device_losses, rtol=2e-5)
    gate = state["params"]["llama"]["layers"]["mlp"]["gate"][...]
    assert gate.sharding.shard_shape(gate.shape) == gate.shape  # replicated


def test_lm_head_at_scored_positions_only_equals_the_full_head(single_device_losses):
    """`train.head_positions` K (the most supervised tokens of any row) on a sharded mesh gives
    the single-device full-head losses; a K too small is reported by `check_all_scored`."""
    batches = make_batches(tiny_config())
    per_row = [supervised_targets(jnp.asarray(b["labels"]), jnp.asarray(b["segment_ids"]))[1]
               .sum(axis=1).max() for b in (next(batches) for _ in range(STEPS))]
    k = int(max(per_row))
    assert k < tiny_config().data.seq_len - 1  # the head really skips positions
    config = tiny_config(train__head_positions=str(k))
    _, _, losses = run_steps(config, {"fsdp": 4, "tensor": 2}, STEPS)
    np.testing.assert_allclose(losses, single_device_losses, rtol=2e-5)

    short = tiny_config(train__head_positions="1")
    setup = TrainSetup(short, {"fsdp": 1}, jax.devices()[:1])
    with logical_rules(setup.mesh, setup.rules):
        _, metrics = setup.train_step(setup.fresh_state(),
                                      to_global_batch(next(make_batches(short)), setup.mesh))
    assert int(metrics["unscored_tokens"]) > 0
    with pytest.raises(ValueError, match="train.head_positions"):
        check_all_scored(jax.device_get(metrics), 1, step=1)


def test_tied_head_row_gradient_trains_like_the_full_head_gradient():
    """A tied LM under `llark_reference` on a sharded mesh (the trainer passes the trained rows
    to the head, `llark_jax.model.llama.tied_logits`) moves every parameter as the single-device
    step that computes the full [V, D] head gradient and masks it."""
    config = tiny_config(model__llama__tie_word_embeddings="True",
                         train__head_positions="64")
    setup, state, losses = run_steps(config, {"fsdp": 4, "tensor": 2}, STEPS)
    assert losses[-1] != losses[0]

    plain = TrainSetup(config, {"fsdp": 1}, jax.devices()[:1])
    step = jax.jit(make_train_step(plain.graphdef, plain.tx, plain.schedule,
                                   grad_mask=plain.grad_mask, head_positions=64))
    batches = make_batches(config)
    plain_losses = []
    with logical_rules(plain.mesh, plain.rules):
        plain_state = plain.fresh_state()
        for _ in range(STEPS):
            plain_state, metrics = step(plain_state, next(batches))
            plain_losses.append(float(metrics["loss"]))
    np.testing.assert_allclose(losses, plain_losses, rtol=2e-5)
    ours = state["params"]["llama"]["embed"][...]
    theirs = plain_state["params"]["llama"]["embed"][...]
    start, end = config.model.audio_start_id, config.model.audio_end_id
    moved = np.flatnonzero(np.abs(np.asarray(ours) - np.asarray(
        plain.fresh_state()["params"]["llama"]["embed"][...])).sum(1))
    assert set(moved) == {start, end}
    np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("overrides", "mesh", "message"), [
    ({"data__batch_size": "4"}, {"fsdp": 8}, "does not split over the mesh's 8 batch shards"),
    ({"data__batch_size": "4"}, {"data": 1, "fsdp": 3}, "a multiple of 3"),
    ({"data__batch_size": "6", "train__micro_steps": "4"}, {"fsdp": 1}, "micro-batches"),
])
def test_a_batch_that_does_not_fit_the_mesh_is_a_config_error(overrides, mesh, message):
    """One `error:` line before anything compiles, not XLA's IndivisibleError traceback."""
    from llark_jax.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        TrainSetup(tiny_config(**overrides), mesh, devices=jax.devices()[: np.prod(
            list(mesh.values()))])
