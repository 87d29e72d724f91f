"""A miniature `python -m llark_jax demo --system musilingo`: 8 synthetic 3 s clips, the LLark
demo's data stages, stage-1 caption records, both MusiLingo stages through the production trainer
(3 steps each) on a tiny random Llama saved as a Hugging Face directory, eval and report.

Checks that both stages ran through the trainer, that stage 2 started from stage 1's params (its
first step has learning rate 0, so its step-1 checkpoint holds exactly its initial params), that
the LM is bit-identical to the base model after both stages (projector only), that the report
holds MusiLingo's four columns for own and shuffled audio, and that the model directory answers
through `python -m llark_jax infer`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from test_demo_e2e import tiny_hf_lm

from llark_jax.checkpoints.build import build_model
from llark_jax.checkpoints.model_dir import load_model
from llark_jax.demo.musilingo import STAGES
from llark_jax.io import read_jsonl
from llark_jax.train.mesh import make_mesh, rules_of

MINI = ["--system", "musilingo", "--n-clips", "8", "--seconds", "3", "--steps", "3",
        "--config.pretrain.steps=3", "--config.dataset.eval_fraction=0.5",
        "--config.optim.warmup_steps=1", "--config.pretrain.warmup_steps=1",
        "--config.train.checkpoint_every=1", "--config.train.keep_checkpoints=5",
        "--config.eval.max_new_tokens=6", "--config.data.seq_len=256",
        "--config.train.head_positions=0",
        "--config.pretrain.seq_len=256", "--config.data.batch_size=2"]
COLUMNS = ("B-U", "M-R", "R-L", "BERT-S")


def _params(model: nnx.Module) -> dict[str, np.ndarray]:
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, path)): np.asarray(v.get_value()) for path, v in flat}


@pytest.mark.slow
def test_mini_musilingo_demo(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    lm = tiny_hf_lm(tmp_path / "lm")
    run = subprocess.run([sys.executable, "-m", "llark_jax", "demo", "--workdir", str(workdir),
                          *MINI, "--config.model.source=hf", f"--config.model.path={lm}"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in STAGES:
        assert (workdir / "stages" / f"{stage}.json").is_file(), stage
    assert list((workdir / "records_caption").glob("train-*.tfrecord"))
    index = json.loads(next((workdir / "records_caption").glob("train-*-index.json")).read_text())
    assert set(index["tasks"]) == {"caption"}

    # both stages through the trainer, each in its own workdir with metrics and checkpoints
    caption, instruct = workdir / "train" / "caption", workdir / "train" / "instruct"
    for run_dir in (caption, instruct):
        assert len(read_jsonl(run_dir / "metrics.jsonl")) == 3
        assert json.loads((run_dir / "train_summary.json").read_text())["steps"] == 3
        assert (run_dir / "checkpoints" / "3").is_dir()
    assert f"initialised params from {caption} step 3" in run.stderr
    templates = {json.loads((d / "llark.json").read_text())["config"]["data"]["template"]
                 for d in (caption, instruct)}
    assert templates == {"musilingo_caption", "musilingo"}

    # stage 2 starts from stage 1: lr is 0 at its first step, so its step-1 params are its init
    assert read_jsonl(instruct / "metrics.jsonl")[0]["lr"] == 0.0
    stage1 = _params(load_model(workdir / "model_caption").model)
    stage2_init = _params(load_model(instruct, step=1).model)
    final = load_model(workdir / "model")
    final_params = _params(final.model)
    projector = [k for k in stage1 if k.startswith("projector")]
    assert projector and all(np.array_equal(stage1[k], stage2_init[k]) for k in projector)
    assert any(not np.array_equal(stage1[k], final_params[k]) for k in projector)

    # the LM is the base model, bit for bit, after both stages (projector only)
    c = final.config
    _, base, _ = build_model(c.model, make_mesh(c.mesh.to_dict()), rules_of(c),
                             c.seed)
    base_params = {"/".join(map(str, p)): np.asarray(v.get_value())
                   for p, v in nnx.to_flat_state(base)}
    lm_keys = [k for k in final_params if k.startswith("llama")]
    assert lm_keys and set(lm_keys) == {k for k in base_params if k.startswith("llama")}
    for key in lm_keys:
        assert np.array_equal(jax.device_get(base_params[key]), final_params[key]), key
        assert np.array_equal(stage1[key], final_params[key]), key

    # MusiLingo's columns for own and shuffled audio: stage-1 and final captions, final QA
    report = json.loads((workdir / "report.json").read_text())
    assert report["n_eval"] == 2 and report["protocol"] == "paper_code"
    for key in ("stage1/caption", "final/caption", "final/qa"):
        for condition in ("audio", "shuffled"):
            row = report["metrics"][key][condition]
            for column in ("B-U", "R-L", "BERT-S"):
                assert 0.0 <= row[column] <= 100.0, (key, condition, column)
            assert set(row) >= set(COLUMNS)
    assert "MiniLM" in report["bertscore_backbone"]
    assert {"pretrain", "finetune"} <= set(report["training"])
    assert "B-U" in run.stdout and "BERT-S" in run.stdout  # the console table
    assert (workdir / "report.md").read_text().startswith("# MusiLingo demo report")

    # the final model directory answers through `infer`
    clip = sorted((workdir / "clips").glob("*.wav"))[0]
    infer = subprocess.run([sys.executable, "-m", "llark_jax", "infer", "--checkpoint",
                            str(workdir / "model"), "--audio", str(clip), "--question",
                            "What is the key of this song?", "--max-new-tokens", "4"],
                           capture_output=True, text=True, timeout=300)
    assert infer.returncode == 0, infer.stderr[-3000:]
    assert infer.stdout.strip()
