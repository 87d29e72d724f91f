"""Markdown reports and PNG plots (matplotlib, Agg backend; imported only when plotting).

Plots: key confusion matrix (paper Fig. 9), tempo scatter with the octave-error lines that Acc2
accepts (paper Fig. 7), genre confusion matrix (paper Fig. 10), caption token-count histogram
(paper Figs. 11-13).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llark_jax.eval.intervals import MetricResult
from llark_jax.eval.metrics import TEMPO_FACTORS
from llark_jax.eval.parse import KEY_NAMES
from llark_jax.io import atomic_write_text

UNPARSED = "unparsed"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_counts(
    truth: Sequence[str], predicted: Sequence[str | None], classes: Sequence[str]
) -> np.ndarray:
    """Counts [len(classes), len(classes) + 1]; the last column holds unparsed/unknown answers."""
    index = {c: i for i, c in enumerate(classes)}
    counts_tp = np.zeros((len(classes), len(classes) + 1), dtype=np.int64)
    for t, p in zip(truth, predicted, strict=True):
        counts_tp[index[t], index.get(p, len(classes)) if p is not None else len(classes)] += 1
    return counts_tp


def plot_confusion(
    truth: Sequence[str],
    predicted: Sequence[str | None],
    classes: Sequence[str],
    path: str | Path,
    title: str,
) -> Path:
    """Row-normalised confusion matrix (true rows, predicted columns + "unparsed") as a PNG."""
    plt = _pyplot()
    counts_tp = confusion_counts(truth, predicted, classes)
    rates_tp = counts_tp / np.maximum(counts_tp.sum(axis=1, keepdims=True), 1)
    size = max(4.0, 0.35 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates_tp, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes) + 1), [*classes, UNPARSED], rotation=90, fontsize=7)
    ax.set_yticks(range(len(classes)), list(classes), fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_key_confusion(
    true_keys: Sequence[str], predicted_keys: Sequence[str | None], path: str | Path
) -> Path:
    """24 canonical keys (C major ... B minor) plus an "unparsed" column."""
    return plot_confusion(true_keys, predicted_keys, KEY_NAMES, path, "Key estimation")


def plot_tempo_scatter(
    true_bpm: Sequence[float], predicted_bpm: Sequence[float | None], path: str | Path
) -> Path:
    """Predicted vs true tempo with the lines y = f·x for the Acc2 factors and the ±4% band."""
    plt = _pyplot()
    pairs = [(t, p) for t, p in zip(true_bpm, predicted_bpm, strict=True) if p is not None]
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if pairs:
        t_n, p_n = np.array(pairs, dtype=np.float64).T
        ax.scatter(t_n, p_n, s=10, alpha=0.6, label=f"clips (n={len(pairs)})")
        hi = max(float(t_n.max()), 1.0) * 1.1
        x_n = np.linspace(0, hi, 50)
        for factor in TEMPO_FACTORS:
            style = "-" if factor == 1.0 else "--"
            ax.plot(x_n, factor * x_n, style, lw=1, color="gray", label=f"×{factor:.3g}")
        ax.fill_between(x_n, 0.96 * x_n, 1.04 * x_n, color="green", alpha=0.15, label="±4%")
        ax.set_xlim(0, hi)
        ax.set_ylim(0, max(float(p_n.max()), hi) * 1.05)
    ax.set_xlabel("true tempo (BPM)")
    ax.set_ylabel("predicted tempo (BPM)")
    ax.set_title(f"Tempo ({len(true_bpm) - len(pairs)} unparsed not shown)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_token_histogram(token_counts: Mapping[str, Sequence[int]], path: str | Path) -> Path:
    """Histogram of tokens per caption, one series per source (e.g. predictions, references)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, counts in token_counts.items():
        ax.hist(counts, bins=30, alpha=0.5, label=f"{name} (mean {np.mean(counts):.1f})")
    ax.set_xlabel("tokens per caption")
    ax.set_ylabel("captions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def _format_row(name: str, value: Any) -> str:
    if isinstance(value, MetricResult):
        low, high = value.ci95
        return (
            f"| {name} | {value.value:.4f} | {value.n} | [{low:.4f}, {high:.4f}] | "
            f"{value.interval} |"
        )
    if isinstance(value, Mapping) and "unavailable" in value:
        return f"| {name} | unavailable: {value['unavailable']} | | | |"
    return f"| {name} | `{json.dumps(value)}` | | | |"


def results_to_json(results: Mapping[str, Any]) -> dict[str, Any]:
    """MetricResults to plain dicts, recursively."""
    return {
        k: v.to_dict()
        if isinstance(v, MetricResult)
        else results_to_json(v)
        if isinstance(v, Mapping)
        else v
        for k, v in results.items()
    }


def write_markdown(
    title: str,
    results: Mapping[str, Any],
    plots: Sequence[Path],
    path: str | Path,
    notes: Sequence[str] = (),
) -> Path:
    """A markdown table of metrics (value, n, 95% interval, interval method) plus the plots."""
    path = Path(path)
    lines = [
        f"# {title}",
        "",
        "| metric | value | n | 95% interval | interval |",
        "|---|---|---|---|---|",
    ]
    lines += [_format_row(name, value) for name, value in results.items()]
    lines += ["", *[f"- {note}" for note in notes]]
    lines += [f"\n![{p.stem}]({os.path.relpath(p, path.parent)})" for p in plots]
    return atomic_write_text(path, "\n".join(lines) + "\n")
