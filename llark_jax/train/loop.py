"""The training loop and `python -m llark_jax train --config configs/X.py --workdir W`.

Rerunning the same command resumes from the newest usable checkpoint in `W/checkpoints`
(params, optimizer state, step and input-pipeline state), so a killed run continues exactly where
its last checkpoint left off. SIGTERM (preemption) saves a checkpoint at the current step and
exits with status 143. A NaN/inf loss stops the run (status 1) without saving, so the newest
checkpoint is the last good one; the error names the step's clips and writes them to
`W/nan_step_<N>_clips.txt`, which `--config.data.skip_clips=@FILE` skips on the rerun.

A config that does not fit the workdir's checkpoints stops in one `error:` line naming the
fields, before anything is written (`llark_jax.train.resume`); `--restart` moves the old run
aside and starts over. Damaged checkpoints (integrity digests, `llark_jax.train.checkpoint`) are
set aside loudly and the previous one resumes.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from llark_jax import errors
from llark_jax.checkpoints.build import (
    abstract_model,
    build_model,
    llama_config,
    model_fn,
    resolve_config,
    tree_shardings,
)
from llark_jax.checkpoints.model_dir import (
    MANIFEST,
    read_manifest,
    save_model_dir,
    template_for,
    write_manifest,
)
from llark_jax.config import (
    ConfigError,
    config_to_json,
    load_config,
    split_overrides,
    validate_config,
)
from llark_jax.data.batch import NDIMS as batch_ndims
from llark_jax.data.features import FeatureSpec, spec_from_config
from llark_jax.model.sharding import logical_rules
from llark_jax.model.trainable import count_trainable, gradient_mask
from llark_jax.train.checkpoint import (
    InputStateMismatchError,
    TrainCheckpointer,
    gather_input_states,
)
from llark_jax.train.flops import train_flops_per_step
from llark_jax.train.mesh import (
    batch_sharding,
    make_mesh,
    maybe_initialize_distributed,
    replicated,
    rules_of,
)
from llark_jax.train.metrics import MetricsWriter
from llark_jax.train.optim import make_optimizer, trainable_labels
from llark_jax.train.resume import check_resumable, move_previous_run
from llark_jax.train.step import (
    check_all_scored,
    init_train_state,
    jit_train_step,
    make_train_step,
)
from llark_jax.train.synthetic import SyntheticBatches, SyntheticSpec

log = logging.getLogger("llark_jax.train")
EXIT_PREEMPTED = 143
EXIT_NAN = 1
SUMMARY = "train_summary.json"


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


class RecordsMismatchError(ValueError):
    """The records do not fit the config (frames per clip, feature width); names both numbers."""


def _shard_patterns(config: ml_collections.ConfigDict) -> list[str]:
    return [p for p in config.data.path.split(",") if p]


def skip_clips(value: str) -> frozenset[str]:
    """`data.skip_clips`: comma-separated clip ids, or `@FILE` with one clip id per line (text
    after `#` is a comment; the NaN stop writes such a file)."""
    value = (value or "").strip()
    if not value:
        return frozenset()
    if value.startswith("@"):
        path = Path(value[1:])
        if not path.is_file():
            raise ConfigError(f"data.skip_clips: no such file {path}")
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        return frozenset(line for line in lines if line)
    return frozenset(c.strip() for c in value.split(",") if c.strip())


def feature_spec(config: ml_collections.ConfigDict, workdir: Path) -> FeatureSpec:
    """The run's feature pipeline: the workdir manifest's (a resumed run keeps its statistics)
    when it has the same settings, else `config.data`'s with the records' storage dtype and
    statistics over the training shards (`data.standardize`)."""
    d = config.data
    if (workdir / MANIFEST).is_file():
        _, saved, _ = read_manifest(workdir)
        if (saved.encoder, saved.pool, saved.standardized) == (d.encoder, d.feature_pool,
                                                                d.standardize):
            return saved
    if d.source != "tfrecord":
        if d.standardize:
            raise ConfigError("data.standardize needs data.source=tfrecord (record statistics)")
        return spec_from_config(d)
    from llark_jax.data.pipeline import clip_embeddings

    clips = clip_embeddings(_shard_patterns(config))
    try:
        first = next(clips, None)
    except FileNotFoundError:  # no shard yet: the pipeline reports it when training starts
        first = None
    storage = first[1].dtype.name if first is not None else "float32"
    if not d.standardize:
        return spec_from_config(d, storage_dtype=storage)
    log.info("feature statistics over the training shards (data.standardize)")
    embeddings = itertools.chain([first[1]] if first else [], (e for _, e in clips))
    return spec_from_config(d, clips=embeddings, storage_dtype=storage)


def make_batches(config: ml_collections.ConfigDict, tokenizer: Any = None,
                 features: FeatureSpec | None = None):
    """The input iterator named by `config.data.source` (must expose get_state/set_state)."""
    if config.data.source == "synthetic":
        if skip_clips(config.data.get("skip_clips", "")):
            raise ConfigError("data.skip_clips needs data.source=tfrecord (synthetic batches "
                              "have no clips)")
        m = config.model
        spec = SyntheticSpec(
            batch_size=config.data.batch_size,
            seq_len=config.data.seq_len, vocab_size=m.llama.vocab_size,
            audio_segments=config.data.audio_segments, audio_frames=config.data.audio_frames,
            audio_dim=m.audio_dim, audio_start_id=m.audio_start_id,
            audio_patch_id=m.audio_patch_id, audio_end_id=m.audio_end_id,
        )
        return SyntheticBatches(spec, seed=config.seed, process_index=jax.process_index(),
                                process_count=jax.process_count())
    if config.data.source == "tfrecord":
        if tokenizer is None:
            raise ConfigError("data.source=tfrecord needs a tokenizer: set model.tokenizer or use "
                              "an hf/gguf model source")
        return tfrecord_batches(config, tokenizer, features or spec_from_config(config.data))
    raise ConfigError(f"unknown data source {config.data.source!r} (synthetic or tfrecord)")


def tfrecord_batches(config: ml_collections.ConfigDict, tokenizer: Any, features: FeatureSpec):
    """`llark_jax.data.pipeline.Pipeline` over `data.path` (comma-separated globs) for this
    host, with the run's feature pipeline, template, system prompt and task weights."""
    from llark_jax.data.conversation import AudioTokenIds
    from llark_jax.data.packing import PackingConfig
    from llark_jax.data.pipeline import Pipeline, PipelineConfig, make_tokenize_fn

    d = config.data
    packing = PackingConfig(batch_size=d.batch_size // jax.process_count(), seq_len=d.seq_len,
                            max_segments=d.audio_segments, max_frames=d.audio_frames,
                            embed_dim=config.model.audio_dim)
    weights = d.task_weights.to_dict() or None
    pipeline_config = PipelineConfig(files=tuple(_shard_patterns(config)), packing=packing,
                                     seed=config.seed, task_weights=weights,
                                     skip_clips=skip_clips(d.get("skip_clips", "")))
    tokenize = make_tokenize_fn(tokenizer, template_for(d, tokenizer),
                                AudioTokenIds.from_tokenizer(tokenizer), d.seq_len)
    pipeline = Pipeline(pipeline_config, tokenize, feature_fn=features.apply)
    check_records_fit(pipeline, config, features)
    return pipeline


