"""One system's answers -> the paper's metric for the benchmark (`llark_jax.eval` metrics).

| task | metrics (MetricResult, 95% interval) |
|---|---|
| key | key_mirex (bootstrap; exact accuracy and unparsed count in its details) |
| tempo | tempo_acc1, tempo_acc2 (Clopper-Pearson) |
| genre | genre_acc1: nearest genre label in an embedding space (Clopper-Pearson) |
| instruments | instruments_micro_f1, instruments_clip_f1 (bootstrap) |
| captions | bleu1..4, meteor, rouge_l, cider (+ bertscore_* with a scorer) (bootstrap) |

`model_plots` draws the model's confusion matrix / tempo scatter / caption lengths with
`llark_jax.eval.report`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llark_jax.benchmarks.registry import Benchmark
from llark_jax.eval import report as eval_report
from llark_jax.eval.parse import parse_key, parse_tempo, strip_completion


@dataclasses.dataclass
class ScoringOptions:
    """What scoring needs beyond the answers: the genre embedder (texts -> [N, D]), METEOR
    (java) on/off, and a BERTScore scorer (None: no BERTScore)."""

    embedder: Any = None
    meteor: bool = True
    bertscorer: Any = None


def score_answers(benchmark: Benchmark, answers: Sequence[str], labels: Sequence[Any],
                  options: ScoringOptions) -> dict[str, Any]:
    """{metric name: MetricResult (or {"unavailable": why}) } for one system's answers."""
    task = benchmark.task
    if task == "key":
        from llark_jax.eval.metrics import key_mirex

        return {"key_mirex": key_mirex(answers, [str(x) for x in labels])}
    if task == "tempo":
        from llark_jax.eval.metrics import tempo_accuracy

        return dict(tempo_accuracy(answers, [float(x) for x in labels]))
    if task == "genre":
        from llark_jax.eval.genre import genre_accuracy

        labels = [str(x) for x in labels]
        classes = list(benchmark.classes or ())  # the dataset's classes, then any other label
        classes += sorted(set(labels) - set(classes))
        result = genre_accuracy(answers, labels, options.embedder, classes)
        return {"genre_acc1": result}
    if task == "instruments":
        from llark_jax.eval.metrics import instrument_f1

        return dict(instrument_f1(answers, [list(x) for x in labels], benchmark.vocabulary))
    if task == "captions":
        from llark_jax.eval.captions import caption_metrics

        results = caption_metrics(answers, list(labels), meteor=options.meteor)
        results.pop("lengths")
        if options.bertscorer is not None:
            from llark_jax.eval.bertscore import bertscore

            results.update(bertscore(answers, list(labels), options.bertscorer))
        return results
    raise ValueError(f"unknown task {task!r}")


def without_predictions(results: dict[str, Any]) -> dict[str, Any]:
    """Results without per-clip predicted labels (kept for plots, too long for the report)."""
    out = {}
    for name, value in results.items():
        if dataclasses.is_dataclass(value) and "predicted" in value.details:
            details = {k: v for k, v in value.details.items() if k != "predicted"}
            value = dataclasses.replace(value, details=details)
        out[name] = value
    return out


def model_plots(benchmark: Benchmark, answers: Sequence[str], labels: Sequence[Any],
                results: dict[str, Any], out_dir: Path) -> list[Path]:
    """The task's plots of the model's answers (none for instruments)."""
    task = benchmark.task
    if task == "key":
        pairs = [(parse_key(str(t)), parse_key(strip_completion(a)))
                 for a, t in zip(answers, labels, strict=True)]
        pairs = [(t, p) for t, p in pairs if t is not None]
        return [eval_report.plot_key_confusion([t for t, _ in pairs], [p for _, p in pairs],
                                               out_dir / "key_confusion.png")]
    if task == "tempo":
        return [eval_report.plot_tempo_scatter(
            [float(t) for t in labels], [parse_tempo(strip_completion(a)) for a in answers],
            out_dir / "tempo_scatter.png")]
    if task == "genre":
        result = results["genre_acc1"]
        return [eval_report.plot_confusion(
            [str(x) for x in labels], result.details["predicted"], result.details["genres"],
            out_dir / "genre_confusion.png", f"{benchmark.name}: genre (nearest label)")]
    if task == "captions":
        from llark_jax.eval.captions import tokenize

        counts = {"model": [len(tokenize(a)) for a in answers],
                  "references": [len(tokenize(str(r))) for r in labels]}
        return [eval_report.plot_token_histogram(counts, out_dir / "caption_tokens.png")]
    return []
