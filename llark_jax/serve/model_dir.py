"""A servable model directory: LLark weights in the trainer's Orbax layout + tokenizer + settings.

    CKPT/
      serving.json            model dims, audio token ids, template, system prompt, encoder
      tokenizer/              Hugging Face tokenizer files (`save_pretrained`)
      checkpoints/<step>/     `llark_jax.train.checkpoint.TrainCheckpointer` layout; the `state`
                              item holds at least `{"params": ...}` (a full train state with
                              `opt_state` and `step` works too: only `params` is read)

`serving.json` fields: `llama` (LlamaConfig fields; dtypes as names), `audio_dim` (stored feature
width), `audio_layers` (L of MusiLingo's learned layer mix, 0 = none; default 0), `temporal_pool`,
`audio_start_id`/`audio_patch_id`/`audio_end_id`, `template` (a name known to
`llark_jax.data.conversation.get_template`), `system_prompt` (null = the template's),
`encoder` (a `data_prep.encoders` registry name, default `mel`), `encoder_args` (its constructor
arguments, e.g. MERT's `frame_rate`/`layers`; default none), `feature_pool` (encoder frames
averaged per audio token before the projector, as the demo's stored features; default 1) and
`model_name` (the id `/v1/models` reports).

`load_served` also takes a training workdir without `serving.json` (`W/checkpoints/<step>` from
`python -m llark_jax train`) through the inference CLI's loader (`llark_jax.infer.cli`); then the
settings come from `ServingOverrides` (command-line flags) and the stored config.

The newest checkpoint step is loaded. Parameters are restored as raw arrays and matched to the
model by their path (`llama/layers/0/attn/q`), so a checkpoint written by the training loop and
one written by `save_model_dir` load the same way.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llark_jax.data.conversation import ConversationTemplate, get_template
from llark_jax.model.llama import Llama, LlamaConfig
from llark_jax.model.llark import LLark

SERVING_JSON = "serving.json"
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ModelDirError(ValueError):
    """A model directory that cannot be served; the message names the missing/bad part."""


@dataclasses.dataclass
class ServedModel:
    """Everything the server needs to answer: model, tokenizer, template and audio front end."""

    model: LLark
    tokenizer: Any
    template: ConversationTemplate
    encoder: str
    feature_pool: int
    model_name: str
    step: int
    encoder_args: dict[str, Any] = dataclasses.field(default_factory=dict)


def _config_to_json(config: LlamaConfig) -> dict[str, Any]:
    fields = dataclasses.asdict(config)
    for key in ("dtype", "param_dtype"):
        fields[key] = jnp.dtype(fields[key]).name
    return fields


def _config_from_json(fields: dict[str, Any]) -> LlamaConfig:
    fields = dict(fields)
    for key in ("dtype", "param_dtype"):
        if key in fields:
            fields[key] = _DTYPES[fields[key]]
    return LlamaConfig(**fields)


def save_model_dir(
    directory: str | Path,
    model: LLark,
    tokenizer: Any,
    *,
    template: str = "fastchat_v0",
    system_prompt: str | None = None,
    encoder: str = "mel",
    encoder_args: dict[str, Any] | None = None,
    feature_pool: int = 1,
    model_name: str = "llark",
    step: int = 0,
) -> Path:
    """Writes `model` + `tokenizer` + settings as a servable directory (layout above)."""
    from llark_jax.train.checkpoint import TrainCheckpointer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = {
        "llama": _config_to_json(model.llama.config), "audio_dim": model.projector.audio_dim,
        "audio_layers": model.projector.audio_layers,
        "temporal_pool": model.temporal_pool, "audio_start_id": model.audio_start_id,
        "audio_patch_id": model.audio_patch_id, "audio_end_id": model.audio_end_id,
        "template": template, "system_prompt": system_prompt, "encoder": encoder,
        "encoder_args": dict(encoder_args or {}), "feature_pool": feature_pool,
        "model_name": model_name,
    }
    tokenizer.save_pretrained(str(directory / "tokenizer"))
    _, params, rest = nnx.split(model, nnx.Param, ...)
    checkpointer = TrainCheckpointer(directory / "checkpoints", keep=1, async_save=False)
    checkpointer.save(step, {"params": params, "rest": rest}, {}, json.dumps(spec))
    checkpointer.close()
    (directory / SERVING_JSON).write_text(json.dumps(spec, indent=2) + "\n")
    return directory


def _restore_params(directory: Path) -> tuple[int, dict[str, np.ndarray]]:
    """`(step, {"llama/embed": array, ...})` of the newest checkpoint's `state.params`."""
    import orbax.checkpoint as ocp

    from llark_jax.train.checkpoint import TrainCheckpointer

    if not (directory / "checkpoints").is_dir():
        raise ModelDirError(f"{directory}: no checkpoints/ directory")
    checkpointer = TrainCheckpointer(directory / "checkpoints", keep=1_000_000, async_save=False)
    try:
        steps = checkpointer.steps()
        if not steps:
            raise ModelDirError(f"{directory}/checkpoints holds no committed step")
        restored = checkpointer.manager.restore(
            steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        checkpointer.manager.close()
    state = restored["state"]
    if "params" not in state:
        raise ModelDirError(f"{directory}: checkpoint state has no 'params' item")
    flat: dict[str, np.ndarray] = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(state["params"])[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        if keys and keys[-1] == "value":
            keys = keys[:-1]
        flat["/".join(keys)] = np.asarray(leaf)
    return steps[-1], flat


def _fill_params(model: LLark, flat: dict[str, np.ndarray], where: Path) -> None:
    """Copies every `nnx.Param` of `model` from `flat` (same path, same shape)."""
    state = nnx.state(model, nnx.Param)
    for path, variable in nnx.to_flat_state(state):
        name = "/".join(map(str, path))
        if name not in flat:
            raise ModelDirError(f"{where}: checkpoint lacks parameter {name}")
        value = flat[name]
        if tuple(value.shape) != tuple(variable.shape):
            raise ModelDirError(f"{where}: parameter {name} has shape {value.shape}, model "
                                f"expects {tuple(variable.shape)}")
        variable.set_value(jnp.asarray(value, variable.dtype))
    nnx.update(model, state)


def load_model_dir(directory: str | Path) -> ServedModel:
    """Loads a servable directory (layout in the module docstring)."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    spec_path = directory / SERVING_JSON
    if not spec_path.is_file():
        raise ModelDirError(f"{directory}: no {SERVING_JSON} (see docs/serving.md)")
    spec = json.loads(spec_path.read_text())
    if not (directory / "tokenizer").is_dir():
        raise ModelDirError(f"{directory}: no tokenizer/ directory")
    tokenizer = AutoTokenizer.from_pretrained(str(directory / "tokenizer"))
    model = LLark(
        Llama(_config_from_json(spec["llama"]), rngs=nnx.Rngs(0)), spec["audio_dim"],
        audio_patch_id=spec["audio_patch_id"], audio_start_id=spec["audio_start_id"],
        audio_end_id=spec["audio_end_id"], temporal_pool=spec.get("temporal_pool", 1),
        audio_layers=spec.get("audio_layers", 0), rngs=nnx.Rngs(1),
    )  # fmt: skip
    step, flat = _restore_params(directory)
    _fill_params(model, flat, directory)
    template = get_template(spec.get("template", "fastchat_v0"), tokenizer)
    if spec.get("system_prompt") is not None:
        template = dataclasses.replace(template, system_prompt=spec["system_prompt"])
    return ServedModel(model=model, tokenizer=tokenizer, template=template,
                       encoder=spec.get("encoder", "mel"),
                       encoder_args=dict(spec.get("encoder_args") or {}),
                       feature_pool=int(spec.get("feature_pool", 1)),
                       model_name=spec.get("model_name", "llark"), step=step)


@dataclasses.dataclass(frozen=True)
class ServingOverrides:
    """Command-line settings; None keeps serving.json's value (or the default for a workdir)."""

    tokenizer: str | None = None
    template: str | None = None
    system_prompt: str | None = None
    encoder: str | None = None
    feature_pool: int | None = None
    model_name: str | None = None


def _load_train_workdir(directory: Path, overrides: ServingOverrides) -> ServedModel:
    from llark_jax.infer.cli import config_encoder, load_checkpoint, load_tokenizer

    model, config, step = load_checkpoint(directory)
    tokenizer = load_tokenizer(overrides.tokenizer, config, model)
    data = config.get("data", {})
    template = get_template(overrides.template or data.get("template", "fastchat_v0"), tokenizer)
    encoder, encoder_args = config_encoder(config, overrides.encoder)
    return ServedModel(model=model, tokenizer=tokenizer, template=template, encoder=encoder,
                       encoder_args=encoder_args, feature_pool=overrides.feature_pool or 1,
                       model_name=overrides.model_name or "llark", step=step)


def load_served(directory: str | Path, overrides: ServingOverrides | None = None) -> ServedModel:
    """A model directory (`serving.json` present) or a training workdir, with `overrides`."""
    directory = Path(directory)
    overrides = overrides or ServingOverrides()
    if (directory / SERVING_JSON).is_file():
        served = load_model_dir(directory)
        if overrides.tokenizer or overrides.template:
            raise ModelDirError("--tokenizer/--template apply to training workdirs; a model "
                                f"directory names its own in {SERVING_JSON}")
    elif (directory / "checkpoints").is_dir():
        served = _load_train_workdir(directory, overrides)
    else:
        raise ModelDirError(f"{directory}: neither {SERVING_JSON} nor checkpoints/ (see "
                            "docs/serving.md)")
    if overrides.system_prompt is not None:
        served.template = dataclasses.replace(served.template,
                                              system_prompt=overrides.system_prompt)
    if overrides.encoder and overrides.encoder != served.encoder:  # its own arguments: defaults
        served.encoder, served.encoder_args = overrides.encoder, {}
    served.feature_pool = overrides.feature_pool or served.feature_pool
    served.model_name = overrides.model_name or served.model_name
    return served
