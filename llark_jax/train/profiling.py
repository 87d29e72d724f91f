"""`train.profile_steps = "N:M"` (`train --profile N:M`): a JAX profiler trace of steps N..M.

The trace starts before step N is dispatched and stops once step M has finished on the device,
in `W/profile/plugins/profile/<time>/` (`*.xplane.pb`; open with TensorBoard's profile plugin or
XProf: `tensorboard --logdir W/profile`). Steps count from 1 like the metrics rows; a resumed run
traces the part of N..M it still runs. Each step is a `jax.profiler.StepTraceAnnotation`
("train", step_num=N), so the viewers split the trace by step.
"""

from __future__ import annotations

import logging
from pathlib import Path

import jax

from llark_jax.config import ConfigError

log = logging.getLogger("llark_jax.train")
PROFILE_DIR = "profile"


def parse_steps(text: str) -> tuple[int, int] | None:
    """"N:M" -> (N, M) with 1 <= N <= M; "" -> None; anything else a `ConfigError`."""
    text = (text or "").strip()
    if not text:
        return None
    first, sep, last = text.partition(":")
    try:
        window = (int(first), int(last if sep else first))
    except ValueError:
        window = (0, 0)
    if not 1 <= window[0] <= window[1]:
        raise ConfigError(f"train.profile_steps={text!r}: expected N:M with 1 <= N <= M "
                          "(steps count from 1), e.g. 3:5")
    return window


class StepProfiler:
    """Starts and stops the trace around the configured steps (no-op when none are)."""

    def __init__(self, steps: str, workdir: Path):
        self.window = parse_steps(steps)
        self.directory = workdir / PROFILE_DIR
        self.active = False

    def annotation(self, step: int):
        """Context for dispatching step `step` (1-based): starts the trace at step N."""
        if self.window and step == self.window[0]:
            jax.profiler.start_trace(str(self.directory))
            self.active = True
            log.info("profiling steps %d..%d into %s", *self.window, self.directory)
        return jax.profiler.StepTraceAnnotation("train", step_num=step)

    def finished(self, step: int, wait) -> None:
        """After step `step` was dispatched: at step M, `wait()` for it, then stop the trace."""
        if self.active and step >= self.window[1]:
            wait()
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
