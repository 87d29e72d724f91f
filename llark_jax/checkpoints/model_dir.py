"""The one model loader and saver: training workdirs and model directories, same layout.

    PATH/
      llark.json            manifest: the resolved training config (one schema, `configs/base.py`),
                            the feature spec (`llark_jax.data.features.FeatureSpec`: encoder and
                            its arguments, pooling, standardisation statistics) and the model name
      tokenizer/            Hugging Face tokenizer files with the LLark tokens (absent for a random
                            test model trained on synthetic batches)
      checkpoints/<step>/   Orbax (`llark_jax.train.checkpoint.TrainCheckpointer`); `state` holds
                            `params` and `rest` (a workdir's also `opt_state` and `step`)

A training workdir (`python -m llark_jax train --workdir W`) writes the manifest and tokenizer
when it starts, then checkpoints; a model directory (`save_model_dir`, `make demo`'s
`runs/demo/model`, `train.model_dir`) holds one step's params and no optimizer state. `load_model`
reads either, so `infer`, `serve`, `eval`, `benchmark` and `export` take either.

Parameters are restored onto one device (inference); only `params` and `rest` are read, never the
optimizer moments, and checked against the digests saved with them (`ModelDirError` if damaged).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
from flax import nnx

from llark_jax.checkpoints.build import AUDIO_ID_FIELDS, POLICY_FIELDS, abstract_model, model_fn
from llark_jax.config import config_to_json
from llark_jax.config_base import base_config
from llark_jax.data.conversation import (
    TOKENIZER_TEMPLATE_NAME,
    ConversationTemplate,
    get_template,
    template_from_tokenizer,
)
from llark_jax.data.features import FeatureSpec
from llark_jax.io import read_json, write_json_atomic
from llark_jax.model.llark import LLark

MANIFEST = "llark.json"
TOKENIZER_DIR = "tokenizer"
FORMAT = "llark-jax/1"


class ModelDirError(ValueError):
    """A path that holds no loadable model; the message names the missing or bad part."""


@dataclasses.dataclass
class LoadedModel:
    """A model and everything inference needs to reproduce training's inputs."""

    model: LLark
    tokenizer: Any
    template: ConversationTemplate
    features: FeatureSpec
    config: ml_collections.ConfigDict
    step: int
    model_name: str = "llark"


def template_for(data_cfg: Any, tokenizer: Any) -> ConversationTemplate:
    """The conversation template of `config.data` (`template`, `system_prompt`)."""
    system_prompt = data_cfg.get("system_prompt")
    if data_cfg.template == TOKENIZER_TEMPLATE_NAME:
        return template_from_tokenizer(tokenizer, system_prompt=system_prompt)
    template = get_template(data_cfg.template, tokenizer)
    if system_prompt is not None:
        template = dataclasses.replace(template, system_prompt=system_prompt)
    return template


def write_manifest(directory: str | Path, config: ml_collections.ConfigDict,
                   features: FeatureSpec, tokenizer: Any, model_name: str = "llark") -> None:
    """Writes `llark.json` and `tokenizer/` (each atomically) into `directory`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if tokenizer is not None:
        staging = directory / f"{TOKENIZER_DIR}.tmp.{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        tokenizer.save_pretrained(str(staging))
        shutil.rmtree(directory / TOKENIZER_DIR, ignore_errors=True)
        os.replace(staging, directory / TOKENIZER_DIR)
    write_json_atomic(directory / MANIFEST, {
        "format": FORMAT, "model_name": model_name, "config": config.to_dict(),
        "features": features.to_json()})


def read_manifest(directory: str | Path) -> tuple[ml_collections.ConfigDict, FeatureSpec, str]:
    """(config, features, model name) of a workdir or model directory."""
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ModelDirError(f"{directory}: no {MANIFEST}; pass a training workdir or a model "
                            "directory (docs/serving.md)")
    data = read_json(path)
    if data.get("format") != FORMAT:
        raise ModelDirError(f"{path}: format {data.get('format')!r}, expected {FORMAT!r}")
    return (ml_collections.ConfigDict(data["config"]), FeatureSpec.from_json(data["features"]),
            data.get("model_name", "llark"))


def load_tokenizer(directory: str | Path) -> Any | None:
    """The saved tokenizer, or None when the directory has none."""
    path = Path(directory) / TOKENIZER_DIR
    if not path.is_dir():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _checkpointer(directory: Path):
    from llark_jax.train.checkpoint import TrainCheckpointer

    if not (directory / "checkpoints").is_dir():
        raise ModelDirError(f"{directory}: no checkpoints/ (has training started?)")
    return TrainCheckpointer(directory / "checkpoints", keep=1_000_000, async_save=False)


def _restore_model(directory: Path, config: ml_collections.ConfigDict,
                   step: int | None) -> tuple[LLark, int]:
    from llark_jax.train.checkpoint import CheckpointIntegrityError

    checkpointer = _checkpointer(directory)
    try:
        steps = checkpointer.steps()
        if not steps:
            raise ModelDirError(f"{directory}/checkpoints holds no finished checkpoint")
        if step is not None and step not in steps:
            raise ModelDirError(f"{directory}: no checkpoint at step {step} (have {steps})")
        step = steps[-1] if step is None else step
        graphdef, params, rest = abstract_model(model_fn(config.model, config.seed))
        device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                              {"params": params, "rest": rest})
        try:
            state = checkpointer.restore_subtrees(step, target)  # digests verified
        except CheckpointIntegrityError as err:
            raise ModelDirError(str(err)) from err
    finally:
        checkpointer.close()
    # A partial restore leaves arrays the checkpoint lacks as ShapeDtypeStructs: refuse them.
    unrestored = [jax.tree_util.keystr(path) for path, leaf
                  in jax.tree_util.tree_flatten_with_path(state)[0]
                  if isinstance(leaf, jax.ShapeDtypeStruct)]
    if unrestored:
        raise ModelDirError(
            f"{directory}: checkpoint step {step} lacks {len(unrestored)} array(s) this config "
            f"builds, e.g. {', '.join(unrestored[:3])} (checkpoints written before the decoder "
            "layers were stacked hold them per layer, params/llama/layers/<i>/...)")
    return nnx.merge(graphdef, state["params"], state["rest"]), step


def load_model(path: str | Path, *, step: int | None = None,
               tokenizer: Any = None) -> LoadedModel:
    """The model at `path` (a training workdir or a model directory), newest step unless `step`.

    `tokenizer` replaces the saved one (needed only for a workdir trained without one); its
    audio token ids must match the model's.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ModelDirError(f"{path}: no such directory")
    config, features, model_name = read_manifest(directory)
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(directory)
    if tokenizer is None:
        raise ModelDirError(f"{path}: no {TOKENIZER_DIR}/ (a random model trained on synthetic "
                            "batches); pass a tokenizer with the LLark tokens")
    _check_token_ids(tokenizer, config.model, directory)
    model, step = _restore_model(directory, config, step)
    return LoadedModel(model=model, tokenizer=tokenizer,
                       template=template_for(config.data, tokenizer), features=features,
                       config=config, step=step, model_name=model_name)


