"""Builds the LLark model a config describes: resolved config, tokenizer, sharded weights.

`config.model.source`:
- `random`: a Llama of `config.model.llama` dims with random weights (tests, planning);
- `hf`: a Hugging Face Llama directory `config.model.path` (`llark_jax.checkpoints.hf`);
- `gguf`: a GGUF file `config.model.path` ("" = the embedded SmolLM2 default).

`resolve_config` runs once when a run starts: it extends the source's tokenizer with the LLark
tokens (reference order, `llark_jax.checkpoints.tokens`) and writes what the files decide into the
config: `model.llama` (the checkpoint's dims), `model.vocab_size` and the audio token ids. From
then on the config alone describes the model's structure, so a saved config rebuilds the model
without the original weights (`llark_jax.checkpoints.model_dir`).

Dtype policy (`model.param_dtype` / `model.dtype`): `bfloat16`/`bfloat16` is the reference's
pure-bf16 training (spec §1.6); `float32`/`bfloat16` keeps fp32 master weights with bf16 compute;
`float32`/`float32` is the exact CPU mode.

Shardings come from the logical axis names every parameter carries (`out_sharding` metadata, see
`llark_jax.model.llama`) and a rules table; anything without names (optimizer counters, the step)
is replicated. Sharded init goes through `nnx.eval_shape` + `jax.jit(out_shardings=...)`, so a 7B
model is never whole on one device.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llark_jax.checkpoints.tokens import (
    AUDIO_END_TOKEN,
    AUDIO_PATCH_TOKEN,
    AUDIO_START_TOKEN,
    extend_tokenizer,
    extend_with_llark_tokens,
)
from llark_jax.config import ConfigError
from llark_jax.model.llama import Llama, LlamaConfig
from llark_jax.model.llark import LLark
from llark_jax.model.lora import add_lora, parse_targets
from llark_jax.model.quant import quantize_base
from llark_jax.model.sharding import Rules, logical_to_spec

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
POLICY_FIELDS = ("dtype", "param_dtype", "remat", "scan_layers", "attention")
AUDIO_ID_FIELDS = {"audio_start_id": AUDIO_START_TOKEN, "audio_patch_id": AUDIO_PATCH_TOKEN,
                   "audio_end_id": AUDIO_END_TOKEN}


class TokenIdMismatchError(ValueError):
    """The extended tokenizer's audio ids differ from ids the config sets explicitly."""


def dtype_of(name: str) -> Any:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


# ------------------------------------------------------------------ config and tokenizer


def _file_llama_config(model_cfg: ml_collections.ConfigDict) -> LlamaConfig:
    """The checkpoint's own dims (before the LLark token extension), cut to
    `model.keep_layers` decoder layers when that is > 0."""
    if model_cfg.source == "hf":
        config = LlamaConfig.from_hf_dict(json.loads((Path(model_cfg.path) / "config.json")
                                                     .read_text()))
    elif model_cfg.source == "gguf":
        from gguf import GGUFReader

        from llark_jax.checkpoints.gguf import default_gguf_path, gguf_config

        path = model_cfg.path or default_gguf_path()
        config = gguf_config(GGUFReader(path), path)
    else:
        raise ValueError(f"unknown model source {model_cfg.source!r}; use random, hf or gguf")
    keep = model_cfg.get("keep_layers", 0)
    if not keep:
        return config
    if not 0 < keep <= config.num_layers:
        raise ValueError(f"model.keep_layers={keep} but the checkpoint has {config.num_layers} "
                         "decoder layers")
    return dataclasses.replace(config, num_layers=keep)


def source_tokenizer(model_cfg: ml_collections.ConfigDict) -> Any | None:
    """The tokenizer of `model.tokenizer`, else of the hf/gguf source (not yet extended); None
    for a random model without one (synthetic data needs none)."""
    if model_cfg.get("tokenizer"):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_cfg.tokenizer)
    if model_cfg.source == "hf":
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_cfg.path)
    if model_cfg.source == "gguf":
        from llark_jax.checkpoints.gguf import load_gguf_tokenizer

        return load_gguf_tokenizer(model_cfg.path or None)
    return None


def has_llark_tokens(tokenizer: Any) -> bool:
    """Whether `tokenizer` already holds the LLark tokens (e.g. that of an `export` folder)."""
    return tokenizer.convert_tokens_to_ids(AUDIO_PATCH_TOKEN) not in (None, tokenizer.unk_token_id)


