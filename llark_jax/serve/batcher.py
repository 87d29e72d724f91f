"""Micro-batching: concurrent requests are gathered for a short window and generated together.

One worker thread owns the accelerator. It blocks for the first queued request, then keeps
collecting until `max_batch` requests are queued or `max_wait_s` has passed since the first one,
groups the collected requests by batch key (same sampling settings and audio shape, which is what
one compiled batch needs) and runs each group in chunks of at most `max_batch` rows. Requests
that arrive while a batch runs wait for the next window (micro-batching, not continuous batching:
a batch runs until its longest answer ends).

A request whose caller gave up (timeout, disconnect) is cancelled; if its batch has not started,
it is dropped before generation. `close()` stops accepting work, finishes everything already
queued and joins the worker (graceful shutdown).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Any

log = logging.getLogger("llark_jax.serve")


class BatcherClosed(RuntimeError):
    """The server is shutting down and takes no new work."""


class QueueFull(RuntimeError):
    """More requests are waiting than `max_queue`."""


class MicroBatcher:
    """Runs `run_batch(items) -> results` (items share one `key(item)`) on a worker thread."""

    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], Sequence[Any]],
        key: Callable[[Any], Hashable],
        *,
        max_batch: int,
        max_wait_s: float = 0.02,
        max_queue: int = 256,
    ):
        self.run_batch = run_batch
        self.key = key
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.batches_run = 0
        self.rows_run = 0
        self._queue: queue.Queue = queue.Queue()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name="llark-batcher", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def check_capacity(self) -> None:
        """Raises `BatcherClosed` or `QueueFull` when `submit` would (callers run it before
        expensive preparation such as decoding audio)."""
        if self._closed:
            raise BatcherClosed("the server is shutting down")
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull(f"{self._queue.qsize()} requests are already waiting")

    async def submit(self, item: Any) -> Any:
        """Queues `item` and waits for its result (cancel the await to give up)."""
        self.check_capacity()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._queue.put((item, future))
        return await asyncio.wrap_future(future)

    def _collect(self) -> list | None:
        first = self._queue.get()
        if first is None:
            return None
        window = [first]
        deadline = time.monotonic() + self.max_wait_s
        while len(window) < self.max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                entry = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if entry is None:
                self._queue.put(None)  # handled after this window
                break
            window.append(entry)
        return window

    def _work(self) -> None:
        while (window := self._collect()) is not None:
            live = [(item, f) for item, f in window if f.set_running_or_notify_cancel()]
            groups: dict[Hashable, list] = {}
            for item, future in live:
                groups.setdefault(self.key(item), []).append((item, future))
            for entries in groups.values():
                for start in range(0, len(entries), self.max_batch):
                    self._run(entries[start : start + self.max_batch])

    def _run(self, entries: list) -> None:
        try:
            results = self.run_batch([item for item, _ in entries])
        except Exception as err:  # noqa: BLE001 - delivered to every waiting request
            log.exception("batch of %d failed", len(entries))
            for _, future in entries:
                future.set_exception(err)
            return
        self.batches_run += 1
        self.rows_run += len(entries)
        for (_, future), result in zip(entries, results, strict=True):
            future.set_result(result)

    def close(self, timeout_s: float | None = None) -> None:
        """Stops accepting work, lets queued work finish, joins the worker."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout_s)
