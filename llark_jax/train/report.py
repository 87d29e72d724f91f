"""What a run leaves behind besides checkpoints and metrics: the NaN stop's message (with the
step's clips, `W/nan_step_<N>_clips.txt`) and `W/train_summary.json`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax

from llark_jax.train.checkpoint import gather_input_states

SUMMARY = "train_summary.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


def diverged_message(loss: float, step: int, kept: list[int], clips: list[dict] | None,
                     workdir: Path) -> str:
    """The NaN stop's one line: step, last good checkpoint and, for records, the step's clips
    (all hosts) with their shards, written to `W/nan_step_<step>_clips.txt` for
    `data.skip_clips`. `clips`: this host's clips of the step (`InputInfo.clips`; None for
    synthetic batches). A collective when multi-host: every host calls it at the same step."""
    text = (f"loss is {loss} at step {step}; stopping. The newest checkpoint "
            f"(step {kept[-1] if kept else 'none'}) is the last good one.")
    if clips is None:
        return text
    clips = [c for part in gather_input_states({"clips": clips}) for c in part["clips"]]
    clips = list({c["clip_id"]: c for c in clips}.values())
    path = workdir / f"nan_step_{step}_clips.txt"
    if jax.process_index() == 0:
        from llark_jax.io import atomic_write_text

        atomic_write_text(path, f"# clips of the batch of step {step} (loss {loss})\n" + "".join(
            f"{c['clip_id']}  # {c['shard']} @ byte {c['offset']}\n" for c in clips))
    named = ", ".join(f"{c['clip_id']} ({os.path.basename(c['shard'])} @ byte {c['offset']})"
                      for c in clips[:8])
    more = f" and {len(clips) - 8} more" if len(clips) > 8 else ""
    return (f"{text} The step's batch held {len(clips)} clip(s): {named}{more} (listed in "
            f"{path}). If a clip is at fault, rerun with --config.data.skip_clips=@{path} to "
            f"skip them; if not, lower optim.peak_lr.")


def write_summary(workdir: Path, total: int, start: int, seconds: float, trainable: int,
                  batches: Any) -> None:
    """`W/train_summary.json`: steps, loop seconds, trainable parameters and the input
    pipeline's counters (examples, skipped records and why, epochs, packing density), every
    bad record with its shard and byte offset, and the clips skipped by `data.skip_clips`."""
    if jax.process_index() != 0:
        return
    from llark_jax.io import write_json_atomic

    summary = {"steps": total, "resumed_from": start, "loop_seconds": seconds,
               "trainable_params": trainable}
    if hasattr(batches, "counters"):
        summary.update(input_counters=dict(batches.counters), epochs_seen=batches.epoch,
                       non_pad_fraction=batches.non_pad_fraction,
                       bad_records=list(getattr(batches, "bad_records", [])),
                       skipped_clips=sorted(getattr(batches, "skipped_clips", ())))
    write_json_atomic(workdir / SUMMARY, summary)