def with_llark_tokens(tokenizer: Any) -> Any:
    """`tokenizer` extended with the LLark tokens unless it already holds them (in place)."""
    if not has_llark_tokens(tokenizer):
        extend_tokenizer(tokenizer)
    return tokenizer


def resolve_config(config: ml_collections.ConfigDict) -> tuple[ml_collections.ConfigDict, Any]:
    """(config with the model's structure written in, extended tokenizer or None); see module
    docstring. Explicit audio ids (>= 0) must equal the tokenizer's, else TokenIdMismatchError."""
    config = ml_collections.ConfigDict(config.to_dict())
    m = config.model
    tokenizer = source_tokenizer(m)
    if m.source != "random":
        fields = dataclasses.asdict(_file_llama_config(m))
        for name in POLICY_FIELDS:
            fields.pop(name)
        fields["vocab_multiple"] = m.llama.get("vocab_multiple", 1)  # the run's choice
        m.llama = ml_collections.ConfigDict(fields)
    if tokenizer is not None:
        with_llark_tokens(tokenizer)
        wrong = {}
        for field, token in AUDIO_ID_FIELDS.items():
            found = tokenizer.convert_tokens_to_ids(token)
            if m[field] >= 0 and m[field] != found:
                wrong[field] = found
            m[field] = found
        if wrong:
            raise TokenIdMismatchError(
                f"the extended tokenizer gives {wrong}; set --config.model.<field> to these "
                f"values or -1 (and model.vocab_size={len(tokenizer)} or 0)")
        if m.source == "random" and m.llama.vocab_size < len(tokenizer):
            raise ConfigError(f"model.llama.vocab_size={m.llama.vocab_size} is smaller than the "
                              f"tokenizer ({len(tokenizer)} tokens with the LLark tokens): set "
                              f"--config.model.llama.vocab_size={len(tokenizer)} or more")
        if m.source != "random":
            if m.vocab_size > 0 and m.vocab_size != len(tokenizer):
                raise TokenIdMismatchError(f"model.vocab_size={m.vocab_size} but the extended "
                                           f"tokenizer has {len(tokenizer)} tokens")
            m.vocab_size = len(tokenizer)
    missing = [field for field in AUDIO_ID_FIELDS if m[field] < 0]
    if missing:
        raise ConfigError(f"model.{missing[0]} is -1 and there is no tokenizer to take it from: "
                          "set the ids or model.tokenizer")
    if m.vocab_size > 0:
        m.llama.vocab_size = m.vocab_size
    return config, tokenizer


def llama_config(model_cfg: ml_collections.ConfigDict) -> LlamaConfig:
    """The `LlamaConfig` of a resolved model config (`model.llama` dims + the dtype policy)."""
    policy = dict(dtype=dtype_of(model_cfg.dtype), param_dtype=dtype_of(model_cfg.param_dtype),
                  remat=model_cfg.remat, scan_layers=model_cfg.scan_layers,
                  attention=model_cfg.get("attention", "einsum"))
    fields = model_cfg.llama.to_dict()
    if model_cfg.get("vocab_size", 0) > 0:
        fields["vocab_size"] = model_cfg.vocab_size
    return LlamaConfig(**fields, **policy)


# ------------------------------------------------------------------ model structure and weights


def model_fn(model_cfg: ml_collections.ConfigDict, seed: int) -> Callable[[], LLark]:
    """A zero-argument constructor of a randomly initialised LLark of the config's structure
    (for sharded random init and, through `nnx.eval_shape`, the abstract structure)."""
    cfg = llama_config(model_cfg)

    def make() -> LLark:
        rngs = nnx.Rngs(seed)
        llama = with_base_options(Llama(cfg, rngs=rngs), model_cfg, seed)
        return LLark(llama, model_cfg.audio_dim, rngs=rngs, **audio_options(model_cfg))

    return make


def with_base_options(llama: Llama, model_cfg: ml_collections.ConfigDict, seed: int) -> Llama:
    """`llama` with its decoder projections quantised (`model.quantize_base`: "int8" | "int4")
    and the config's LoRA adapters attached (`model.lora.rank > 0`); as is without either."""
    quantize = model_cfg.get("quantize_base", "")
    if quantize:
        llama = quantize_base(llama, int(quantize.removeprefix("int")))
    lora = model_cfg.get("lora")
    if lora is None or not lora.rank:
        return llama
    return add_lora(llama, int(lora.rank), float(lora.alpha), parse_targets(lora.targets), seed)


