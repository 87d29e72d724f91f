"""Shared benchmark plumbing: interleaved timing, thread setup, JSON results.

Timing on a shared machine: the candidates of one comparison run alternately, round after round
(`interleaved`), so background load hits both alike, and each reports the best (minimum) and the
median seconds. Ratios use the minimum (the closest to what the machine can do unloaded); the
medians are printed beside them.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the torch reference lives with the parity tests


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


def setup_torch():
    """torch with one intra-op thread per core (the reference setting of the benchmarks)."""
    import torch

    torch.set_num_threads(cpu_count())
    return torch


def interleaved(candidates: dict[str, Callable[[], object]], rounds: int,
                warmup: int = 1, deadline: float | None = None) -> dict[str, dict[str, float]]:
    """Seconds per call of each candidate: {name: {"min", "median", "runs"}}.

    Every callable must block until its result exists (call `block_until_ready` / `.item()`).
    `deadline` (a `time.perf_counter()` value): no new round starts after it (one always runs).
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_index in range(rounds):
        if round_index and deadline is not None and time.perf_counter() > deadline:
            break
        for name, fn in candidates.items():
            began = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - began)
    return {name: {"min": min(t), "median": statistics.median(t), "runs": len(t)}
            for name, t in times.items()}


def emit(result: dict, json_path: str | None) -> None:
    """Prints the result and writes it to `json_path` atomically (when given)."""
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if json_path:
        from llark_jax.io import atomic_write_text

        atomic_write_text(json_path, text)
