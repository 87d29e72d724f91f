"""Held-out validation loss every `train.eval_every` steps (`train.eval_batches` batches).

The batches come from `llark_jax.train.inputs.make_eval_batches` (the same pipeline as training
over `data.eval_path`, or held-out synthetic batches) and are the SAME batches at every
evaluation: the iterator is reset to its initial state first, so the curve compares like with
like. They are prefetched onto the mesh like training batches and scored by the setup's jitted
eval step (`llark_jax.train.step.make_eval_step`: the train step's loss function, no gradient).

`val_loss` = sum of the token losses / `val_tokens`, the number of supervised tokens over all
evaluated batches (all hosts): the mean next-token loss of the held-out answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

from llark_jax.data.prefetch import Prefetcher
from llark_jax.train.step import check_all_scored


class Validator:
    """`run(state) -> {"val_loss", "val_tokens"}` over `n_batches` fixed held-out batches."""

    def __init__(self, batches: Any, eval_step: Callable, put: Callable, *, n_batches: int,
                 head_positions: int, depth: int = 2):
        if n_batches < 1:
            raise ValueError(f"train.eval_batches must be >= 1, got {n_batches}")
        self.batches, self.eval_step, self.put = batches, eval_step, put
        self.n_batches, self.head_positions, self.depth = n_batches, head_positions, depth
        self.initial = batches.get_state()

    def run(self, state: dict[str, Any], step: int) -> dict[str, float]:
        """Validation loss of the params of `state` (after step `step`)."""
        self.batches.set_state(self.initial)
        prefetch = Prefetcher(self.batches, self.put, depth=self.depth, limit=self.n_batches)
        try:
            outputs = [self.eval_step(state["params"], state["rest"], item.batch)
                       for item in prefetch]
        finally:
            prefetch.close()
        total_loss, total_tokens = 0.0, 0
        for out in jax.device_get(outputs):
            check_all_scored(out, self.head_positions, step)
            tokens = int(out["supervised_tokens"])
            total_loss += float(out["loss"]) * tokens
            total_tokens += tokens
        loss = total_loss / total_tokens if total_tokens else float("nan")
        return {"val_loss": loss, "val_tokens": float(total_tokens)}

    def close(self) -> None:
        if hasattr(self.batches, "close"):
            self.batches.close()
