"""Hugging Face Llama checkpoints (config.json + safetensors / pytorch_model.bin) <-> `Llama`.

Loading reads one tensor at a time (safetensors are memory-mapped), casts it, and places it on its
target sharding when a mesh is given; the module itself is built abstractly (`nnx.eval_shape`), so
no random full-size copy is ever materialised. The decoder layers are stacked ([L, ...] arrays,
`llark_jax.model.llama`): HF layer i is row i, written into a zero-initialised stacked array on
its target sharding by a donated in-place update, so host memory holds one tensor at a time. HF
Llama q/k weights are already in rotate-half layout, so the mapping is a transpose/reshape only
(bit exact both ways):

    model.embed_tokens.weight [V, D]                -> embed [V, D]
    layers.i.self_attn.{q,k,v}_proj.weight [N*H, D] -> layers.attn.{q,k,v}[i] [D, N, H]
    layers.i.self_attn.o_proj.weight [D, N*H]       -> layers.attn.o[i] [N, H, D]
    layers.i.mlp.{gate,up,down}_proj.weight         -> layers.mlp.{gate,up,down}[i] (transposed)
    layers.i.{input,post_attention}_layernorm       -> layers.{input,post_attn}_norm.scale[i]
    model.norm.weight -> final_norm.scale;  lm_head.weight [V, D] -> lm_head [D, V]
    Qwen2: layers.i.self_attn.{q,k,v}_proj.bias [N*H] -> layers.attn.{q,k,v}_bias[i] [N, H]
    Qwen3: layers.i.self_attn.{q,k}_norm.weight [H] -> layers.attn.{q,k}_norm[i] [H]

Saving writes the same names back (one HF tensor per layer row), sharded with an index when asked.
"""

from __future__ import annotations

import functools
import glob
import json
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llark_jax.checkpoints.safetensors_io import (
    TensorEntry,
    iter_tensors,
    read_header,
    write_safetensors,
)
from llark_jax.model.llama import Llama, LlamaConfig, param_logical_axes
from llark_jax.model.sharding import DEFAULT_RULES, Rules, logical_to_spec

_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")
_LAYER_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "self_attn.q_proj.weight": (("attn", "q"), "in_proj"),
    "self_attn.k_proj.weight": (("attn", "k"), "in_proj"),
    "self_attn.v_proj.weight": (("attn", "v"), "in_proj"),
    "self_attn.o_proj.weight": (("attn", "o"), "out_proj"),
    "self_attn.q_proj.bias": (("attn", "q_bias"), "bias"),
    "self_attn.k_proj.bias": (("attn", "k_bias"), "bias"),
    "self_attn.v_proj.bias": (("attn", "v_bias"), "bias"),
    "self_attn.q_norm.weight": (("attn", "q_norm"), "same"),
    "self_attn.k_norm.weight": (("attn", "k_norm"), "same"),
    "mlp.gate_proj.weight": (("mlp", "gate"), "transpose"),
    "mlp.up_proj.weight": (("mlp", "up"), "transpose"),
    "mlp.down_proj.weight": (("mlp", "down"), "transpose"),
    "input_layernorm.weight": (("input_norm", "scale"), "same"),
    "post_attention_layernorm.weight": (("post_attn_norm", "scale"), "same"),
}
_TOP_KEYS: dict[str, tuple[tuple[str, ...], str]] = {
    "model.embed_tokens.weight": (("embed",), "vocab_rows"),
    "model.norm.weight": (("final_norm", "scale"), "same"),
    "lm_head.weight": (("lm_head",), "vocab_cols"),
}
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


class CheckpointError(ValueError):
    """A checkpoint that does not match the Llama layout (names the offending file/tensor)."""


def hf_name_to_path(name: str) -> tuple[tuple[str, ...], str, int | None] | None:
    """HF tensor name -> (param path in `Llama`, transform kind, layer row or None for
    non-layer tensors); None for ignored tensors."""
    if _IGNORED.match(name):
        return None
    if name in _TOP_KEYS:
        return (*_TOP_KEYS[name], None)
    m = _LAYER_RE.fullmatch(name)
    if m and m.group(2) in _LAYER_KEYS:
        path, kind = _LAYER_KEYS[m.group(2)]
        return ("layers", *path), kind, int(m.group(1))
    raise CheckpointError(f"unexpected tensor {name!r} in a Llama checkpoint")


