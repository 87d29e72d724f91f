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

`scored_positions` + `masked_lm_loss_at` compute the same loss from logits taken only at the
positions that predict a supervised token (at most K per row): the LM head and the softmax then
cost K/T of the full ones (in LLark rows most tokens are audio, question or template).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100  # the batch contract's (llark_jax.data.batch); model/ imports nothing above
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
    return masked_lm_loss_at(logits_btv[:, :-1], targets_bt, valid_bt,
                             normalization=normalization, global_token_count=global_token_count)


def scored_positions(
    labels_bt: jax.Array, segment_ids_bt: jax.Array | None, k: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The first `k` positions of each row whose logits predict a supervised token.

    Returns (positions_bk int32, targets_bk int32, valid_bk bool, unscored int32) with
    K = min(k, T-1): unused slots hold unsupervised positions (valid False); `unscored` counts
    the supervised predictions beyond `k` in a row, which the loss leaves out (size `k` so that
    it is 0, and check it).
    """
    targets_bt, valid_bt = supervised_targets(labels_bt, segment_ids_bt)
    order_bt = jnp.argsort(jnp.where(valid_bt, 0, 1), axis=1, stable=True).astype(jnp.int32)
    positions_bk = order_bt[:, : min(k, valid_bt.shape[1])]
    valid_bk = jnp.take_along_axis(valid_bt, positions_bk, axis=1)
    targets_bk = jnp.take_along_axis(targets_bt, positions_bk, axis=1)
    unscored = (valid_bt.sum() - valid_bk.sum()).astype(jnp.int32)
    return positions_bk, targets_bk, valid_bk, unscored


def masked_lm_loss_at(
    logits_bkv: jax.Array,
    targets_bk: jax.Array,
    valid_bk: jax.Array,
    *,
    normalization: Normalization = "micro_batch_mean",
    global_token_count: jax.Array | int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy of already-aligned logits [B,K,V] and targets [B,K] where `valid_bk`.

    Same normalisations and metrics as `masked_lm_loss` (which calls it with K = T-1).
    """
    logits_bkv = logits_bkv.astype(jnp.float32)
    log_z_bk = jax.nn.logsumexp(logits_bkv, axis=-1)
    target_logit_bk = jnp.take_along_axis(logits_bkv, targets_bk[..., None], axis=-1)[..., 0]
    nll_bk = jnp.where(valid_bk, log_z_bk - target_logit_bk, 0.0)
    loss_sum = nll_bk.sum()
    n_tokens = valid_bk.sum().astype(jnp.int32)
    if normalization == "micro_batch_mean":
        denom = n_tokens
    elif normalization == "global_tokens":
        denom = n_tokens if global_token_count is None else global_token_count
    else:
        raise ValueError(f"unknown loss normalization {normalization!r}")
    loss = loss_sum / jnp.maximum(jnp.asarray(denom, jnp.float32), 1.0)
    hits_bk = (jnp.argmax(logits_bkv, axis=-1) == targets_bk) & valid_bk
    metrics = {"n_tokens": n_tokens, "loss_sum": loss_sum, "n_correct": hits_bk.sum()}
    return loss, metrics
