"""`python -m data_prep write`: clip metadata + QA pairs + embeddings -> TFRecord shards.

Joins three inputs by clip id (the schema lives in `llark_jax.data.records`):

- `--annotations A.jsonl`: one clip per line with `clip_id` (or `id`); optional `dataset`, `split`;
  every field is kept as the record's `metadata`. Clips whose `split` differs from `--split` are
  left out (clips without a `split` belong to every split).
- `--qa QA.jsonl [...]`: lines (e.g. `data_prep instruct` output) naming a clip (`clip_id` or
  `id`) and either one pair (`question`, `answer`, optional `task`) or a list of pairs under `qa`
  or `response`, or `data_prep jsonify` records whose pairs are in `metadata.qa` (MusicQA, Music
  Instruct, LP-MusicCaps-MSD; the same file can serve as `--annotations`).
- `--embeddings DIR`: `<clip_id>.npy` (float32 [T, D]) and optionally `<clip_id>.json` with
  `{"encoder": NAME}`.

Writes `{split}-{encoder}-NNNNN-of-MMMMM.tfrecord` shards (tmp file + rename), an index
`{split}-{encoder}-index.json` (counts per dataset/task, records per shard) and a report
`{split}-{encoder}-report.json` listing every clip not written and why. Re-running with the same
inputs skips shards that the index says are complete.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from data_prep.records import write_records
from llark_jax.data.records import EMBEDDING_DTYPES
from llark_jax.errors import MissingInputError, UserError


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep write", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=Path, required=True)
    parser.add_argument("--qa", type=Path, nargs="+", required=True, help="QA JSONL file(s)")
    parser.add_argument("--embeddings", type=Path, required=True)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--split", default="train")
    parser.add_argument("--shard-size", type=int, default=256, help="records per shard")
    parser.add_argument("--encoder", default=None, help="default: the sidecars' encoder name")
    parser.add_argument("--embedding-dtype", default="bfloat16", choices=list(EMBEDDING_DTYPES))
    parser.add_argument("--dataset", default="unknown", help="for rows without a dataset field")
    args = parser.parse_args(argv)
    for flag, path in [("--annotations", args.annotations), *(("--qa", q) for q in args.qa)]:
        if not path.is_file():
            raise MissingInputError(f"{flag} {path}: no such file")
    if not args.embeddings.is_dir():
        raise MissingInputError(f"--embeddings {args.embeddings}: no such directory")
    if args.shard_size < 1:
        raise UserError(f"--shard-size {args.shard_size}: must be at least 1")
    index = write_records(args.annotations, args.qa, args.embeddings, args.output_dir, args.split,
                          args.shard_size, args.encoder, args.embedding_dtype, args.dataset)
    summary = {k: index[k] for k in ("split", "encoder", "records", "qa_pairs", "tasks")}
    summary["shards"] = len(index["shards"])
    summary["not_written"] = index["not_written"]
    print(json.dumps(summary))
    return 0
