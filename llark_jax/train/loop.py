"""The training loop and `python -m llark_jax train --config configs/X.py --workdir W`.

Rerunning the same command resumes from the newest usable checkpoint in `W/checkpoints`
(params, optimizer state, step and input-pipeline state), so a killed run continues exactly where
its last checkpoint left off. SIGTERM (preemption) saves a checkpoint at the current step and
exits with status 143. A NaN/inf loss stops the run (status 1) without saving, so the newest
checkpoint is the last good one; the error names the step's clips and writes them to
`W/nan_step_<N>_clips.txt`, which `--config.data.skip_clips=@FILE` skips on the rerun.

A config that does not fit the workdir's checkpoints stops in one `error:` line naming the
fields (`llark_jax.train.resume`), and so does any other mistake that can be found without
training (schedule, mesh, trackers, `train.model_dir`, `train.init_from`, the records): all
before anything in the workdir is written; `--restart` moves the old run aside (after those
checks) and starts over. Damaged checkpoints (integrity digests, `llark_jax.train.checkpoint`)
are set aside loudly and the previous one resumes.

The host never holds the device up: the next `train.prefetch` batches are built and put on the
mesh by a background thread (`llark_jax.data.prefetch`) while the step runs, and metrics stay on
the device until they are fetched every `train.log_every` steps (`llark_jax.train.pending`).
Every checkpoint saves the input state of the last batch trained, not of the prefetched ones.
`train.eval_every` adds a held-out validation loss (`llark_jax.train.validation`),
`train.profile_steps` / `--profile N:M` a profiler trace (`llark_jax.train.profiling`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections

from llark_jax import errors
from llark_jax.argtypes import non_negative_int, port, positive_int
from llark_jax.checkpoints.build import resolve_config
from llark_jax.checkpoints.model_dir import save_model_dir, write_manifest
from llark_jax.config import (
    ConfigError,
    config_to_json,
    load_config,
    split_overrides,
    validate_config,
)
from llark_jax.data.features import FeatureSpec
from llark_jax.data.prefetch import Prefetcher
from llark_jax.io import check_output_path
from llark_jax.model.sharding import logical_rules
from llark_jax.model.trainable import count_trainable
from llark_jax.train.checkpoint import InputStateMismatchError, TrainCheckpointer
from llark_jax.train.inputs import (
    RecordsMismatchError,
    feature_spec,
    input_snapshot,
    make_batches,
    make_eval_batches,
    to_global_batch,
)
from llark_jax.train.mesh import maybe_initialize_distributed
from llark_jax.train.metrics import MetricsWriter
from llark_jax.train.pending import PendingSteps
from llark_jax.train.profiling import StepProfiler, parse_steps
from llark_jax.train.report import SUMMARY, TrainingDiverged, diverged_message, write_summary
from llark_jax.train.resume import check_resumable, move_previous_run
from llark_jax.train.setup import TrainSetup, init_from_step
from llark_jax.train.tracking import check_tracking, make_sinks
from llark_jax.train.validation import Validator

log = logging.getLogger("llark_jax.train")
EXIT_PREEMPTED = 143
EXIT_NAN = 1


class _StopFlag:
    """Set by SIGTERM; checked between steps."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        log.warning("SIGTERM received: saving a checkpoint after the current step")
        self.requested = True

    def restore(self) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def train(config: ml_collections.ConfigDict, workdir: str | Path, *,
          restart: bool = False) -> int:
    """Trains (or resumes) in `workdir`; returns the process exit status.

    First the config is resolved against the model source (`resolve_config`: dims, vocabulary,
    audio token ids) and everything that can stop the run on a user mistake is checked
    (`_prepare`: the workdir's checkpoints, the config, the feature pipeline, the records) while
    the workdir is untouched. Then `restart` moves the previous run aside, and the config and
    the feature pipeline are written to the workdir's manifest with the tokenizer, so the
    workdir is a loadable model from the first checkpoint on (`llark_jax.checkpoints.model_dir`).
    """
    workdir = Path(workdir)
    config, tokenizer = resolve_config(config)
    setup, features, batches, eval_batches = _prepare(config, tokenizer, workdir, restart)
    if restart:
        move_previous_run(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        write_manifest(workdir, config, features, tokenizer)
    with logical_rules(setup.mesh, setup.rules):
        status = _run(config, setup, workdir, batches, eval_batches)
    if status == 0 and config.train.model_dir:
        _write_model_dir(config, setup, workdir, tokenizer, features)
    return status


def _prepare(config: ml_collections.ConfigDict, tokenizer: Any, workdir: Path,
             restart: bool) -> tuple[TrainSetup, FeatureSpec, Any, Any]:
    """(setup, feature pipeline, training batches, validation batches or None), after every
    check that can stop the run on a user mistake, before anything in `workdir` is moved or
    written: the config against the workdir's checkpoints (`check_resumable`, skipped by
    `restart`), the profile window, the trackers, `train.model_dir` and `train.init_from` (when
    the run starts fresh), the mesh, batch split and schedule (`TrainSetup`), then the feature
    pipeline and the input streams (the records' width, frames and tasks)."""
    fresh = restart or not check_resumable(config, workdir)
    parse_steps(config.train.profile_steps)
    check_tracking(config)
    _check_model_dir(config, tokenizer, workdir)
    if fresh and config.train.init_from:
        init_from_step(Path(config.train.init_from))
    setup = TrainSetup(config)
    features = feature_spec(config, workdir, restart=restart)
    batches = make_batches(config, tokenizer, features)
    eval_batches = (make_eval_batches(config, tokenizer, features)
                    if config.train.eval_every > 0 else None)
    return setup, features, batches, eval_batches


def _check_model_dir(config: ml_collections.ConfigDict, tokenizer: Any, workdir: Path) -> None:
    """`ConfigError` before the first step when `train.model_dir` could not be written at the
    end: a model directory holds the tokenizer it is loaded with, it must not be the workdir
    (writing it replaces the checkpoints), and no file may be in its way."""
    target = config.train.model_dir
    if not target:
        return
    if tokenizer is None:
        raise ConfigError(
            f"train.model_dir={target}: a model directory holds the tokenizer it is loaded "
            f"with, and this run has none (model.source=random without model.tokenizer): set "
            f"--config.model.tokenizer to a Hugging Face tokenizer directory (with a random "
            f"model also model.llama.vocab_size >= its size with the LLark tokens, and the "
            f"audio token ids -1 to take them from it), use an hf or gguf model.source, or drop "
            f"train.model_dir")
    if Path(target).resolve() == workdir.resolve():
        raise ConfigError(f"train.model_dir={target} is the workdir: writing the model "
                          f"directory there would replace the run's checkpoints; name another "
                          f"folder")
    check_output_path(target, "train.model_dir", folder=True)


def _write_model_dir(config, setup: TrainSetup, workdir: Path, tokenizer: Any,
                     features: FeatureSpec) -> None:
    """`train.model_dir`: the final params as a model directory (no optimizer state)."""
    from llark_jax.checkpoints.model_dir import load_model

    loaded = load_model(workdir, tokenizer=tokenizer)
    save_model_dir(loaded, config.train.model_dir)
    print(f"model directory: {config.train.model_dir}")


def _restore(ckpt: TrainCheckpointer, setup: TrainSetup, workdir: Path,
             batches: Any) -> tuple[int, Any]:
    """(start step, train state): the newest usable checkpoint's (the input iterator set to its
    saved state), else a fresh state at step 0."""
    restored = ckpt.restore_latest(setup.abstract_state_with_shardings())
    if restored is None:
        if (workdir / "metrics.jsonl").is_file() and (workdir / "metrics.jsonl").stat().st_size:
            log.warning("no checkpoint in %s yet: starting from step 0 (metrics.jsonl is "
                        "rewritten)", workdir)
        log.info("starting fresh in %s", workdir)
        return 0, setup.fresh_state()
    start, state, input_state = restored
    try:
        batches.set_state(input_state)
    except ValueError as err:
        raise InputStateMismatchError(
            f"the input state saved at step {start} does not fit this run's data ({err}); "
            f"resume with the data it was trained on, use a new --workdir, or pass "
            f"--restart") from err
    log.info("resumed from step %d in %s", start, workdir)
    return start, state


def _run(config, setup: TrainSetup, workdir: Path, batches: Any,
         eval_batches: Any = None) -> int:
    total, t = config.train.steps, config.train
    primary = jax.process_index() == 0
    sinks = make_sinks(workdir, config, primary)  # first: a missing tracker stops here
    ckpt = TrainCheckpointer(workdir / "checkpoints", keep=t.keep_checkpoints,
                             async_save=t.async_checkpoint)
    try:
        start, state = _restore(ckpt, setup, workdir, batches)
    except BaseException:
        ckpt.close()
        raise
    trainable = count_trainable(state["params"], setup.grad_mask)
    log.info("%d steps, %d trainable parameters (%s)", total, trainable, config.model.trainable)
    config_json = config_to_json(config)
    peak = config.metrics.peak_flops_per_device * setup.mesh.devices.size
    writer = MetricsWriter(workdir, start_step=start, total_steps=total,
                           flops_per_step=setup.flops_per_step(), peak_flops_total=peak,
                           sinks=sinks, is_primary=primary)
    put = functools.partial(to_global_batch, mesh=setup.mesh)
    prefetch = Prefetcher(batches, put, functools.partial(input_snapshot, batches),
                          depth=t.prefetch, limit=total - start)
    validator = None if eval_batches is None else Validator(
        eval_batches, setup.eval_step, put, n_batches=t.eval_batches,
        head_positions=t.head_positions, depth=t.prefetch)
    diverged = functools.partial(_diverged, kept=ckpt.steps, workdir=workdir)
    pending = PendingSteps(writer, head_positions=t.head_positions,
                           tokens_per_step=config.data.batch_size * config.data.seq_len,
                           diverged=diverged)
    profiler = StepProfiler(t.profile_steps, workdir)
    stop = _StopFlag()
    status, began, error = 0, time.perf_counter(), None
    try:
        for done in range(start + 1, total + 1):
            item = next(prefetch)
            with profiler.annotation(done):
                state, metrics = setup.train_step(state, item.batch)
            pending.add(done, metrics, item.info)
            profiler.finished(done, pending.wait_all)
            if validator is not None and done % t.eval_every == 0:
                pending.attach(done, validator.run(state, done))
            save = done % t.checkpoint_every == 0 or done == total or stop.requested
            if save or done % t.log_every == 0:
                pending.flush()  # before saving: never checkpoint past an unchecked loss
            if save:
                ckpt.save(done, state, item.info.state, config_json)
            if stop.requested:
                log.warning("stopped by SIGTERM after step %d; rerun the command to resume", done)
                status = EXIT_PREEMPTED
                break
    except TrainingDiverged as err:
        error, status = err, EXIT_NAN
    finally:
        stop.restore()
        profiler.stop()
        prefetch.close()  # before the iterators close their files
        writer.close()  # ends the progress bar's line first
        ckpt.close()
        for source in (batches, validator):
            if hasattr(source, "close"):
                source.close()
    if status == EXIT_NAN:
        log.error("%s", error)
        print(f"error: {error}", file=sys.stderr, flush=True)
    if status == 0:
        write_summary(workdir, total, start, time.perf_counter() - began, trainable, batches)
        done_now = (f"trained steps {start + 1}..{total}" if start < total
                    else f"already trained to step {total}, nothing to do")
        print(f"{done_now} in {workdir} (metrics: {workdir / 'metrics.jsonl'})")
        bad = getattr(batches, "bad_records", None)
        if bad and primary:
            print(f"input: {len(bad)} unreadable or unusable record(s) in "
                  f"{len({b['shard'] for b in bad})} shard(s) were skipped (listed in "
                  f"{workdir / SUMMARY})")
    return status


def _diverged(loss: float, step: int, info: Any, *, kept, workdir: Path) -> str:
    return diverged_message(loss, step, kept(), info.clips, workdir)


def main(argv: list[str]) -> int:
    rest, overrides = split_overrides(argv)
    parser = argparse.ArgumentParser(prog="python -m llark_jax train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="config file, e.g. configs/tiny.py")
    parser.add_argument("--workdir", required=True, help="run directory (resumes if it exists)")
    multihost = parser.add_argument_group(
        "multi-host", "jax.distributed settings; each falls back to its LLARK_* variable "
        "(llark_jax.train.mesh.maybe_initialize_distributed)")
    multihost.add_argument("--coordinator", help="host or host:port of process 0")
    multihost.add_argument("--coordinator_port", type=port, help="coordinator port")
    multihost.add_argument("--num_processes", type=positive_int, help="number of processes")
    multihost.add_argument("--process_id", type=non_negative_int, help="index of this process")
    parser.add_argument("--restart", action="store_true",
                        help="move the workdir's previous run to W/previous/<time>/ and start "
                             "over (needed after a config change of the model's structure, or "
                             "when every checkpoint was set aside as damaged)")
    parser.add_argument("--profile", metavar="N:M",
                        help="write a JAX profiler trace of steps N..M to W/profile "
                             "(= --config.train.profile_steps=N:M)")
    args = parser.parse_args(rest)
    multihost_flags = {"--num_processes": args.num_processes, "--process_id": args.process_id,
                       "--coordinator_port": args.coordinator_port}
    given = [flag for flag, value in multihost_flags.items() if value is not None]
    if given and not (args.coordinator or os.environ.get("LLARK_COORDINATOR")):
        parser.error(f"{', '.join(given)} need --coordinator (or LLARK_COORDINATOR): without it "
                     f"this would run as a single host")
    if args.num_processes and args.process_id is not None and \
            args.process_id >= args.num_processes:
        parser.error(f"--process_id {args.process_id} must be below --num_processes "
                     f"{args.num_processes}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # basicConfig is a no-op once absl (imported by orbax) has configured the root logger at
    # WARNING: the trainer's own INFO lines (resumed step, kept feature statistics) still show.
    logging.getLogger("llark_jax").setLevel(logging.INFO)
    for noisy in ("absl", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                                 args.coordinator_port)
    try:
        config = load_config(args.config, overrides)
        if args.profile:
            config.train.profile_steps = args.profile
        validate_config(config, check_paths=True)
        if Path(args.workdir).exists() and not Path(args.workdir).is_dir():
            raise ConfigError(f"--workdir {args.workdir}: exists and is not a directory")
        return train(config, args.workdir, restart=args.restart)
    except (ConfigError, RecordsMismatchError, errors.UserError) as err:
        return errors.report(err)