def _check_token_ids(tokenizer: Any, model_cfg: Any, where: Path) -> None:
    wrong = {field: tokenizer.convert_tokens_to_ids(token)
             for field, token in AUDIO_ID_FIELDS.items()
             if tokenizer.convert_tokens_to_ids(token) != model_cfg[field]}
    if wrong:
        raise ModelDirError(f"{where}: the tokenizer gives audio token ids {wrong}, the model "
                            f"uses {({f: model_cfg[f] for f in wrong})}")


def save_model_dir(loaded: LoadedModel, directory: str | Path) -> Path:
    """Writes `loaded` as a model directory (manifest, tokenizer, one step of params)."""
    from llark_jax.train.checkpoint import TrainCheckpointer

    directory = Path(directory)
    if (directory / "checkpoints").exists():
        shutil.rmtree(directory / "checkpoints")
    write_manifest(directory, loaded.config, loaded.features, loaded.tokenizer,
                   loaded.model_name)
    _, params, rest = nnx.split(loaded.model, nnx.Param, ...)
    checkpointer = TrainCheckpointer(directory / "checkpoints", keep=1, async_save=False)
    checkpointer.save(loaded.step, {"params": params, "rest": rest}, {},
                      config_to_json(loaded.config))
    checkpointer.close()
    return directory


def config_for_model(model: LLark, **data: Any) -> ml_collections.ConfigDict:
    """The base config describing `model` (a random-source model of its dims, ids, projector and
    dtypes), with `data` fields set (e.g. `template`, `system_prompt`, `encoder`)."""
    config = base_config()
    m, cfg = config.model, model.llama.config
    fields = dataclasses.asdict(cfg)
    for name in POLICY_FIELDS:
        fields.pop(name)
    m.llama = ml_collections.ConfigDict(fields)
    m.vocab_size = cfg.vocab_size
    m.param_dtype, m.dtype = jax.numpy.dtype(cfg.param_dtype).name, jax.numpy.dtype(cfg.dtype).name
    m.audio_dim, m.audio_layers = model.projector.audio_dim, model.projector.audio_layers
    m.temporal_pool = model.temporal_pool
    m.audio_start_id, m.audio_patch_id = model.audio_start_id, model.audio_patch_id
    m.audio_end_id = model.audio_end_id
    for key, value in data.items():
        with config.data.ignore_type():
            config.data[key] = value
    return config


def new_model_dir(directory: str | Path, model: LLark, tokenizer: Any,
                  features: FeatureSpec | None = None, *, model_name: str = "llark",
                  step: int = 0, **data: Any) -> Path:
    """A model directory for a model built in code (tests, conversions); `data` sets
    `config.data` fields such as `template` and `system_prompt` (`config_for_model`)."""
    config = config_for_model(model, **data)
    features = features or FeatureSpec(encoder=config.data.encoder)
    loaded = LoadedModel(model=model, tokenizer=tokenizer,
                         template=template_for(config.data, tokenizer), features=features,
                         config=config, step=step, model_name=model_name)
    return save_model_dir(loaded, directory)
