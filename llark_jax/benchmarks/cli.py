"""`python -m llark_jax benchmark NAME --data-dir DIR --model MODEL --output OUT`.

NAME is one of `llark_jax.benchmarks.registry.BENCHMARKS` (giantsteps-key, giantsteps-tempo,
gtzan, medleydb, medleydb-genre, musicnet, musiccaps, muchomusic, mmau); DIR holds the dataset in
its published layout; MODEL is a training workdir or a model directory. The clips are cropped
by the paper's rule and checked before the model is loaded (a missing audio file of an annotated
track, a missing annotation folder or a malformed benchmark JSON: one `error:` line naming the
file; one unreadable label among many, e.g. a `.bpm` that is not a number, is skipped and listed
with its reason in the summary and report), the model
is asked the paper's prompt through `infer`'s audio path, the answers of every system (the
model, the model with another clip's audio, the baselines) are scored with the paper's metric,
and OUT gets report.json, report.md (+ PNG plots) and answers.jsonl (every system's answer per
clip; appended as it is made, so a rerun reuses it and a killed run resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from llark_jax.benchmarks.registry import BENCHMARKS, Benchmark
from llark_jax.errors import MissingInputError, UserError
from llark_jax.io import check_output_path, check_same_run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llark_jax benchmark", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", choices=sorted(BENCHMARKS), metavar="NAME",
                        help=", ".join(sorted(BENCHMARKS)))
    parser.add_argument("--data-dir", required=True, type=Path,
                        help="the dataset in its published layout")
    parser.add_argument("--model", required=True, help="training workdir or model directory")
    parser.add_argument("--output", required=True, type=Path, help="report folder")
    parser.add_argument("--questions", type=Path,
                        help="MCQ: the benchmark JSON (default: DIR/<name>.json, or DIR's "
                             "only .json)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    parser.add_argument("--tokenizer", default=None,
                        help="HF tokenizer dir (only for a workdir trained without one)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N tracks")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0,
                        help="crop coin, shuffled-audio pairing, random baselines")
    parser.add_argument("--no-baselines", action="store_true", help="only the model")
    parser.add_argument("--embedder", choices=("local", "openai"), default="local",
                        help="genre: text embedder of the nearest-label metric")
    parser.add_argument("--openai-model", default="text-embedding-3-small")
    parser.add_argument("--no-meteor", action="store_true", help="captions: skip METEOR (java)")
    parser.add_argument("--no-bertscore", action="store_true", help="captions: skip BERTScore")
    return parser


def _mcq_file(benchmark: Benchmark, data_dir: Path, questions: Path | None) -> Path:
    if questions is not None:
        if not questions.is_file():
            raise MissingInputError(f"--questions {questions}: no such file")
        return questions
    preferred = data_dir / benchmark.json_name
    if preferred.is_file():
        return preferred
    found = sorted(data_dir.glob("*.json"))
    if len(found) != 1:
        raise MissingInputError(f"--data-dir {data_dir}: no {benchmark.json_name} and "
                                f"{len(found)} other .json files; pass --questions FILE")
    return found[0]


def read_mcq_clips(benchmark: Benchmark, data_dir: Path, questions: Path | None,
                   limit: int | None, seed: int) -> tuple[list, list[dict], list[str]]:
    """The questions as clips (label = `Question`), skipped [{item, reason}], notes."""
    from llark_jax.benchmarks import mcq_data
    from llark_jax.benchmarks.clips import CropSpec, prepare_clips
    from llark_jax.benchmarks.tracks import TrackRecord

    path = _mcq_file(benchmark, data_dir, questions)
    items = (mcq_data.read_muchomusic(path, seed) if benchmark.name == "muchomusic"
             else mcq_data.read_mmau(path))
    records = [TrackRecord(q.id, benchmark.name, "test", q.audio_path, {"question": q})
               for q in items]
    clips, skipped = prepare_clips(records, lambda r, w: r.metadata["question"], CropSpec(),
                                   annotation_of=lambda r: f"{path} question {r.id}",
                                   limit=limit, seed=seed)
    clips = [dataclasses.replace(c, clip_id=c.track_id) for c in clips]  # one crop per question
    return clips, skipped, [f"questions: {path}"]


def _scoring_options(benchmark: Benchmark, args: argparse.Namespace, embedder: Any) -> Any:
    from llark_jax.benchmarks.scoring import ScoringOptions

    options = ScoringOptions(embedder=embedder, meteor=not args.no_meteor)
    if benchmark.task == "genre" and options.embedder is None:
        from llark_jax.eval import genre

        options.embedder = (genre.openai_embedder(args.openai_model)
                            if args.embedder == "openai" else genre.local_embedder())
    if benchmark.task == "captions" and not args.no_bertscore:
        from llark_jax.eval.bertscore import BertScorer

        options.bertscorer = BertScorer()
    return options


def run(args: argparse.Namespace, embedder: Any = None) -> dict[str, Any]:
    """Runs one benchmark (see the module docstring); returns report.json's content.
    `embedder` (texts -> [N, D]) replaces `--embedder` for genre (tests)."""
    from tqdm import tqdm

    from llark_jax.benchmarks import evaluate, runner
    from llark_jax.checkpoints.model_dir import load_model
    from llark_jax.infer.answer import Answerer
    from llark_jax.infer.generate import SamplingConfig

    benchmark = BENCHMARKS[args.name]
    if not args.data_dir.is_dir():
        raise MissingInputError(f"--data-dir {args.data_dir}: no such directory")
    check_output_path(args.output, "--output", folder=True)
    if benchmark.task == "mcq":
        clips, skipped, notes = read_mcq_clips(benchmark, args.data_dir, args.questions,
                                               args.limit, args.seed)
    else:
        clips, skipped, notes = benchmark.read(args.data_dir, args.limit, args.seed)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if not clips:
        reasons = "; ".join(f"{s['item']}: {s['reason']}" for s in skipped[:3])
        raise UserError(f"{benchmark.name}: no usable clip in {args.data_dir}"
                        + (f" ({reasons})" if reasons else ""))
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    loaded = load_model(args.model, step=args.step, tokenizer=tokenizer)
    answerer = Answerer(loaded.model, loaded.tokenizer, loaded.template,
                        SamplingConfig(max_new_tokens=args.max_new_tokens),
                        batch_size=args.batch_size)
    args.output.mkdir(parents=True, exist_ok=True)
    check_same_run(args.output / "run.json",
                   {"benchmark": benchmark.name, "model": str(args.model), "step": loaded.step,
                    "seed": args.seed, "max_new_tokens": args.max_new_tokens,
                    "questions": str(args.questions or "")}, f"--output {args.output}")
    log = runner.AnswerLog(args.output / "answers.jsonl")
    info = {"benchmark": benchmark.name, "description": benchmark.description,
            "task": benchmark.task, "prompt": benchmark.prompt or "question + lettered options",
            "model": str(args.model), "step": loaded.step, "n_clips": len(clips),
            "skipped": skipped, "notes": notes, "answers": "answers.jsonl",
            "reused_answers": log.reused}
    with tqdm(total=len(clips), desc=f"{benchmark.name} model", unit="clip") as bar:
        if benchmark.task == "mcq":
            return evaluate.run_mcq(benchmark, clips, loaded, answerer, log, info, args.output,
                                    batch_size=args.batch_size, seed=args.seed,
                                    baselines=not args.no_baselines, progress=bar.update)
        runner.answer_clips(answerer, loaded, clips, benchmark.prompt, log,
                            chunk=4 * args.batch_size, shuffled=not args.no_baselines,
                            seed=args.seed, progress=bar.update)
    return evaluate.score_and_report(benchmark, clips, log, info,
                                     _scoring_options(benchmark, args, embedder), args.output,
                                     baselines=not args.no_baselines, seed=args.seed)


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    report = run(args)
    for system, results in report["systems"].items():
        for name, value in results.items():
            metric = value.get("accuracy", value)  # MCQ: name is the method
            if "ci95" in metric:
                low, high = metric["ci95"]
                print(f"{system} {name}: {metric['value']:.4f} (n={metric['n']}, "
                      f"95% [{low:.4f}, {high:.4f}])")
    skipped = "".join(f"\n  {s['item']}: {s['reason']}" for s in report["skipped"])
    print(f"wrote {args.output / 'report.json'} and report.md; "
          f"{len(report['skipped'])} clip(s) skipped{skipped}", file=sys.stderr)
    return 0
