"""The run's input streams: training batches (`data.source`), the held-out validation batches
(`data.eval_path`), the feature pipeline, and what the loop records per batch.

`make_batches` returns an iterator of host-local numpy batches with `get_state`/`set_state`
(synthetic batches, or `llark_jax.data.pipeline.Pipeline` over TFRecord shards);
`to_global_batch` assembles one global batch over the mesh's ("data", "fsdp") axes.
`input_snapshot` is what the background prefetch (`llark_jax.data.prefetch`) records right after
drawing each batch: the iterator's state after it (what a checkpoint saves when that batch is
the last one trained), the cumulative input counters of the metrics row, and the batch's clips
(named by the NaN stop).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from llark_jax.checkpoints.model_dir import MANIFEST, read_manifest, template_for
from llark_jax.config import ConfigError
from llark_jax.data.features import FeatureSpec, spec_from_config
from llark_jax.data.records import ClipRecord
from llark_jax.train.mesh import batch_sharding
from llark_jax.train.synthetic import SyntheticBatches, SyntheticSpec

log = logging.getLogger("llark_jax.train")
# Synthetic validation batches: the training stream's generator with this seed offset (a stream
# the training batches never draw).
SYNTHETIC_EVAL_SEED_OFFSET = 1_000_003
FIT_SCAN_RECORDS = 16  # records `check_records_fit` reads (frames and width of the clips)


class RecordsMismatchError(ValueError):
    """The records do not fit the config (frames per clip, feature width); names both numbers."""


def _shard_patterns(paths: str) -> list[str]:
    """Comma-separated globs (`data.path`, `data.eval_path`) -> patterns."""
    return [p for p in paths.split(",") if p]


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


def _settings(spec: FeatureSpec) -> tuple[str, int, bool]:
    """What a feature pipeline must share with `config.data` to be reused: (encoder, pool,
    standardised)."""
    return spec.encoder, spec.pool, spec.standardized


def _wanted(d: ml_collections.ConfigDict) -> tuple[str, int, bool]:
    """`_settings` of the pipeline `config.data` asks for."""
    return d.encoder, d.feature_pool, d.standardize


def _source_features(config: ml_collections.ConfigDict) -> tuple[FeatureSpec, int] | None:
    """(feature pipeline, projector input width) of the model `train.init_from` names (a workdir
    or model directory, its manifest), or None without one. Its projector was trained on exactly
    that pipeline and its statistics, so a fine-tuning run keeps them; a `config.data` asking for
    another encoder, pool or standardisation is a `ConfigError`."""
    run = config.train.init_from
    if not run or not (Path(run) / MANIFEST).is_file():
        return None
    source_config, source, _ = read_manifest(run)
    if _settings(source) != _wanted(config.data):
        names = ("data.encoder", "data.feature_pool", "data.standardize")
        diffs = ", ".join(f"{name}={new!r} (the source's: {old!r})" for name, old, new
                          in zip(names, _settings(source), _wanted(config.data), strict=True)
                          if old != new)
        raise ConfigError(f"train.init_from={run} was trained on another feature pipeline: "
                          f"{diffs}; set them to the source's, or drop train.init_from")
    return source, int(source_config.model.audio_dim)


def _check_source_fits(clip: ClipRecord, source: FeatureSpec, width: int, run: str) -> None:
    """`RecordsMismatchError` unless the records' encoder and feature width are `run`'s."""
    got = (clip.encoder, clip.embedding.shape[1])
    if got != (source.encoder, width):
        raise RecordsMismatchError(
            f"records hold {got[1]}-dim {got[0]} features (clip {clip.clip_id}) but "
            f"train.init_from={run} was trained on {width}-dim {source.encoder} features: embed "
            f"the records with its encoder, or drop train.init_from")


def feature_spec(config: ml_collections.ConfigDict, workdir: Path, *,
                 restart: bool = False) -> FeatureSpec:
    """The run's feature pipeline, the first of:

    - the workdir manifest's when it has the same settings: a resumed run keeps its statistics
      (not with `restart`, which moves that run aside);
    - `train.init_from`'s (`_source_features`; the records must hold its encoder's features):
      the fine-tuned projector keeps the statistics it was trained on;
    - `config.data`'s with statistics over the training shards (`data.standardize`).

    The storage dtype is the records'."""
    d = config.data
    if not restart and (workdir / MANIFEST).is_file():
        _, saved, _ = read_manifest(workdir)
        if _settings(saved) == _wanted(d):
            return saved
    source = _source_features(config)
    if d.source != "tfrecord":
        if source is not None:
            return source[0]
        if d.standardize:
            raise ConfigError("data.standardize needs data.source=tfrecord (record statistics)")
        return spec_from_config(d)
    from llark_jax.data.shards import readable_clips

    clips = readable_clips(_shard_patterns(d.path))
    try:
        first = next(clips, None)
    except FileNotFoundError:  # no shard yet: the pipeline reports it when training starts
        first = None
    storage = first.embedding.dtype.name if first is not None else "float32"
    if source is not None:
        spec, width = source
        if first is not None:
            _check_source_fits(first, spec, width, config.train.init_from)
        log.info("feature pipeline and statistics of train.init_from=%s kept (encoder %s, pool "
                 "%d, standardised: %s)", config.train.init_from, spec.encoder, spec.pool,
                 spec.standardized)
        return dataclasses.replace(spec, storage_dtype=storage)
    if not d.standardize:
        return spec_from_config(d, storage_dtype=storage)
    if first is None:
        raise ConfigError(f"data.path={d.path!r}: no training shard (*.tfrecord) there to take "
                          f"the feature statistics of data.standardize from")
    log.info("feature statistics over the training shards (data.standardize)")
    embeddings = (clip.embedding for clip in itertools.chain([first], clips))
    return spec_from_config(d, clips=embeddings, storage_dtype=storage)


