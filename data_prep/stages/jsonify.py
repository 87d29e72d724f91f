"""`python -m data_prep jsonify --dataset NAME --root DIR --output records.jsonl`.

Reads a dataset's distributed files (adapters in `data_prep.datasets`) into one JSON record per
track: ``{"id", "dataset", "split", "audio_path", "metadata"}``. ``--split`` keeps one split
(default: all). Rows that cannot become records, duplicate ids, and (with ``--require-audio``)
records whose audio file is missing are skipped and listed with their reason in
``<output>.report.json``. The output is written atomically, so a rerun simply rewrites it.
Exit status: 0 ok, 2 when a dataset file is missing or malformed (the report names it) or no
record is left to write (e.g. a `--split` the dataset does not have: the error names its splits).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path

from data_prep.datasets import ADAPTERS, load_adapter
from data_prep.datasets.base import DatasetFormatError, JsonifyContext, RowSkip, TrackRecord
from data_prep.stages.runner import Failure, StageResult, write_report
from llark_jax import errors
from llark_jax.errors import MissingInputError
from llark_jax.io import write_jsonl_atomic


def collect(dataset: str, ctx: JsonifyContext, require_audio: bool = False
            ) -> tuple[list[TrackRecord], list[Failure]]:
    """Run an adapter: records (unique ids, in source order) and the skipped rows."""
    records: dict[str, TrackRecord] = {}
    skipped: list[Failure] = []
    for entry in load_adapter(dataset)(ctx):
        if isinstance(entry, RowSkip):
            skipped.append(Failure(entry.item, "RowSkip", entry.reason, expected=True))
        elif entry.id in records:
            skipped.append(Failure(entry.id, "DuplicateId", "id already used by an earlier row",
                                   expected=True))
        elif require_audio and not Path(entry.audio_path).is_file():
            skipped.append(Failure(entry.id, "MissingAudio", f"{entry.audio_path} not found",
                                   expected=True))
        else:
            records[entry.id] = entry
    return list(records.values()), skipped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep jsonify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=sorted(ADAPTERS))
    parser.add_argument("--root", required=True, type=Path, help="the dataset's top directory")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--split", default=None, help="train|validation|test|all (default all)")
    parser.add_argument("--audio-root", type=Path, help="resolve audio paths here (default root)")
    parser.add_argument("--require-audio", action="store_true",
                        help="skip records whose audio file does not exist")
    parser.add_argument("--seed", type=int, default=0, help="for generated splits (MTG-Jamendo)")
    parser.add_argument("--test-size", type=int, default=1000,
                        help="MTG-Jamendo: tracks in the generated test split")
    parser.add_argument("--workers", type=int, default=1,
                        help="accepted like the other stages; jsonify reads in one process")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.root.is_dir():
        raise MissingInputError(f"--root {args.root}: no such directory")
    started = time.monotonic()
    ctx = JsonifyContext(args.root, args.split, args.audio_root, args.output.parent, args.seed,
                         {"test_size": args.test_size})
    try:
        records, skipped = collect(args.dataset, ctx, args.require_audio)
    except DatasetFormatError as err:
        result = StageResult("jsonify", {}, [Failure(err.path, "DatasetFormatError", str(err),
                                                     expected=False)], {"records": 0}, 0.0)
        print(f"jsonify: {err} -> {write_report(args.output, result)}")
        return errors.fail(str(err))
    splits: dict[str, int] = {}
    for record in records:
        splits[record.split] = splits.get(record.split, 0) + 1
    result = StageResult("jsonify", {}, skipped,
                         {"records": len(records), "skipped": len(skipped), **{
                             f"split.{k}": v for k, v in sorted(splits.items())}},
                         time.monotonic() - started, {"dataset": args.dataset})
    if not records:
        report = write_report(args.output, result)
        return errors.fail(f"no record to write ({len(skipped)} rows skipped, listed in "
                           f"{report}){_splits_hint(args, ctx)}")
    write_jsonl_atomic(args.output, (r.to_json() for r in records), sort_keys=True)
    print(f"jsonify: {result.counts} -> {write_report(args.output, result)}")
    return 0


def _splits_hint(args: argparse.Namespace, ctx: JsonifyContext) -> str:
    """When `--split` kept nothing: the splits the dataset does have."""
    if args.split in (None, "all"):
        return ""
    records, _ = collect(args.dataset, dataclasses.replace(ctx, split=None), args.require_audio)
    present = sorted({record.split for record in records})
    return f"; --split {args.split} matches none of the dataset's splits: {', '.join(present)}"
