"""Orbax checkpoints of the training state, the input-pipeline state and the config.

Layout: `W/checkpoints/<step>/{state,data,config}` written by an async `ocp.CheckpointManager`
keeping the newest `keep` steps. Orbax only lists committed steps, so a save interrupted by a
kill is invisible. A committed step that fails to restore (files truncated or removed) is
renamed to `<step>.corrupt` with a warning and the next older step is tried.

Multi-host: every process calls `save`/`restore_latest` (collectives). Orbax writes each array's
shards from the hosts that hold them and the metadata from the primary host only. The `data`
item holds the input-pipeline state of every process (`{"processes": [state_0, ...]}`, gathered
at save time); on restore each process takes its own entry. A run restored with another process
count can continue only when all saved states are equal (topology-independent inputs such as the
synthetic batches); otherwise `InputStateMismatchError` says so.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class NoUsableCheckpointError(RuntimeError):
    """Every committed checkpoint in the directory failed to restore."""


class InputStateMismatchError(ValueError):
    """The saved per-process input states do not fit this run's process count."""


def gather_input_states(state: dict) -> list[dict]:
    """The JSON input state of every process, in process order (a collective when multi-host)."""
    if jax.process_count() == 1:
        return [state]
    from jax.experimental import multihost_utils

    encoded = np.frombuffer(json.dumps(state, sort_keys=True).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.int32(encoded.size))).ravel()
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: encoded.size] = encoded
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [json.loads(bytes(row[:n]).decode()) for row, n in zip(rows, lengths, strict=True)]


def own_input_state(saved: dict) -> dict:
    """This process's entry of a saved `{"processes": [...]}` input state."""
    if "processes" not in saved:  # a single-process state
        return saved
    states = saved["processes"]
    if len(states) == jax.process_count():
        return states[jax.process_index()]
    if all(state == states[0] for state in states):
        return states[0]
    raise InputStateMismatchError(
        f"checkpoint holds input states of {len(states)} processes that differ; this run has "
        f"{jax.process_count()} processes. Resume with {len(states)} processes, or start the "
        f"input pipeline fresh (train.init_from) to change the host count.")


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
                data=ocp.args.JsonSave({"processes": gather_input_states(input_state)}),
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
            except Exception as err:  # noqa: BLE001 - any failure means "unusable step"
                log.warning("checkpoint step %d is unusable (%s: %s); trying an older one",
                            step, type(err).__name__, str(err)[:300])
                self._quarantine(step)
                continue
            return step, restored["state"], own_input_state(dict(restored["data"]))
        raise NoUsableCheckpointError(f"no checkpoint in {self.directory} could be restored "
                                      f"(tried steps {steps})")

    def restore_subtrees(self, step: int, abstract_subtrees: dict[str, Any]) -> dict[str, Any]:
        """Only the given top-level entries of the saved train state at `step` (e.g.
        `{"params": ..., "rest": ...}` for inference), restored into the abstract trees'
        shapes/shardings; everything else (optimizer moments) is never read."""
        args = ocp.args.PyTreeRestore(
            item=abstract_subtrees,
            restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_subtrees),
            partial_restore=True,
        )
        # A checkpointer of its own: the manager's "state" item may already be bound to the
        # StandardCheckpointHandler (which has no partial restore).
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler()) as checkpointer:
            restored = checkpointer.restore(self.directory / str(step) / "state", args=args)
        return dict(restored)

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
