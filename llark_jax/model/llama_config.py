"""`LlamaConfig`: Llama hyperparameters, read from and written to HF `config.json` dicts.

The same decoder covers the Qwen2/Qwen2.5 and Qwen3 families (`model_type` "qwen2" / "qwen3"):
Qwen2 adds biases to the q/k/v projections (`attention_bias`); Qwen3 has none but RMS-normalises
each head of q and k over head_dim before RoPE (`qk_norm`). Sliding-window attention (a Qwen2
option off in the released models) is rejected.

Model code imports it from `llark_jax.model.llama` (re-exported there).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM"}


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Llama hyperparameters (HF config.json names in `from_hf_dict`)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    model_type: str = "llama"  # llama | qwen2 | qwen3 (the HF architecture written on export)
    attention_bias: bool = False  # q/k/v projection biases (Qwen2)
    qk_norm: bool = False  # per-head RMSNorm of q and k before RoPE (Qwen3)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False
    scan_layers: bool = False  # rolled layer scan (one compiled body, big models); else unrolled
    attention: str = "einsum"  # attention core: einsum | dot_product | splash (model/attention.py)
    vocab_multiple: int = 1  # pad embed/lm_head rows to a multiple of this (e.g. 128)
    initializer_range: float = 0.02

    def __hash__(self) -> int:  # rope_scaling is a dict; configs live in (hashable) graphdefs
        return hash(json.dumps(self.to_hf_dict(), sort_keys=True) + str(self.dtype)
                    + str(self.param_dtype)
                    + str((self.remat, self.scan_layers, self.vocab_multiple, self.attention)))

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return (self.vocab_size + m - 1) // m * m

    @classmethod
    def from_hf_dict(cls, d: Mapping[str, Any], **overrides: Any) -> LlamaConfig:
        """Reads an HF Llama config.json dict (transformers 4.x `rope_scaling` or 5.x
        `rope_parameters`)."""
        model_type = d.get("model_type", "llama")
        if model_type not in ARCHITECTURES:
            raise ValueError(f"model_type {model_type!r} is not supported; "
                             f"supported: {sorted(ARCHITECTURES)}")
        if model_type != "qwen2" and (d.get("attention_bias") or d.get("mlp_bias")):
            raise ValueError(f"{model_type} config with attention_bias/mlp_bias (a bias on the "
                             "output projection too) is not supported")
        if d.get("use_sliding_window"):
            raise ValueError("sliding-window attention (use_sliding_window) is not supported")
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {d.get('hidden_act')!r}")
        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        theta = float(rope.pop("rope_theta", d.get("rope_theta", 10000.0)))
        kind = rope.get("rope_type", rope.get("type", "default"))
        heads = int(d["num_attention_heads"])
        fields = dict(
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_layers=int(d["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(d.get("num_key_value_heads") or heads),
            head_dim=int(d.get("head_dim") or d["hidden_size"] // heads),
            rope_theta=theta,
            rope_scaling=None if kind == "default" else rope,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=int(d.get("max_position_embeddings", 2048)),
            initializer_range=float(d.get("initializer_range", 0.02)),
            model_type=model_type,
            attention_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
        )
        fields.update(overrides)
        return cls(**fields)

    def to_hf_dict(self) -> dict[str, Any]:
        """The HF (transformers 5.x) config.json dict of this config."""
        rope = {"rope_type": "default", **(self.rope_scaling or {}), "rope_theta": self.rope_theta}
        return {
            "architectures": [ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "rope_parameters": rope,
            "attention_bias": self.attention_bias,
            "mlp_bias": False,
        }
