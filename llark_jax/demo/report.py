"""The demo's report: `report.json` (schema of issue 11), `report.md` with plots and examples, and
the summary table printed at the end of `make demo`.

report.json: `n_eval`; `key_mirex`, `tempo_acc2`, `instruments_f1` (and `tempo_acc1`,
`instruments_clip_f1`) each `{audio, shuffled, audio_ci95, shuffled_ci95, grounded}` where
`grounded` = audio > shuffled with disjoint 95% intervals; `stage_seconds`; `training`;
`madmom_vs_truth` (the annotation stage's own key/tempo accuracy); `examples`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections
import numpy as np

from llark_jax.eval.intervals import MetricResult
from llark_jax.eval.metrics import key_mirex, tempo_accuracy
from llark_jax.eval.parse import parse_key, parse_tempo, strip_completion
from llark_jax.eval.report import _pyplot, plot_key_confusion, plot_tempo_scatter
from llark_jax.io import atomic_write_text, write_json_atomic

HEADLINE = ("key_mirex", "tempo_acc2", "instruments_f1")
REPORTED = (*HEADLINE, "tempo_acc1", "instruments_clip_f1")


def compare(audio: MetricResult, shuffled: MetricResult) -> dict[str, Any]:
    """One metric under both conditions; `grounded` when audio wins with disjoint intervals."""
    return {"audio": audio.value, "shuffled": shuffled.value, "n": audio.n,
            "audio_ci95": list(audio.ci95), "shuffled_ci95": list(shuffled.ci95),
            "interval": audio.interval,
            "grounded": bool(audio.value > shuffled.value and audio.ci95[0] > shuffled.ci95[1])}


def build_report(scores: Mapping[str, Mapping[str, MetricResult]], n_eval: int,
                 stage_seconds: Mapping[str, float], extra: Mapping[str, Any]) -> dict[str, Any]:
    """scores[condition][metric] -> the report.json dict."""
    report: dict[str, Any] = {"n_eval": n_eval, "stage_seconds": dict(stage_seconds)}
    for name in REPORTED:
        report[name] = compare(scores["audio"][name], scores["shuffled"][name])
    report.update(extra)
    return report


def summary_table(report: Mapping[str, Any]) -> str:
    """Plain-text table: metric, own audio [CI], shuffled audio [CI], grounded."""
    lines = [f"{'metric':<20} {'own audio':>22} {'shuffled audio':>22}  grounded",
             "-" * 76]
    for name in REPORTED:
        row = report[name]
        own = f"{row['audio']:.3f} [{row['audio_ci95'][0]:.2f}, {row['audio_ci95'][1]:.2f}]"
        shuf = (f"{row['shuffled']:.3f} [{row['shuffled_ci95'][0]:.2f}, "
                f"{row['shuffled_ci95'][1]:.2f}]")
        lines.append(f"{name:<20} {own:>22} {shuf:>22}  {'yes' if row['grounded'] else 'no'}")
    seconds = report["stage_seconds"]
    lines.append(f"n_eval = {report['n_eval']}; stages: "
                 + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items())
                 + f"; total {sum(seconds.values()):.0f}s")
    return "\n".join(lines)


def plot_grounding(report: Mapping[str, Any], path: Path) -> Path:
    """Bar chart: each headline metric with own vs shuffled audio and their 95% intervals."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = np.arange(len(HEADLINE))
    for offset, condition, colour, label in ((-0.18, "audio", "tab:blue", "own audio"),
                                             (0.18, "shuffled", "tab:gray", "shuffled audio")):
        values = np.array([report[m][condition] for m in HEADLINE])
        ci = np.array([report[m][f"{condition}_ci95"] for m in HEADLINE])
        ax.bar(x + offset, values, 0.36, color=colour, label=label,
               yerr=[values - ci[:, 0], ci[:, 1] - values], capsize=4)
    ax.set_xticks(x, HEADLINE)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (95% interval)")
    ax.set_title(f"Audio grounding on {report['n_eval']} held-out clips")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_loss(losses: Sequence[float], path: Path) -> Path:
    """Training loss per step (and its 10-step mean)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, lw=0.6, alpha=0.5, label="loss")
    if len(losses) >= 10:
        mean = np.convolve(losses, np.ones(10) / 10, mode="valid")
        ax.plot(steps[9:], mean, label="10-step mean")
    ax.set_xlabel("step")
    ax.set_ylabel("masked LM loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report_files(report: dict[str, Any], out_dir: Path, truth: Sequence[Mapping[str, Any]],
                       answers: Mapping[str, Mapping[str, list[str]]],
                       losses: Sequence[float]) -> tuple[Path, Path]:
    """Writes report.json, report.md and the PNG plots into `out_dir`."""
    own = answers["audio"]
    plots = [
        plot_grounding(report, out_dir / "grounding.png"),
        plot_key_confusion([parse_key(t["key"]) for t in truth],
                           [parse_key(strip_completion(a)) for a in own["key"]],
                           out_dir / "key_confusion.png"),
        plot_tempo_scatter([float(t["tempo"]) for t in truth],
                           [parse_tempo(strip_completion(a)) for a in own["tempo"]],
                           out_dir / "tempo_scatter.png"),
    ]
    if losses:
        plots.append(plot_loss(losses, out_dir / "loss.png"))
    json_path = write_json_atomic(out_dir / "report.json", report)
    lines = ["# LLark demo report", "", "```", summary_table(report), "```", "",
             "`grounded`: own audio beats shuffled audio (the audio of another eval clip, same "
             "model and prompts) with disjoint 95% intervals.", ""]
    training = report.get("training", {})
    if training:
        lines += ["## Training", "", *[f"- {k}: {v}" for k, v in training.items()], ""]
    madmom = report.get("madmom_vs_truth")
    if madmom:
        lines += ["## Annotation stage (madmom) against the synthesis truth", "",
                  *[f"- {k}: {v}" for k, v in madmom.items()], ""]
    lines += ["## Examples (held-out clips)", "",
              "| clip | question | truth | answer (own audio) | answer (shuffled audio) |",
              "|---|---|---|---|---|"]
    for ex in report.get("examples", []):
        cells = [ex["clip_id"], ex["question"], ex["truth"], ex["audio"], ex["shuffled"]]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    lines += ["", "## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots]]
    md_path = atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    return json_path, md_path


def madmom_vs_truth(metadata: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How well the annotation stage (madmom) itself recovers the synthesis key and tempo."""
    rows = [m for m in metadata if m.get("key_madmom")]
    key = key_mirex([m["key_madmom"] for m in rows], [m["key"] for m in rows])
    tempo_rows = [m for m in metadata if m.get("tempo_in_beats_per_minute_madmom")]
    tempo = tempo_accuracy([f"{m['tempo_in_beats_per_minute_madmom']} BPM" for m in tempo_rows],
                           [float(m["tempo"]) for m in tempo_rows])
    return {"n": len(metadata), "key_mirex": round(key.value, 3),
            "tempo_acc1": round(tempo["tempo_acc1"].value, 3),
            "tempo_acc2": round(tempo["tempo_acc2"].value, 3)}


