"""From the answer log to the report: baselines added, every system scored, report written.

`score_and_report` serves the metric benchmarks (key, tempo, genre, instruments, captions) and
needs no model (a finished run is rescored from its answers.jsonl); `run_mcq` answers and scores
the multiple-choice benchmarks (`mcq.py`). Clips the model could not be asked about (audio
features failed) are moved to the skipped list with the reason, for every system alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llark_jax.benchmarks import baselines as baseline_answers
from llark_jax.benchmarks import mcq, runner
from llark_jax.benchmarks.clips import Clip
from llark_jax.benchmarks.paper import paper_number
from llark_jax.benchmarks.registry import Benchmark
from llark_jax.benchmarks.report import plot_systems, write_mcq_report, write_report
from llark_jax.benchmarks.runner import AnswerLog
from llark_jax.benchmarks.scoring import (
    ScoringOptions,
    model_plots,
    score_answers,
    without_predictions,
)
from llark_jax.errors import UserError
from llark_jax.eval.intervals import MetricResult
from llark_jax.infer.score import Scorer


def _answered(clips: list[Clip], log: AnswerLog, info: dict[str, Any],
              method: str | None = None) -> list[Clip]:
    """The clips the model answered; the others move to `info["skipped"]` with the reason."""
    failed = runner.unanswered(log, clips, method)
    info["skipped"] += [{"item": c, "reason": r} for c, r in failed.items()]
    clips = [c for c in clips if c.clip_id not in failed]
    info["n_clips"] = len(clips)
    if not clips:
        raise UserError(f"{info['benchmark']}: the model answered no clip "
                        f"({next(iter(failed.values()))})")
    return clips


def score_and_report(benchmark: Benchmark, clips: list[Clip], log: AnswerLog,
                     info: dict[str, Any], options: ScoringOptions, out_dir: Path, *,
                     baselines: bool = True, seed: int = 0) -> dict[str, Any]:
    """Adds the baselines' answers to the log, scores every system's answers and writes
    report.json / report.md / plots into `out_dir`; returns report.json's content."""
    clips = _answered(clips, log, info)
    systems = [runner.MODEL] + (list(benchmark.baselines) if baselines else [])
    for system in systems:
        if system in ("majority", "random"):
            make = baseline_answers.majority_answers if system == "majority" else (
                lambda b, c: baseline_answers.random_answers(b, c, seed))
            runner.add_text_answers(log, system, clips, make(benchmark, clips),
                                    benchmark.prompt)
        elif system == "madmom":
            with tqdm(total=len(clips), desc="madmom baseline", unit="clip") as bar:
                runner.add_madmom_answers(log, benchmark.task, clips, benchmark.prompt,
                                          progress=bar.update)
    labels = [c.label for c in clips]
    results = {s: score_answers(benchmark, runner.system_answers(log, s, clips), labels, options)
               for s in systems if s != runner.SHUFFLED or log.get(
                   runner.row_key(s, clips[0].clip_id)) is not None}
    primary = benchmark.metrics[0]
    plots = model_plots(benchmark, runner.system_answers(log, runner.MODEL, clips), labels,
                        results[runner.MODEL], out_dir)
    ranked = [s for s in results if isinstance(results[s].get(primary), MetricResult)]
    if ranked:
        plots.insert(0, plot_systems(
            ranked, [results[s][primary] for s in ranked], primary, out_dir / "systems.png",
            [(n[0] if (n := paper_number(benchmark.name, s, primary)) else None)
             for s in ranked]))
    results = {s: without_predictions(r) for s, r in results.items()}
    write_report(out_dir, info, results, benchmark.metrics, plots)
    return json.loads((out_dir / "report.json").read_text())


def run_mcq(benchmark: Benchmark, clips: list[Clip], loaded: Any, answerer: Any,
            log: AnswerLog, info: dict[str, Any], out_dir: Path, *, batch_size: int = 8,
            seed: int = 0, baselines: bool = True,
            progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Answers the questions both ways (`mcq.py`) for the model and its audio controls, adds the
    random picks, scores and writes the report; returns report.json's content."""
    pad_id = loaded.tokenizer.pad_token_id if loaded.tokenizer.pad_token_id is not None else 0
    scorer = Scorer(loaded.model, batch_size=batch_size, pad_id=pad_id)
    systems = [runner.MODEL] + ([s for s in benchmark.baselines if s != "random"]
                                if baselines else [])
    mcq.answer_questions(answerer, scorer, loaded, clips, log, systems=systems,
                         chunk=2 * batch_size, seed=seed, progress=progress)
    clips = _answered(clips, log, info, method="generate")
    results = {s: {m: mcq.accuracy(clips, log, s, m) for m in mcq.METHODS
                   if log.get(runner.row_key(s, clips[0].clip_id, m)) is not None}
               for s in systems}
    if baselines:
        mcq.add_random_choices(log, clips, seed)
        results["random"] = {"pick": mcq.accuracy(clips, log, "random", "pick")}
    results = {s: r for s, r in results.items() if r}
    names = [f"{s} {m}" for s, methods in results.items() for m in methods]
    plots = [plot_systems(names, [r["accuracy"] for methods in results.values()
                                  for r in methods.values()], "accuracy",
                          out_dir / "systems.png")]
    write_mcq_report(out_dir, info, results, mcq.chance_accuracy(clips), plots)
    return json.loads((out_dir / "report.json").read_text())
