"""The demo's report: `report.json` (schema of issue 11), `report.md` with plots and examples, and
the summary table printed at the end of `make demo`.

report.json: the in-distribution evaluation at the top level: `n_eval`; `key_mirex`,
`tempo_acc2`, `instruments_f1` (and `tempo_acc1`, `instruments_clip_f1`) each `{audio, shuffled,
constant, audio_ci95, shuffled_ci95, constant_ci95, grounded}` where `grounded` = own audio beats
both floors (shuffled audio and the best constant answer) with disjoint 95% intervals; the same
under `ood` for the out-of-distribution set; `constant_answers`; `stage_seconds` and
`stage_cpu_seconds`; `training`; `madmom_vs_truth` (the annotation stage's own key/tempo
accuracy); `examples` and `ood_examples`.
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
from llark_jax.io import atomic_write_text, read_jsonl, write_json_atomic

HEADLINE = ("key_mirex", "tempo_acc2", "instruments_f1")
REPORTED = (*HEADLINE, "tempo_acc1", "instruments_clip_f1")
FLOORS = ("shuffled", "constant")
SET_TITLES = {"in_distribution": "in distribution (held-out clips of the training synthesiser)",
              "ood": "out of distribution (numpy synthesiser, 22.05 kHz MP3)",
              "user": "your labelled audio (--ood-dir)"}
EXTRA_SETS = ("ood", "user")


def compare(audio: MetricResult, shuffled: MetricResult,
            constant: MetricResult | None = None) -> dict[str, Any]:
    """One metric under each condition; `grounded` when own audio beats every floor given
    (shuffled audio, and the constant answer when given) with disjoint 95% intervals."""
    floors = {"shuffled": shuffled, **({"constant": constant} if constant is not None else {})}
    row: dict[str, Any] = {"audio": audio.value, "n": audio.n, "audio_ci95": list(audio.ci95),
                           "interval": audio.interval}
    for name, floor in floors.items():
        row[name], row[f"{name}_ci95"] = floor.value, list(floor.ci95)
    row["grounded"] = all(audio.value > f.value and audio.ci95[0] > f.ci95[1]
                          for f in floors.values())
    return row


def evaluation_section(scores: Mapping[str, Mapping[str, MetricResult]],
                       n_eval: int) -> dict[str, Any]:
    """scores[condition][metric] (conditions audio, shuffled, constant) -> one evaluation's
    report entries."""
    section: dict[str, Any] = {"n_eval": n_eval}
    for name in REPORTED:
        section[name] = compare(scores["audio"][name], scores["shuffled"][name],
                                scores["constant"][name] if "constant" in scores else None)
    return section


def build_report(scores: Mapping[str, Mapping[str, MetricResult]], n_eval: int,
                 stage_seconds: Mapping[str, float], extra: Mapping[str, Any]) -> dict[str, Any]:
    """scores[condition][metric] -> the report.json dict (in-distribution entries at the top)."""
    report: dict[str, Any] = {**evaluation_section(scores, n_eval),
                              "stage_seconds": dict(stage_seconds)}
    report.update(extra)
    return report


def _cell(row: Mapping[str, Any], condition: str) -> str:
    low, high = row[f"{condition}_ci95"]
    return f"{row[condition]:.3f} [{low:.2f}, {high:.2f}]"


def metrics_table(section: Mapping[str, Any]) -> list[str]:
    """Lines: metric, own audio [CI], the floors [CI], grounded."""
    floors = [f for f in FLOORS if f in section[REPORTED[0]]]
    header = f"{'metric':<20} {'own audio':>22}" + "".join(
        f" {f + (' audio' if f == 'shuffled' else ' answer'):>22}" for f in floors)
    lines = [header + "  grounded", "-" * (len(header) + 10)]
    for name in REPORTED:
        row = section[name]
        cells = "".join(f" {_cell(row, c):>22}" for c in ("audio", *floors))
        lines.append(f"{name:<20}{cells}  {'yes' if row['grounded'] else 'no'}")
    return lines


def summary_table(report: Mapping[str, Any]) -> str:
    """Plain text: one metrics table per evaluation set, then stage wall and CPU seconds."""
    lines = [f"{SET_TITLES['in_distribution']}, n = {report['n_eval']}",
             *metrics_table(report)]
    for name in EXTRA_SETS:
        if name in report:
            lines += ["", f"{SET_TITLES[name]}, n = {report[name]['n_eval']}",
                      *metrics_table(report[name])]
    seconds, cpu = report["stage_seconds"], report.get("stage_cpu_seconds", {})
    lines += ["", f"{'stage':<10} {'wall s':>8} {'CPU s':>8}"]
    lines += [f"{k:<10} {v:>8.0f} {cpu.get(k, float('nan')):>8.0f}" for k, v in seconds.items()]
    lines.append(f"{'total':<10} {sum(seconds.values()):>8.0f} {sum(cpu.values()):>8.0f}")
    return "\n".join(lines)


def plot_grounding(section: Mapping[str, Any], path: Path, title: str) -> Path:
    """Bar chart: each headline metric with own audio and each floor, with 95% intervals."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    x = np.arange(len(HEADLINE))
    bars = [(c, colour, label) for c, colour, label in (
        ("audio", "tab:blue", "own audio"), ("shuffled", "tab:gray", "shuffled audio"),
        ("constant", "tab:orange", "best constant answer")) if c in section[HEADLINE[0]]]
    width = 0.8 / len(bars)
    for k, (condition, colour, label) in enumerate(bars):
        values = np.array([section[m][condition] for m in HEADLINE])
        ci = np.array([section[m][f"{condition}_ci95"] for m in HEADLINE])
        ax.bar(x + (k - (len(bars) - 1) / 2) * width, values, width, color=colour, label=label,
               yerr=[values - ci[:, 0], ci[:, 1] - values], capsize=3)
    ax.set_xticks(x, HEADLINE)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (95% interval)")
    ax.set_title(f"{title}: {section['n_eval']} clips", fontsize=9)
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


