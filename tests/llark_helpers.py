"""Tiny LLark models and real conversation batches for the LLark model tests."""

from __future__ import annotations

import numpy as np
from flax import nnx
from tokenizer_fixtures import make_llark_tokenizer

from llark_jax.data import conversation as conv
from llark_jax.model.llama import Llama, LlamaConfig
from llark_jax.model.llark import LLark

AUDIO_DIM = 48
QUESTION = (
    "Describe the instruments you hear, and tell me about the tempo and the key of this song."
)
ANSWER = (
    "A piano and a bass guitar play a slow groove with bright drums and warm strings; the tempo "
    "is 120 BPM and the key is A minor. " * 2
).strip()


def tiny_llark(tokenizer, *, seed: int = 0, temporal_pool: int = 1, tie: bool = False) -> LLark:
    """2-layer GQA Llama (E=64, 4 heads, 2 kv heads) + projector 48 -> 64, float32."""
    ids = conv.AudioTokenIds.from_tokenizer(tokenizer)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, rms_norm_eps=1e-5, tie_word_embeddings=tie,
    )
    return LLark(
        Llama(cfg, rngs=nnx.Rngs(seed)), AUDIO_DIM, audio_patch_id=ids.patch,
        audio_start_id=ids.start, audio_end_id=ids.end, temporal_pool=temporal_pool,
        rngs=nnx.Rngs(seed + 1),
    )


def padded_batch(tokenizer, examples: list[dict], pad_to: int | None = None) -> dict:
    """Right-pad examples (pad id, labels -100) into [B, L] arrays + attention_mask."""
    length = pad_to or max(len(e["input_ids"]) for e in examples)
    b = len(examples)
    input_ids = np.full((b, length), tokenizer.pad_token_id, np.int32)
    labels = np.full((b, length), conv.IGNORE_INDEX, np.int32)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        input_ids[i, :n], labels[i, :n] = e["input_ids"], e["labels"]
    return {"input_ids": input_ids, "labels": labels,
            "attention_mask": (input_ids != tokenizer.pad_token_id).astype(np.int32)}


def reference_batch(n_frames: int = 240, seed: int = 0):
    """Tokenizer + 2 FastChat examples (audio first, audio last) of ~330 tokens + audio [2,T,48]."""
    tok = make_llark_tokenizer()
    examples = [  # different lengths, so the second row is right-padded
        conv.build_example(tok, conv.FASTCHAT_V0, QUESTION, ANSWER, n_frames, True),
        conv.build_example(tok, conv.FASTCHAT_V0, QUESTION, ANSWER[:60], n_frames, False),
    ]
    audio = np.random.default_rng(seed).normal(size=(2, n_frames, AUDIO_DIM)).astype(np.float32)
    return tok, examples, padded_batch(tok, examples), audio
