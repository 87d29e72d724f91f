"""Resumable instruction-generation job: metadata JSONL -> append-only result log -> filtered QA.

Every result (success or failure) is one line appended to the log, keyed by (clip id, task, model,
prompt hash). A rerun skips keys that already succeeded and retries failed ones, so killing the job
at any moment loses at most the requests in flight and never duplicates a clip. The filtered QA file
(one line per clip: {clip_id, dataset, task, model, qa}) is rebuilt from the log atomically at the
end of each run, and a report (counts, failures by reason, tokens, estimated cost, filter counts)
is written beside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from data_prep.instruct.client import RequestFailedError
from data_prep.instruct.filters import QAFilter

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

    def __init__(self, path: Path):
        self.path = path
        self.torn_lines = 0

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
                       "error": str(error)[:300], "attempts": 1}
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
                   dataset: str) -> tuple[int, int]:
    """Writes the filtered QA file atomically; returns (clips written, pairs written)."""
    tmp = output.with_name(output.name + ".tmp")
    clips = pairs = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for item in items:
            row = rows.get(item.key)
            if row is None or row["status"] != "ok":
                continue
            kept = qa_filter.apply(row["qa"])
            if kept:
                line = {"clip_id": item.clip_id, "dataset": dataset, "task": row["task"],
                        "model": item.model, "qa": kept}
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
                clips, pairs = clips + 1, pairs + len(kept)
    os.replace(tmp, output)
    return clips, pairs


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
    clips, pairs = write_filtered(items, rows, output, qa_filter, dataset)
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
