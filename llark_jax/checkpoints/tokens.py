"""Extend a tokenizer and a `Llama` with the LLark tokens (reference spec §1.3), in this order:

1. `[PAD]` (only if the tokenizer has no pad token): embed / lm_head row = mean of existing rows.
2. `<audio_patch>`: rows drawn from N(0, initializer_range) (0.02, HF's default resize init).
3. `<audio_start>`, `<audio_end>`: rows = mean of all previous rows, including `[PAD]` and
   `<audio_patch>`.

Both the input embedding and an untied `lm_head` get the rows. Means are taken in float32 and cast
to the parameter dtype. Extend before placing the model on a mesh (new arrays land on the default
device).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from llark_jax.model.llama import Llama

PAD_TOKEN = "[PAD]"
AUDIO_PATCH_TOKEN = "<audio_patch>"
AUDIO_START_TOKEN = "<audio_start>"
AUDIO_END_TOKEN = "<audio_end>"


@dataclasses.dataclass(frozen=True)
class LlarkTokenIds:
    """Ids of the padding and audio tokens after extension."""

    pad: int
    patch: int
    start: int
    end: int


class VocabularyMismatchError(ValueError):
    """The tokenizer's size and the model's vocabulary disagree, so new ids would not line up."""


def _append_rows(rows_vd: np.ndarray, new_nd: np.ndarray) -> np.ndarray:
    return np.concatenate([rows_vd, new_nd.astype(rows_vd.dtype)], axis=0)


def _set_vocab_rows(model: Llama, rows: dict[str, np.ndarray], vocab_size: int) -> None:
    """Writes real rows [V, D] back into embed (and lm_head [D, V]), re-padding the vocab."""
    config = dataclasses.replace(model.config, vocab_size=vocab_size)
    pad = config.padded_vocab_size - vocab_size
    for name, rows_vd in rows.items():
        padded_vd = np.pad(rows_vd, ((0, pad), (0, 0)))
        value = padded_vd if name == "embed" else padded_vd.T
        getattr(model, name).set_value(jnp.asarray(value, dtype=config.param_dtype))
    model.config = config


def extend_tokenizer(tokenizer) -> LlarkTokenIds:
    """Adds the LLark tokens to `tokenizer` in place, in the reference order: `[PAD]` (only if
    it has no pad token), `<audio_patch>`, then `<audio_start>` and `<audio_end>`.

    Returns their ids. `extend_with_llark_tokens` also adds the matching model rows."""
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.add_tokens([AUDIO_PATCH_TOKEN], special_tokens=True)
    tokenizer.add_tokens([AUDIO_START_TOKEN, AUDIO_END_TOKEN], special_tokens=True)
    return LlarkTokenIds(
        pad=tokenizer.pad_token_id,
        patch=tokenizer.convert_tokens_to_ids(AUDIO_PATCH_TOKEN),
        start=tokenizer.convert_tokens_to_ids(AUDIO_START_TOKEN),
        end=tokenizer.convert_tokens_to_ids(AUDIO_END_TOKEN),
    )


def extend_with_llark_tokens(model: Llama, tokenizer, *, seed: int = 0) -> LlarkTokenIds:
    """Adds the LLark tokens to `tokenizer` (a `PreTrainedTokenizerFast`) and rows to `model`.

    Both are modified in place; returns the new token ids.
    """
    cfg = model.config
    if len(tokenizer) != cfg.vocab_size:
        raise VocabularyMismatchError(
            f"tokenizer has {len(tokenizer)} tokens but the model vocabulary is {cfg.vocab_size}"
        )
    names = ["embed"] if cfg.tie_word_embeddings else ["embed", "lm_head"]
    rows = {}
    for name in names:
        value = np.asarray(jax.device_get(getattr(model, name)[...]), np.float32)
        rows[name] = (value if name == "embed" else value.T)[: cfg.vocab_size]

    if tokenizer.pad_token is None:
        rows = {k: _append_rows(v, v.mean(axis=0, keepdims=True)) for k, v in rows.items()}
    ids = extend_tokenizer(tokenizer)

    keys = jax.random.split(jax.random.key(seed), len(names))
    for key, name in zip(keys, names, strict=True):
        d = rows[name].shape[1]
        patch_1d = cfg.initializer_range * np.asarray(jax.random.normal(key, (1, d), jnp.float32))
        rows[name] = _append_rows(rows[name], patch_1d)
    rows = {k: _append_rows(v, np.repeat(v.mean(axis=0, keepdims=True), 2, axis=0))
            for k, v in rows.items()}

    vocab_size = rows["embed"].shape[0]
    if len(tokenizer) != vocab_size:
        raise VocabularyMismatchError(
            f"tokenizer grew to {len(tokenizer)} tokens but the model to {vocab_size} rows"
        )
    _set_vocab_rows(model, rows, vocab_size)
    return ids
