"""Sharded training equals single-device training; parameters are sharded as the rules say."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from train_helpers import run_steps, tiny_config

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

    gate = state["params"]["llama"]["layers"][0]["mlp"]["gate"][...]  # [embed 32, mlp 64]
    assert gate.sharding.spec == gate_spec
    fsdp, tensor = setup.mesh.shape["fsdp"], setup.mesh.shape["tensor"]
    assert gate.sharding.shard_shape(gate.shape) == (32 // fsdp, 64 // tensor)
    q = state["params"]["llama"]["layers"][1]["attn"]["q"][...]  # [embed, heads 4, head_dim]
    assert q.sharding.shard_shape(q.shape) == (32 // fsdp, 4 // tensor, 8)
    # Adam's first moment of a trained weight is sharded like the weight itself.
    mu = jax.tree.leaves(state["opt_state"].inner_states["trained"].inner_state[1][0].mu)
    assert any(getattr(leaf, "sharding", None) == gate.sharding and leaf.shape == gate.shape
               for leaf in mu)


def test_accumulation_with_data_parallel_rules_matches_full_batch(single_device_losses):
    """2 accumulated micro-batches (token-weighted) == 1 full batch; DP rules replicate params.

    With one micro-batch both normalisations are the same, so the single-device run (default
    `micro_batch_mean`, micro_steps=1) is the full-batch reference.
    """
    accumulated = tiny_config(train__loss_normalization="global_tokens", train__micro_steps="2",
                              sharding_rules="data_parallel")
    _, state, losses = run_steps(accumulated, {"data": 4}, STEPS, devices=jax.devices()[:4])
    np.testing.assert_allclose(losses, single_device_losses, rtol=2e-5)
    gate = state["params"]["llama"]["layers"][0]["mlp"]["gate"][...]
    assert gate.sharding.shard_shape(gate.shape) == gate.shape  # replicated