def write_report_files(report: dict[str, Any], out_dir: Path,
                       sets: Mapping[str, tuple[Sequence[Mapping[str, Any]],
                                                Mapping[str, Mapping[str, list[str]]]]],
                       losses: Sequence[float]) -> tuple[Path, Path]:
    """Writes report.json, report.md and the PNG plots into `out_dir`; `sets[name]` = (truth per
    clip, answers[condition][task])."""
    truth, answers = sets["in_distribution"]
    own = answers["audio"]
    plots = [
        plot_grounding(report, out_dir / "grounding.png", SET_TITLES["in_distribution"]),
        plot_key_confusion([parse_key(t["key"]) for t in truth],
                           [parse_key(strip_completion(a)) for a in own["key"]],
                           out_dir / "key_confusion.png"),
        plot_tempo_scatter([float(t["tempo"]) for t in truth],
                           [parse_tempo(strip_completion(a)) for a in own["tempo"]],
                           out_dir / "tempo_scatter.png"),
    ]
    for name in EXTRA_SETS:
        if name in report:
            plots.append(plot_grounding(report[name], out_dir / f"grounding_{name}.png",
                                        SET_TITLES[name]))
    if losses:
        plots.append(plot_loss(losses, out_dir / "loss.png"))
    json_path = write_json_atomic(out_dir / "report.json", report)
    lines = ["# LLark demo report", "", "```", summary_table(report), "```", "",
             "`grounded`: own audio beats both floors with disjoint 95% intervals: shuffled audio "
             "(the audio of another clip of the same set, same model and prompts) and the best "
             "constant answer (chosen on the training labels: "
             + "; ".join(f"{k}: \"{v}\"" for k, v in report.get("constant_answers", {}).items())
             + "). CPU s: user + system seconds of the demo and every command it ran (the "
             "machine may be shared, so wall seconds can be inflated; CPU seconds are not).", ""]
    training = report.get("training", {})
    if training:
        lines += ["## Training", "", *[f"- {k}: {v}" for k, v in training.items()], ""]
    madmom = report.get("madmom_vs_truth")
    if madmom:
        lines += ["## Annotation stage (madmom) against the synthesis truth", "",
                  *[f"- {k}: {v}" for k, v in madmom.items()], ""]
    for key, title in (("examples", "held-out clips"), ("ood_examples", "OOD clips")):
        lines += [f"## Examples ({title})", "",
                  "| clip | question | truth | answer (own audio) | answer (shuffled audio) |",
                  "|---|---|---|---|---|"]
        for ex in report.get(key, []):
            cells = [ex["clip_id"], ex["question"], ex["truth"], ex["audio"], ex["shuffled"]]
            lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
        lines.append("")
    lines += ["## Plots", "", *[f"![{p.stem}]({p.name})" for p in plots]]
    md_path = atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")
    return json_path, md_path


