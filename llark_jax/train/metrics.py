"""Per-step training metrics: `W/metrics.jsonl`, a tqdm bar and scalar sinks (TensorBoard
event files in `W/tensorboard`, optionally Weights & Biases: `llark_jax.train.tracking`).

Each JSON line holds `step` (1-based count of completed optimizer steps), `loss`, `lr` (the rate
used by that update), `grad_norm` (before clipping), `tokens_per_s` (supervised + context tokens
of the global batch per second), `step_time` (s), `mfu` (model FLOPs utilisation against
`peak_flops_per_device` × devices; 0 when the peak is unknown); on the steps the held-out
set was evaluated (`train.eval_every`) also `val_loss` and `val_tokens`. Sinks get every finite
value, `val_*` as `val/*` and the rest as `train/*`.

On resume the jsonl is rewritten without lines past the restored step, so a killed-and-resumed
run has the same file as an uninterrupted one (apart from timings).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

import tqdm

from llark_jax.io import atomic_write_text


def truncate_metrics(path: Path, last_step: int) -> None:
    """Atomically drops lines with `step > last_step` from a metrics.jsonl (if it exists)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class ScalarSink(Protocol):
    """Where scalars go besides the jsonl: `add(step, {tag: value})`, then `close()`."""

    def add(self, step: int, scalars: dict[str, float]) -> None: ...

    def close(self) -> None: ...


class TensorBoardSink:
    """TensorBoard event files in `directory` (tensorboardX)."""

    def __init__(self, directory: Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(directory))

    def add(self, step: int, scalars: dict[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        self.writer.close()


def scalar_tags(record: dict[str, Any]) -> dict[str, float]:
    """`{tag: value}` of a metrics row's finite values: `val_x` -> `val/x`, else `train/x`."""
    return {(f"val/{k[4:]}" if k.startswith("val_") else f"train/{k}"): v
            for k, v in record.items() if k != "step" and math.isfinite(v)}


class MetricsWriter:
    """Writes one record per step to jsonl, the sinks and the progress bar (sinks and files on
    the primary host only)."""

    def __init__(
        self,
        workdir: Path,
        *,
        start_step: int,
        total_steps: int,
        flops_per_step: float,
        peak_flops_total: float,
        sinks: tuple[ScalarSink, ...] = (),
        is_primary: bool = True,
    ):
        self.path = workdir / "metrics.jsonl"
        self.flops_per_step = flops_per_step
        self.peak_flops_total = peak_flops_total
        self.is_primary = is_primary
        self.sinks = sinks if is_primary else ()
        if is_primary:
            truncate_metrics(self.path, start_step)
            self.file = self.path.open("a")
        self.bar = tqdm.tqdm(total=total_steps, initial=start_step, disable=not is_primary,
                             desc="train", dynamic_ncols=True)

    def write(self, step: int, raw: dict[str, float], *, step_time: float, tokens: int) -> dict:
        """Records completed step `step`; returns the full record."""
        record: dict[str, Any] = {"step": step}
        record.update({k: float(v) for k, v in raw.items()})
        record["step_time"] = step_time
        record["tokens_per_s"] = tokens / step_time if step_time > 0 else 0.0
        achieved = self.flops_per_step / step_time if step_time > 0 else 0.0
        record["mfu"] = achieved / self.peak_flops_total if self.peak_flops_total > 0 else 0.0
        if self.is_primary:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
            tags = scalar_tags(record)
            for sink in self.sinks:
                sink.add(step, tags)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record.get('lr', 0):.2e}")
        return record

    def close(self) -> None:
        self.bar.close()
        if self.is_primary:
            self.file.close()
        for sink in self.sinks:
            sink.close()
