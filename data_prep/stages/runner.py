"""Shared machinery for resumable, parallel offline stages (crop, annotate, embed, ...).

A stage is a pure per-item function ``work(item) -> dict`` (JSON-serialisable result) plus a list
of items. `run_cached` runs it over the items and gives every stage the same guarantees:

* **Parallel**: ``workers > 1`` uses a spawn-context process pool; ``initializer`` runs once per
  worker process (load models there, e.g. madmom processors, not once per item). ``workers <= 1``
  runs in-process (same semantics, no pickling), which tests and small runs use. Each worker
  caps its BLAS/OpenMP thread pools at ``cores // workers`` (at least 1), so ``workers`` processes
  do not oversubscribe the cores (madmom on 2 cores, 2 workers, 40 clips: 27.8 s vs 32.8 s
  uncapped).
* **Resumable, crash-safe**: each item's result is written by the worker itself as one JSON file
  in ``cache_dir`` (tmp + ``os.replace``, `llark_jax.io`), so a killed run loses at most the items
  in flight. On a rerun, items whose cache file exists are not recomputed (``counts["cached"]``).
* **Batch continues on bad input**: an exception from ``work`` is recorded as a `Failure`
  (item, error type, reason) and the run goes on. Exceptions that are instances of
  ``expected_errors`` (typed input errors such as `llark_jax.audio.io.AudioError`, or `SkipItem`)
  are ``skipped``; anything else is an ``error`` (a bug or an unforeseen input), reported with
  its traceback tail so it is visible, and makes `StageResult.ok` false. Failures are never
  cached: a rerun retries them.
* **Progress and report**: a tqdm bar per run; `write_report` writes ``<output>.report.json``
  with the counts and every skipped item with its reason.

Typical stage ``main``::

    result = run_cached(files, partial(work, opts), key=str, cache_dir=out.with_suffix(".cache"),
                        workers=args.workers, initializer=load_models, desc="annotate",
                        expected_errors=(AudioError,))
    write_jsonl_atomic(out, result.results.values(), sort_keys=True)  # llark_jax.io
    write_report(out, result)
    return exit_status(result)

Outputs are assembled from the cache in the order of ``items``, so an interrupted-then-resumed
run writes exactly what an uninterrupted run writes.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llark_jax import errors
from llark_jax.io import write_json_atomic


class SkipItem(Exception):
    """Raised by a work function to skip an item on purpose, with ``str(err)`` as the reason."""


@dataclass(frozen=True)
class Failure:
    """One item that produced no result: ``error`` is the exception type, ``reason`` its text."""

    item: str
    error: str
    reason: str
    expected: bool


@dataclass
class StageResult:
    """What `run_cached` returns; ``results`` maps item key -> result in the order of the items."""

    stage: str
    results: dict[str, Any]
    failures: list[Failure]
    counts: dict[str, int]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """False when some item failed with an unexpected (non-input) error."""
        return all(f.expected for f in self.failures)


def exit_status(result: StageResult) -> int:
    """A stage's exit status: 1 when an item failed unexpectedly (a bug: its traceback tail was
    printed); 2 with one `error:` line when every item was skipped as unusable input (nothing
    was produced, so the next stage has nothing to read); else 0."""
    if not result.ok:
        return 1
    if result.counts["items"] and not result.counts["results"]:
        example = "".join(f" (e.g. {f.item}: {f.reason})" for f in result.failures[:1])
        return errors.fail(f"{result.stage}: none of the {result.counts['items']} inputs could be "
                           f"used{example}")
    return 0


# ------------------------------------------------------------------------------- reports


def report_path(output: str | os.PathLike) -> Path:
    """``<output>.report.json`` (for a directory output: ``<dir>.report.json`` beside it)."""
    output = Path(output)
    return output.with_name(output.name + ".report.json")


def write_report(output: str | os.PathLike, result: StageResult) -> Path:
    """Write the stage's summary: counts, seconds, extra fields, every skipped/errored item."""
    path = report_path(output)
    write_json_atomic(
        path,
        {
            "stage": result.stage,
            "output": str(output),
            "ok": result.ok,
            "counts": result.counts,
            "seconds": round(result.seconds, 3),
            "skipped": [asdict(f) for f in result.failures if f.expected],
            "errors": [asdict(f) for f in result.failures if not f.expected],
            **result.extra,
        },
        indent=1,
    )
    return path


# ------------------------------------------------------------------------------- the runner


