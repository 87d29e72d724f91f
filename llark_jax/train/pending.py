"""Train steps dispatched but not yet logged: their metrics stay on the device until a flush.

The loop never fetches a step's metrics right after dispatching it (that would idle the device
while the host writes the row and draws the next batch). `PendingSteps.add` only waits until the
PREVIOUS step has finished (the new one is already queued behind it, so the device stays busy
and at most two steps are in flight) and stamps its wall time. `flush()` fetches every pending
step's metrics in one `jax.device_get`, checks them in order (a NaN/inf loss raises
`TrainingDiverged` for the first bad step, before any later row is written; rows of an
unscored head position raise ValueError as before) and writes one metrics row per step. The loop
flushes every `train.log_every` steps and before every checkpoint save, evaluation end and stop,
so a checkpoint is never written after a step whose loss was not checked.

`step_time` of a row is the wall time between the completions of consecutive steps as the host
sees them: the step's device time plus any time the device waited for the host (the first step
of a process also holds the compile).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable

import jax

from llark_jax.train.inputs import InputInfo
from llark_jax.train.metrics import MetricsWriter
from llark_jax.train.report import TrainingDiverged
from llark_jax.train.step import check_all_scored

LOGGED = ("loss", "lr", "grad_norm")


@dataclasses.dataclass
class _Pending:
    step: int
    metrics: dict[str, jax.Array]
    info: InputInfo
    seconds: float | None = None
    extra: dict[str, float] = dataclasses.field(default_factory=dict)


class PendingSteps:
    """See the module docstring. `diverged(loss, step, info)` builds the NaN stop's message."""

    def __init__(self, writer: MetricsWriter, *, head_positions: int, tokens_per_step: int,
                 diverged: Callable[[float, int, InputInfo], str]):
        self.writer, self.head_positions = writer, head_positions
        self.tokens_per_step, self.diverged = tokens_per_step, diverged
        self._rows: list[_Pending] = []
        self._last_done = time.perf_counter()

    def add(self, step: int, metrics: dict[str, jax.Array], info: InputInfo) -> None:
        """Records dispatched step `step` (1-based) after waiting for the previous one."""
        if self._rows and self._rows[-1].seconds is None:
            self._wait(self._rows[-1])
        self._rows.append(_Pending(step, metrics, info))

    def attach(self, step: int, values: dict[str, float]) -> None:
        """Adds `values` (e.g. the validation loss) to the pending row of `step`."""
        [row] = [r for r in self._rows if r.step == step]
        row.extra.update(values)

    def wait_all(self) -> None:
        """Blocks until every pending step has finished (e.g. to end a profiler trace)."""
        for row in self._rows:
            if row.seconds is None:
                self._wait(row)

    def _wait(self, row: _Pending) -> None:
        jax.block_until_ready(row.metrics["loss"])
        now = time.perf_counter()
        row.seconds, self._last_done = now - self._last_done, now

    def flush(self) -> None:
        """Fetches, checks and writes every pending step (see the module docstring)."""
        self.wait_all()
        rows, self._rows = self._rows, []
        fetched = jax.device_get([row.metrics for row in rows])
        for row, metrics in zip(rows, fetched, strict=True):
            loss = float(metrics["loss"])
            if not math.isfinite(loss):
                raise TrainingDiverged(self.diverged(loss, row.step, row.info))
            check_all_scored(metrics, self.head_positions, row.step)
            values = {**{k: metrics[k] for k in LOGGED}, **row.info.metrics, **row.extra}
            self.writer.write(row.step, values, step_time=row.seconds,
                              tokens=self.tokens_per_step)
