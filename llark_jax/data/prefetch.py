"""Bounded background prefetch: the next batches are built and put on the devices while the
current step runs.

`Prefetcher(batches, put, snapshot, depth, limit)` runs one producer thread that repeatedly takes
`next(batches)` (host-local numpy), calls `snapshot()` at once (e.g. the iterator's
`get_state()` after that batch: what a checkpoint must save when this batch is the last one
trained), applies `put` (e.g. `jax.make_array_from_process_local_data` onto the mesh; the
host->device copy starts here, off the critical path) and queues `Prefetched(batch, info)`. At
most `depth` items wait in the queue, so the producer is never more than `depth` batches (plus
the one it is building) ahead of the consumer, and it stops after `limit` batches: a run of N
steps reads exactly N batches from the iterator. `depth = 0` does the same work synchronously
in `next()` (no thread), the reference the host-loop benchmark compares against.

An exception of the producer (a bad shard, `NoUsableDataError`) is raised by the consumer's
`next()` at the position it happened, so errors surface as they did without prefetch.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any


@dataclasses.dataclass(frozen=True)
class Prefetched:
    """One batch as `put` returned it and `snapshot()` taken right after it was drawn."""

    batch: Any
    info: Any


_DONE = object()


class Prefetcher(Iterator[Prefetched]):
    """Iterator of `Prefetched` items; see the module docstring. Call `close()` when done."""

    def __init__(self, batches: Iterator, put: Callable[[Any], Any],
                 snapshot: Callable[[], Any] = lambda: None, *, depth: int = 2,
                 limit: int | None = None):
        if depth < 0:
            raise ValueError(f"prefetch depth must be >= 0, got {depth}")
        self._batches, self._put, self._snapshot = batches, put, snapshot
        self._left = limit
        self.depth = depth
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if depth > 0:
            self._thread = threading.Thread(target=self._produce, name="prefetch", daemon=True)
            self._thread.start()

    def _draw(self) -> Prefetched | object:
        if self._left is not None:
            if self._left <= 0:
                return _DONE
            self._left -= 1
        host_batch = next(self._batches)
        info = self._snapshot()
        return Prefetched(self._put(host_batch), info)

    def _produce(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._draw()
            except BaseException as err:  # noqa: BLE001 - handed to the consumer
                item = err
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if item is _DONE or isinstance(item, BaseException):
                return

    def __next__(self) -> Prefetched:
        if self._thread is None:
            item = self._draw()
        else:
            item = self._queue.get()
            if item is _DONE or isinstance(item, BaseException):
                self._queue.put(item)  # later calls see the same end
        if item is _DONE:
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stops the producer (a batch it is building is finished and dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