def check_records_fit(pipeline: Any, config: ml_collections.ConfigDict,
                      features: FeatureSpec) -> None:
    """Stops with one clear line when the first readable record's frames or width do not fit
    `data.audio_frames` / `model.audio_dim` (instead of skipping every example)."""
    from llark_jax.data.records import RecordError

    for record in range(min(len(pipeline.source.locations), 8)):
        try:
            clip = pipeline.source.read(record)
        except RecordError:
            continue
        frames, width = clip.embedding.shape
        tokens = features.tokens_for(frames)
        if width != config.model.audio_dim:
            raise RecordsMismatchError(
                f"records hold {width}-dim features (clip {clip.clip_id}, encoder "
                f"{clip.metadata.get('encoder', '?') if isinstance(clip.metadata, dict) else '?'})"
                f" but model.audio_dim = {config.model.audio_dim}")
        if tokens > config.data.audio_frames:
            pooled = f" = {tokens} tokens at data.feature_pool={features.pool}" \
                if features.pool > 1 else ""
            raise RecordsMismatchError(
                f"records hold {frames} frames per clip{pooled} (clip {clip.clip_id}) but "
                f"data.audio_frames = {config.data.audio_frames}: set "
                f"--config.data.audio_frames={tokens} or re-embed on the config's grid (e.g. "
                f"`data_prep embed --pooling reference` for Jukebox, 240 frames)")
        return


