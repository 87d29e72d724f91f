"""Builds the LLark model a config describes, sharded on a mesh, plus its analytic FLOPs.

`config.model.source`:
- `random`: a Llama of `config.model.llama` dims with random weights (tests, planning);
- `hf`: a Hugging Face Llama directory `config.model.path` (`llark_jax.checkpoints.hf`);
- `gguf`: a GGUF file `config.model.path` ("" = the embedded SmolLM2 default).

Dtype policy (`config.model.param_dtype` / `config.model.dtype`): `bfloat16`/`bfloat16` is the
reference's pure-bf16 training (params and Adam moments bf16, spec §1.6); `float32`/`bfloat16`
keeps fp32 master weights with bf16 compute; `float32`/`float32` is the exact CPU test mode.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import Mesh

from llark_jax.model.llama import Llama, LlamaConfig
from llark_jax.model.llark import LLark
from llark_jax.model.sharding import Rules
from llark_jax.train.sharded_init import init_sharded, place, tree_shardings

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str) -> Any:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def llama_config(model_cfg: ml_collections.ConfigDict) -> LlamaConfig:
    """The `LlamaConfig` of the model: `model.llama` dims (random) or the checkpoint's.

    For `hf`/`gguf` (dims from config.json / GGUF metadata), `model.vocab_size` (when > 0)
    overrides the file's vocabulary: the size after the LLark token extension (32004 for Llama-2).
    """
    policy = dict(dtype=dtype_of(model_cfg.dtype), param_dtype=dtype_of(model_cfg.param_dtype),
                  remat=model_cfg.remat, scan_layers=model_cfg.scan_layers)
    if model_cfg.source == "random":
        return LlamaConfig(**model_cfg.llama.to_dict(), **policy)
    if model_cfg.vocab_size > 0:
        policy["vocab_size"] = model_cfg.vocab_size
    if model_cfg.source == "hf":
        hf_dict = json.loads((Path(model_cfg.path) / "config.json").read_text())
        return LlamaConfig.from_hf_dict(hf_dict, **policy)
    if model_cfg.source == "gguf":
        from gguf import GGUFReader

        from llark_jax.checkpoints.gguf import default_gguf_path, gguf_config

        path = model_cfg.path or default_gguf_path()
        return gguf_config(GGUFReader(path), path, **policy)
    raise ValueError(f"unknown model source {model_cfg.source!r}; use random, hf or gguf")


def audio_token_ids(model_cfg: ml_collections.ConfigDict) -> dict[str, int]:
    return {"audio_start_id": model_cfg.audio_start_id, "audio_patch_id": model_cfg.audio_patch_id,
            "audio_end_id": model_cfg.audio_end_id}


def audio_options(model_cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """`temporal_pool` and `audio_layers` (MusiLingo's learned layer average; 0 = off, and the
    default for configs written before the key existed)."""
    return {"temporal_pool": model_cfg.temporal_pool,
            "audio_layers": model_cfg.get("audio_layers", 0)}


def model_fn(model_cfg: ml_collections.ConfigDict, seed: int) -> Callable[[], LLark]:
    """A zero-argument constructor of a randomly initialised LLark with the model's structure.

    Used for sharded random init and, through `nnx.eval_shape`, for the abstract structure of a
    pretrained model (identical shapes), so nothing is allocated before the weights are loaded.
    """
    cfg = llama_config(model_cfg)

    def make() -> LLark:
        rngs = nnx.Rngs(seed)
        return LLark(Llama(cfg, rngs=rngs), model_cfg.audio_dim, rngs=rngs,
                     **audio_options(model_cfg), **audio_token_ids(model_cfg))

    return make


def build_model(
    model_cfg: ml_collections.ConfigDict, mesh: Mesh, rules: Rules, seed: int
) -> tuple[nnx.GraphDef, Any, Any]:
    """`(graphdef, params, rest)` with every array in its sharding on `mesh`."""
    if model_cfg.source == "random":
        return init_sharded(model_fn(model_cfg, seed), mesh, rules)
    from llark_jax.train.pretrained import pretrained_llama

    llama, _ = pretrained_llama(model_cfg, seed)
    model = LLark(llama, model_cfg.audio_dim, rngs=nnx.Rngs(seed), **audio_options(model_cfg),
                  **audio_token_ids(model_cfg))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    params = place(params, tree_shardings(params, mesh, rules))
    return graphdef, params, rest


def count_params(params: Any) -> int:
    import jax

    return int(sum(x.size for x in jax.tree.leaves(params)))


def train_flops_per_step(cfg: LlamaConfig, *, audio_dim: int, batch: int, seq_len: int,
                         audio_frames: int, audio_layers: int = 0,
                         head_positions: int = 0) -> float:
    """Analytic training FLOPs of one optimizer step (forward + backward = 3 × forward).

    Per token: 6·N_matmul (N_matmul = decoder-layer matmul params + lm_head; the embedding lookup
    does no FLOPs) plus causal-free attention 12·layers·heads·head_dim·seq_len (PaLM convention);
    the projector adds 6·D·hidden per audio frame (D = D_audio, or D_audio / L after a layer mix
    over `audio_layers` L > 0; the mix itself, 6·D_audio per frame, is counted too). With
    `head_positions` K > 0 (`train.head_positions`) the lm_head term counts K positions per row
    instead of `seq_len`: the FLOPs the step executes. Remat recomputation is not counted (MFU
    convention). XLA's cost analysis counts a scanned layer body once, so it is not used.
    """
    d, h = cfg.hidden_size, cfg.head_dim
    attn = d * h * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
    mlp = 3 * d * cfg.intermediate_size
    tokens = batch * seq_len
    head_tokens = batch * min(head_positions, seq_len) if head_positions else tokens
    layers = 6 * cfg.num_layers * (attn + mlp) * tokens
    head = 6 * d * cfg.padded_vocab_size * head_tokens
    attention = 12 * cfg.num_layers * cfg.num_heads * h * seq_len
    dense_in = audio_dim // audio_layers if audio_layers else audio_dim
    mix = 6 * audio_dim if audio_layers else 0
    projector = (6 * dense_in * d + mix) * batch * audio_frames
    return float(layers + head + attention * tokens + projector)
