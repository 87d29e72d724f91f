"""Two-stage recipes (MusiLingo: caption pre-training, then instruction tuning from its checkpoint).

Stage 2 names stage 1's workdir in `train.init_from`: its params start from stage 1's newest
checkpoint while the step and the optimizer start fresh, and the frozen LM stays bit-identical.
"""

import jax
import numpy as np
from train_helpers import tiny_config

from llark_jax.model.sharding import logical_rules
from llark_jax.train.checkpoint import TrainCheckpointer
from llark_jax.train.loop import TrainSetup, train


def _leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def test_stage_two_starts_from_stage_one_params_with_fresh_optimizer(tmp_path):
    common = dict(model__trainable="projector_only", train__async_checkpoint="False",
                  train__checkpoint_every="3")
    stage1 = tiny_config(train__steps="3", **common)
    assert train(stage1, tmp_path / "stage1") == 0

    ckpt = TrainCheckpointer(tmp_path / "stage1" / "checkpoints", keep=10, async_save=False)
    step, stage1_state, _ = ckpt.restore_latest(TrainSetup(stage1)
                                                .abstract_state_with_shardings())
    ckpt.close()
    assert step == 3

    stage2 = tiny_config(train__steps="4", train__init_from=str(tmp_path / "stage1"),
                         optim__peak_lr="3e-4", **common)
    setup2 = TrainSetup(stage2)
    with logical_rules(setup2.mesh, setup2.rules):
        start = setup2.fresh_state()
    for got, want in zip(_leaves(start["params"]), _leaves(stage1_state["params"]), strict=True):
        np.testing.assert_array_equal(got, want)
    assert int(jax.device_get(start["step"])) == 0
    assert all(not np.any(m) for m in _leaves(start["opt_state"]) if m.dtype.kind == "f")

    # Stage 1 trained the projector only: the LM weights equal a fresh model's (same seed).
    fresh = TrainSetup(stage1)
    with logical_rules(fresh.mesh, fresh.rules):
        init = fresh.fresh_state()
    lm_paths = [p for p, _ in jax.tree_util.tree_leaves_with_path(init["params"])
                if "projector" not in jax.tree_util.keystr(p)]
    assert lm_paths
    changed = {jax.tree_util.keystr(p)
               for (p, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(init["params"]),
                                         jax.tree_util.tree_leaves_with_path(start["params"]),
                                         strict=True)
               if not np.array_equal(np.asarray(a), np.asarray(b))}
    assert changed and all("projector" in p for p in changed)
