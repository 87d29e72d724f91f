"""`python -m llark_jax demo` (`make demo`): the whole LLark pipeline on embedded defaults.

Stages, in order (outputs under `--workdir`, default `runs/demo`):

| stage | runs | output |
|---|---|---|
| synth | `python -m data_prep demo-data --augment` (MIDI composed, rendered, distorted) | `data/` |
| crop | `python -m data_prep crop` | `clips/` |
| annotate | `python -m data_prep annotate` (madmom), first `stages.annotate_clips` | `work/` |
| instruct | `python -m data_prep merge`, then `instruct --backend offline` | `work/qa.jsonl` |
| embed | `python -m data_prep embed --encoder <data.encoder>` (10 Hz) | `embeddings/` |
| records | `python -m data_prep write` (train, eval) | `records/` |
| train | the trainer of `python -m llark_jax train`: SmolLM2 + projector | `model/` |
| ood | `python -m data_prep demo-data --ood` (numpy synth, 22.05 kHz MP3), `embed` | `ood/` |
| eval | the paper's three prompts, own vs shuffled audio, per evaluation set | `eval/` |
| report | metrics, 95% intervals, both floors, plots, examples | `report.*` |

The data_prep stages run as subprocesses (their progress bars show; `llark_jax` never imports
torch). Training is the production trainer on `configs/demo.py` (an ordinary training config:
pooling and standardisation of the features, task weights, separate projector/LM learning rates
are trainer settings), with Orbax checkpoints (a killed demo resumes its training) and
`train/metrics.jsonl`; it ends with `model/`, a model directory every tool loads (`infer`,
`serve`, `benchmark`, `export`; `eval` scores what `infer` writes).

Every finished stage writes `stages/<name>.json` (wall seconds, process CPU seconds of the demo
and every command it ran, and a hash of the config it ran with);
a rerun skips finished stages as long as the config is unchanged (a changed config reruns from
the first stage whose settings changed, see `STAGE_KEYS`).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from llark_jax.errors import UserError
from llark_jax.io import read_jsonl, write_json_atomic, write_jsonl_atomic

STAGES = ("synth", "crop", "annotate", "instruct", "embed", "records", "train", "ood", "eval",
          "report")
# Config entries each stage's output depends on (a change reruns it and every later stage).
STAGE_KEYS = {"synth": ("seed", "dataset"), "annotate": ("stages.annotate_clips",),
              "train": ("model", "data", "train", "optim"), "ood": ("ood",), "eval": ("eval",)}
FRAME_RATE_HZ = 10.0  # the mel and mir encoders' frame rate
TRUTH_FIELDS = ("tempo", "key", "time_signature", "instruments", "chords")


class StageFailed(RuntimeError):
    """A stage's command failed; the message names the stage and the command."""


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of every finished child it waited for."""
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                         resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _run(stage: str, args: list[str]) -> None:
    command = [sys.executable, "-m", *args]
    print(f"  $ {' '.join(command[1:])}", flush=True)
    status = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}).returncode
    if status != 0:
        raise StageFailed(f"stage {stage}: `{' '.join(command[1:])}` exited with {status}")


class Demo:
    """Runs the stages in `workdir` with `config`; `state` carries the report. `stages` and
    `stage_keys` (the config entries each stage's output depends on) are class attributes, so a
    demo of another recipe (`llark_jax.demo.musilingo`) adds stages without another loop."""

    stages: tuple[str, ...] = STAGES
    stage_keys: dict[str, tuple[str, ...]] = STAGE_KEYS

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path):
        self.config = config
        self.workdir = workdir
        self.state: dict[str, Any] = {}
        self.stage_seconds: dict[str, float] = {}
        self.stage_cpu_seconds: dict[str, float] = {}
        self.reused: list[str] = []

    def path(self, *parts: str) -> Path:
        return self.workdir.joinpath(*parts)

    def config_hash(self, stage: str) -> str:
        """Hash of the config entries this stage and all earlier ones depend on."""
        data = {}
        for name in self.stages[: self.stages.index(stage) + 1]:
            for key in self.stage_keys.get(name, ()):
                node: Any = self.config
                for part in key.split("."):
                    node = node[part]
                data[key] = node.to_dict() if hasattr(node, "to_dict") else node
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def run(self, stop_after: str = "report") -> dict[str, Any] | None:
        (self.path("stages")).mkdir(parents=True, exist_ok=True)
        self.path("work").mkdir(exist_ok=True)
        fresh = False
        stages = self.stages
        for index, stage in enumerate(stages):
            marker = self.path("stages", f"{stage}.json")
            digest = self.config_hash(stage)
            done = json.loads(marker.read_text()) if marker.exists() else None
            if not fresh and done is not None and done.get("config_hash") == digest \
                    and stage != "report":
                self.stage_seconds[stage] = done["seconds"]
                self.stage_cpu_seconds[stage] = done.get("cpu_seconds", float("nan"))
                self.reused.append(stage)
                print(f"[{index + 1}/{len(stages)}] {stage}: done before "
                      f"({done['seconds']:.0f} s), reused", flush=True)
                if stage == stop_after:
                    break
                continue
            fresh = True
            print(f"[{index + 1}/{len(stages)}] {stage} ...", flush=True)
            began, began_cpu = time.perf_counter(), cpu_seconds()
            info = getattr(self, f"stage_{stage}")() or {}
            seconds, cpu = time.perf_counter() - began, cpu_seconds() - began_cpu
            self.stage_seconds[stage], self.stage_cpu_seconds[stage] = seconds, cpu
            write_json_atomic(marker, {**info, "seconds": seconds, "cpu_seconds": cpu,
                                       "config_hash": digest})
            print(f"[{index + 1}/{len(stages)}] {stage}: {seconds:.1f} s ({cpu:.1f} CPU s)",
                  flush=True)
            if stage == stop_after:
                break
        return self.state.get("report")

    # --- data_prep stages (subprocesses) ---

    def stage_synth(self) -> dict:
        d = self.config.dataset
        _run("synth", ["data_prep", "demo-data", "--output-dir", str(self.path("data")),
                       "--n-clips", str(d.n_clips), "--seconds", str(d.seconds),
                       "--eval-fraction", str(d.eval_fraction), "--seed", str(self.config.seed),
                       "--workers", str(self.config.stages.workers),
                       *(["--augment"] if d.get("augment", False) else [])])
        tracks = [{"id": t["clip_id"], "dataset": "demo", "split": t["split"],
                   "audio_path": str(self.path("data", "audio", f"{t['clip_id']}.wav")),
                   "metadata": {k: t[k] for k in TRUTH_FIELDS}}
                  for t in read_jsonl(self.path("data", "clips.jsonl"))]
        write_jsonl_atomic(self.path("work", "tracks.jsonl"), tracks)
        return {"clips": len(tracks), "eval": sum(t["split"] == "eval" for t in tracks)}

    def stage_crop(self) -> None:
        _run("crop", ["data_prep", "crop", "--records", str(self.path("work", "tracks.jsonl")),
                      "--output-dir", str(self.path("clips")),
                      "--crop-seconds", str(self.config.dataset.seconds),
                      "--workers", str(self.config.stages.workers)])

    def stage_annotate(self) -> dict:
        """madmom on the first `stages.annotate_clips` tracks (0: all); its estimates are scored
        against the truth in the report, the truth is what the QA uses."""
        tracks = read_jsonl(self.path("work", "tracks.jsonl"))
        limit = self.config.stages.get("annotate_clips", 0)
        write_jsonl_atomic(self.path("work", "tracks_annotated.jsonl"),
                           tracks[:limit] if limit > 0 else tracks)
        _run("annotate", ["data_prep", "annotate",
                          "--records", str(self.path("work", "tracks_annotated.jsonl")),
                          "--crops", str(self.path("clips", "crops.jsonl")),
                          "--output", str(self.path("work", "annotations.jsonl")),
                          "--workers", str(self.config.stages.workers)])
        return {"annotated": len(tracks[:limit] if limit > 0 else tracks)}

    def truth_only_annotations(self) -> None:
        """Adds a record (truth, no madmom fields) for every clip the annotate stage skipped."""
        path = self.path("work", "annotations.jsonl")
        rows = read_jsonl(path)
        done = {r["id"] for r in rows}
        tracks = {t["id"]: t for t in read_jsonl(self.path("work", "tracks.jsonl"))}
        for crop in read_jsonl(self.path("clips", "crops.jsonl")):
            if crop["id"] not in done:
                track = tracks[crop["track_id"]]
                rows.append({"id": crop["id"], "track_id": crop["track_id"],
                             "start_secs": crop["start_secs"], "end_secs": crop["end_secs"],
                             "dataset": track["dataset"], "split": track["split"],
                             "metadata": track["metadata"]})
        write_jsonl_atomic(path, sorted(rows, key=lambda r: r["id"]), sort_keys=True)

    def stage_instruct(self) -> dict:
        """Clip metadata = madmom annotation + synthesis truth (`data_prep merge`: truth wins;
        madmom's key and chords kept as `*_madmom`), then offline QA, then the training question
        set, each paper prompt under its own task name ("key", "tempo", "instruments") for
        `data.task_weights`."""
        self.truth_only_annotations()
        _run("instruct", ["data_prep", "merge",
                          "--annotations", str(self.path("work", "annotations.jsonl")),
                          "--output", str(self.path("work", "metadata.jsonl"))])
        all_qa = self.path("work", "qa_all.jsonl")
        _run("instruct", ["data_prep", "instruct", "--metadata",
                          str(self.path("work", "metadata.jsonl")), "--task", "mir",
                          "--dataset", "demo", "--backend", "offline", "--output", str(all_qa),
                          "--seed", str(self.config.seed)])
        from llark_jax.demo.eval import PROMPTS

        task_of = {prompt: task for task, prompt in PROMPTS.items()}
        paper_only = self.config.dataset.questions == "paper"
        qa_rows = []
        for row in read_jsonl(all_qa):  # each paper prompt gets its own task (task_weights)
            row["qa"] = [{**p, "task": task_of.get(p["question"], p["task"])} for p in row["qa"]
                         if not paper_only or p["question"] in task_of]
            qa_rows.append(row)
        write_jsonl_atomic(self.path("work", "qa.jsonl"), qa_rows)
        return {"clips": len(qa_rows), "pairs": sum(len(r["qa"]) for r in qa_rows)}

    def stage_embed(self) -> None:
        encoder = self.config.data.encoder
        _run("embed", ["data_prep", "embed", "--encoder", encoder, "--audio-dir",
                       str(self.path("clips")), "--output-dir",
                       str(self.path("embeddings", encoder))])

    def stage_records(self) -> None:
        """Train and eval shards (`records/`) with their index (task counts per split)."""
        for split in ("train", "eval"):
            _run("records", ["data_prep", "write", "--annotations",
                             str(self.path("work", "metadata.jsonl")),
                             "--qa", str(self.path("work", "qa.jsonl")),
                             "--embeddings",
                             str(self.path("embeddings", self.config.data.encoder)),
                             "--output-dir", str(self.path("records")), "--split", split,
                             "--embedding-dtype", "float32", "--dataset", "demo"])

    # --- JAX stages (in process) ---

    def _shards(self, split: str) -> list[str]:
        return sorted(str(p) for p in self.path("records").glob(f"{split}-*.tfrecord"))

    def train_config(self) -> ml_collections.ConfigDict:
        """The training config: the demo config with its records, clip length and model dir."""
        config = ml_collections.ConfigDict(self.config.to_dict())
        frames = int(round(config.dataset.seconds * FRAME_RATE_HZ))
        config.data.path = str(self.path("records", "train-*.tfrecord"))
        config.data.audio_frames = -(-frames // config.data.feature_pool)
        config.train.model_dir = str(self.path("model"))
        return config

    def stage_train(self) -> dict:
        """`llark_jax.train.train` in `train/` (a rerun with the same config resumes from its
        checkpoint; a changed config starts over), then `model/`."""
        from llark_jax.train.loop import SUMMARY, train

        workdir = self.path("train")
        stamp = workdir / "demo_config_hash"
        digest = self.config_hash("train")
        if workdir.exists() and (not stamp.exists() or stamp.read_text() != digest):
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
        status = train(self.train_config(), workdir)
        if status != 0:
            raise StageFailed(f"stage train: the trainer exited with status {status} "
                              f"(log above; metrics in {workdir / 'metrics.jsonl'})")
        summary = json.loads((workdir / SUMMARY).read_text())
        losses = [json.loads(line)["loss"] for line in
                  (workdir / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return {"steps": summary["steps"], "loop_seconds": summary["loop_seconds"],
                "first_loss": float(np.mean(losses[:10])),
                "last_loss": float(np.mean(losses[-10:])),
                "trainable_params": summary["trainable_params"],
                "epochs_seen": summary.get("epochs_seen"),
                "non_pad_fraction": summary.get("non_pad_fraction")}

    def stage_ood(self) -> dict:
        """The out-of-distribution set (`data_prep.demo_ood`: another synthesiser, 22.05 kHz,
        MP3), embedded like the training clips; `ood.n_clips = 0` skips it."""
        n_clips = self.config.ood.n_clips
        user = self.stage_ood_user() if self.config.ood.get("dir") else {}
        if n_clips == 0:
            return {"clips": 0, **user}
        _run("ood", ["data_prep", "demo-data", "--ood",
                     "--output-dir", str(self.path("ood", "data")), "--n-clips", str(n_clips),
                     "--seconds", str(self.config.dataset.seconds),
                     "--seed", str(self.config.seed), "--workers", str(self.config.stages.workers)])
        _run("ood", ["data_prep", "embed", "--encoder", self.config.data.encoder, "--audio-dir",
                     str(self.path("ood", "data", "audio")), "--output-dir",
                     str(self.path("ood", "embeddings"))])
        return {"clips": n_clips, **user}

    def stage_ood_user(self) -> dict:
        """`--ood-dir DIR`: DIR/labels.jsonl names each labelled file (docs/demo.md). Each file
        is cropped to one clip of `dataset.seconds` by the rule `infer` hears files with (the
        paper's crop rule without its coin: from 30 s on in a file longer than 60 s, else from
        the start), then embedded like the training clips. The labels are kept as
        `ood/user/labels.jsonl` with `clip_id` = the clip's name (`<stem>-start<S>-end<E>`);
        a labelled file that gives no clip is left out and listed."""
        from llark_jax.demo.eval import read_user_labels

        folder = Path(self.config.ood.dir)
        labels = read_user_labels(folder)
        clips = self.path("ood", "user", "clips")
        _run("ood", ["data_prep", "crop", "--input-dir", str(folder), "--output-dir", str(clips),
                     "--crop-seconds", str(self.config.dataset.seconds), "--p-middle", "1.0",
                     "--workers", str(self.config.stages.workers)])
        embeddings = self.path("ood", "user", "embeddings")
        _run("ood", ["data_prep", "embed", "--encoder", self.config.data.encoder, "--audio-dir",
                     str(clips), "--output-dir", str(embeddings)])
        clip_of = {row["track_id"]: row["id"] for row in read_jsonl(clips / "crops.jsonl")
                   if (embeddings / f"{row['id']}.npy").is_file()}
        heard = [{**row, "clip_id": clip_of[row["clip_id"]]} for row in labels
                 if row["clip_id"] in clip_of]
        left_out = sorted(row["clip_id"] for row in labels if row["clip_id"] not in clip_of)
        if not heard:
            raise UserError(f"--ood-dir {folder}: no labelled file gives an embedded clip (the "
                            f"reasons: {clips / 'crops.jsonl.report.json'}, "
                            f"{embeddings / 'embed.report.json'})")
        if left_out:
            print(f"ood: {len(left_out)} labelled file(s) give no embedded clip and are left "
                  f"out: {', '.join(left_out)}", flush=True)
        write_jsonl_atomic(self.path("ood", "user", "labels.jsonl"), heard)
        return {"user_clips": len(heard), "user_left_out": left_out}

    def eval_sets(self) -> dict[str, tuple[list[str], list[np.ndarray]]]:
        """{set name: (clip ids, encoder frames [T, D] per clip)}: the held-out records
        (`in_distribution`) and, when built, the OOD set (`ood`) and the crops of the user's
        labelled folder (`user`), each at most `dataset.seconds`."""
        from llark_jax.demo.eval import read_clips

        clips = read_clips(self._shards("eval"))
        sets = {"in_distribution": ([c.clip_id for c in clips], [c.embedding for c in clips])}
        frames = int(round(self.config.dataset.seconds * FRAME_RATE_HZ))
        if self.config.ood.n_clips:
            ood = sorted(self.path("ood", "embeddings").glob("*.npy"))
            sets["ood"] = ([p.stem for p in ood], [np.load(p)[:frames] for p in ood])
        if self.config.ood.get("dir"):
            ids = [r["clip_id"] for r in read_jsonl(self.path("ood", "user", "labels.jsonl"))]
            sets["user"] = (ids, [np.load(self.path("ood", "user", "embeddings", f"{i}.npy"))
                                  [:frames] for i in ids])
        return sets

    def stage_eval(self) -> dict:
        """eval/answers.json: {"sets": {name: {clip_ids, partner_ids, answers}}} (own and
        shuffled audio per set, each set deranged within itself)."""
        from llark_jax.checkpoints.model_dir import load_model
        from llark_jax.demo.eval import derangement, generate_answers

        loaded = load_model(self.path("model"))
        e = self.config.eval
        out, counts = {}, {}
        for name, (clip_ids, frames) in self.eval_sets().items():
            audio = [loaded.features.apply(f) for f in frames]
            partner = derangement(len(clip_ids), self.config.seed)
            answers = generate_answers(loaded.model, loaded.tokenizer, loaded.template, audio,
                                       partner, batch_size=e.batch_size,
                                       max_new_tokens=e.max_new_tokens)
            out[name] = {"clip_ids": clip_ids, "partner_ids": [clip_ids[j] for j in partner],
                         "answers": answers}
            counts[f"n_{name}"] = len(clip_ids)
        write_json_atomic(self.path("eval", "answers.json"), {"sets": out}, indent=1)
        return counts

    def stage_report(self) -> None:
        from llark_jax.demo.report import make_report

        stage_seconds = {**self.stage_seconds, "report": 0.0}
        stage_cpu = {**self.stage_cpu_seconds, "report": 0.0}
        self.state["report"] = make_report(self.config, self.workdir, stage_seconds, stage_cpu)
