"""`export --verify`: the exported PyTorch LLark reproduces the Flax model's logits.

One conversation of the model's own template (the paper's key question, `data.audio_frames`
audio tokens of seeded N(0, 1) features, the model's system prompt, a short answer) goes through
both models; the report is max|diff| of the logits relative to max(1, max|logit|) and the top-1
agreement over the prompt's positions. The fp32 contract is max|diff| <= 1e-4 x max(1,
max|logit|); a bfloat16 export is reported, not judged (its rounding is documented in
docs/model.md). torch is imported here only (export targets PyTorch users).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

FP32_CONTRACT = 1e-4
QUESTION = "What is the key of this song?"


def example_inputs(loaded: Any, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(input ids [1, T] int32, audio [1, T_a, D] float32) of one templated example."""
    from llark_jax.data.conversation import AudioTokenIds, build_example

    model, tokenizer = loaded.model, loaded.tokenizer
    frames = int(loaded.config.data.audio_frames) * model.temporal_pool
    ids = AudioTokenIds(model.audio_start_id, model.audio_patch_id, model.audio_end_id)
    example = build_example(tokenizer, loaded.template, QUESTION, "The key is A minor.",
                            [frames // model.temporal_pool], audio_first=True,
                            audio_token_ids=ids)
    audio = np.random.default_rng(seed).standard_normal(
        (1, frames, model.projector.audio_dim)).astype(np.float32)
    return np.asarray(example["input_ids"], np.int32)[None], audio


def verify_export(loaded: Any, output: Path, dtype: str) -> dict[str, Any]:
    """Logits of `loaded.model` vs the exported torch model on `example_inputs`."""
    import jax.numpy as jnp
    import torch

    ids_bt, audio_btd = example_inputs(loaded)
    flax_btv = np.asarray(loaded.model(jnp.asarray(ids_bt), jnp.asarray(audio_btd)), np.float32)
    flax_btv = flax_btv[..., : loaded.model.llama.config.vocab_size]
    sys.path.insert(0, str(output))
    try:
        from modeling_llark import LlarkForCausalLM
    finally:
        sys.path.pop(0)
    torch_model = LlarkForCausalLM.from_pretrained(output, dtype=torch.float32).eval()
    with torch.no_grad():
        torch_btv = torch_model(torch.from_numpy(ids_bt).long(),
                                torch.from_numpy(audio_btd)).float().numpy()
    scale = max(1.0, float(np.abs(flax_btv).max()))
    diff = float(np.abs(torch_btv - flax_btv).max())
    report = {"tokens": int(ids_bt.shape[1]), "max_abs_diff": diff, "max_abs_logit": scale,
              "relative": diff / scale,
              "top1_agreement": float((torch_btv.argmax(-1) == flax_btv.argmax(-1)).mean()),
              "dtype": dtype}
    report["ok"] = dtype != "float32" or report["relative"] <= FP32_CONTRACT
    return report
