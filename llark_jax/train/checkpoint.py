"""Orbax checkpoints of the training state, the input-pipeline state and the config.

Layout: `W/checkpoints/<step>/{state,data,config}` written by an async `ocp.CheckpointManager`
keeping the newest `keep` steps. Orbax only lists committed steps, so a save interrupted by a
kill is invisible. A committed step that fails to restore (files truncated or removed) is
renamed to `<step>.corrupt` with a warning and the next older step is tried.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class NoUsableCheckpointError(RuntimeError):
    """Every committed checkpoint in the directory failed to restore."""


class TrainCheckpointer:
    """Saves/restores `(train_state, input_state, config_json)` by step."""

    def __init__(self, directory: str | Path, *, keep: int, async_save: bool = True):
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.async_save = async_save
        self.manager = self._open()

    def _open(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(
            max_to_keep=self.keep, enable_async_checkpointing=self.async_save, create=True
        )
        return ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "data", "config")
        )

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, input_state: dict, config_json: str) -> None:
        """Starts an (async) save of `state` at `step`; returns once arrays are copied off."""
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(input_state),
                config=ocp.args.JsonSave(json.loads(config_json)),
            ),
            force=True,
        )

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """Restores the newest usable step into `abstract_state`'s shapes/shardings.

        Returns `(step, state, input_state)`, or None when there is no checkpoint. Corrupt steps
        are moved aside (warning) and older ones tried; raises `NoUsableCheckpointError` when
        checkpoints exist but none restores.
        """
        steps = self.steps()
        if not steps:
            return None
        for step in reversed(steps):
            try:
                restored = self.manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state),
                        data=ocp.args.JsonRestore(),
                    ),
                )
                return step, restored["state"], dict(restored["data"])
            except Exception as err:  # noqa: BLE001 - any failure means "unusable step"
                log.warning("checkpoint step %d is unusable (%s: %s); trying an older one",
                            step, type(err).__name__, str(err)[:300])
                self._quarantine(step)
        raise NoUsableCheckpointError(f"no checkpoint in {self.directory} could be restored "
                                      f"(tried steps {steps})")

    def _quarantine(self, step: int) -> None:
        """Renames step dir `<step>` to `<step>.corrupt` (primary host) and reopens the manager."""
        self.manager.close()
        if jax.process_index() == 0:
            source = self.directory / str(step)
            target = self.directory / f"{step}.corrupt"
            suffix = 0
            while target.exists():
                suffix += 1
                target = self.directory / f"{step}.corrupt{suffix}"
            if source.exists():
                os.replace(source, target)
        self.manager = self._open()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any) -> Any:
    """`jax.ShapeDtypeStruct` tree (with shardings) describing `state`."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
        state,
    )
