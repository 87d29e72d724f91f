"""May this run resume its workdir? The config check before any checkpoint is touched, and
`--restart`, the explicit way to start over.

`train` compares the run's resolved config with the config saved in the workdir's newest
checkpoint BEFORE it writes the manifest or reads an array. Fields fall in two groups:

- `STATE_FIELDS` change the saved train state's structure, or what its numbers mean: the model's
  dims (`model.llama.*`), vocabulary (`model.vocab_size`), projector input (`model.audio_dim`,
  `model.audio_layers`, `model.temporal_pool`), the audio token ids, the parameter dtype
  (`model.param_dtype`), the layer stacking (`model.scan_layers`), the trainable set
  (`model.trainable`: frozen leaves carry no optimizer state), and the input stream's identity
  (`seed`, `data.source`). A change stops the run with `CheckpointConfigMismatchError`: one line
  naming every differing field with both values. Nothing is renamed, written or restored. (A
  field only one of the two configs has, i.e. a schema change of the code, is only warned about;
  the restore still compares the saved arrays' shapes with the state this config builds.)
- every other field may change between runs of one workdir and is logged as a warning:
  schedule and optimizer numbers (`train.steps`, `optim.*`: the optimizer's structure does not
  depend on them), checkpointing (`train.checkpoint_every`, `keep_checkpoints`, ...), mesh and
  sharding, compute dtype and remat, metrics, `data.skip_clips`, the template and the data paths
  (the saved input state itself checks that the shards are the same ones).

A workdir whose every checkpoint was set aside as damaged (`<step>.corrupt`) never starts over
silently: the run stops with `NoUsableCheckpointError` until it is given `--restart`.

`--restart` (`move_previous_run`) moves the old run (checkpoints, manifest, metrics, summary,
TensorBoard events, NaN clip lists) into `W/previous/<UTC time>/`, prints where, and trains from
step 0. Nothing is deleted: remove that folder when it is no longer needed. The move comes only
after the new config has passed every check `train` makes before writing (`llark_jax.train.loop`),
so a config mistake leaves the old run where it was.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections

from llark_jax.config import ConfigError, config_to_json
from llark_jax.train.checkpoint import (
    RESTART_HINT,
    NoUsableCheckpointError,
    ResumeError,
    TrainCheckpointer,
)

log = logging.getLogger(__name__)

STATE_FIELDS = (
    "model.llama", "model.vocab_size", "model.audio_dim", "model.audio_layers",
    "model.temporal_pool", "model.param_dtype", "model.scan_layers", "model.trainable",
    "model.audio_start_id", "model.audio_patch_id", "model.audio_end_id",
    "seed", "data.source",
)
PREVIOUS = "previous"
# what `--restart` moves aside: the run's state and logs (W&B run id and offline files,
# profiler traces included, so a restarted run starts a new W&B run)
RUN_FILES = ("checkpoints", "llark.json", "metrics.jsonl", "train_summary.json", "tensorboard",
             "wandb_run_id", "wandb", "profile")
MISSING = object()  # a field one config has and the other not


class CheckpointConfigMismatchError(ResumeError, ConfigError):
    """The run's config changes fields the workdir's checkpoints depend on."""


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: leaf value} of a nested dict."""
    if isinstance(tree, dict):
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def differences(saved: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """(dotted field, saved value, current value) for every field that differs."""
    old, new = flatten(saved), flatten(current)
    return [(key, old.get(key, MISSING), new.get(key, MISSING)) for key in sorted(old | new)
            if old.get(key, MISSING) != new.get(key, MISSING)]


def is_state_field(key: str) -> bool:
    return any(key == field or key.startswith(field + ".") for field in STATE_FIELDS)


def _show(value: Any) -> str:
    return "(absent)" if value is MISSING else repr(value)


def _saved_config(checkpointer: TrainCheckpointer, steps: list[int], workdir: Path) -> dict | None:
    """The config of the newest step whose config item reads, else the manifest's."""
    for step in reversed(steps):
        try:
            return checkpointer.saved_config(step)
        except Exception as err:  # noqa: BLE001 - a damaged step: try an older one
            log.warning("cannot read the config saved with step %d (%s)", step, err)
    manifest = workdir / "llark.json"
    if manifest.is_file():
        return json.loads(manifest.read_text()).get("config")
    return None


def check_resumable(config: ml_collections.ConfigDict, workdir: Path) -> bool:
    """Whether the workdir holds checkpoints to resume; raises a `ResumeError` (one line) when
    they cannot continue with `config` (the resolved config): see the module docstring. Reads,
    never writes."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return False
    checkpointer = TrainCheckpointer(directory, keep=1_000_000, async_save=False)
    try:
        steps, set_aside = checkpointer.steps(), checkpointer.set_aside()
        if not steps:
            if set_aside:
                raise NoUsableCheckpointError(
                    f"every checkpoint in {directory} was set aside as damaged "
                    f"({', '.join(set_aside)}), so this run would start from step 0; "
                    f"{RESTART_HINT}")
            return False
        saved = _saved_config(checkpointer, steps, workdir)
    finally:
        checkpointer.close()
    if saved is None:
        return True
    current = json.loads(config_to_json(config))
    diffs = differences(saved, current)
    # A field only one side has is a schema change of the code, not of the run: warned about;
    # the saved arrays' shapes are still compared with the built state when restoring.
    blocking = [d for d in diffs if is_state_field(d[0]) and MISSING not in (d[1], d[2])]
    if blocking:
        fields = "; ".join(f"{key}: {_show(old)} -> {_show(new)}" for key, old, new in blocking)
        raise CheckpointConfigMismatchError(
            f"{workdir} holds checkpoints (newest step {steps[-1]}) of another model or input "
            f"stream: {fields}. Resume with the saved settings, use a new --workdir, or "
            f"{RESTART_HINT}")
    if diffs:
        log.warning("resuming step %d with changed settings: %s", steps[-1],
                    "; ".join(f"{key}: {_show(old)} -> {_show(new)}" for key, old, new in diffs))
    return True


def move_previous_run(workdir: Path) -> Path | None:
    """`--restart`: moves the run files of `workdir` into `W/previous/<UTC time>/` (primary
    host; every host waits) and returns that folder, or None when there was nothing to move."""
    present = [name for name in RUN_FILES if (workdir / name).exists()]
    present += sorted(p.name for p in workdir.glob("nan_step_*_clips.txt"))
    target = None
    if present:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = workdir / PREVIOUS / stamp
        suffix = 0
        while target.exists():
            suffix += 1
            target = workdir / PREVIOUS / f"{stamp}.{suffix}"
    if present and jax.process_index() == 0:
        target.mkdir(parents=True)
        for name in present:
            os.replace(workdir / name, target / name)
        log.warning("--restart: moved the previous run to %s", target)
        print(f"--restart: moved the previous run ({', '.join(present)}) to {target}",
              file=sys.stderr, flush=True)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("llark_restart")
    return target
