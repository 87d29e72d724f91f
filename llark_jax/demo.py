"""`python -m llark_jax demo` (`make demo`): the whole LLark pipeline on embedded defaults.

Stages, in order (outputs under `--workdir`, default `runs/demo`):

| stage | runs | output |
|---|---|---|
| synth | `python -m data_prep demo-data` (MIDI composed + rendered) | `data/` |
| crop | `python -m data_prep crop` | `clips/` |
| annotate | `python -m data_prep annotate` (madmom) | `work/annotations.jsonl` |
| instruct | `python -m data_prep instruct --backend offline` | `work/qa.jsonl` |
| embed | `python -m data_prep embed --encoder mel`, pooling, standardising | `embeddings/` |
| records | `python -m data_prep write` (train, eval) | `records/` |
| train | LLark (SmolLM2-135M-Instruct from the GGUF + projector) in JAX | `train/` |
| eval | the paper's three prompts, own vs shuffled audio | `eval/answers.json` |
| report | metrics, 95% intervals, plots, examples | `report.json`, `report.md` |

The data_prep stages run as subprocesses (their progress bars show; `llark_jax` never imports
torch). Every finished stage writes `stages/<name>.json` (seconds + a hash of the config it ran
with); a rerun skips finished stages as long as the config is unchanged (a changed config reruns
from the first stage whose settings changed, see `STAGE_KEYS`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from llark_jax.config import load_config, split_overrides

DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.py"
STAGES = ("synth", "crop", "annotate", "instruct", "embed", "records", "train", "eval", "report")
# Config entries each stage's output depends on (a change reruns it and every later stage).
STAGE_KEYS = {"synth": ("seed", "dataset"), "instruct": ("data.questions",),
              "embed": ("stages.temporal_pool",), "train": ("model", "data", "train", "optim"),
              "eval": ("eval",)}
TRUTH_FIELDS = ("tempo", "key", "time_signature", "instruments", "chords")
log = logging.getLogger("llark_jax.demo")


class StageFailed(RuntimeError):
    """A stage's command failed; the message names the stage and the command."""


