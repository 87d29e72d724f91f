"""Held-out validation loss (`train.eval_every`, `train.eval_batches`, `data.eval_path`): the jitted
eval step shares the train step's loss, the logged value is the token mean over the same
held-out batches at every evaluation, and TFRecord runs read `data.eval_path` through the same
pipeline."""

from __future__ import annotations

import json

import jax
import numpy as np
from test_host_loop import _records, records_config
from train_helpers import TINY, tiny_config

from llark_jax.model.sharding import logical_rules
from llark_jax.train.checkpoint import TrainCheckpointer
from llark_jax.train.inputs import make_eval_batches, to_global_batch
from llark_jax.train.loop import TrainSetup, main, make_batches, train


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def test_eval_step_equals_the_train_step_loss_on_the_same_batch():
    config = tiny_config(train__loss_normalization="global_tokens")
    setup = TrainSetup(config, {"data": 1, "fsdp": 2, "tensor": 1}, jax.devices()[:2])
    batches = make_batches(config)
    with logical_rules(setup.mesh, setup.rules):
        state = setup.fresh_state()
        for _ in range(2):
            batch = to_global_batch(next(batches), setup.mesh)
            evaluated = jax.device_get(setup.eval_step(state["params"], state["rest"], batch))
            state, trained = setup.train_step(state, batch)  # loss at the params before the update
            trained = jax.device_get(trained)
            np.testing.assert_allclose(evaluated["loss"], trained["loss"], rtol=1e-6)
            assert evaluated["supervised_tokens"] == trained["supervised_tokens"] > 0


def test_validation_loss_is_logged_every_n_steps_and_matches_the_checkpoint(tmp_path):
    config = tiny_config(train__steps="4", train__checkpoint_every="2",
                         train__keep_checkpoints="3", train__eval_every="2",
                         train__eval_batches="3", train__async_checkpoint="False")
    assert train(config, tmp_path) == 0
    rows = _metrics(tmp_path)
    assert [("val_loss" in r) for r in rows] == [False, True, False, True]
    assert rows[1]["val_loss"] != rows[3]["val_loss"]  # the model changed between them

    # Recompute from the checkpoints: the same held-out batches, the token-weighted mean.
    setup = TrainSetup(config)
    target = setup.abstract_state_with_shardings()
    ckpt = TrainCheckpointer(tmp_path / "checkpoints", keep=10, async_save=False)
    with logical_rules(setup.mesh, setup.rules):
        for row in (rows[1], rows[3]):
            state = ckpt.restore_subtrees(row["step"], {"params": target["params"],
                                                        "rest": target["rest"]})
            held_out = make_eval_batches(config)
            losses, tokens = [], []
            for _ in range(3):
                out = jax.device_get(setup.eval_step(
                    state["params"], state["rest"], to_global_batch(next(held_out), setup.mesh)))
                losses.append(float(out["loss"]))
                tokens.append(int(out["supervised_tokens"]))
            assert row["val_tokens"] == sum(tokens)
            np.testing.assert_allclose(row["val_loss"], np.dot(losses, tokens) / sum(tokens),
                                       rtol=1e-6)
    ckpt.close()


def test_records_validation_reads_eval_path_and_needs_it(tmp_path, capsys):
    records, tokenizer = _records(tmp_path / "train")
    held_out, _ = _records(tmp_path / "held_out")
    config = records_config(records, tokenizer, train__steps="3", train__checkpoint_every="3",
                            train__eval_every="1", train__eval_batches="2",
                            data__eval_path=f"{held_out}/*.tfrecord")
    assert train(config, tmp_path / "w") == 0
    rows = _metrics(tmp_path / "w")
    assert all(np.isfinite(r["val_loss"]) and r["val_tokens"] > 0 for r in rows)

    # Without data.eval_path: one error line, exit status 2.
    args = ["--config", str(TINY), "--workdir", str(tmp_path / "w2"),
            "--config.data.source=tfrecord", f"--config.data.path={records}/*.tfrecord",
            f"--config.model.tokenizer={tokenizer}", "--config.model.llama.vocab_size=640",
            "--config.model.audio_start_id=-1", "--config.model.audio_patch_id=-1",
            "--config.model.audio_end_id=-1", "--config.model.audio_dim=8",
            "--config.data.audio_frames=4", "--config.train.eval_every=2"]
    capsys.readouterr()
    assert main(args) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "data.eval_path" in errors[0]