def make_batches(config: ml_collections.ConfigDict, tokenizer: Any = None,
                 features: FeatureSpec | None = None):
    """The training input iterator named by `config.data.source` (with get_state/set_state)."""
    if config.data.source == "synthetic":
        if skip_clips(config.data.get("skip_clips", "")):
            raise ConfigError("data.skip_clips needs data.source=tfrecord (synthetic batches "
                              "have no clips)")
        if _fractions(config.data) != (1.0, {}):
            raise ConfigError("data.fraction needs data.source=tfrecord (synthetic batches "
                              "have no datasets)")
        return _synthetic_batches(config, config.seed)
    if config.data.source == "tfrecord":
        return tfrecord_batches(config, _need_tokenizer(tokenizer),
                                features or spec_from_config(config.data))
    raise ConfigError(f"unknown data source {config.data.source!r} (synthetic or tfrecord)")


def make_eval_batches(config: ml_collections.ConfigDict, tokenizer: Any = None,
                      features: FeatureSpec | None = None):
    """The held-out validation stream (`train.eval_every` > 0) through the same pipeline:
    TFRecord shards of `data.eval_path` with the training batch shape, template and features
    (every QA pair once: no task weights, fraction or skipped clips), or for synthetic data the
    generator at seed + `SYNTHETIC_EVAL_SEED_OFFSET`."""
    if config.data.source == "synthetic":
        return _synthetic_batches(config, config.seed + SYNTHETIC_EVAL_SEED_OFFSET)
    if not config.data.eval_path:
        raise ConfigError("train.eval_every > 0 with data.source=tfrecord needs data.eval_path "
                          "(held-out shards, e.g. the writer's test split)")
    return tfrecord_batches(config, _need_tokenizer(tokenizer),
                            features or spec_from_config(config.data), held_out=True)


def _need_tokenizer(tokenizer: Any) -> Any:
    if tokenizer is None:
        raise ConfigError("data.source=tfrecord needs a tokenizer: set model.tokenizer or use "
                          "an hf/gguf model source")
    return tokenizer


def _synthetic_batches(config: ml_collections.ConfigDict, seed: int) -> SyntheticBatches:
    m = config.model
    spec = SyntheticSpec(
        batch_size=config.data.batch_size,
        seq_len=config.data.seq_len, vocab_size=m.llama.vocab_size,
        audio_segments=config.data.audio_segments, audio_frames=config.data.audio_frames,
        audio_dim=m.audio_dim, audio_start_id=m.audio_start_id,
        audio_patch_id=m.audio_patch_id, audio_end_id=m.audio_end_id,
    )
    return SyntheticBatches(spec, seed=seed, process_index=jax.process_index(),
                            process_count=jax.process_count())


def _fractions(d: ml_collections.ConfigDict) -> tuple[float, dict[str, float]]:
    """(`data.fraction`, `data.dataset_fractions`) checked to lie in [0, 1]."""
    fraction = float(d.get("fraction", 1.0))
    by_dataset = {k: float(v) for k, v in d.get("dataset_fractions", {}).items()}
    for name, value in [("data.fraction", fraction)] + [
            (f"data.dataset_fractions.{k}", v) for k, v in by_dataset.items()]:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name}={value}: a share of the training clips, in [0, 1]")
    return fraction, by_dataset