def audio_options(model_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """LLark's keyword arguments: audio token ids, `temporal_pool`, `audio_layers`,
    `projector_init_scale`."""
    return {"audio_start_id": model_cfg.audio_start_id,
            "audio_patch_id": model_cfg.audio_patch_id, "audio_end_id": model_cfg.audio_end_id,
            "temporal_pool": model_cfg.temporal_pool,
            "audio_layers": model_cfg.get("audio_layers", 0),
            "projector_init_scale": model_cfg.get("projector_init_scale", 1.0)}


def _variable_sharding(variable: nnx.Variable, mesh: Mesh, rules: Rules) -> NamedSharding:
    names = variable.get_metadata().get("out_sharding")
    shape = getattr(variable.get_value(), "shape", ())
    if not names or len(names) != len(shape):
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, logical_to_spec(tuple(names), rules, mesh=mesh, shape=shape))


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """`tree` with every array replaced by its `NamedSharding` (Variables keep their metadata;
    optimizer moments built by `jax.tree.map` over params shard like their parameters)."""
    def sharding(leaf: Any) -> Any:
        if isinstance(leaf, nnx.Variable):
            if not hasattr(leaf.get_value(), "shape"):  # e.g. optax MaskedNode: no arrays
                return leaf
            return leaf.replace(value=_variable_sharding(leaf, mesh, rules))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(sharding, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_model(make_model: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, Any, Any]:
    """`(graphdef, abstract params, abstract rest)` without allocating any parameter."""
    return nnx.split(nnx.eval_shape(make_model), nnx.Param, ...)


def abstract_with_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """`jax.ShapeDtypeStruct`s of an abstract tree carrying their shardings (restore targets)."""
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        tree, tree_shardings(tree, mesh, rules))


def init_sharded(make_model: Callable[[], nnx.Module], mesh: Mesh,
                 rules: Rules) -> tuple[nnx.GraphDef, Any, Any]:
    """Initialises `make_model()` directly into its shardings: `(graphdef, params, rest)`."""
    graphdef, abstract_params, abstract_rest = abstract_model(make_model)
    out_shardings = (tree_shardings(abstract_params, mesh, rules),
                     tree_shardings(abstract_rest, mesh, rules))

    def init() -> tuple[Any, Any]:
        _, params, rest = nnx.split(make_model(), nnx.Param, ...)
        return params, rest

    params, rest = jax.jit(init, out_shardings=out_shardings)()
    return graphdef, params, rest


def _pretrained_llama(model_cfg: ml_collections.ConfigDict, seed: int) -> Llama:
    """The hf/gguf Llama with the LLark token rows (reference init rules)."""
    dtypes = {"dtype": dtype_of(model_cfg.param_dtype),
              "compute_dtype": dtype_of(model_cfg.dtype), "remat": model_cfg.remat,
              "scan_layers": model_cfg.scan_layers, "keep_layers": model_cfg.get("keep_layers", 0)}
    if model_cfg.source == "hf":
        from llark_jax.checkpoints.hf import load_llama

        llama = load_llama(model_cfg.path, **dtypes)
    else:
        from llark_jax.checkpoints.gguf import load_gguf_llama

        llama, _ = load_gguf_llama(model_cfg.path or None, **dtypes)
    tokenizer = source_tokenizer(model_cfg)  # a GGUF's own is parsed once per process
    if not has_llark_tokens(tokenizer):  # an exported LLark LM has the rows already
        extend_with_llark_tokens(llama, tokenizer, seed=seed)
    return with_base_options(llama, model_cfg, seed)


def build_model(model_cfg: ml_collections.ConfigDict, mesh: Mesh, rules: Rules,
                seed: int) -> tuple[nnx.GraphDef, Any, Any]:
    """`(graphdef, params, rest)` of a resolved model config, every array in its sharding."""
    if model_cfg.source == "random":
        return init_sharded(model_fn(model_cfg, seed), mesh, rules)
    model = LLark(_pretrained_llama(model_cfg, seed), model_cfg.audio_dim,
                  rngs=nnx.Rngs(seed), **audio_options(model_cfg))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return graphdef, jax.device_put(params, tree_shardings(params, mesh, rules)), rest
