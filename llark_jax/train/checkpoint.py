"""Orbax checkpoints of the training state, the input-pipeline state and the config.

Layout: `W/checkpoints/<step>/{state,data,config,integrity}` written by an async
`ocp.CheckpointManager` keeping the newest `keep` steps. Orbax only lists committed steps, so a
save interrupted by a kill is invisible. `integrity` holds a digest of every saved array
(`llark_jax.train.integrity`), verified after each restore.

Restoring tells a checkpoint that does not FIT the run from one that is DAMAGED:

- before reading any array, the saved arrays' names, shapes and dtypes (Orbax metadata) are
  compared with the train state this run builds; a difference raises
  `CheckpointStateMismatchError` naming the arrays and touches nothing (the config check in
  `llark_jax.train.resume` normally stops such a run earlier, naming the config fields);
- a step whose arrays cannot be read, or whose restored arrays differ from their saved digests,
  failed its own integrity check: it is renamed `<step>.corrupt`, the run says so at ERROR level
  and on stderr, and the next older step is tried. When none is left,
  `NoUsableCheckpointError` asks for `--restart`.

Multi-host: every process calls `save`/`restore_latest` (collectives). Orbax writes each array's
shards from the hosts that hold them and the metadata from the primary host only. The `data`
item holds the input-pipeline state of every process (`{"processes": [state_0, ...]}`, gathered
at save time); on restore each process takes its own entry. A run restored with another process
count can continue only when all saved states are equal (topology-independent inputs such as the
synthetic batches); otherwise `InputStateMismatchError` says so.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from llark_jax.errors import UserError
from llark_jax.train import integrity

log = logging.getLogger(__name__)
ITEMS = ("state", "data", "config", "integrity")
SET_ASIDE = ".corrupt"
RESTART_HINT = "pass --restart to move the old run aside and start over"


class ResumeError(UserError, ValueError):
    """The workdir cannot be resumed as asked; the one-line message says why and what to do."""


class NoUsableCheckpointError(ResumeError):
    """Every checkpoint in the directory failed its integrity check and was set aside."""


class InputStateMismatchError(ResumeError):
    """The saved per-process input states do not fit this run's process count or data."""


class CheckpointStateMismatchError(ResumeError):
    """The saved train state has other arrays (names, shapes, dtypes) than this run builds."""


