"""OUT/report.json and OUT/report.md: one row per system, the paper's numbers beside ours.

report.json: ``{benchmark, task, description, prompt, model, step, n_clips, systems: {system:
{metric: MetricResult dict}}, paper: {system: {metric: [value, ±]}}, paper_other_systems,
skipped: [{item, reason}], notes}``; MCQ benchmarks have ``systems: {system: {method:
{accuracy, by_category}}}`` and ``chance``. report.md has the table (value, 95% interval, n,
paper), the paper's other systems, the skipped clips with reasons, and the plots: every system's
main metric with its interval (systems.png) and the model's task plot (confusion matrix, tempo
scatter, caption lengths).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llark_jax.benchmarks.paper import PAPER, paper_number
from llark_jax.eval.intervals import MetricResult
from llark_jax.eval.report import results_to_json
from llark_jax.io import atomic_write_text, write_json_atomic


def _cell(value: Any) -> tuple[str, str, str]:
    """(value, 95% interval, n) cells of one metric."""
    if isinstance(value, MetricResult):
        low, high = value.ci95
        return f"{value.value:.3f}", f"[{low:.3f}, {high:.3f}]", str(value.n)
    if isinstance(value, Mapping) and "unavailable" in value:
        return f"unavailable: {value['unavailable']}", "", ""
    return "", "", ""


def _paper_cell(number: tuple[float, float | None] | None) -> str:
    if number is None:
        return ""
    value, half = number
    return f"{value:g}" if half is None else f"{value:g} ± {half:g}"


def plot_systems(names: Sequence[str], results: Sequence[MetricResult], metric: str,
                 path: Path, paper: Sequence[float | None] = ()) -> Path:
    """Horizontal bars of one metric per system with 95% intervals (and the paper's value)."""
    from llark_jax.eval.report import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(names) + 1.2))
    y_n = np.arange(len(names))
    values = np.array([r.value for r in results], dtype=np.float64)
    low = values - np.array([r.ci95[0] for r in results])
    high = np.array([r.ci95[1] for r in results]) - values
    ax.barh(y_n, values, xerr=np.nan_to_num([low, high]), color="tab:blue", alpha=0.7,
            capsize=3)
    for y, number in zip(y_n, paper, strict=False):
        if number is not None:
            ax.plot([number], [y], "kD", markersize=5, label="paper" if y == y_n[0] else None)
    ax.set_yticks(y_n, list(names))
    ax.set_xlabel(f"{metric} (95% interval; ◆ paper)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _header(info: Mapping[str, Any]) -> list[str]:
    return [f"# {info['benchmark']}: {info['description']}", "",
            f"Model `{info['model']}` (step {info['step']}); prompt: \"{info['prompt']}\"; "
            f"{info['n_clips']} clips scored, {len(info['skipped'])} skipped.", ""]


def _footer(info: Mapping[str, Any], plots: Sequence[Path], path: Path) -> list[str]:
    lines = []
    others = PAPER.get(info["benchmark"], (None, {}, {}))[2]
    if others:
        lines += ["", "The paper's other systems: " + "; ".join(
            f"{name} {_paper_cell(number)}" for name, number in others.items()) + "."]
    if info["notes"]:
        lines += ["", "## Notes", "", *[f"- {note}" for note in info["notes"]]]
    if info["skipped"]:
        lines += ["", f"## Skipped ({len(info['skipped'])})", "",
                  *[f"- `{s['item']}`: {s['reason']}" for s in info["skipped"]]]
    lines += [f"\n![{p.stem}]({os.path.relpath(p, path.parent)})" for p in plots]
    return lines


def write_report(out_dir: Path, info: dict[str, Any], systems: Mapping[str, Mapping[str, Any]],
                 metrics: Sequence[str], plots: Sequence[Path]) -> Path:
    """report.json + report.md of a benchmark scored by metrics (not MCQ)."""
    benchmark = info["benchmark"]
    paper = {system: {m: list(n) for m in metrics
                      if (n := paper_number(benchmark, system, m)) is not None}
             for system in systems}
    write_json_atomic(out_dir / "report.json", {
        **info, "systems": {s: results_to_json(r) for s, r in systems.items()},
        "paper": {s: p for s, p in paper.items() if p},
        "paper_other_systems": {k: list(v) for k, v in
                                PAPER.get(benchmark, (None, {}, {}))[2].items()}})
    head = "| system | " + " | ".join(f"{m} | 95% interval | n | paper" for m in metrics) + " |"
    lines = [*_header(info), head, "|---" * (1 + 4 * len(metrics)) + "|"]
    for system, results in systems.items():
        cells = []
        for m in metrics:
            cells += [*_cell(results.get(m)), _paper_cell(paper_number(benchmark, system, m))]
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join([*lines, *_footer(info, plots, path)]) + "\n")
    return path


def write_mcq_report(out_dir: Path, info: dict[str, Any],
                     systems: Mapping[str, Mapping[str, Any]], chance: float,
                     plots: Sequence[Path]) -> Path:
    """report.json + report.md of a multiple-choice benchmark: accuracy per system and method,
    with and without audio, and per question category."""
    write_json_atomic(out_dir / "report.json", {
        **info, "chance": chance,
        "systems": {s: {m: results_to_json(r) for m, r in methods.items()}
                    for s, methods in systems.items()}})
    lines = [*_header(info), f"Chance (mean 1 / options): {chance:.3f}.", "",
             "| system | method | accuracy | 95% interval | n | unparsed |",
             "|---|---|---|---|---|---|"]
    for system, methods in systems.items():
        for method, result in methods.items():
            value, interval, n = _cell(result["accuracy"])
            unparsed = result["accuracy"].details.get("n_unparsed", "") if method == "generate" \
                else ""
            lines.append(f"| {system} | {method} | {value} | {interval} | {n} | {unparsed} |")
    categories = sorted({c for methods in systems.values() for r in methods.values()
                         for c in r["by_category"]})
    if categories:
        columns = [(s, m) for s, methods in systems.items() for m in methods]
        lines += ["", "## Accuracy per question category", "",
                  "| category | " + " | ".join(f"{s} {m}" for s, m in columns) + " |",
                  "|---" * (1 + len(columns)) + "|"]
        for category in categories:
            cells = [systems[s][m]["by_category"].get(category) for s, m in columns]
            lines.append(f"| {category} | " + " | ".join(
                f"{c.value:.3f} (n={c.n})" if c is not None else "" for c in cells) + " |")
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join([*lines, *_footer(info, plots, path)]) + "\n")
    return path