def tfrecord_batches(config: ml_collections.ConfigDict, tokenizer: Any, features: FeatureSpec,
                     *, held_out: bool = False):
    """`llark_jax.data.pipeline.Pipeline` for this host with the run's feature pipeline,
    template and system prompt: over `data.path` with the task weights, training-data fraction
    and skipped clips, or (`held_out`) over `data.eval_path` with every QA pair once."""
    from llark_jax.data.conversation import AudioTokenIds
    from llark_jax.data.packing import PackingConfig
    from llark_jax.data.pipeline import (
        Pipeline,
        PipelineConfig,
        UnweightedTasksError,
        make_tokenize_fn,
    )

    d = config.data
    packing = PackingConfig(batch_size=d.batch_size // jax.process_count(), seq_len=d.seq_len,
                            max_segments=d.audio_segments, max_frames=d.audio_frames,
                            embed_dim=config.model.audio_dim)
    if held_out:
        pipeline_config = PipelineConfig(files=tuple(_shard_patterns(d.eval_path)),
                                         packing=packing, seed=config.seed)
    else:
        fraction, by_dataset = _fractions(d)
        pipeline_config = PipelineConfig(
            files=tuple(_shard_patterns(d.path)), packing=packing, seed=config.seed,
            task_weights=d.task_weights.to_dict() or None,
            skip_clips=skip_clips(d.get("skip_clips", "")), fraction=fraction,
            dataset_fractions=by_dataset)
    tokenize = make_tokenize_fn(tokenizer, template_for(d, tokenizer),
                                AudioTokenIds.from_tokenizer(tokenizer), d.seq_len)
    try:
        pipeline = Pipeline(pipeline_config, tokenize, feature_fn=features.apply)
    except UnweightedTasksError as err:
        weights = {task: 1.0 for task in sorted(err.found)}
        raise ConfigError(
            f"data.task_weights={err.weighted} weights none of the tasks of the records at "
            f"{d.path} ({err.found} examples), so no example would be used: weight theirs, e.g. "
            f"--config.data.task_weights=\"{weights}\", or pass "
            f"--config.data.task_weights=\"{{}}\" for every QA pair once per epoch") from err
    check_records_fit(pipeline, config, features)
    return pipeline


def check_records_fit(pipeline: Any, config: ml_collections.ConfigDict,
                      features: FeatureSpec) -> None:
    """Stops with one clear line when the first readable record's features are not
    `model.audio_dim` wide, or when the readable ones among the first `FIT_SCAN_RECORDS` hold
    more audio tokens than `data.audio_frames` (instead of skipping every such example). The
    advised `audio_frames` is the longest clip read, so a lower bound for the whole set."""
    from llark_jax.data.records import RecordError

    clips = []
    for record in range(min(len(pipeline.source.locations), FIT_SCAN_RECORDS)):
        try:
            clips.append(pipeline.source.read(record))
        except RecordError:
            continue
    if not clips:
        return
    first = clips[0]
    if first.embedding.shape[1] != config.model.audio_dim:
        raise RecordsMismatchError(
            f"records hold {first.embedding.shape[1]}-dim features (clip {first.clip_id}, "
            f"encoder {first.encoder}) but model.audio_dim = {config.model.audio_dim}")
    longest = max(clips, key=lambda clip: clip.embedding.shape[0])
    frames = longest.embedding.shape[0]
    tokens = features.tokens_for(frames)
    if tokens > config.data.audio_frames:
        pooled = f" = {tokens} tokens at data.feature_pool={features.pool}" \
            if features.pool > 1 else ""
        raise RecordsMismatchError(
            f"records hold up to {frames} frames per clip{pooled} (clip {longest.clip_id}, the "
            f"longest of the first {len(clips)} read) but data.audio_frames = "
            f"{config.data.audio_frames}: set --config.data.audio_frames to at least {tokens} "
            f"(longer clips are skipped, counted as too_many_frames) or re-embed on the "
            f"config's grid (e.g. `data_prep embed --pooling reference` for Jukebox, 240 frames)")


def to_global_batch(batch: dict[str, np.ndarray], mesh) -> dict[str, jax.Array]:
    """Host-local numpy batch -> global arrays split over ("data", "fsdp")."""
    return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
            for k, v in batch.items()}


# Per-step metrics of the input pipeline (cumulative; absent for synthetic batches).
INPUT_METRICS = {
    "skipped_records": ("framing_errors", "bad_records", "wrong_embed_dim"),
    "skipped_examples": ("too_long", "too_many_frames"),
    "skipped_clip_examples": ("skipped_clip_examples",),
}


@dataclasses.dataclass(frozen=True)
class InputInfo:
    """What the loop needs of one drawn batch: `state` (the iterator's state after it),
    `metrics` (cumulative input counters, `INPUT_METRICS`) and `clips` ({clip_id, shard,
    offset} of its clips; None for synthetic batches)."""

    state: dict[str, Any]
    metrics: dict[str, int]
    clips: list[dict[str, Any]] | None


def input_snapshot(batches: Any) -> InputInfo:
    """`InputInfo` of the batch `batches` yielded last (call right after `next(batches)`)."""
    counters = getattr(batches, "counters", None)
    metrics = {} if counters is None else {
        name: sum(counters.get(k, 0) for k in keys) for name, keys in INPUT_METRICS.items()}
    describe = getattr(batches, "last_batch_clips", None)
    return InputInfo(batches.get_state(), metrics, describe() if describe else None)
