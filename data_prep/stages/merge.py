"""`python -m data_prep merge --annotations A.jsonl --output metadata.jsonl`: clip metadata.

Turns the annotate stage's records (madmom fields, with the dataset's own labels carried from the
jsonify records under `metadata`) into the clip metadata `instruct` and `write` read: one line per
clip, `clip_id` first (the record's `id`), then the annotation's fields, then the dataset's labels.
The dataset's labels win: where the dataset knows a field (tempo, key, chords, instruments, ...),
its value is kept and madmom's estimate of the same field is not. madmom's `key` and `chords` are
always kept under `key_madmom` and `chords_madmom` (so they can be scored against the truth), and
stay `key`/`chords` only for clips whose dataset gives none.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from llark_jax.errors import MissingInputError, UserError
from llark_jax.io import read_jsonl, require_fields, write_jsonl_atomic

MADMOM_RENAMED = ("key", "chords")  # madmom's estimates also kept as `<field>_madmom`
ANNOTATION_CONTENT = ("tempo_in_beats_per_minute_madmom", "metadata")  # a row has one or both
ANNOTATE_RECORDS = "annotate records from `data_prep annotate`"


def merge_record(annotation: dict[str, Any]) -> dict[str, Any]:
    """One annotate record -> one clip metadata row (module docstring)."""
    row = dict(annotation)
    truth = row.pop("metadata", None) or {}
    clip_id = row.pop("id")
    madmom = {field: row.pop(field) for field in MADMOM_RENAMED if field in row}
    row["key_madmom"], row["chords_madmom"] = madmom.get("key"), madmom.get("chords", [])
    fallback = {field: value for field, value in madmom.items() if field not in truth}
    return {"clip_id": clip_id, **row, **fallback, **truth}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep merge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=Path, required=True,
                        help="annotate output (with --records, so it carries `metadata`)")
    parser.add_argument("--output", type=Path, required=True, help="clip metadata JSONL")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.annotations.is_file():
        raise MissingInputError(f"--annotations {args.annotations}: no such file")
    annotations = read_jsonl(args.annotations)
    if not annotations:
        raise UserError(f"--annotations {args.annotations}: no record to merge")
    require_fields(annotations, ("id",), args.annotations, ANNOTATE_RECORDS)
    for line_no, annotation in enumerate(annotations, 1):
        if not any(field in annotation for field in ANNOTATION_CONTENT):
            raise UserError(f"{args.annotations}: row {line_no} has neither madmom fields nor "
                            f"dataset labels (`metadata`): expected {ANNOTATE_RECORDS}")
    rows = [merge_record(annotation) for annotation in annotations]
    write_jsonl_atomic(args.output, rows)
    with_truth = sum(bool(annotation.get("metadata")) for annotation in annotations)
    print(json.dumps({"clips": len(rows), "with_dataset_labels": with_truth,
                      "output": str(args.output)}))
    return 0
