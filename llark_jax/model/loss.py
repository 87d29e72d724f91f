"""Masked causal-LM cross-entropy on supervised positions (fp32), packing-aware.

Labels are unshifted (Hugging Face convention, see `llark_jax.data.conversation`): the logits
at position t predict `labels[t + 1]`. A pair (t, t+1) counts only if `labels[t+1] != IGNORE_INDEX`
and, when `segment_ids` are given, both positions belong to the same non-padding segment (a packed
row never predicts the first token of the next example from the previous one).

Normalisations (`normalization=`):
- `"micro_batch_mean"` (the reference: torch `CrossEntropyLoss()` mean over the non-ignored labels
  of one micro-batch; with gradient accumulation HF Trainer then averages the micro-batch means,
  so micro-batches with few supervised tokens weigh as much as full ones).
- `"global_tokens"`: sum of token losses / `global_token_count`, the number of supervised tokens
  in the whole optimizer step (all micro-batches, all devices). Summing these per-micro-batch
  losses over the accumulation steps gives exactly the token-weighted mean of the full global
  batch, independent of how it is split. Without `global_token_count` it falls back to this
  micro-batch's count.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100
Normalization = Literal["micro_batch_mean", "global_tokens"]


def supervised_targets(
    labels_bt: jax.Array, segment_ids_bt: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Shifted targets [B,T-1] (int32, ignored ones set to 0) and their validity mask [B,T-1]."""
    targets_bt = labels_bt[:, 1:]
    valid_bt = targets_bt != IGNORE_INDEX
    if segment_ids_bt is not None:
        same_bt = segment_ids_bt[:, 1:] == segment_ids_bt[:, :-1]
        valid_bt = valid_bt & same_bt & (segment_ids_bt[:, 1:] != 0)
    return jnp.where(valid_bt, targets_bt, 0).astype(jnp.int32), valid_bt


def masked_lm_loss(
    logits_btv: jax.Array,
    labels_bt: jax.Array,
    segment_ids_bt: jax.Array | None = None,
    *,
    normalization: Normalization = "micro_batch_mean",
    global_token_count: jax.Array | int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy of next-token predictions on supervised positions.

    Args:
      logits_btv: [B,T,V] logits (any float dtype; computed in float32).
      labels_bt: [B,T] int, IGNORE_INDEX (-100) where not supervised, unshifted.
      segment_ids_bt: optional [B,T] int packing segments, 0 = padding.
      normalization: see the module docstring.
      global_token_count: supervised-token count of the whole step (for "global_tokens").

    Returns (loss scalar float32, metrics) with metrics `n_tokens` (supervised predictions in this
    batch, int32), `loss_sum` (summed nats, float32) and `n_correct` (argmax hits, int32).
    """
    targets_bt, valid_bt = supervised_targets(labels_bt, segment_ids_bt)
    logits_btv = logits_btv[:, :-1].astype(jnp.float32)
    log_z_bt = jax.nn.logsumexp(logits_btv, axis=-1)
    target_logit_bt = jnp.take_along_axis(logits_btv, targets_bt[..., None], axis=-1)[..., 0]
    nll_bt = jnp.where(valid_bt, log_z_bt - target_logit_bt, 0.0)
    loss_sum = nll_bt.sum()
    n_tokens = valid_bt.sum().astype(jnp.int32)
    if normalization == "micro_batch_mean":
        denom = n_tokens
    elif normalization == "global_tokens":
        denom = n_tokens if global_token_count is None else global_token_count
    else:
        raise ValueError(f"unknown loss normalization {normalization!r}")
    loss = loss_sum / jnp.maximum(jnp.asarray(denom, jnp.float32), 1.0)
    hits_bt = (jnp.argmax(logits_btv, axis=-1) == targets_bt) & valid_bt
    metrics = {"n_tokens": n_tokens, "loss_sum": loss_sum, "n_correct": hits_bt.sum()}
    return loss, metrics