class CheckpointIntegrityError(ResumeError):
    """Restored arrays differ from the digests saved with them (damaged files)."""


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
        handlers = {"state": ocp.StandardCheckpointHandler(),
                    **{name: ocp.JsonCheckpointHandler() for name in ITEMS[1:]}}
        return ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def set_aside(self) -> list[str]:
        """Names of the step directories set aside as damaged (`<step>.corrupt*`)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir() if SET_ASIDE in p.name)

    def save(self, step: int, state: Any, input_state: dict, config_json: str) -> None:
        """Starts an (async) save of `state` at `step`; returns once arrays are copied off.
        The arrays' digests are computed first (on device, a few ms per GB on an accelerator)."""
        digests = {"format": integrity.FORMAT, "arrays": integrity.array_digests(state)}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave({"processes": gather_input_states(input_state)}),
                config=ocp.args.JsonSave(json.loads(config_json)),
                integrity=ocp.args.JsonSave(digests),
            ),
            force=True,
        )

    def saved_config(self, step: int) -> dict:
        """The config saved with `step` (JSON)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(
            config=ocp.args.JsonRestore()))
        return dict(restored["config"])

    def _digests(self, step: int) -> dict[str, str] | None:
        """The saved array digests of `step`; None for a step written before digests existed."""
        if not (self.directory / str(step) / "integrity").is_dir():
            return None
        restored = self.manager.restore(step, args=ocp.args.Composite(
            integrity=ocp.args.JsonRestore()))
        return dict(restored["integrity"]["arrays"])

    def _saved_arrays(self, step: int) -> dict[str, tuple[tuple[int, ...], str]]:
        """{array name: (shape, dtype)} of the saved state of `step`, from Orbax's metadata."""
        metadata = self.manager.item_metadata(step)["state"]
        return {leaf.name: (tuple(leaf.shape), _dtype_name(leaf.dtype))
                for leaf in jax.tree_util.tree_leaves(metadata)}

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def check_fits(self, step: int, abstract_state: Any) -> None:
        """Raises `CheckpointStateMismatchError` when the arrays saved at `step` differ in names,
        shapes or dtypes from `abstract_state` (reads metadata only)."""
        saved = self._saved_arrays(step)
        expected = {integrity.leaf_name(path): (tuple(leaf.shape), _dtype_name(leaf.dtype))
                    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
        problems = [f"{name} {saved[name][1]}{list(saved[name][0])} saved, "
                    f"{want[1]}{list(want[0])} built"
                    for name, want in expected.items() if name in saved and saved[name] != want]
        problems += [f"{name} not saved" for name in expected if name not in saved]
        problems += [f"{name} saved, not built" for name in saved if name not in expected]
        if problems:
            more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
            raise CheckpointStateMismatchError(
                f"checkpoint step {step} in {self.directory} holds another train state than "
                f"this config builds: {'; '.join(problems[:3])}{more}. Resume with the settings "
                f"it was trained with, use a new --workdir, or {RESTART_HINT}")

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict] | None:
        """Restores the newest usable step into `abstract_state`'s shapes/shardings.

        Returns `(step, state, input_state)`, or None when there is no checkpoint. A step that
        does not fit `abstract_state` raises `CheckpointStateMismatchError` (nothing touched); a
        damaged step (unreadable, or arrays that differ from their digests) is set aside loudly
        and the next older one tried; `NoUsableCheckpointError` when none is left.
        """
        steps = self.steps()
        if not steps:
            return None
        for step in reversed(steps):
            try:
                self.check_fits(step, abstract_state)
            except CheckpointStateMismatchError:
                raise
            except Exception as err:  # noqa: BLE001 - unreadable metadata: a damaged step
                self._set_aside(step, f"its metadata cannot be read ({_brief(err)})")
                continue
            failure = None
            with _quiet_unraisable() as swallowed:
                try:
                    digests = self._digests(step)
                    restored = self.manager.restore(
                        step,
                        args=ocp.args.Composite(
                            state=ocp.args.StandardRestore(abstract_state),
                            data=ocp.args.JsonRestore(),
                        ),
                    )
                except Exception as err:  # noqa: BLE001 - files truncated, removed or garbled
                    failure = _brief(err)
            if failure is not None:
                if swallowed:
                    failure += f" (+{len(swallowed)} more read errors)"
                self._set_aside(step, f"its files cannot be read ({failure})")
                continue
            if digests is None:
                log.warning("checkpoint step %d has no array digests (written before integrity "
                            "checks existed): restored unverified", step)
            else:
                bad = integrity.mismatched(digests, restored["state"])
                if bad:
                    more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
                    self._set_aside(step, f"{len(bad)} restored array(s) differ from the digests "
                                          f"saved with them: {', '.join(bad[:3])}{more}")
                    continue
            return step, restored["state"], own_input_state(dict(restored["data"]))
        raise NoUsableCheckpointError(
            f"every checkpoint in {self.directory} failed its integrity check and was set aside "
            f"({', '.join(self.set_aside())}); {RESTART_HINT}")

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
        restored = dict(restored)
        digests = self._digests(step)
        if digests is not None:
            bad = integrity.mismatched(digests, restored)
            if bad:
                raise CheckpointIntegrityError(
                    f"checkpoint step {step} failed its integrity check: {len(bad)} array(s) "
                    f"of {self.directory / str(step)} differ from the digests saved with them "
                    f"({', '.join(bad[:3])})")
        return restored

    def _set_aside(self, step: int, why: str) -> None:
        """Says loudly (ERROR log and stderr) that `step` failed its integrity check and renames
        it `<step>.corrupt` (primary host), so the next run does not try it again."""
        target = self._quarantine(step)
        text = (f"checkpoint step {step} failed its integrity check: {why}; set aside as "
                f"{target}, trying an older step")
        log.error("%s", text)
        if jax.process_index() == 0:
            print(f"warning: {text}", file=sys.stderr, flush=True)

    def _quarantine(self, step: int) -> Path:
        """Renames step dir `<step>` to `<step>.corrupt` (primary host) and reopens the manager."""
        self.manager.close()
        target = self.directory / f"{step}{SET_ASIDE}"
        suffix = 0
        while target.exists():
            suffix += 1
            target = self.directory / f"{step}{SET_ASIDE}{suffix}"
        if jax.process_index() == 0:
            source = self.directory / str(step)
            if source.exists():
                os.replace(source, target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"llark_set_aside_{step}")
        self.manager = self._open()
        return target

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


@contextlib.contextmanager
def _quiet_unraisable():
    """Collects (instead of printing) the "Exception ignored in <coroutine ...>" reports that
    Orbax's abandoned read coroutines leave after a failed restore: hundreds of lines per
    damaged step otherwise. Yields the list of swallowed reports."""
    swallowed: list[Any] = []
    previous = sys.unraisablehook
    sys.unraisablehook = swallowed.append
    try:
        yield swallowed
    finally:
        gc.collect()
        sys.unraisablehook = previous


def _dtype_name(dtype: Any) -> str:
    try:
        return np.dtype(dtype).name
    except TypeError:  # extended dtypes (PRNG keys)
        return str(dtype)


def _brief(err: BaseException) -> str:
    text = " ".join(str(err).split()).split(" See full TensorStore details")[0]
    return f"{type(err).__name__}: {text[:300]}"