def gradient_mask_for(config: ml_collections.ConfigDict, params: Any) -> Any:
    """The trainable-set mask of preset `config.model.trainable` (`llark_jax.model.trainable`).

    Rows-trained embeddings train the `<audio_start>`/`<audio_end>` rows (spec §1.4-1.5).
    """
    m = config.model
    return gradient_mask(params, m.trainable, (m.audio_start_id, m.audio_end_id))


def to_global_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays split over ("data", "fsdp")."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
            for k, v in batch.items()}


class TrainSetup:
    """Everything the loop (and the planner) needs: mesh, jitted step, shardings, optimizer."""

    def __init__(self, config: ml_collections.ConfigDict, mesh_sizes: dict | None = None,
                 devices: list | None = None):
        self.config = config
        self.mesh = make_mesh(mesh_sizes if mesh_sizes is not None else config.mesh.to_dict(),
                              devices)
        self.rules = rules_of(config)
        # Structure and shardings come from the abstract model: nothing is allocated here.
        graphdef, abstract_params, abstract_rest = abstract_model(
            model_fn(config.model, config.seed))
        self.graphdef = graphdef
        self.grad_mask = gradient_mask_for(config, abstract_params)
        self.tx, self.schedule = make_optimizer(config.optim, config.train.steps,
                                                trainable_labels(self.grad_mask))
        self.abstract_state = jax.eval_shape(
            lambda p, r: init_train_state(p, r, self.tx), abstract_params, abstract_rest)
        self.state_shardings = tree_shardings(self.abstract_state, self.mesh, self.rules)
        step_fn = make_train_step(
            graphdef, self.tx, self.schedule, micro_steps=config.train.micro_steps,
            normalization=config.train.loss_normalization, grad_mask=self.grad_mask,
            head_positions=config.train.head_positions)
        batch_shardings = {k: batch_sharding(self.mesh, nd) for k, nd in batch_ndims.items()}
        self.train_step = jit_train_step(step_fn, self.state_shardings, batch_shardings,
                                         replicated(self.mesh))

    def abstract_state_with_shardings(self) -> Any:
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)

    def fresh_state(self) -> Any:
        """Initial train state, every array created directly in its sharding.

        Params come from `train.init_from` (another run's newest checkpoint, e.g. the MusiLingo
        caption stage) when set, else from the model source; optimizer and step start fresh.
        """
        cfg = self.config
        if cfg.train.init_from:
            params, rest = self._params_from_run(Path(cfg.train.init_from))
        else:
            _, params, rest = build_model(cfg.model, self.mesh, self.rules, cfg.seed)
        init = jax.jit(lambda p, r: init_train_state(p, r, self.tx),
                       out_shardings=self.state_shardings)
        return init(params, rest)

    def _params_from_run(self, run_dir: Path) -> tuple[Any, Any]:
        """Params and rest of `run_dir`'s newest checkpoint (its optimizer state is not read,
        so the stages may train different parameter sets)."""
        source = TrainCheckpointer(run_dir / "checkpoints", keep=1_000_000, async_save=False)
        try:
            steps = source.steps() if (run_dir / "checkpoints").is_dir() else []
            if not steps:
                raise ConfigError(f"train.init_from: no checkpoint under {run_dir}/checkpoints")
            target = self.abstract_state_with_shardings()
            state = source.restore_subtrees(steps[-1], {"params": target["params"],
                                                        "rest": target["rest"]})
        finally:
            source.close()
        log.info("initialised params from %s step %d", run_dir, steps[-1])
        return state["params"], state["rest"]

    def flops_per_step(self) -> float:
        cfg = self.config
        return train_flops_per_step(
            llama_config(cfg.model), audio_dim=cfg.model.audio_dim, batch=cfg.data.batch_size,
            seq_len=cfg.data.seq_len,
            audio_frames=cfg.data.audio_segments * cfg.data.audio_frames,
            audio_layers=cfg.model.get("audio_layers", 0),
            head_positions=cfg.train.head_positions)


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
    audio token ids) and checked against the workdir's checkpoints (`check_resumable`: a change
    of the state's structure stops here, before anything is written); then the feature pipeline
    is fixed (`feature_spec`) and both are written to the workdir's manifest with the tokenizer,
    so the workdir is a loadable model from the first checkpoint on
    (`llark_jax.checkpoints.model_dir`). `restart` moves the previous run aside first.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if restart:
        move_previous_run(workdir)
    config, tokenizer = resolve_config(config)
    check_resumable(config, workdir)
    features = feature_spec(config, workdir)
    batches = make_batches(config, tokenizer, features)
    if jax.process_index() == 0:
        write_manifest(workdir, config, features, tokenizer)
    setup = TrainSetup(config)
    with logical_rules(setup.mesh, setup.rules):
        status = _run(config, setup, workdir, batches)
    if status == 0 and config.train.model_dir:
        _write_model_dir(config, setup, workdir, tokenizer, features)
    return status