def _examples(clip_ids: Sequence[str], truth: Sequence[Mapping[str, Any]],
              answers: Mapping[str, Mapping[str, list[str]]], count: int) -> list[dict]:
    from llark_jax.demo.eval import PROMPTS

    tasks = list(PROMPTS)
    picked = np.linspace(0, len(clip_ids) - 1, num=min(count, len(clip_ids))).astype(int)
    examples = []
    for k, i in enumerate(picked):
        task = tasks[k % len(tasks)]
        value = truth[i][task]
        examples.append({"clip_id": clip_ids[i], "question": PROMPTS[task],
                         "truth": ", ".join(value) if isinstance(value, list) else value,
                         "audio": answers["audio"][task][i],
                         "shuffled": answers["shuffled"][task][i]})
    return examples


def make_report(config: ml_collections.ConfigDict, workdir: Path,
                stage_seconds: Mapping[str, float]) -> dict[str, Any]:
    """Scores `eval/answers.json` against the truth in `work/metadata.jsonl`, writes report.json,
    report.md and the plots into `workdir`, and returns the report dict."""
    from llark_jax.demo.eval import CONDITIONS, score

    saved = json.loads((workdir / "eval" / "answers.json").read_text())
    metadata = [json.loads(line) for line in
                (workdir / "work" / "metadata.jsonl").read_text().splitlines() if line.strip()]
    by_id = {m["clip_id"]: m for m in metadata}
    truth = [by_id[c] for c in saved["clip_ids"]]
    vocabulary = sorted({i for m in metadata for i in m["instruments"]})
    answers = saved["answers"]
    scores = {c: score(answers[c], truth, vocabulary) for c in CONDITIONS}
    training = json.loads((workdir / "stages" / "train.json").read_text())
    losses = [json.loads(line)["loss"] for line in
              (workdir / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    extra = {
        "training": {k: training[k] for k in (
            "steps", "seconds", "loop_seconds", "first_loss", "last_loss", "trainable_params",
            "non_pad_fraction") if k in training}
        | {"trainable": config.model.trainable, "lm": config.model.source},
        "madmom_vs_truth": madmom_vs_truth(metadata),
        "examples": _examples(saved["clip_ids"], truth, answers, config.eval.examples),
        "details": {c: {k: v.to_dict() for k, v in s.items()} for c, s in scores.items()},
    }
    report = build_report(scores, len(truth), stage_seconds, extra)
    write_report_files(report, workdir, truth, answers, losses)
    return report