def options_tag(options: dict[str, Any]) -> str:
    """Short stable hash of a stage's options, to name a cache so changed options never reuse it."""
    return hashlib.sha1(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:10]


def cache_file(cache_dir: Path, key: str) -> Path:
    """Cache location of one item: a hash of the key, so any id is a safe file name."""
    return cache_dir / f"{hashlib.sha1(key.encode()).hexdigest()}.json"


def _run_one(
    work: Callable[[Any], dict],
    key: str,
    item: Any,
    cache_dir: Path,
    expected_errors: tuple[type[BaseException], ...],
) -> Failure | None:
    """Run one item; on success cache ``{"key", "result"}`` atomically, else return a Failure."""
    try:
        result = work(item)
    except expected_errors as err:
        return Failure(key, type(err).__name__, str(err), expected=True)
    except Exception as err:  # noqa: BLE001 - the batch must continue; reported as an error
        tail = "".join(traceback.format_exception(err)[-3:]).strip()
        return Failure(key, type(err).__name__, f"{err} | {tail}", expected=False)
    write_json_atomic(cache_file(cache_dir, key), {"key": key, "result": result}, indent=1)
    return None


def run_cached(
    items: Sequence[Any],
    work: Callable[[Any], dict],
    *,
    key: Callable[[Any], str],
    cache_dir: str | os.PathLike,
    stage: str,
    workers: int = 1,
    initializer: Callable[[], None] | None = None,
    expected_errors: tuple[type[BaseException], ...] = (),
) -> StageResult:
    """Run ``work`` over ``items`` with caching, parallelism and failure capture (module doc).

    ``work`` and ``initializer`` must be picklable (module-level functions or partials of them)
    when ``workers > 1``. Keys must be unique; duplicates are skipped with a reason.
    """
    started = time.monotonic()
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    expected = (SkipItem, *expected_errors)
    duplicates: list[Failure] = []
    keyed: dict[str, Any] = {}
    for item in items:
        k = key(item)
        if k in keyed:
            duplicates.append(Failure(k, "DuplicateKey", f"duplicate key {k!r} for {item!r}", True))
        else:
            keyed[k] = item
    failures: list[Failure] = []
    todo = [k for k in keyed if not cache_file(cache_dir, k).exists()]
    n_cached = len(keyed) - len(todo)
    with tqdm(total=len(todo), desc=stage, unit="item", dynamic_ncols=True) as bar:
        if workers <= 1 or len(todo) <= 1:
            if initializer is not None and todo:
                initializer()
            for k in todo:
                failure = _run_one(work, k, keyed[k], cache_dir, expected)
                failures.extend([failure] if failure else [])
                bar.update(1)
        else:
            failures.extend(_run_pool(todo, keyed, work, cache_dir, expected, workers,
                                      initializer, bar))
    failed = {f.item for f in failures}
    results = {}
    for k in keyed:
        path = cache_file(cache_dir, k)
        if k not in failed and path.exists():
            with open(path, encoding="utf-8") as f:
                results[k] = json.load(f)["result"]
    failures = duplicates + failures
    counts = {
        "items": len(items),
        "processed": len(todo) - len(failed),
        "cached": n_cached,
        "results": len(results),
        "skipped": sum(f.expected for f in failures),
        "errors": sum(not f.expected for f in failures),
    }
    return StageResult(stage, results, failures, counts, time.monotonic() - started)


def _start_worker(threads: int, initializer: Callable[[], None] | None) -> None:
    """Pool worker start: cap the native thread pools, then the stage's own initializer."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    if initializer is not None:
        initializer()


def _run_pool(
    todo: list[str],
    keyed: dict[str, Any],
    work: Callable[[Any], dict],
    cache_dir: Path,
    expected: tuple[type[BaseException], ...],
    workers: int,
    initializer: Callable[[], None] | None,
    bar: tqdm,
) -> list[Failure]:
    """Process-pool branch of `run_cached`; a dead worker fails only the unfinished items."""
    failures: list[Failure] = []
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    with ProcessPoolExecutor(workers, mp_context=ctx,
                             initializer=partial(_start_worker, threads, initializer)) as pool:
        futures = {
            pool.submit(_run_one, work, k, keyed[k], cache_dir, expected): k for k in todo
        }
        for future in as_completed(futures):
            try:
                failure = future.result()
            except BrokenProcessPool as err:
                failure = Failure(futures[future], "WorkerDied", f"worker process died: {err}",
                                  expected=False)
            failures.extend([failure] if failure else [])
            bar.update(1)
    return failures