def _write_model_dir(config, setup: TrainSetup, workdir: Path, tokenizer: Any,
                     features: FeatureSpec) -> None:
    """`train.model_dir`: the final params as a model directory (no optimizer state)."""
    from llark_jax.checkpoints.model_dir import load_model

    loaded = load_model(workdir, tokenizer=tokenizer)
    save_model_dir(loaded, config.train.model_dir)
    print(f"model directory: {config.train.model_dir}")


def _run(config, setup: TrainSetup, workdir: Path, batches: Any) -> int:
    total = config.train.steps
    ckpt = TrainCheckpointer(workdir / "checkpoints", keep=config.train.keep_checkpoints,
                             async_save=config.train.async_checkpoint)
    try:
        restored = ckpt.restore_latest(setup.abstract_state_with_shardings())
    except BaseException:
        ckpt.close()
        raise
    if restored is None:
        start, state = 0, setup.fresh_state()
        if (workdir / "metrics.jsonl").is_file() and (workdir / "metrics.jsonl").stat().st_size:
            log.warning("no checkpoint in %s yet: starting from step 0 (metrics.jsonl is "
                        "rewritten)", workdir)
        log.info("starting fresh in %s", workdir)
    else:
        start, state, input_state = restored
        try:
            batches.set_state(input_state)
        except ValueError as err:
            ckpt.close()
            raise InputStateMismatchError(
                f"the input state saved at step {start} does not fit this run's data ({err}); "
                f"resume with the data it was trained on, use a new --workdir, or pass "
                f"--restart") from err
        log.info("resumed from step %d in %s", start, workdir)
    trainable = count_trainable(state["params"], setup.grad_mask)
    log.info("%d steps, %d trainable parameters (%s)", total, trainable, config.model.trainable)
    config_json = config_to_json(config)
    peak = config.metrics.peak_flops_per_device * setup.mesh.devices.size
    writer = MetricsWriter(workdir, start_step=start, total_steps=total,
                           flops_per_step=setup.flops_per_step(), peak_flops_total=peak,
                           tensorboard=config.metrics.tensorboard,
                           is_primary=jax.process_index() == 0)
    stop = _StopFlag()
    tokens_per_step = config.data.batch_size * config.data.seq_len
    status, began, diverged = 0, time.perf_counter(), None
    try:
        for step in range(start, total):
            batch = to_global_batch(next(batches), setup.mesh)
            step_began = time.perf_counter()
            state, metrics = setup.train_step(state, batch)
            metrics = jax.device_get(metrics)
            elapsed = time.perf_counter() - step_began
            if not math.isfinite(float(metrics["loss"])):
                raise TrainingDiverged(_diverged_message(
                    float(metrics["loss"]), step + 1, ckpt.steps(), batches, workdir))
            check_all_scored(metrics, config.train.head_positions, step + 1)
            writer.write(step + 1, {**{k: metrics[k] for k in ("loss", "lr", "grad_norm")},
                                    **_input_metrics(batches)},
                         step_time=elapsed, tokens=tokens_per_step)
            done = step + 1
            if done % config.train.checkpoint_every == 0 or done == total or stop.requested:
                ckpt.save(done, state, batches.get_state(), config_json)
            if stop.requested:
                log.warning("stopped by SIGTERM after step %d; rerun the command to resume", done)
                status = EXIT_PREEMPTED
                break
    except TrainingDiverged as err:
        diverged = err
        status = EXIT_NAN
    finally:
        stop.restore()
        writer.close()  # ends the progress bar's line first
        ckpt.close()
        if hasattr(batches, "close"):
            batches.close()
    if status == EXIT_NAN:
        log.error("%s", diverged)
        print(f"error: {diverged}", file=sys.stderr, flush=True)
    if status == 0:
        _write_summary(workdir, total, start, time.perf_counter() - began, trainable, batches)
        print(f"trained {total} steps in {workdir} (metrics: {workdir / 'metrics.jsonl'})")
        bad = getattr(batches, "bad_records", None)
        if bad and jax.process_index() == 0:
            print(f"input: {len(bad)} unreadable or unusable record(s) in "
                  f"{len({b['shard'] for b in bad})} shard(s) were skipped (listed in "
                  f"{workdir / SUMMARY})")
    return status


