"""`python -m data_prep instruct`: clip metadata JSONL -> filtered question/answer JSONL.

    python -m data_prep instruct --metadata clips.jsonl --task mir --dataset fma --output qa.jsonl

Backends: `openai` (needs OPENAI_API_KEY; any compatible server via --base-url/OPENAI_BASE_URL),
`offline` (deterministic templates, no key), `provided` (MusicCaps / YT8M-MusicTextClips captions).
`auto` picks `provided` for those caption datasets, else `openai` when OPENAI_API_KEY is set, else
`offline`.

The job is resumable: every result (success or failure) is one line appended to a log (default
OUTPUT.responses.jsonl), keyed by (clip id, task, model, prompt hash). A rerun skips keys that
already succeeded and retries failed ones, so killing the job at any moment loses at most the
requests in flight and never duplicates a clip. The filtered QA file (one line per clip:
{clip_id, dataset, task, model, qa}) is rebuilt from the log atomically at the end of each run,
and a report (counts, failures by reason, tokens, estimated cost, filter counts) is written
beside it. Prompts, backends and filters are library code in `data_prep.instruct`; the chat
client is `llark_jax.llm.client`.

The API key never reaches a file: every string of every row, QA line and report field is passed
through `llark_jax.llm.redact.Redactor` (the key raw, URL-encoded, JSON-escaped or base64 becomes
`[REDACTED]`) before it is written, so an endpoint that echoes the key back leaks nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from data_prep.instruct.backends import OfflineBackend, OpenAIBackend, ProvidedCaptionBackend
from data_prep.instruct.captions import PROVIDED_CAPTION_FIELDS
from data_prep.instruct.filters import MODES, QAFilter
from data_prep.instruct.prompts import REASONING_TRACK_CAP, TASKS
from llark_jax.errors import MissingInputError, UserError
from llark_jax.io import check_output_path, write_json_atomic, write_jsonl_atomic
from llark_jax.llm.client import API_KEY_ENV, ChatClient, RequestFailedError, RetryPolicy
from llark_jax.llm.redact import Redactor

# Uniform records carry `clip_id`; the others are the raw datasets' id columns (spec 5.1).
ID_FIELDS = ("clip_id", "uri", "id", "example_id", "track.id", "ytid", "video_id")
# USD per million (prompt, completion) tokens, OpenAI list prices when each model was current;
# an estimate only (unknown models report no cost).
PRICE_PER_MTOK = {
    "gpt-4": (30.0, 60.0),
    "gpt-4-32k": (60.0, 120.0),
    "gpt-3.5-turbo": (1.5, 2.0),
    "gpt-3.5-turbo-16k": (3.0, 4.0),
    "gpt-4o": (2.5, 10.0),
    "gpt-4o-mini": (0.15, 0.6),
}


class Backend(Protocol):
    name: str

    def plan(self, clip_id: str, record: dict[str, Any]) -> tuple[str, str]: ...

    async def generate(self, clip_id: str, record: dict[str, Any], model: str) -> dict: ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class WorkItem:
    clip_id: str
    record: dict[str, Any]
    model: str
    prompt_hash: str
    key: str


def result_key(clip_id: str, task: str, model: str, prompt_hash: str) -> str:
    return json.dumps([clip_id, task, model, prompt_hash])


def read_metadata(path: Path) -> tuple[list[tuple[str, dict[str, Any]]], Counter]:
    """(clip id, record) pairs in file order, and counts of skipped lines by problem."""
    records, problems, seen = [], Counter(), set()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                problems["invalid_json"] += 1
                continue
            ids = [record[k] for k in ID_FIELDS if isinstance(record, dict) and k in record]
            clip_id = ids[0] if ids else None
            if clip_id is None:
                problems["missing_id"] += 1
            elif str(clip_id) in seen:
                problems["duplicate_id"] += 1
            else:
                seen.add(str(clip_id))
                records.append((str(clip_id), record))
    return records, problems


def select_sample(records: list, max_samples: int | None, seed: int) -> list:
    """A seeded random subset of `max_samples` records (all when fewer), in file order."""
    if max_samples is None or len(records) <= max_samples:
        return records
    chosen = sorted(random.Random(seed).sample(range(len(records)), max_samples))
    return [records[i] for i in chosen]


class ResultLog:
    """Append-only JSONL of result rows; one `os.write` per row, torn last lines tolerated."""

    def __init__(self, path: Path, redact: Redactor | None = None):
        self.path = path
        self.torn_lines = 0
        self.redact = redact or Redactor.from_env(API_KEY_ENV)

    def read(self) -> dict[str, dict[str, Any]]:
        """key -> latest row, where a succeeded row is never replaced by a later failure."""
        rows: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return rows
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    self.torn_lines += 1
                    continue
                previous = rows.get(row["key"])
                if previous is None or previous["status"] != "ok":
                    rows[row["key"]] = row
        return rows

    def __enter__(self) -> ResultLog:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if os.fstat(self._fd).st_size:
            with open(self.path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    os.write(self._fd, b"\n")  # a killed run left half a line: start afresh
        return self

    def append(self, row: dict[str, Any]) -> None:
        row = self.redact.json(row)
        os.write(self._fd, (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))

    def __exit__(self, *exc: object) -> None:
        os.close(self._fd)


def plan_items(records: list, task: str, backend: Backend) -> list[WorkItem]:
    items = []
    for clip_id, record in records:
        model, prompt_hash = backend.plan(clip_id, record)
        items.append(WorkItem(clip_id, record, model, prompt_hash,
                              result_key(clip_id, task, model, prompt_hash)))
    return items


async def _run_pending(pending, backend, task, dataset, log, concurrency, stats) -> None:
    queue: asyncio.Queue[WorkItem] = asyncio.Queue()
    for item in pending:
        queue.put_nowait(item)
    progress = tqdm(total=len(pending), desc=f"instruct {task}/{dataset}", unit="clip")

    async def worker() -> None:
        while not queue.empty():
            item = queue.get_nowait()
            base = {"key": item.key, "clip_id": item.clip_id, "dataset": dataset, "task": task,
                    "model": item.model, "prompt_hash": item.prompt_hash}
            try:
                out = await backend.generate(item.clip_id, item.record, item.model)
                row = {**base, "status": "ok", **out}
                stats["succeeded"] += 1
            except RequestFailedError as error:
                row = {**base, "status": "failed", "reason": error.reason,
                       "error": error.message, "attempts": error.attempts, "usage": error.usage,
                       "retried": error.retried}
            except Exception as error:  # noqa: BLE001 - a bad record must not stop the batch
                row = {**base, "status": "failed", "reason": type(error).__name__,
                       "error": log.redact(str(error))[:300], "attempts": 1}
            if row["status"] == "failed":
                stats["failed"] += 1
                stats["failures_by_reason"][row["reason"]] += 1
            stats["tokens"].update(row.get("usage") or {})
            stats["retries_by_reason"].update(row.get("retried") or {})
            stats["attempts_total"] += row.get("attempts", 1)
            stats["attempts_max"] = max(stats["attempts_max"], row.get("attempts", 1))
            log.append(row)
            progress.update(1)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    progress.close()


def estimate_cost(tokens_by_model: dict[str, Counter]) -> float | None:
    total = 0.0
    for model, tokens in tokens_by_model.items():
        if model not in PRICE_PER_MTOK:
            return None
        price_in, price_out = PRICE_PER_MTOK[model]
        total += tokens["prompt_tokens"] * price_in / 1e6
        total += tokens["completion_tokens"] * price_out / 1e6
    return round(total, 4)


def write_filtered(items: list[WorkItem], rows: dict, output: Path, qa_filter: QAFilter,
                   dataset: str, redact: Redactor | None = None) -> tuple[int, int]:
    """Writes the filtered QA file atomically; returns (clips written, pairs written)."""
    lines = []
    for item in items:
        row = rows.get(item.key)
        if row is None or row["status"] != "ok":
            continue
        kept = qa_filter.apply(row["qa"])
        if kept:
            lines.append({"clip_id": item.clip_id, "dataset": dataset, "task": row["task"],
                          "model": item.model, "qa": kept})
    lines = (redact or Redactor.from_env(API_KEY_ENV)).json(lines)
    return write_jsonl_atomic(output, lines), sum(len(line["qa"]) for line in lines)


def run_job(records: list, backend: Backend, *, task: str, dataset: str, output: Path,
            log_path: Path, concurrency: int, filter_mode: str = "word") -> dict[str, Any]:
    """Generates QA for `records` (skipping completed keys), then writes filtered QA + report."""
    log = ResultLog(log_path)
    items = plan_items(records, task, backend)
    done = log.read()
    pending = [item for item in items if done.get(item.key, {}).get("status") != "ok"]
    stats: dict[str, Any] = {"succeeded": 0, "failed": 0, "failures_by_reason": Counter(),
                             "tokens": Counter(), "retries_by_reason": Counter(),
                             "attempts_total": 0, "attempts_max": 0}

    async def go() -> None:
        try:
            with log:
                await _run_pending(pending, backend, task, dataset, log, concurrency, stats)
        finally:
            await backend.close()

    asyncio.run(go())
    rows = log.read()
    tokens_by_model: dict[str, Counter] = {}
    for item in items:
        usage = (rows.get(item.key) or {}).get("usage") or {}
        tokens_by_model.setdefault(item.model, Counter()).update(usage)
    qa_filter = QAFilter(filter_mode)
    output.parent.mkdir(parents=True, exist_ok=True)
    clips, pairs = write_filtered(items, rows, output, qa_filter, dataset, log.redact)
    outstanding = Counter(rows[i.key]["reason"] for i in items
                          if i.key in rows and rows[i.key]["status"] != "ok")
    return {
        "task": task, "dataset": dataset, "backend": backend.name,
        "selected": len(items), "already_done": len(items) - len(pending),
        "attempted": len(pending), "succeeded": stats["succeeded"], "failed": stats["failed"],
        "failures_by_reason": dict(stats["failures_by_reason"]),
        "retries_by_reason": dict(stats["retries_by_reason"]),
        "outstanding_failures": dict(outstanding),
        "requests": {"total": stats["attempts_total"], "max_per_clip": stats["attempts_max"]},
        "tokens_this_run": dict(stats["tokens"]),
        "estimated_cost_usd_all_runs": estimate_cost(tokens_by_model),
        "log_torn_lines": log.torn_lines,
        "filter": {"mode": filter_mode, **qa_filter.stats.as_dict()},
        "clips_written": clips, "pairs_written": pairs,
        "output": str(output), "log": str(log_path),
    }


# ------------------------------------------------------------------------------- the stage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep instruct", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metadata", type=Path, required=True, help="clip metadata JSONL")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--dataset", required=True, help="fma, mtg-jamendo, musicnet, demo, ...")
    p.add_argument("--output", type=Path, required=True, help="filtered QA JSONL (one clip a line)")
    p.add_argument("--backend", choices=("auto", "openai", "offline", "provided"), default="auto")
    p.add_argument("--log", type=Path, help="result log (default OUTPUT.responses.jsonl)")
    p.add_argument("--model", help="override the paper's per-task model choice")
    p.add_argument("--base-url", help="OpenAI-compatible server (default $OPENAI_BASE_URL)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-samples", type=int,
                   help=f"seeded subsample size (reasoning default {REASONING_TRACK_CAP})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--filter-mode", choices=MODES, default="word")
    p.add_argument("--temperature", type=float, help="sampling temperature (API default if unset)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-attempts", type=int, default=6)
    p.add_argument("--backoff-base", type=float, default=1.0, help="seconds")
    p.add_argument("--backoff-max", type=float, default=60.0, help="seconds")
    return p


def choose_backend(args: argparse.Namespace) -> str:
    if args.backend != "auto":
        return args.backend
    if args.task == "captioning" and args.dataset in PROVIDED_CAPTION_FIELDS:
        return "provided"
    return "openai" if os.environ.get(API_KEY_ENV) else "offline"


def make_backend(args: argparse.Namespace, kind: str):
    if kind == "offline":
        return OfflineBackend(args.task, args.seed)
    if kind == "provided":
        if args.dataset not in PROVIDED_CAPTION_FIELDS:
            raise UserError(f"--backend provided needs one of {sorted(PROVIDED_CAPTION_FIELDS)}")
        return ProvidedCaptionBackend(args.dataset, args.seed)
    policy = RetryPolicy(max_attempts=args.max_attempts, timeout_s=args.timeout,
                         backoff_base_s=args.backoff_base, backoff_max_s=args.backoff_max)
    client = ChatClient(base_url=args.base_url, policy=policy, concurrency=args.concurrency,
                        seed=args.seed)
    options = {} if args.temperature is None else {"temperature": args.temperature}
    return OpenAIBackend(args.task, args.dataset, client, args.model, args.seed, **options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.metadata.is_file():
        raise MissingInputError(f"--metadata {args.metadata}: no such file")
    check_output_path(args.output, "--output", folder=False)
    records, problems = read_metadata(args.metadata)
    if not records and not problems:
        raise MissingInputError(f"--metadata {args.metadata}: no records (empty file)")
    if not records:
        raise UserError(f"--metadata {args.metadata}: no usable clip record ("
                        f"{', '.join(f'{k}: {n}' for k, n in problems.items())}); expected the "
                        f"clip metadata JSONL of `python -m data_prep merge`")
    kind = choose_backend(args)
    if args.backend == "auto" and kind == "offline":
        print(f"{API_KEY_ENV} is not set: using the offline template backend", file=sys.stderr)
    backend = make_backend(args, kind)
    cap = args.max_samples
    if cap is None and args.task == "reasoning":
        cap = REASONING_TRACK_CAP
    selected = select_sample(records, cap, args.seed)
    log_path = args.log or args.output.with_name(args.output.name + ".responses.jsonl")
    report = run_job(selected, backend, task=args.task, dataset=args.dataset, output=args.output,
                     log_path=log_path, concurrency=args.concurrency, filter_mode=args.filter_mode)
    report = {"records_read": len(records), "input_problems": dict(problems), **report}
    write_json_atomic(args.output.with_name(args.output.name + ".report.json"),
                      Redactor.from_env(API_KEY_ENV).json(report))
    print(json.dumps({k: report[k] for k in ("selected", "already_done", "succeeded", "failed",
                                              "outstanding_failures", "clips_written",
                                              "pairs_written", "estimated_cost_usd_all_runs")}))
    if report["outstanding_failures"] or problems:
        failed = ", ".join(f"{k}: {n}" for k, n in {**report["outstanding_failures"],
                                                    **problems}.items())
        print(f"error: not every clip got question/answer pairs ({failed}); a rerun retries the "
              f"failures; details in {args.output}.report.json", file=sys.stderr)
        return 1
    return 0
