"""Shared helpers for the training tests: the tiny config and short in-process runs."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from llark_jax.config import load_config
from llark_jax.model.sharding import logical_rules
from llark_jax.train.loop import TrainSetup, make_batches, to_global_batch

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.py"


def tiny_config(**overrides: str):
    """configs/tiny.py with `section.field=value` overrides (keys use '__' for '.')."""
    return load_config(TINY, [(k.replace("__", "."), v) for k, v in overrides.items()])


def run_steps(config, mesh_sizes: dict, n_steps: int, devices=None):
    """Runs `n_steps` train steps in-process; returns (setup, final state, per-step losses)."""
    setup = TrainSetup(config, mesh_sizes, devices)
    batches = make_batches(config)
    losses = []
    with logical_rules(setup.mesh, setup.rules):
        state = setup.fresh_state()
        for _ in range(n_steps):
            state, metrics = setup.train_step(state, to_global_batch(next(batches), setup.mesh))
            losses.append(float(jax.device_get(metrics["loss"])))
    return setup, state, np.asarray(losses)
