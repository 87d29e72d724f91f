"""`python -m llark_jax eval TASK --predictions P.jsonl --labels L.jsonl --output report.json`.

TASK is key | tempo | genre | instruments | captions | detail | matching. Predictions JSONL rows
are {clip_id, answer} (+ question for matching); label rows are {clip_id, key | tempo | genre |
instruments | caption}, for `detail` the baseline model's {clip_id, answer}, for `matching` a text
{clip_id, description} of each clip's audio (the GPT judges of `judge.py`; OPENAI_API_KEY, and
OPENAI_BASE_URL or --openai-base-url for another endpoint). Clips are joined on clip_id: a
labelled clip without a prediction is scored as an empty answer and counted (judge tasks skip it)
(`missing_predictions`); predictions without a label are ignored and counted; malformed lines are
reported by file and line and skipped. Prediction rows with a `task` field (`infer --records`
writes one row per question) are narrowed to TASK's rows when any row has that task; a clip
left with answers to several questions is an error (one of them would be scored as TASK's
answer). Label rows with a `split` field (`data_prep merge` metadata of every split) are
narrowed to the splits of the predicted clips. Files whose clip_ids do not meet are an error,
not a score of 0. Writes report.json (metrics, n, 95%
intervals and their method) and, with --report-dir, report.md plus PNG plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llark_jax import errors
from llark_jax.argtypes import positive_float, positive_int
from llark_jax.errors import MissingInputError, UserError
from llark_jax.eval import report
from llark_jax.eval.intervals import MetricResult
from llark_jax.eval.parse import parse_key, parse_tempo, strip_completion
from llark_jax.io import iter_json_lines, write_json_atomic

LABEL_FIELDS = {
    "key": "key",
    "tempo": "tempo",
    "genre": "genre",
    "instruments": "instruments",
    "captions": "caption",
    "detail": "answer",  # --labels: the baseline model's answers
    "matching": "description",  # --labels: a text description of each clip's audio
}


def read_clip_rows(path: str | Path, required: Sequence[str], task: str | None = None
                   ) -> tuple[dict[str, dict], list[str]]:
    """A JSONL file's rows keyed by clip_id (each must have `required`), and a list of problems
    ("file:line: why") for skipped lines. With `task`, rows whose `task` field names another task
    are left out (`infer --records` writes one row per question, each with its task), if any row
    names `task` at all. Duplicate clip_ids keep the last row and are one problem line."""
    rows: list[tuple[int, dict]] = []
    problems: list[str] = []
    lacking: dict[str, list[int]] = {}  # missing fields -> line numbers
    for line_no, row, error in iter_json_lines(path):
        if error is not None:
            problems.append(f"{path}:{line_no}: invalid JSON ({error})")
            continue
        missing = [k for k in ("clip_id", *required) if not isinstance(row, dict) or k not in row]
        if missing:
            lacking.setdefault(str(missing), []).append(line_no)
            continue
        rows.append((line_no, row))
    problems += [f"{path}:{lines_of[0]}: {len(lines_of)} row(s) missing field(s) {missing}"
                 for missing, lines_of in lacking.items()]
    if task is not None and any(row.get("task") == task for _, row in rows):
        rows = [(n, row) for n, row in rows if row.get("task", task) == task]
    _require_one_question_per_clip(path, [row for _, row in rows], task)
    by_clip: dict[str, dict] = {}
    duplicates: list[tuple[int, str]] = []
    for line_no, row in rows:
        if str(row["clip_id"]) in by_clip:
            duplicates.append((line_no, str(row["clip_id"])))
        by_clip[str(row["clip_id"])] = row
    if duplicates:
        line_no, clip_id = duplicates[0]
        problems.append(f"{path}:{line_no}: {len(duplicates)} rows repeat a clip_id (first "
                        f"{clip_id!r}), the last row of each clip kept; one answer per clip, "
                        f"or rows with a `task` field, are expected")
    return by_clip, problems


def _require_one_question_per_clip(path: str | Path, rows: Sequence[dict],
                                   task: str | None) -> None:
    """A `UserError` when one clip has answers to different questions (e.g. `infer --records`
    rows of a task family such as "mir"): keeping one of them would score an answer to another
    question as a `task` answer."""
    questions: dict[str, set[str]] = {}
    for row in rows:
        if "question" in row:
            questions.setdefault(str(row["clip_id"]), set()).add(str(row["question"]))
    clip_id, asked = max(questions.items(), key=lambda item: len(item[1]), default=("", set()))
    if len(asked) > 1:
        tasks = sorted({str(row.get("task")) for row in rows if "task" in row})
        raise UserError(
            f"{path}: clip {clip_id!r} has answers to {len(asked)} different questions"
            + (f" (tasks {', '.join(tasks)}; none is {task!r})" if tasks else "")
            + f"; eval {task or 'TASK'} scores one answer per clip: give it the rows of one "
            "question (e.g. `infer --audio-dir DIR --question ...`)")


def labels_of_predicted_splits(predictions: dict[str, dict], labels: dict[str, dict]
                               ) -> tuple[dict[str, dict], list[str]]:
    """Labels narrowed to the splits of the predicted clips, when label rows carry `split`
    (a metadata file of every split, predictions of the held-out one): (labels, the splits kept,
    empty when nothing was narrowed). Unpredicted clips of those splits stay missing."""
    splits = {labels[c].get("split") for c in predictions if c in labels}
    every = {row.get("split") for row in labels.values()}
    if None in every or not splits or splits == every:
        return labels, []
    kept = {c: row for c, row in labels.items() if row.get("split") in splits}
    return kept, sorted(splits)


def join(
    predictions: dict[str, dict], labels: dict[str, dict], field: str
) -> tuple[list[str], list[str], list[Any], dict[str, int]]:
    """(clip_ids, answers, labels) in label order, plus join counts."""
    clip_ids = sorted(labels)
    answers = [str(predictions.get(c, {}).get("answer", "")) for c in clip_ids]
    counts = {
        "missing_predictions": sum(c not in predictions for c in clip_ids),
        "unlabelled_predictions": sum(c not in labels for c in predictions),
    }
    return clip_ids, answers, [labels[c][field] for c in clip_ids], counts


def _score_key(answers, labels, out_dir, args):
    from llark_jax.eval.metrics import key_mirex

    result = key_mirex(answers, labels)
    plots = []
    if out_dir:
        pairs = [
            (parse_key(str(lbl)), parse_key(strip_completion(a)))
            for a, lbl in zip(answers, labels, strict=True)
        ]
        pairs = [(t, p) for t, p in pairs if t is not None]
        truth, predicted = zip(*pairs, strict=True) if pairs else ((), ())
        plots.append(report.plot_key_confusion(truth, predicted, out_dir / "key_confusion.png"))
    return {"key_mirex": result}, plots


def _as_bpm(label: Any) -> float:
    """A label as BPM; unusable labels become 0 (excluded from scoring and counted)."""
    try:
        return float(label or 0)
    except (TypeError, ValueError):
        return 0.0


def _score_tempo(answers, labels, out_dir, args):
    from llark_jax.eval.metrics import tempo_accuracy

    bpm = [_as_bpm(x) for x in labels]
    results = tempo_accuracy(answers, bpm, args.tolerance)
    plots = []
    if out_dir:
        kept = [(t, parse_tempo(strip_completion(a))) for a, t in zip(answers, bpm, strict=True)]
        kept = [(t, p) for t, p in kept if t > 0]
        plots.append(
            report.plot_tempo_scatter(
                [t for t, _ in kept], [p for _, p in kept], out_dir / "tempo_scatter.png"
            )
        )
    return results, plots


def _score_genre(answers, labels, out_dir, args):
    from llark_jax.eval import genre

    if args.embedder == "openai":
        embed = genre.openai_embedder(args.openai_model, base_url=args.openai_base_url)
    else:
        embed = genre.local_embedder()
    genres = args.genres.split(",") if args.genres else None
    result = genre.genre_accuracy(answers, [str(x) for x in labels], embed, genres, k=1)
    plots = []
    if out_dir:
        plots.append(
            report.plot_confusion(
                labels, result.details["predicted"], result.details["genres"],
                out_dir / "genre_confusion.png", "Genre (nearest label)",
            )
        )  # fmt: skip
    details = {k: v for k, v in result.details.items() if k != "predicted"}
    return {"genre_acc1": dataclasses.replace(result, details=details)}, plots


def _score_instruments(answers, labels, out_dir, args):
    from llark_jax.eval.metrics import instrument_f1

    vocabulary = args.vocabulary.split(",") if args.vocabulary else None
    label_map = json.loads(Path(args.label_map).read_text()) if args.label_map else None
    label_sets = [[x] if isinstance(x, str) else list(x) for x in labels]
    return instrument_f1(answers, label_sets, vocabulary, label_map=label_map), []


def _score_captions(answers, labels, out_dir, args):
    from llark_jax.eval.captions import caption_metrics, tokenize

    results = caption_metrics(answers, labels, meteor=not args.no_meteor)
    plots = []
    if out_dir:
        references = [r for refs in labels for r in ([refs] if isinstance(refs, str) else refs)]
        counts = {
            "predictions": [len(tokenize(a)) for a in answers],
            "references": [len(tokenize(r)) for r in references],
        }
        plots.append(report.plot_token_histogram(counts, out_dir / "caption_tokens.png"))
    return results, plots


def _judge_options(args) -> dict:
    return {"model": args.judge_model, "seed": args.seed, "base_url": args.openai_base_url,
            "concurrency": args.concurrency, "temperature": 0}  # fmt: skip


def _score_detail(answers, labels, out_dir, args, rows=()):
    from llark_jax.eval.judge import PairwiseItem, judge_musical_detail

    items = [
        PairwiseItem(str(row["clip_id"]), answer, str(baseline))
        for row, answer, baseline in zip(rows, answers, labels, strict=True)
        if row  # clips the candidate answered
    ]
    result, records = judge_musical_detail(items, **_judge_options(args))
    return {"musical_detail_win_rate": result, "judgments": records}, []


def _score_matching(answers, labels, out_dir, args, rows=()):
    from llark_jax.eval.judge import build_matching_items, judge_audio_text_matching

    responses = [
        {"clip_id": str(row["clip_id"]), "question": str(row.get("question", "")), "answer": a}
        for row, a in zip(rows, answers, strict=True)
        if row
    ]
    descriptions = {str(row["clip_id"]): str(d) for row, d in zip(rows, labels, strict=True) if row}
    items = build_matching_items(responses, descriptions, args.n_options, args.seed)
    result, records = judge_audio_text_matching(items, **_judge_options(args))
    return {"audio_text_match_rate": result, "judgments": records}, []


SCORERS = {
    "key": _score_key,
    "tempo": _score_tempo,
    "genre": _score_genre,
    "instruments": _score_instruments,
    "captions": _score_captions,
    "detail": _score_detail,
    "matching": _score_matching,
}
JUDGE_TASKS = ("detail", "matching")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llark_jax eval", description=__doc__)
    parser.add_argument("task", choices=sorted(SCORERS))
    parser.add_argument("--predictions", required=True, help="JSONL of {clip_id, answer}")
    parser.add_argument("--labels", required=True, help="JSONL of {clip_id, <task field>}")
    parser.add_argument("--output", required=True, help="report JSON path")
    parser.add_argument("--report-dir", help="also write report.md and PNG plots here")
    parser.add_argument("--tolerance", type=positive_float, default=0.04,
                        help="tempo tolerance (0.04)")
    parser.add_argument("--genres", help="comma-separated genre set (default: labels seen)")
    parser.add_argument("--embedder", choices=("local", "openai"), default="local")
    parser.add_argument("--openai-model", default="text-embedding-3-small")
    parser.add_argument("--openai-base-url", default=None)
    parser.add_argument("--vocabulary", help="extra comma-separated instrument names")
    parser.add_argument("--label-map", help="JSON {raw instrument label: canonical or null}")
    parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (needs java)")
    parser.add_argument("--judge-model", default="gpt-4", help="chat model of the GPT judges")
    parser.add_argument("--n-options", type=positive_int, default=3,
                        help="matching: answers per trial")
    parser.add_argument("--concurrency", type=positive_int, default=8,
                        help="judge requests in flight")
    parser.add_argument("--seed", type=int, default=0, help="judge order/distractor seed")
    return parser


def score_task(
    task: str,
    answers: Sequence[str],
    labels: Sequence[Any],
    report_dir: str | Path | None = None,
    **options: Any,
) -> tuple[dict[str, Any], list[Path]]:
    """In-process scoring with the CLI's defaults (`options` override flags by dest name, e.g.
    `tolerance=0.08`, `no_meteor=True`): (results, plot paths); with `report_dir`, also
    report.md and the PNG plots there. Judge tasks need the CLI (they join prediction rows)."""
    if task not in SCORERS or task in JUDGE_TASKS:
        raise ValueError(f"score_task: unknown or judge task {task!r}")
    args = build_parser().parse_args([task, "--predictions", "-", "--labels", "-", "--output", "-"])
    for name, value in options.items():
        if not hasattr(args, name):
            raise ValueError(f"score_task: unknown option {name!r}")
        setattr(args, name, value)
    out_dir = Path(report_dir) if report_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    results, plots = SCORERS[task](list(answers), list(labels), out_dir, args)
    if out_dir:
        report.write_markdown(f"{task} evaluation", results, plots, out_dir / "report.md")
    return results, plots


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    for flag, path in (("--predictions", args.predictions), ("--labels", args.labels)):
        if not Path(path).is_file():
            what = "a folder, not a JSONL file" if Path(path).is_dir() else "no such file"
            raise MissingInputError(f"{flag} {path}: {what}")
    field = LABEL_FIELDS[args.task]
    predictions, problems = read_clip_rows(args.predictions, ["answer"], task=args.task)
    labels, label_problems = read_clip_rows(args.labels, [field])
    problems += label_problems
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    labels, splits = labels_of_predicted_splits(predictions, labels)
    if splits:
        print(f"note: scoring the labels of split(s) {', '.join(splits)}, the predicted clips' "
              f"({len(labels)} labelled clips)", file=sys.stderr)
    clip_ids, answers, label_values, counts = join(predictions, labels, field)
    if not clip_ids:
        return errors.fail(f"no usable labels in {args.labels}")
    if predictions and counts["missing_predictions"] == len(clip_ids):
        return errors.fail(f"no clip_id of {args.predictions} (e.g. {next(iter(predictions))!r}) "
                           f"is in {args.labels} (e.g. {clip_ids[0]!r}): nothing to score")
    out_dir = Path(args.report_dir) if args.report_dir else None
    if out_dir:
        out_dir.mkdir(parents=True, exist_ok=True)
    if args.task in JUDGE_TASKS:  # judged clips need a prediction: no empty-answer scoring
        rows = [predictions.get(c, {}) for c in clip_ids]
        results, plots = SCORERS[args.task](answers, label_values, out_dir, args, rows)
    else:
        results, plots = SCORERS[args.task](answers, label_values, out_dir, args)
    payload = {
        "task": args.task,
        "metrics": report.results_to_json(results),
        **counts,
        **({"label_splits": splits} if splits else {}),
        "skipped_lines": problems,
    }
    write_json_atomic(args.output, payload)
    notes = [f"{k}: {v}" for k, v in counts.items()] + [f"skipped line: {p}" for p in problems]
    if out_dir:
        table = {k: v for k, v in results.items() if k != "judgments"}
        report.write_markdown(f"{args.task} evaluation", table, plots, out_dir / "report.md", notes)
    for name, value in results.items():
        if isinstance(value, MetricResult):  # judgments (lists) stay in the JSON only
            low, high = value.ci95
            interval = f"95% [{low:.4f}, {high:.4f}] {value.interval}"
            print(f"{name}: {value.value:.4f} (n={value.n}, {interval})")
    if counts["missing_predictions"]:  # e.g. labels of every split, predictions of one
        print(f"missing_predictions: {counts['missing_predictions']} of {len(clip_ids)} labelled "
              f"clips have no prediction (scored as empty answers)")
    print(f"wrote {args.output}")
    return 0
