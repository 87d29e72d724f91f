"""Per-step training metrics: `W/metrics.jsonl`, TensorBoard event files and a tqdm bar.

Each JSON line holds `step` (1-based count of completed optimizer steps), `loss`, `lr` (the rate
used by that update), `grad_norm` (before clipping), `tokens_per_s` (supervised + context tokens
of the global batch per second), `step_time` (s), `mfu` (model FLOPs utilisation against
`peak_flops_per_device` × devices; 0 when the peak is unknown).

On resume the jsonl is rewritten without lines past the restored step, so a killed-and-resumed
run has the same file as an uninterrupted one (apart from timings).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import tqdm

from llark_jax.io import atomic_write_text


def truncate_metrics(path: Path, last_step: int) -> None:
    """Atomically drops lines with `step > last_step` from a metrics.jsonl (if it exists)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line)["step"] <= last_step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


class MetricsWriter:
    """Writes one record per step to jsonl, TensorBoard and the progress bar."""

    def __init__(
        self,
        workdir: Path,
        *,
        start_step: int,
        total_steps: int,
        flops_per_step: float,
        peak_flops_total: float,
        tensorboard: bool = True,
        is_primary: bool = True,
    ):
        self.path = workdir / "metrics.jsonl"
        self.flops_per_step = flops_per_step
        self.peak_flops_total = peak_flops_total
        self.is_primary = is_primary
        self.tb = None
        if is_primary:
            truncate_metrics(self.path, start_step)
            self.file = self.path.open("a")
            if tensorboard:
                from tensorboardX import SummaryWriter

                self.tb = SummaryWriter(str(workdir / "tensorboard"))
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
            if self.tb is not None:
                for key, value in record.items():
                    if key != "step" and math.isfinite(value):
                        self.tb.add_scalar(f"train/{key}", value, step)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record.get('lr', 0):.2e}")
        return record

    def close(self) -> None:
        self.bar.close()
        if self.is_primary:
            self.file.close()
            if self.tb is not None:
                self.tb.close()