def to_flax(w: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    """HF tensor -> Flax layout of `shape` (vocab matrices zero-padded to the padded vocab)."""
    if kind == "in_proj":  # [N*H, D] -> [D, N, H]
        return w.T.reshape(shape)
    if kind == "bias":  # [N*H] -> [N, H]
        return w.reshape(shape)
    if kind == "out_proj":  # [D, N*H] -> [N, H, D]
        return w.T.reshape(shape)
    if kind == "transpose":
        return w.T
    if kind == "vocab_rows":
        return np.pad(w, ((0, shape[0] - w.shape[0]), (0, 0)))
    if kind == "vocab_cols":
        return np.pad(w.T, ((0, 0), (0, shape[1] - w.shape[0])))
    return w


def to_hf(x: np.ndarray, kind: str, vocab_size: int) -> np.ndarray:
    """Inverse of `to_flax` (drops vocab padding)."""
    if kind == "in_proj":
        return x.reshape(x.shape[0], -1).T
    if kind == "bias":
        return x.reshape(-1)
    if kind == "out_proj":
        return x.reshape(-1, x.shape[-1]).T
    if kind == "transpose":
        return x.T
    if kind == "vocab_rows":
        return x[:vocab_size]
    if kind == "vocab_cols":
        return x.T[:vocab_size]
    return x


def abstract_llama(config: LlamaConfig) -> Llama:
    """A `Llama` whose parameters are `ShapeDtypeStruct`s (nothing allocated)."""
    return nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))


@functools.cache
def _row_setter(sharding: NamedSharding | None):
    """jit(stacked [L, ...], row [...], i) -> stacked with row i replaced; stacked is donated."""
    return jax.jit(lambda stacked, row, i: jax.lax.dynamic_update_index_in_dim(stacked, row, i, 0),
                   donate_argnums=0, out_shardings=sharding)


def _place(value: np.ndarray, mesh: Mesh | None, spec: PartitionSpec) -> jax.Array:
    return jnp.asarray(value) if mesh is None else jax.device_put(value, NamedSharding(mesh, spec))


def _set_layer_row(var: nnx.Param, row: np.ndarray, layer: int, mesh: Mesh | None,
                   spec: PartitionSpec) -> None:
    """Writes row `layer` of a stacked param in place (zeros on its sharding before the first)."""
    sharding = None if mesh is None else NamedSharding(mesh, spec)
    stacked = var.get_value()
    if not isinstance(stacked, jax.Array):  # still the abstract ShapeDtypeStruct
        stacked = jax.jit(lambda: jnp.zeros(stacked.shape, stacked.dtype),
                          out_shardings=sharding)()
    row_array = _place(row, mesh, PartitionSpec(*spec[1:]))
    var.set_value(_row_setter(sharding)(stacked, row_array, np.int32(layer)))


def fill_llama(
    config: LlamaConfig,
    tensors: Iterable[tuple[str, np.ndarray]],
    *,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    truncate: bool = False,
) -> Llama:
    """Builds a `Llama` from (HF name, array) pairs, one tensor at a time, placed on `mesh`.

    `truncate`: drop the tensors of layers past `config.num_layers` (the checkpoint cut to its
    first layers, `model.keep_layers`); otherwise such a tensor is a CheckpointError."""
    model = abstract_llama(config)
    params = {path: v for path, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}
    missing = {(path, i) for path in params
               for i in (range(config.num_layers) if path[0] == "layers" else [None])}
    for name, w in tensors:
        target = hf_name_to_path(name)
        if target is None or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        path, kind, layer = target
        var = params[path]
        shape = tuple(var.get_value().shape)
        if layer is not None and truncate and layer >= config.num_layers:
            continue
        if layer is not None and not 0 <= layer < config.num_layers:
            raise CheckpointError(f"tensor {name}: no layer {layer} in a {config.num_layers}-"
                                  "layer config")
        target_shape = shape if layer is None else shape[1:]
        value = np.asarray(to_flax(np.asarray(w), kind, target_shape), dtype=config.param_dtype)
        if value.shape != target_shape:
            raise CheckpointError(f"tensor {name}: shape {w.shape} does not fit {target_shape}")
        spec = (PartitionSpec(*[None] * len(shape)) if mesh is None else logical_to_spec(
            param_logical_axes(var), rules or DEFAULT_RULES, mesh=mesh, shape=shape))
        if layer is None:
            var.set_value(_place(value, mesh, spec))
        else:
            _set_layer_row(var, value, layer, mesh, spec)
        missing.discard((path, layer))
    if missing:
        names = sorted(".".join(p) + ("" if i is None else f"[{i}]") for p, i in missing)
        raise CheckpointError(f"checkpoint lacks tensors for {names}")
    return model


def _is_llama_tensor(name: str) -> bool:
    """Whether `name` is a tensor of the Llama layout (ignored buffers included)."""
    try:
        hf_name_to_path(name)
    except CheckpointError:
        return False
    return True