# Per-step metrics of the input pipeline (cumulative; 0 for synthetic batches).
INPUT_METRICS = {
    "skipped_records": ("framing_errors", "bad_records", "wrong_embed_dim"),
    "skipped_examples": ("too_long", "too_many_frames"),
    "skipped_clip_examples": ("skipped_clip_examples",),
}


def _input_metrics(batches: Any) -> dict[str, int]:
    counters = getattr(batches, "counters", None)
    if counters is None:
        return {}
    return {name: sum(counters.get(k, 0) for k in keys) for name, keys in INPUT_METRICS.items()}


def _diverged_message(loss: float, step: int, kept: list[int], batches: Any,
                      workdir: Path) -> str:
    """The NaN stop's one line: step, last good checkpoint and, for records, the step's clips
    (all hosts) with their shards, written to `W/nan_step_<step>_clips.txt` for
    `data.skip_clips`."""
    text = (f"loss is {loss} at step {step}; stopping. The newest checkpoint "
            f"(step {kept[-1] if kept else 'none'}) is the last good one.")
    describe = getattr(batches, "last_batch_clips", None)
    if describe is None:
        return text
    clips = [c for part in gather_input_states({"clips": describe()}) for c in part["clips"]]
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


def _write_summary(workdir: Path, total: int, start: int, seconds: float, trainable: int,
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
    multihost.add_argument("--coordinator_port", type=int, help="coordinator port")
    multihost.add_argument("--num_processes", type=int, help="number of processes")
    multihost.add_argument("--process_id", type=int, help="index of this process")
    parser.add_argument("--restart", action="store_true",
                        help="move the workdir's previous run to W/previous/<time>/ and start "
                             "over (needed after a config change of the model's structure, or "
                             "when every checkpoint was set aside as damaged)")
    args = parser.parse_args(rest)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("absl", "orbax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    maybe_initialize_distributed(args.coordinator, args.num_processes, args.process_id,
                                 args.coordinator_port)
    try:
        config = load_config(args.config, overrides)
        validate_config(config, check_paths=True)
        if Path(args.workdir).exists() and not Path(args.workdir).is_dir():
            raise ConfigError(f"--workdir {args.workdir}: exists and is not a directory")
        return train(config, args.workdir, restart=args.restart)
    except (ConfigError, RecordsMismatchError, errors.UserError) as err:
        return errors.report(err)