def _run(stage: str, args: list[str]) -> None:
    command = [sys.executable, "-m", *args]
    print(f"  $ {' '.join(command[1:])}", flush=True)
    status = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if status != 0:
        raise StageFailed(f"stage {stage}: `{' '.join(command[1:])}` exited with {status}")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def _config_hash(config: ml_collections.ConfigDict, stage: str) -> str:
    """Hash of the config entries this stage and all earlier ones depend on."""
    data = {}
    for name in STAGES[: STAGES.index(stage) + 1]:
        for key in STAGE_KEYS.get(name, ()):
            node: Any = config
            for part in key.split("."):
                node = node[part]
            data[key] = node.to_dict() if hasattr(node, "to_dict") else node
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Demo:
    """Runs the stages in `workdir` with `config`; `state` carries in-process objects (model)."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        self.config = config
        self.workdir = workdir
        self.state: dict[str, Any] = {}
        self.stage_seconds: dict[str, float] = {}
        self.reused: list[str] = []

    def path(self, *parts: str) -> Path:
        return self.workdir.joinpath(*parts)

    def run(self, stop_after: str = "report") -> dict[str, Any] | None:
        (self.path("stages")).mkdir(parents=True, exist_ok=True)
        self.path("work").mkdir(exist_ok=True)
        fresh = False
        for index, stage in enumerate(STAGES):
            marker = self.path("stages", f"{stage}.json")
            digest = _config_hash(self.config, stage)
            done = json.loads(marker.read_text()) if marker.exists() else None
            if not fresh and done is not None and done.get("config_hash") == digest \
                    and stage != "report":
                self.stage_seconds[stage] = done["seconds"]
                self.reused.append(stage)
                print(f"[{index + 1}/{len(STAGES)}] {stage}: done before "
                      f"({done['seconds']:.0f} s), reused", flush=True)
                if stage == stop_after:
                    break
                continue
            fresh = True
            print(f"[{index + 1}/{len(STAGES)}] {stage} ...", flush=True)
            began = time.perf_counter()
            info = getattr(self, f"stage_{stage}")() or {}
            seconds = time.perf_counter() - began
            self.stage_seconds[stage] = seconds
            tmp = marker.with_name(marker.name + ".tmp")
            tmp.write_text(json.dumps({**info, "seconds": seconds, "config_hash": digest}))
            os.replace(tmp, marker)
            print(f"[{index + 1}/{len(STAGES)}] {stage}: {seconds:.1f} s", flush=True)
            if stage == stop_after:
                break
        return self.state.get("report")

    # --- data_prep stages (subprocesses) ---

    def stage_synth(self) -> dict:
        d = self.config.dataset
        _run("synth", ["data_prep", "demo-data", "--output-dir", str(self.path("data")),
                       "--n-clips", str(d.n_clips), "--seconds", str(d.seconds),
                       "--eval-fraction", str(d.eval_fraction), "--seed", str(self.config.seed)])
        tracks = [{"id": t["clip_id"], "dataset": "demo", "split": t["split"],
                   "audio_path": str(self.path("data", "audio", f"{t['clip_id']}.wav")),
                   "metadata": {k: t[k] for k in TRUTH_FIELDS}}
                  for t in _read_jsonl(self.path("data", "clips.jsonl"))]
        _write_jsonl(self.path("work", "tracks.jsonl"), tracks)
        return {"clips": len(tracks), "eval": sum(t["split"] == "eval" for t in tracks)}

    def stage_crop(self) -> None:
        _run("crop", ["data_prep", "crop", "--records", str(self.path("work", "tracks.jsonl")),
                      "--output-dir", str(self.path("clips")),
                      "--crop-seconds", str(self.config.dataset.seconds),
                      "--workers", str(self.config.stages.workers)])

    def stage_annotate(self) -> None:
        _run("annotate", ["data_prep", "annotate",
                          "--records", str(self.path("work", "tracks.jsonl")),
                          "--crops", str(self.path("clips", "crops.jsonl")),
                          "--output", str(self.path("work", "annotations.jsonl")),
                          "--workers", str(self.config.stages.workers)])

    def stage_instruct(self) -> dict:
        """Clip metadata = madmom annotation + synthesis truth (truth wins; madmom's key and
        chords kept as `*_madmom`), then offline QA, then the training question set, each paper
        prompt under its own task name ("key", "tempo", "instruments") for `data.task_weights`."""
        rows = []
        for row in _read_jsonl(self.path("work", "annotations.jsonl")):
            truth = row.pop("metadata")
            row["key_madmom"], row["chords_madmom"] = row.pop("key", None), row.pop("chords", [])
            rows.append({"clip_id": row.pop("id"), **row, **truth})
        _write_jsonl(self.path("work", "metadata.jsonl"), rows)
        all_qa = self.path("work", "qa_all.jsonl")
        _run("instruct", ["data_prep", "instruct", "--metadata",
                          str(self.path("work", "metadata.jsonl")), "--task", "mir",
                          "--dataset", "demo", "--backend", "offline", "--output", str(all_qa),
                          "--seed", str(self.config.seed)])
        from llark_jax.demo_eval import PROMPTS

        task_of = {prompt: task for task, prompt in PROMPTS.items()}
        paper_only = self.config.data.questions == "paper"
        qa_rows = []
        for row in _read_jsonl(all_qa):  # each paper prompt gets its own task (task_weights)
            row["qa"] = [{**p, "task": task_of.get(p["question"], p["task"])} for p in row["qa"]
                         if not paper_only or p["question"] in task_of]
            qa_rows.append(row)
        _write_jsonl(self.path("work", "qa.jsonl"), qa_rows)
        return {"clips": len(qa_rows), "pairs": sum(len(r["qa"]) for r in qa_rows)}

    def stage_embed(self) -> dict:
        from llark_jax.demo_features import prepare_features

        raw = self.path("embeddings", "mel")
        _run("embed", ["data_prep", "embed", "--encoder", "mel", "--audio-dir",
                       str(self.path("clips")), "--output-dir", str(raw)])
        train_ids = {r["clip_id"] for r in _read_jsonl(self.path("work", "metadata.jsonl"))
                     if r["split"] == "train"}
        return prepare_features(raw, self.path("embeddings", "prepared"),
                                self.config.stages.temporal_pool, train_ids)

    def stage_records(self) -> None:
        """Train and eval shards (`records/`) with their index (task counts per split)."""
        for split in ("train", "eval"):
            _run("records", ["data_prep", "write", "--annotations",
                             str(self.path("work", "metadata.jsonl")),
                             "--qa", str(self.path("work", "qa.jsonl")),
                             "--embeddings", str(self.path("embeddings", "prepared")),
                             "--output-dir", str(self.path("records")), "--split", split,
                             "--embedding-dtype", "float32", "--dataset", "demo"])

    # --- JAX stages (in process) ---

    def _shards(self, split: str) -> list[str]:
        return sorted(str(p) for p in self.path("records").glob(f"{split}-*.tfrecord"))

    def stage_train(self) -> dict:
        from llark_jax.demo_train import build_demo_model, train_demo

        model, tokenizer, template = build_demo_model(self.config)
        summary = train_demo(self.config, model, tokenizer, template, self._shards("train"),
                             self.path("train"))
        self.state["model"] = (model, tokenizer, template)
        return summary

    def _model(self) -> tuple[Any, Any, Any]:
        if "model" not in self.state:
            from llark_jax.demo_train import TRAINED_PARAMS, build_demo_model, load_trained

            model, tokenizer, template = build_demo_model(self.config)
            load_trained(model, self.path("train", TRAINED_PARAMS))
            self.state["model"] = (model, tokenizer, template)
        return self.state["model"]

    def stage_eval(self) -> dict:
        from llark_jax.demo_eval import derangement, generate_answers, read_clips

        model, tokenizer, template = self._model()
        clips = read_clips(self._shards("eval"))
        partner = derangement(len(clips), self.config.seed)
        e = self.config.eval
        answers = generate_answers(model, tokenizer, template, clips, partner,
                                   batch_size=e.batch_size, max_new_tokens=e.max_new_tokens)
        out = {"clip_ids": [c.clip_id for c in clips],
               "partner_ids": [clips[j].clip_id for j in partner], "answers": answers}
        self.path("eval").mkdir(exist_ok=True)
        tmp = self.path("eval", "answers.json.tmp")
        tmp.write_text(json.dumps(out, indent=1))
        os.replace(tmp, self.path("eval", "answers.json"))
        return {"n_eval": len(clips)}

    def stage_report(self) -> None:
        from llark_jax.demo_report import make_report

        stage_seconds = {**self.stage_seconds, "report": 0.0}
        self.state["report"] = make_report(self.config, self.workdir, stage_seconds)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llark_jax demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--n-clips", type=int, help="clips to synthesise (config.dataset.n_clips)")
    parser.add_argument("--seconds", type=float, help="clip length (config.dataset.seconds)")
    parser.add_argument("--steps", type=int, help="training steps (config.train.steps)")
    parser.add_argument("--lm", choices=("gguf", "random"),
                        help="gguf: SmolLM2-135M-Instruct; random: tiny test LM")
    parser.add_argument("--stop-after", choices=STAGES, default="report",
                        help="stop after this stage (a later run continues from there)")
    return parser


FLAG_TO_CONFIG: dict[str, tuple[str, Callable[[Any], str]]] = {
    "n_clips": ("dataset.n_clips", str), "seconds": ("dataset.seconds", str),
    "steps": ("train.steps", str), "lm": ("model.source", str),
}


def main(argv: list[str]) -> int:
    rest, overrides = split_overrides(argv)
    args = build_parser().parse_args(rest)
    flags = [(key, convert(getattr(args, name))) for name, (key, convert) in FLAG_TO_CONFIG.items()
             if getattr(args, name) is not None]
    config = load_config(args.config, flags + overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    began = time.perf_counter()
    try:
        report = Demo(config, args.workdir).run(args.stop_after)
    except StageFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if report is None:
        print(f"stopped after stage {args.stop_after}; rerun without --stop-after to continue")
        return 0
    from llark_jax.demo_report import summary_table

    print("\n" + summary_table(report))
    print(f"\nreport: {args.workdir / 'report.md'} ({time.perf_counter() - began:.0f} s this run)")
    return 0
