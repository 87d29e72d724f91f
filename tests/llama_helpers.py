"""Tiny random HF Llama checkpoints (real `transformers.LlamaForCausalLM`) and batch helpers."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile

import numpy as np
import torch
import transformers

TINY = dict(vocab_size=384, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            max_position_embeddings=1024, rms_norm_eps=1e-5)

# name -> extra config: MHA/GQA, tied/untied, theta 1e4/5e5, llama3 and linear rope scaling.
CONFIGS = {
    "mha_tied_1e4": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                         rope_theta=10000.0),
    "gqa_untied_5e5": dict(num_attention_heads=8, num_key_value_heads=2,
                           tie_word_embeddings=False, rope_theta=500000.0),
    "gqa_llama3": dict(
        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
        rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=64),
    ),
    "mqa_linear": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=True,
                       rope_theta=10000.0, rope_scaling=dict(rope_type="linear", factor=4.0)),
}


@functools.cache
def make_torch_llama(name: str, seed: int = 0, dtype=torch.float32):
    """A random tiny `LlamaForCausalLM` with weights large enough for peaked next-token choices.

    Cached per process (building one costs seconds on a busy 2-core machine): do not mutate it.
    """
    extra = dict(CONFIGS[name])
    rope_theta = extra.pop("rope_theta")
    rope = dict(extra.pop("rope_scaling", None) or {"rope_type": "default"})
    rope["rope_theta"] = rope_theta
    config = transformers.LlamaConfig(**TINY, **extra, rope_parameters=rope)
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.08)
    return cast_torch_llama(model, dtype)


def cast_torch_llama(model: transformers.LlamaForCausalLM, dtype) -> transformers.LlamaForCausalLM:
    """`model.to(dtype)` keeping the RoPE inverse frequencies float32, as `from_pretrained` does."""
    rotary = model.model.rotary_emb
    buffers = {k: getattr(rotary, k).clone() for k in ("inv_freq", "original_inv_freq")
               if hasattr(rotary, k)}
    model = model.to(dtype)
    for k, v in buffers.items():
        setattr(rotary, k, v)
    return model


def save_torch_llama(model: transformers.LlamaForCausalLM, path, *, sharded: bool = False) -> str:
    """`save_pretrained` into `path` (many small shards with an index when `sharded`)."""
    model.save_pretrained(path, max_shard_size="60KB" if sharded else "10GB")
    return str(path)


@functools.cache
def cached_checkpoint(name: str, dtype=torch.float32, sharded: bool = False) -> str:
    """A saved checkpoint of `make_torch_llama(name, dtype=dtype)`, reused within the process."""
    path = tempfile.mkdtemp(prefix=f"llama_{name}_")
    atexit.register(shutil.rmtree, path, True)
    return save_torch_llama(make_torch_llama(name, dtype=dtype), path, sharded=sharded)


def random_batch(vocab: int, lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids [B, max(lengths)] int32 (pad id 0) and attention mask (1 = token)."""
    rng = np.random.default_rng(seed)
    t = max(lengths)
    ids = np.zeros((len(lengths), t), np.int32)
    mask = np.zeros((len(lengths), t), np.int32)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(1, vocab, n)
        mask[i, :n] = 1
    return ids, mask


def torch_logits(model, ids: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """float32 logits [B, T, V] of the torch reference."""
    with torch.no_grad():
        out = model(input_ids=torch.from_numpy(ids).long(),
                    attention_mask=None if mask is None else torch.from_numpy(mask).long())
    return out.logits.float().numpy()
