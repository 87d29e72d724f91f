"""`python -m llark_jax infer`: answer questions about audio with a trained LLark model.

    python -m llark_jax infer --checkpoint runs/demo/model --audio song.mp3 \\
        --question "What is the key of this song?"
    python -m llark_jax infer --checkpoint M --audio-dir songs/ --question "..." --output a.jsonl
    python -m llark_jax infer --checkpoint M --records DIR --output preds.jsonl

`--checkpoint` is a training workdir or a model directory (`llark_jax.checkpoints.model_dir`):
its manifest gives the tokenizer, template, system prompt and the feature pipeline the model was
trained with (encoder and arguments, pooling, standardisation), so the features computed from a
file equal those the training records held for it. The model hears one training window of each
file (`--span crop`, the default: a recording longer than 60 s from 30 s on, a shorter one from
its start; the paper's crop rule), or the whole file as consecutive windows, one audio block each
(`--span all`; more blocks than training ever showed, so long files get worse answers), see
`llark_jax.infer.windows`.

`--audio` takes one or more files, `--audio-dir` every audio file of a folder; the model is loaded
once and the files are answered in batches. Every file is checked BEFORE the model is loaded
(`llark_jax.audio.io.check_audio`: decodable, not cut short, at least 0.1 s): a bad `--audio`
file ends the command with one `error:` line; bad files of a folder are skipped and listed.
With `--output` each answer is one JSONL row
`{"audio", "clip_id", "question", "answer", "finish_reason", "span", "start_s", "end_s",
"windows"}` (clip_id = the file's stem, the key `python -m llark_jax eval` joins labels on;
[start_s, end_s) the seconds heard, in `windows` windows) appended as it is made, so a rerun
skips what is done for the same question and span (and a killed run resumes); without it the
answers are printed. `<output>.run.json` records the model (path, step) and decoding settings
that made the rows: a rerun into the same file with another model or other settings is refused,
so one file never mixes two models' answers. Files that cannot be read are listed in the
summary and skipped. `--records` answers every question of the TFRecord shards of a folder, or
of a glob of shards (`runs/demo/records/eval-*`: the held-out split only), resumably, for
`python -m llark_jax eval`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llark_jax import errors
from llark_jax.argtypes import non_negative_float, positive_int, unit_fraction
from llark_jax.infer.generate import SamplingConfig
from llark_jax.infer.windows import SPANS
from llark_jax.io import check_output_path


class InferError(ValueError):
    """A user mistake (missing file, bad flag combination): printed as one `error:` line."""


def audio_files(paths: Sequence[str], directory: str | None) -> list[Path]:
    """The files of `--audio` (each must exist) or every audio file under `--audio-dir`."""
    from llark_jax.audio.io import require_audio_files

    if directory is not None:
        return require_audio_files(directory, "--audio-dir", files_only=True)
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise InferError(f"--audio {missing[0]}: no such file")
    return [Path(p) for p in paths]


def usable_audio(files: Sequence[Path], *, folder: str | None) -> tuple[list[Path], list[dict]]:
    """(files that pass `check_audio`, [{audio, reason}] of those that do not). A bad `--audio`
    file is an `InferError`; a folder whose files are all bad too."""
    from llark_jax.audio.io import AudioError, check_audio

    usable, skipped = [], []
    for path in files:
        try:
            check_audio(path)
        except AudioError as err:
            if folder is None:
                raise InferError(f"--audio {err}") from err
            skipped.append({"audio": str(path), "reason": str(err)})
            continue
        usable.append(path)
    if not usable:
        reasons = "; ".join(s["reason"] for s in skipped[:5])
        more = f" (+{len(skipped) - 5} more)" if len(skipped) > 5 else ""
        raise InferError(f"--audio-dir {folder}: no usable audio file: {reasons}{more}")
    return usable, skipped


def _done(output: Path | None) -> set[tuple[str, str, str]]:
    from llark_jax.infer.answer import drop_torn_tail

    if output is None or not output.exists():
        return set()
    drop_torn_tail(output)
    rows = [json.loads(line) for line in output.read_text().splitlines() if line.strip()]
    return {(r["audio"], r["question"], r.get("span", "all")) for r in rows}  # older rows: all


def same_run(output: Path, settings: dict[str, Any]) -> None:
    """Answers of another model or decoding (`settings`) are never mixed into `output`: what
    made its rows is kept beside it in `<output>.run.json`, and a rerun with other settings is
    refused (`llark_jax.io.check_same_run`)."""
    from llark_jax.io import check_same_run

    run_file = output.with_name(output.name + ".run.json")
    if not output.exists():
        run_file.unlink(missing_ok=True)  # of an answers file since deleted
    check_same_run(run_file, settings, f"--output {output}")


def answer_files(answerer: Any, loaded: Any, files: Sequence[Path], question: str,
                 output: Path | None, *, chunk: int, span: str = "crop",
                 skipped: Sequence[dict[str, str]] = ()) -> dict[str, Any]:
    """Answers `question` about the `span` of every file (chunks of `chunk` requests); see
    module docstring."""
    import os

    from tqdm import tqdm

    from llark_jax.audio.io import AudioError, audio_duration
    from llark_jax.infer.answer import request_from_windows
    from llark_jax.infer.windows import Windowing

    windowing = Windowing.for_model(loaded)
    done = _done(output)
    todo = [f for f in files if (str(f), question, span) not in done]
    skipped = list(skipped)  # files `usable_audio` already set aside
    out = open(output, "a", encoding="utf-8") if output is not None else sys.stdout
    answered = 0
    try:
        with tqdm(total=len(todo), desc="infer", unit="file", disable=output is None) as bar:
            for start in range(0, len(todo), chunk):
                batch, requests = [], []
                for path in todo[start : start + chunk]:
                    try:
                        heard = windowing.span(audio_duration(path), span)
                        windows = windowing.file_windows(path, heard.start_s, heard.end_s)
                    except (AudioError, ValueError, RuntimeError) as err:
                        skipped.append({"audio": str(path), "reason": str(err)})
                        continue
                    batch.append((path, heard, len(windows)))
                    requests.append(request_from_windows(question, windows,
                                                         windowing.window_tokens))
                for (path, heard, windows), result in zip(batch, answerer.answer(requests),
                                                          strict=True):
                    row = {"audio": str(path), "clip_id": path.stem, "question": question,
                           **result, "span": span, "start_s": round(heard.start_s, 3),
                           "end_s": round(heard.end_s, 3), "windows": windows}
                    out.write(json.dumps(row) + "\n")
                    answered += 1
                out.flush()
                if output is not None:
                    os.fsync(out.fileno())
                bar.update(min(chunk, len(todo) - start))
    finally:
        if output is not None:
            out.close()
    return {"answered": answered, "already_done": len(files) - len(todo), "skipped": skipped}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m llark_jax infer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="training workdir or model directory")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default newest)")
    parser.add_argument("--tokenizer", default=None,
                        help="HF tokenizer dir (only for a workdir trained without one)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio", nargs="+", help="audio file(s) to ask about (with --question)")
    source.add_argument("--audio-dir", help="ask about every audio file under this folder")
    source.add_argument("--records", help="folder of TFRecord shards, or a glob of shards "
                                          "(e.g. 'DIR/eval-*'), with --output")
    parser.add_argument("--question", help="the question for --audio / --audio-dir")
    parser.add_argument("--span", choices=SPANS, default="crop",
                        help="the part of each file the model hears: one training window by the "
                             "paper's crop rule (default), or all of it as consecutive windows")
    parser.add_argument("--output", type=Path, help="answers JSONL (appended; resumable)")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--max-new-tokens", type=positive_int, default=512)
    parser.add_argument("--temperature", type=non_negative_float, default=0.0,
                        help="0 = greedy (paper)")
    parser.add_argument("--top-p", type=unit_fraction, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser


def run(args: argparse.Namespace) -> int:
    from llark_jax.checkpoints.model_dir import load_model
    from llark_jax.infer.answer import Answerer, answer_records

    if (args.audio or args.audio_dir) and not args.question:
        raise InferError("--audio/--audio-dir need --question")
    if args.records and not args.output:
        raise InferError("--records needs --output")
    if args.output is not None:
        check_output_path(args.output, "--output", folder=False)
    files = None if args.records else audio_files(args.audio or [], args.audio_dir)
    unusable: list[dict[str, str]] = []
    if files is not None:  # checked before the (slow) model load
        files, unusable = usable_audio(files, folder=args.audio_dir)
    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    loaded = load_model(args.checkpoint, step=args.step, tokenizer=tokenizer)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_p=args.top_p, seed=args.seed)
    answerer = Answerer(loaded.model, loaded.tokenizer, loaded.template, sampling,
                        batch_size=args.batch_size)
    if args.output is not None:
        same_run(args.output, {"model": str(Path(args.checkpoint).resolve()),
                               "step": loaded.step, "max_new_tokens": sampling.max_new_tokens,
                               "temperature": sampling.temperature, "top_p": sampling.top_p,
                               "seed": sampling.seed})
    if args.records:
        summary = answer_records(answerer, args.records, args.output,
                                 feature_fn=loaded.features.apply)
    else:
        summary = answer_files(answerer, loaded, files, args.question, args.output,
                               chunk=4 * args.batch_size, span=args.span, skipped=unusable)
    print(json.dumps({"step": loaded.step, **summary}, indent=2), file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    from llark_jax.checkpoints.model_dir import ModelDirError

    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (InferError, ModelDirError, FileNotFoundError) as err:
        return errors.report(err)
