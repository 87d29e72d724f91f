"""Checkpoint/resume: exact continuation, corrupt-checkpoint fallback, NaN stop, SIGKILL + rerun."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from train_helpers import REPO, TINY, tiny_config

from llark_jax.train.loop import EXIT_NAN, train


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def checkpoint_steps(workdir):
    return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_corrupt_newest_checkpoint_falls_back_and_resumes_exactly(tmp_path, caplog, capsys):
    config = tiny_config(train__steps="6", train__checkpoint_every="2",
                         train__keep_checkpoints="3")
    assert train(config, tmp_path) == 0
    assert "trained steps 1..6" in capsys.readouterr().out
    first = read_metrics(tmp_path)
    assert [r["step"] for r in first] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "step_time", "mfu"} <= set(first[0])
    assert checkpoint_steps(tmp_path) == [2, 4, 6]
    assert list((tmp_path / "tensorboard").iterdir())  # event files written

    for path in (tmp_path / "checkpoints" / "6" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"\x00garbage")
    with caplog.at_level(logging.WARNING):
        assert train(config, tmp_path) == 0  # same command again
    assert "checkpoint step 6 failed its integrity check" in caplog.text
    assert (tmp_path / "checkpoints" / "6.corrupt").is_dir()
    second = read_metrics(tmp_path)
    assert [r["step"] for r in second] == [1, 2, 3, 4, 5, 6]
    assert "trained steps 5..6" in capsys.readouterr().out
    # Steps 5-6 were recomputed from checkpoint 4 (params, Adam state, data position): bit-exact.
    assert [r["loss"] for r in second] == [r["loss"] for r in first]
    assert [r["grad_norm"] for r in second] == [r["grad_norm"] for r in first]
    assert checkpoint_steps(tmp_path) == [2, 4, 6]
    assert train(config, tmp_path) == 0  # a finished run: nothing to do, and it says so
    assert "already trained to step 6, nothing to do" in capsys.readouterr().out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    config = tiny_config(train__steps="5", train__checkpoint_every="1",
                         optim__peak_lr="1e30", optim__warmup_steps="0")
    assert train(config, tmp_path) == EXIT_NAN
    assert "loss is nan at step 2" in capsys.readouterr().err
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    assert checkpoint_steps(tmp_path) == [1]


def _train_cmd(workdir, steps):
    return [sys.executable, "-m", "llark_jax", "train", "--config", str(TINY), "--workdir",
            str(workdir), f"--config.train.steps={steps}", "--config.train.checkpoint_every=3",
            "--config.metrics.tensorboard=False"]


@pytest.mark.slow
def test_sigkill_or_sigterm_then_rerun_equals_uninterrupted(tmp_path):
    steps = 30
    env = dict(os.environ, PYTHONPATH=str(REPO))
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(reference, steps), check=True, env=env, cwd=REPO,
                   capture_output=True)

    uninterrupted = [r["loss"] for r in read_metrics(reference)]

    killed = _start_and_signal(tmp_path / "killed", steps, env, signal.SIGKILL, min_lines=8)
    assert killed.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    subprocess.run(_train_cmd(killed.workdir, steps), check=True, env=env, cwd=REPO,
                   capture_output=True)
    resumed = read_metrics(killed.workdir)
    assert [r["step"] for r in resumed] == list(range(1, steps + 1))
    assert [r["loss"] for r in resumed] == uninterrupted

    # SIGTERM (preemption): checkpoint at the step reached, exit 143, then resume exactly.
    stopped = _start_and_signal(tmp_path / "stopped", steps, env, signal.SIGTERM, min_lines=2)
    assert stopped.returncode == 143
    done = len(read_metrics(stopped.workdir))
    assert done < steps and checkpoint_steps(stopped.workdir)[-1] == done
    subprocess.run(_train_cmd(stopped.workdir, steps), check=True, env=env, cwd=REPO,
                   capture_output=True)
    assert [r["loss"] for r in read_metrics(stopped.workdir)] == uninterrupted


def _start_and_signal(workdir, steps, env, signum, *, min_lines):
    """Starts a training run, sends `signum` once `min_lines` metrics (and for SIGKILL the step-6
    checkpoint) exist; returns the finished Popen with `.workdir` set."""
    proc = subprocess.Popen(_train_cmd(workdir, steps), env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc.workdir = workdir
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        ready = metrics.exists() and len(metrics.read_text().splitlines()) >= min_lines
        if ready and (signum != signal.SIGKILL or (workdir / "checkpoints" / "6").is_dir()):
            break
        time.sleep(0.01)
    proc.send_signal(signum)
    proc.wait()
    return proc
