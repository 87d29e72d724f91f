"""Experiment tracking and profiling of `train`: Weights & Biases in offline mode (a real W&B run
written under the workdir, no network), credentials never logged, and `--profile N:M` writing a
JAX profiler trace."""

from __future__ import annotations

import ml_collections
import pytest
from train_helpers import TINY, tiny_config

from llark_jax.train.loop import main, train
from llark_jax.train.tracking import REDACTED, redact


def test_redact_replaces_credential_fields_only():
    tree = {"llm": {"api_key": "sk-1", "openai_apikey": "sk-2", "token": "t", "model": "m"},
            "model": {"tokenizer": "dir", "vocab_size": 3}, "hub_password": "p",
            "list": [{"secret": "s", "keep": 1}]}
    assert redact(tree) == {
        "llm": {"api_key": REDACTED, "openai_apikey": REDACTED, "token": REDACTED,
                "model": "m"},
        "model": {"tokenizer": "dir", "vocab_size": 3}, "hub_password": REDACTED,
        "list": [{"secret": REDACTED, "keep": 1}]}


def test_wandb_offline_run_logs_the_metrics_and_no_secret(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tiny_config(train__steps="3", train__log_every="1", metrics__wandb="True",
                         metrics__wandb_run_name="tiny-test", metrics__tensorboard="False")
    config.llm = ml_collections.ConfigDict({"api_key": "sk-do-not-log-1234"})
    assert train(config, tmp_path) == 0
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert runs[0].name.endswith(run_id)
    logged = b"".join(p.read_bytes() for p in runs[0].rglob("*") if p.is_file())
    assert b"train/loss" in logged and b"train/grad_norm" in logged and b"tiny-test" in logged
    assert REDACTED.encode() in logged
    assert b"sk-do-not-log-1234" not in logged


def test_wandb_without_the_package_is_one_error_line(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    code = main(["--config", str(TINY), "--workdir", str(tmp_path), "--config.train.steps=3",
                 "--config.metrics.wandb=True"])
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "pip install wandb" in errors[0]


def test_profile_flag_writes_a_trace_of_the_steps(tmp_path, capsys):
    assert main(["--config", str(TINY), "--workdir", str(tmp_path / "w"),
                 "--config.train.steps=4", "--config.metrics.tensorboard=False",
                 "--profile", "2:3"]) == 0
    traces = list((tmp_path / "w" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0

    capsys.readouterr()
    assert main(["--config", str(TINY), "--workdir", str(tmp_path / "bad"),
                 "--profile", "3:2"]) == 2
    errors = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "train.profile_steps='3:2'" in errors[0]
    assert not (tmp_path / "bad" / "checkpoints").exists()
