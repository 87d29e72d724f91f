"""Pretrained language models for training: HF directory or GGUF, plus the LLark tokens.

The tokenizer and the model are extended in the reference's order (spec §1.3, implemented by
`llark_jax.checkpoints.tokens`); the resulting audio token ids must equal the config's
`model.audio_{start,patch,end}_id` (the abstract model and the data pipeline are built from
those), otherwise a `TokenIdMismatchError` names the fields to set.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from llark_jax.checkpoints.tokens import (
    AUDIO_END_TOKEN,
    AUDIO_PATCH_TOKEN,
    AUDIO_START_TOKEN,
    extend_tokenizer,
    extend_with_llark_tokens,
)
from llark_jax.model.llama import Llama


class TokenIdMismatchError(ValueError):
    """The extended tokenizer's audio ids differ from the config's."""


def _dtypes(model_cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    from llark_jax.train.model_setup import dtype_of

    return {"dtype": dtype_of(model_cfg.param_dtype),
            "compute_dtype": dtype_of(model_cfg.dtype), "remat": model_cfg.remat,
            "scan_layers": model_cfg.scan_layers}


def load_base(model_cfg: ml_collections.ConfigDict) -> tuple[Llama, Any]:
    """(Llama on the default device, its tokenizer), before the LLark token extension."""
    if model_cfg.source == "hf":
        from transformers import AutoTokenizer

        from llark_jax.checkpoints.hf import load_llama

        return (load_llama(model_cfg.path, **_dtypes(model_cfg)),
                AutoTokenizer.from_pretrained(model_cfg.path))
    if model_cfg.source == "gguf":
        from llark_jax.checkpoints.gguf import load_gguf_llama

        return load_gguf_llama(model_cfg.path or None, **_dtypes(model_cfg))
    raise ValueError(f"model source {model_cfg.source!r} is not pretrained (use hf or gguf)")


def check_token_ids(model_cfg: ml_collections.ConfigDict, tokenizer: Any) -> None:
    names = {"audio_start_id": AUDIO_START_TOKEN, "audio_patch_id": AUDIO_PATCH_TOKEN,
             "audio_end_id": AUDIO_END_TOKEN}
    wrong = {field: tokenizer.convert_tokens_to_ids(token) for field, token in names.items()
             if tokenizer.convert_tokens_to_ids(token) != model_cfg[field]}
    if wrong:
        raise TokenIdMismatchError(
            f"the extended tokenizer gives {wrong}; set --config.model.<field> to these values "
            f"(and model.vocab_size={len(tokenizer)})")


def pretrained_llama(model_cfg: ml_collections.ConfigDict, seed: int) -> tuple[Llama, Any]:
    """(Llama with the LLark token rows, extended tokenizer); ids checked against the config."""
    llama, tokenizer = load_base(model_cfg)
    extend_with_llark_tokens(llama, tokenizer, seed=seed)
    check_token_ids(model_cfg, tokenizer)
    return llama, tokenizer


def llark_tokenizer(model_cfg: ml_collections.ConfigDict) -> Any:
    """The extended tokenizer alone (for the data pipeline on resume, without loading weights).

    `extend_tokenizer` adds the tokens exactly as `extend_with_llark_tokens` does; the id check
    guards the match with the config.
    """
    if model_cfg.source == "hf":
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_cfg.path)
    else:
        from llark_jax.checkpoints.gguf import load_gguf_tokenizer

        tokenizer = load_gguf_tokenizer(model_cfg.path or None)
    extend_tokenizer(tokenizer)
    check_token_ids(model_cfg, tokenizer)
    return tokenizer
