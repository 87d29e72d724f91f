"""`python -m llark_jax demo --system musilingo`: MusiLingo's two-stage recipe in miniature.

The LLark demo's data stages (`llark_jax.demo.run.Demo`), then MusiLingo's recipe through the same
trainer (`llark_jax.train.loop.train`) and model directories (outputs under `--workdir`, default
`runs/demo-musilingo`; config `configs/demo_musilingo.py`):

- synth ... records: the LLark demo's stages (`python -m llark_jax demo`): `clips/`, `records/`
  (the QA records of the three paper prompts);
- captions: the first sentence of the offline generator's caption of each clip (key, tempo, meter,
  instruments), question "", through `python -m data_prep write`: `records_caption/`;
- pretrain: stage 1, caption pre-training, `projector_only`, template `musilingo_caption`:
  `train/caption/`, `model_caption/`;
- finetune: stage 2, instruction tuning on the QA records, template `musilingo`, `train.init_from`
  = stage 1: `train/instruct/`, `model/`;
- eval: held-out clips with their own and with shuffled audio: captions of the stage-1 and the
  final model, the final model's answers to the three paper prompts: `eval/answers.json`;
- report: `musilingo_metrics` (B-U, M-R, R-L, BERT-S, MusiLingo's `paper_code` protocol, offline
  MiniLM BERTScore) plus key/tempo/instrument metrics: `report.json`, `report.md`.

Stand-ins: SmolLM2-135M-Instruct (the demo's embedded GGUF) for Vicuna-7B and the `mel` encoder
for MERT-v1-330M, whose weights are not here. Decoding is greedy (MusiLingo samples at
temperature 0.1, top-p 0.5). Stage 2 keeps stage 1's feature statistics (the trainer keeps
`train.init_from`'s feature pipeline), as the projector it starts from was trained on them.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from llark_jax.config import split_overrides
from llark_jax.demo import cli
from llark_jax.demo import run as demo
from llark_jax.io import read_jsonl, write_json_atomic, write_jsonl_atomic

DEFAULT_CONFIG = "demo_musilingo"  # a shipped config, by name (llark_jax.config.resolve_config)
DEFAULT_WORKDIR = Path("runs/demo-musilingo")
DATA_STAGES = demo.STAGES[: demo.STAGES.index("records") + 1]
STAGES = (*DATA_STAGES, "captions", "pretrain", "finetune", "eval", "report")
STAGE_KEYS = {"synth": ("seed", "dataset"),
              "pretrain": ("model", "data", "train", "optim", "pretrain"), "eval": ("eval",)}
RUNS = {"pretrain": ("caption", "model_caption"), "finetune": ("instruct", "model")}
CAPTION_TASK = "caption"
COLUMNS = {"B-U": "bleu_char", "M-R": "meteor", "R-L": "rouge_l_recall",
           "BERT-S": "bertscore_recall"}
ROWS = (("captioning", "stage 1", "stage1/caption"), ("captioning", "final", "final/caption"),
        ("QA (3 prompts)", "final", "final/qa"))


def first_sentence(caption: str) -> str:
    """"A piece in D major at ... saxophone. The harmony moves ..." -> the first sentence (key,
    tempo, meter, instruments: 27-38 SmolLM2 tokens, about MusiLingo's 32-token caption cap)."""
    return caption.split(". ", 1)[0].rstrip(".") + "."


class MusiLingoDemo(demo.Demo):
    """The LLark demo's data stages, then MusiLingo's two stages, eval and report."""

    stages = STAGES
    stage_keys = STAGE_KEYS

    def stage_captions(self) -> dict:
        """Stage-1 data: one caption per clip as a `metadata.qa` pair with an empty question
        (`data_prep write` accepts those for stage-1 captions), train and eval records."""
        rows = []
        for row in read_jsonl(self.path("work", "qa_all.jsonl")):
            caption = next((p["answer"] for p in row["qa"] if p["task"] == "captioning"), None)
            if caption:
                pair = {"question": "", "answer": first_sentence(caption), "task": CAPTION_TASK}
                rows.append({"id": row["clip_id"], "metadata": {"qa": [pair]}})
        write_jsonl_atomic(self.path("work", "captions.jsonl"), rows)
        for split in ("train", "eval"):
            demo._run("captions", ["data_prep", "write", "--annotations",
                                   str(self.path("work", "metadata.jsonl")),
                                   "--qa", str(self.path("work", "captions.jsonl")),
                                   "--embeddings",
                                   str(self.path("embeddings", self.config.data.encoder)),
                                   "--output-dir", str(self.path("records_caption")),
                                   "--split", split, "--embedding-dtype", "float32",
                                   "--dataset", "demo"])
        return {"captions": len(rows)}

    def stage_config(self, stage: str) -> ml_collections.ConfigDict:
        """The training config of `pretrain` (stage 1) or `finetune` (stage 2)."""
        config = self.train_config()  # records/train-*, audio tokens per clip, model/
        run, model_dir = RUNS[stage]
        config.model.trainable = "projector_only"
        config.train.model_dir = str(self.path(model_dir))
        if stage == "pretrain":
            p = config.pretrain
            config.data.path = str(self.path("records_caption", "train-*.tfrecord"))
            config.data.template, config.data.seq_len = p.template, p.seq_len
            config.train.head_positions = p.head_positions
            config.data.task_weights = ml_collections.ConfigDict()
            config.train.steps, config.optim.peak_lr = p.steps, p.peak_lr
            config.optim.warmup_steps = p.warmup_steps
        else:
            config.train.init_from = str(self.path("train", RUNS["pretrain"][0]))
        return config

    def _train(self, stage: str) -> dict:
        """One stage through `llark_jax.train.loop.train` in `train/<run>/` (a rerun with the same
        config resumes from its checkpoint; a changed config starts over)."""
        from llark_jax.train.loop import SUMMARY, train

        workdir = self.path("train", RUNS[stage][0])
        stamp, digest = workdir / "demo_config_hash", self.config_hash(stage)
        if workdir.exists() and (not stamp.exists() or stamp.read_text() != digest):
            shutil.rmtree(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        stamp.write_text(digest)
        config = self.stage_config(stage)
        if train(config, workdir) != 0:
            raise demo.StageFailed(f"stage {stage}: the trainer failed (log above; metrics in "
                                   f"{workdir / 'metrics.jsonl'})")
        summary = json.loads((workdir / SUMMARY).read_text())
        losses = [row["loss"] for row in read_jsonl(workdir / "metrics.jsonl")]
        return {"steps": summary["steps"], "loop_seconds": summary["loop_seconds"],
                "first_loss": float(np.mean(losses[:5])), "last_loss": float(np.mean(losses[-5:])),
                "trainable_params": summary["trainable_params"],
                "epochs_seen": summary.get("epochs_seen"), "init_from": config.train.init_from}

    def stage_pretrain(self) -> dict:
        return self._train("pretrain")

    def stage_finetune(self) -> dict:
        return self._train("finetune")

    def stage_eval(self) -> dict:
        """answers[model/task][condition]: stage-1 captions (no prompt), the final model's
        captions (`eval.caption_prompt`) and its answers to the three paper prompts."""
        from llark_jax.checkpoints.model_dir import load_model
        from llark_jax.demo.eval import CONDITIONS, PROMPTS, derangement, read_clips
        from llark_jax.infer.answer import Answerer, request_from_frames
        from llark_jax.infer.generate import SamplingConfig

        clips = read_clips(self._shards("eval"))
        partner = derangement(len(clips), self.config.seed)
        e = self.config.eval
        asked = {"stage1": {"caption": ""},
                 "final": {"caption": e.caption_prompt, **PROMPTS}}
        answers: dict[str, dict[str, list[str]]] = {}
        for name, directory in (("stage1", "model_caption"), ("final", "model")):
            loaded = load_model(self.path(directory))
            audio = [loaded.features.apply(clip.embedding) for clip in clips]
            answerer = Answerer(loaded.model, loaded.tokenizer, loaded.template,
                                SamplingConfig(max_new_tokens=e.max_new_tokens),
                                batch_size=e.batch_size)
            keys = [(task, c) for task in asked[name] for c in CONDITIONS]
            requests = [request_from_frames(asked[name][task],
                                            audio[partner[i] if c == "shuffled" else i])
                        for task, c in keys for i in range(len(clips))]
            began = time.perf_counter()
            out = iter(answerer.answer(requests))
            for task, condition in keys:
                texts = [next(out)["answer"] for _ in clips]
                answers.setdefault(f"{name}/{task}", {})[condition] = texts
            print(f"  {name}: {len(requests)} answers in {time.perf_counter() - began:.0f} s",
                  flush=True)
        write_json_atomic(self.path("eval", "answers.json"),
                          {"clip_ids": [c.clip_id for c in clips],
                           "partner_ids": [clips[j].clip_id for j in partner],
                           "answers": answers}, indent=1)
        return {"n_eval": len(clips), "answers": sum(len(v) * len(clips)
                                                     for v in answers.values())}

    def stage_report(self) -> None:
        self.state["report"] = make_report(self.config, self.workdir,
                                           {**self.stage_seconds, "report": 0.0})


def _columns(row: dict[str, Any]) -> dict[str, Any]:
    """The four columns (x100) with their 95% intervals from `musilingo_metrics`' details."""
    out = {name: row[name] for name in COLUMNS}
    out["ci95"] = {name: [100 * v for v in row["details"][key].ci95]
                   for name, key in COLUMNS.items() if key in row["details"]}
    return out


def make_report(config: ml_collections.ConfigDict, workdir: Path,
                stage_seconds: dict[str, float]) -> dict[str, Any]:
    """Scores `eval/answers.json` with `musilingo_metrics` (own vs shuffled audio) and the
    project's key/tempo/instrument metrics; writes report.json and report.md."""
    from llark_jax.demo.eval import CONDITIONS, PROMPTS, score
    from llark_jax.demo.report import compare
    from llark_jax.eval.bertscore import BertScorer, musilingo_metrics

    saved = json.loads((workdir / "eval" / "answers.json").read_text())
    ids, answers = saved["clip_ids"], saved["answers"]
    captions = {r["id"]: r["metadata"]["qa"][0]["answer"]
                for r in read_jsonl(workdir / "work" / "captions.jsonl")}
    metadata = {m["clip_id"]: m for m in read_jsonl(workdir / "work" / "metadata.jsonl")}
    qa = {(r["clip_id"], p["task"]): p["answer"] for r in read_jsonl(workdir / "work" / "qa.jsonl")
          for p in r["qa"]}
    tasks = list(PROMPTS)
    answers["final/qa"] = {c: [a for t in tasks for a in answers[f"final/{t}"][c]]
                           for c in CONDITIONS}
    refs = {"stage1/caption": [captions[i] for i in ids],
            "final/caption": [captions[i] for i in ids],
            "final/qa": [qa[(i, t)] for t in tasks for i in ids]}
    scorer = BertScorer()
    report: dict[str, Any] = {"system": "musilingo", "n_eval": len(ids), "protocol": "paper_code",
                              "decoding": "greedy", "meteor": "nltk", "metrics": {}}
    for _, _, key in ROWS:
        for condition in CONDITIONS:
            row = musilingo_metrics(answers[key][condition], refs[key], scorer)
            report["metrics"].setdefault(key, {})[condition] = _columns(row)
            report["bertscore_backbone"] = row["bertscore_backbone"]
            meteor = row["details"]["per_item"]["meteor"]
            if isinstance(meteor, dict):  # no WordNet corpus: M-R is None
                report["meteor"] = meteor["unavailable"]
    truth = [metadata[i] for i in ids]
    vocabulary = sorted({x for m in metadata.values() for x in m["instruments"]})
    final = {c: {t: answers[f"final/{t}"][c] for t in tasks} for c in CONDITIONS}
    scores = {c: score(final[c], truth, vocabulary) for c in CONDITIONS}
    report["qa_llark_metrics"] = {name: compare(scores["audio"][name], scores["shuffled"][name])
                                  for name in ("key_mirex", "tempo_acc2", "instruments_f1")}
    stages = {s: json.loads((workdir / "stages" / f"{s}.json").read_text()) for s in RUNS}
    report["training"] = {s: {k: v for k, v in info.items() if k != "config_hash"}
                          | {"trainable": "projector_only", "lm": config.model.source or "gguf"}
                          for s, info in stages.items()}
    report["stand_ins"] = {"lm": "SmolLM2-135M-Instruct (embedded GGUF) for Vicuna-7B",
                           "encoder": "mel (D=160, 10 Hz, pooled to 1 Hz) for MERT-v1-330M, "
                                      "whose weights are absent"}
    report["stage_seconds"] = dict(stage_seconds)
    picked = np.linspace(0, len(ids) - 1, num=min(config.eval.examples, len(ids))).astype(int)
    report["examples"] = [{"clip_id": ids[i], "caption": captions[ids[i]],
                           **{f"{k}/{c}": answers[k][c][i] for k in ("stage1/caption",
                              "final/caption", "final/key") for c in CONDITIONS}}
                          for i in picked]
    write_json_atomic(workdir / "report.json", report)
    write_markdown(report, workdir / "report.md")
    return report


def summary_table(report: dict[str, Any]) -> str:
    """Plain-text table: one line per (task, model, audio condition), the four columns x100."""
    def cell(value: float | None) -> str:
        return f"{value:7.1f}" if value is not None else "      -"

    lines = [f"{'task':<16} {'model':<8} {'audio':<9} {'B-U':>7} {'M-R':>7} {'R-L':>7} "
             f"{'BERT-S':>7}", "-" * 66]
    for task, model, key in ROWS:
        for condition, label in (("audio", "own"), ("shuffled", "shuffled")):
            row = report["metrics"][key][condition]
            lines.append(f"{task:<16} {model:<8} {label:<9} "
                         + " ".join(cell(row[c]) for c in COLUMNS))
    llark = report["qa_llark_metrics"]
    lines.append("final QA, own vs shuffled: " + ", ".join(
        f"{k} {v['audio']:.2f} vs {v['shuffled']:.2f}" for k, v in llark.items()))
    seconds = report["stage_seconds"]
    meteor = "nltk METEOR" if report["meteor"] == "nltk" else "unavailable (no nltk WordNet)"
    lines.append(f"n_eval = {report['n_eval']}; BERT-S: {report['bertscore_backbone']}; "
                 f"M-R: {meteor}")
    lines.append("stages: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
                 + f"; total {sum(seconds.values()):.0f}s")
    return "\n".join(lines)


def write_markdown(report: dict[str, Any], path: Path) -> None:
    lines = ["# MusiLingo demo report", "", "```", summary_table(report), "```", "",
             f"Protocol `{report['protocol']}` (MusiLingo's released `qa.py`: B-U = character "
             "BLEU-4, M-R = nltk METEOR, R-L = ROUGE-L recall, BERT-S = BERTScore recall), x100, "
             f"{report['decoding']} decoding. Shuffled audio: another held-out clip's audio, same "
             "model and prompt. Stand-ins: " + "; ".join(report["stand_ins"].values()) + ".",
             "", "## Training", ""]
    lines += [f"- {stage}: " + ", ".join(f"{k} {v}" for k, v in info.items())
              for stage, info in report["training"].items()]
    lines += ["", "## Examples (held-out clips)", ""]
    for ex in report["examples"]:
        lines += [f"- **{ex['clip_id']}** truth: {ex['caption']}",
                  *[f"  - {k}: {v}" for k, v in ex.items() if "/" in k]]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def main(argv: list[str]) -> int:
    """`python -m llark_jax demo --system musilingo [--workdir W] [--config C] [...]`."""
    rest, overrides = split_overrides(argv)
    parser = cli.build_parser()
    parser.description = __doc__
    parser.set_defaults(workdir=DEFAULT_WORKDIR, config=DEFAULT_CONFIG)
    for action in parser._actions:  # this demo's stages
        if action.dest == "stop_after":
            action.choices = STAGES
        if action.dest == "steps":
            action.help = "stage-2 steps (config.train.steps; stage 1: --config.pretrain.steps)"
    args = parser.parse_args(rest)
    config = cli.config_from_args(args, overrides)
    return cli.run_and_report(MusiLingoDemo(config, args.workdir), args, summary_table)