def madmom_vs_truth(metadata: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How well the annotation stage (madmom) itself recovers the synthesis key and tempo."""
    rows = [m for m in metadata if m.get("key_madmom")]
    key = key_mirex([m["key_madmom"] for m in rows], [m["key"] for m in rows])
    tempo_rows = [m for m in metadata if m.get("tempo_in_beats_per_minute_madmom")]
    tempo = tempo_accuracy([f"{m['tempo_in_beats_per_minute_madmom']} BPM" for m in tempo_rows],
                           [float(m["tempo"]) for m in tempo_rows])
    return {"n": len(rows), "key_mirex": round(key.value, 3),
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
                stage_seconds: Mapping[str, float],
                stage_cpu_seconds: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Scores `eval/answers.json` (every set, own and shuffled audio, and the best constant
    answer) against the truth (`work/metadata.jsonl`; `ood/data/clips.jsonl`), writes report.json,
    report.md and the plots into `workdir`, and returns the report dict."""
    from llark_jax.demo.eval import CONDITIONS, PROMPTS, constant_answers, score

    saved = json.loads((workdir / "eval" / "answers.json").read_text())["sets"]
    metadata = [json.loads(line) for line in
                (workdir / "work" / "metadata.jsonl").read_text().splitlines() if line.strip()]
    by_id = {m["clip_id"]: m for m in metadata}
    for extra_truth in (workdir / "ood" / "data" / "clips.jsonl",
                        workdir / "ood" / "user" / "labels.jsonl"):
        if extra_truth.exists():
            by_id.update({m["clip_id"]: m for m in read_jsonl(extra_truth)})
    constants = constant_answers([m for m in metadata if m.get("split") == "train"])
    vocabulary = sorted({i for m in metadata for i in m["instruments"]})
    sections, sets, details = {}, {}, {}
    for name, entry in saved.items():
        truth = [by_id[c] for c in entry["clip_ids"]]
        answers = {**entry["answers"],
                   "constant": {task: [constants[task]] * len(truth) for task in PROMPTS}}
        scores = {c: score(answers[c], truth, vocabulary) for c in (*CONDITIONS, "constant")}
        sections[name] = evaluation_section(scores, len(truth))
        sets[name] = (truth, answers)
        details[name] = {c: {k: v.to_dict() for k, v in s.items()} for c, s in scores.items()}
    training = json.loads((workdir / "stages" / "train.json").read_text())
    losses = [json.loads(line)["loss"] for line in
              (workdir / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    report: dict[str, Any] = {
        **sections["in_distribution"],
        **{name: sections[name] for name in EXTRA_SETS if name in sections},
        "constant_answers": constants,
        "stage_seconds": dict(stage_seconds),
        "stage_cpu_seconds": dict(stage_cpu_seconds or {}),
        "training": {k: training[k] for k in (
            "steps", "seconds", "cpu_seconds", "loop_seconds", "first_loss", "last_loss",
            "trainable_params", "non_pad_fraction") if k in training}
        | {"trainable": config.model.trainable, "lm": config.model.source,
           "encoder": config.data.encoder},
        "madmom_vs_truth": madmom_vs_truth(metadata),
        "details": details,
    }
    for name, key in (("in_distribution", "examples"), ("ood", "ood_examples")):
        if name in saved:
            report[key] = _examples(saved[name]["clip_ids"], sets[name][0], sets[name][1],
                                    config.eval.examples)
    write_report_files(report, workdir, sets, losses)
    return report