def _safetensors_files(path: str) -> list[str]:
    """The safetensors files holding the LM, chosen as `transformers` chooses them.

    `model.safetensors` when present, else the shards named by `model.safetensors.index.json`
    (`from_pretrained` checks in that order and reads nothing else). A folder with neither
    (unindexed shards, other file names) falls back to every `*.safetensors` that holds at least
    one Llama tensor name, so files beside the LM with none (an export's
    `llark_projector.safetensors`, adapters) are skipped; [] when none qualifies.
    """
    single = os.path.join(path, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            shard_names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(path, name) for name in shard_names]
    return [f for f in sorted(glob.glob(os.path.join(path, "*.safetensors")))
            if any(_is_llama_tensor(name) for name in read_header(f)[0])]


def _checkpoint_tensors(path: str) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) of every weight: the `_safetensors_files`, else `pytorch_model*.bin`."""
    files = _safetensors_files(path)
    if files:
        for f in files:
            yield from iter_tensors(f)
        return
    bins = sorted(glob.glob(os.path.join(path, "pytorch_model*.bin")))
    if not bins:
        raise CheckpointError(f"{path}: no *.safetensors with Llama weights or "
                              "pytorch_model*.bin files")
    import torch  # only for the legacy format; llark_jax imports without torch

    for f in bins:
        state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        for name in list(state):
            yield name, state.pop(name).float().numpy()


def load_config(path: str | os.PathLike, **overrides: Any) -> LlamaConfig:
    """`LlamaConfig` from `path/config.json`."""
    with open(os.path.join(path, "config.json")) as f:
        return LlamaConfig.from_hf_dict(json.load(f), **overrides)


def load_llama(
    path: str | os.PathLike,
    *,
    dtype: Any = jnp.float32,
    mesh: Mesh | None = None,
    rules: Rules | None = None,
    compute_dtype: Any = None,
    keep_layers: int = 0,
    **config_overrides: Any,
) -> Llama:
    """Loads an HF Llama directory: params in `dtype`, compute in `compute_dtype` (or dtype);
    `keep_layers` > 0: only the first that many decoder layers.

    The weights come from the files `transformers` reads (`_safetensors_files`):
    `model.safetensors`, else the shards of `model.safetensors.index.json`, else the
    `*.safetensors` holding Llama tensors, else `pytorch_model*.bin`; other files beside them
    (an export's `llark_projector.safetensors`) are never read."""
    if keep_layers:
        config_overrides["num_layers"] = keep_layers
    config = load_config(path, param_dtype=dtype, dtype=compute_dtype or dtype, **config_overrides)
    return fill_llama(config, _checkpoint_tensors(os.fspath(path)), mesh=mesh, rules=rules,
                      truncate=bool(keep_layers))


def _hf_entries(model: Llama) -> list[TensorEntry]:
    """One safetensors entry per HF tensor (a stacked layer param gives L entries, row i each)."""
    cfg = model.config
    top = {path: name for name, (path, _) in _TOP_KEYS.items()}
    suffixes = {path: suffix for suffix, (path, _) in _LAYER_KEYS.items()}
    entries = []
    for path, var in nnx.iter_graph(model):
        if not isinstance(var, nnx.Param):
            continue
        value = var.get_value()
        if path in top:
            rows = [(top[path], None)]
        else:
            rows = [(f"model.layers.{i}.{suffixes[path[1:]]}", i) for i in range(cfg.num_layers)]
        row_struct = jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
        for name, i in rows:
            kind = hf_name_to_path(name)[1]

            def fetch(v=value, i=i, k=kind) -> np.ndarray:  # row i sliced only when written
                return to_hf(np.asarray(jax.device_get(v if i is None else v[i])), k,
                             cfg.vocab_size)

            struct = value if i is None else row_struct
            shape = jax.eval_shape(lambda a, k=kind: to_hf(a, k, cfg.vocab_size), struct).shape
            entries.append(TensorEntry(name, tuple(shape), np.dtype(value.dtype), fetch))
    return sorted(entries, key=lambda e: e.name)


def save_llama(
    model: Llama, path: str | os.PathLike, *, max_shard_bytes: int | None = None
) -> None:
    """Writes HF `config.json` + safetensors (sharded with an index when over max_shard_bytes)."""
    os.makedirs(path, exist_ok=True)
    entries = _hf_entries(model)
    hf_config = model.config.to_hf_dict()
    hf_config["dtype"] = np.dtype(model.config.param_dtype).name
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config, f, indent=2)
    shards: list[list[TensorEntry]] = [[]]
    for e in entries:
        size = sum(x.nbytes for x in shards[-1])
        if max_shard_bytes and shards[-1] and size + e.nbytes > max_shard_bytes:
            shards.append([])
        shards[-1].append(e)
    if len(shards) == 1:
        write_safetensors(os.path.join(path, "model.safetensors"), shards[0])
        return
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        write_safetensors(os.path.join(path, fname), shard)
        weight_map.update({e.name: fname for e in shard})
    index = {"metadata": {"total_size": sum(e.nbytes for e in entries)}, "weight_map": weight_map}
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
