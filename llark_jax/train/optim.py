"""AdamW with linear warmup + cosine decay, global-norm clipping and frozen-parameter masks.

The schedule is the Hugging Face `cosine` schedule the reference trained with (spec §4.1):

    lr(s) = peak · s / W                                   for s < W
    lr(s) = peak · ½ (1 + cos(π · (s − W) / (T − W)))      for W ≤ s ≤ T

with `W` warmup steps (`optim.warmup_steps`, or `ceil(optim.warmup_ratio · T)` when that is -1)
and `T` total steps; `s` is the 0-based optimizer step, so the first update uses lr 0 as in HF.

AdamW eps: the LLark paper says 1e-6, the reference code trains with the HF default 1e-8; the
`llark_7b` config follows the code (1e-8). Weight decay is 0, so frozen rows whose gradient is
masked to zero stay bit-exactly unchanged (Adam's moments stay 0 and the update is 0).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from llark_jax.config import ConfigError

TRAINED, FROZEN, PROJECTOR = "trained", "frozen", "projector"


def warmup_steps_for(optim_cfg: ml_collections.ConfigDict, total_steps: int) -> int:
    """Warmup length: `warmup_steps` when >= 0, else `ceil(warmup_ratio · total_steps)`."""
    if optim_cfg.warmup_steps >= 0:
        return int(optim_cfg.warmup_steps)
    return int(math.ceil(optim_cfg.warmup_ratio * total_steps))


def make_schedule(optim_cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `optim.peak_lr`, then half-cosine to 0 at `total_steps`."""
    warmup = warmup_steps_for(optim_cfg, total_steps)
    if not 0 <= warmup < total_steps:
        raise ConfigError(f"warmup steps {warmup} must be in [0, total steps {total_steps}): "
                          "set --config.optim.warmup_steps (or warmup_ratio) below train.steps")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim_cfg.peak_lr,
        warmup_steps=warmup,
        decay_steps=total_steps,
        end_value=0.0,
    )


def trainable_labels(grad_mask: Any) -> Any:
    """Per leaf: `"frozen"` where the mask is the Python/NumPy scalar False, `"projector"` for
    the audio projector's leaves, else `"trained"` (LM groups of the preset)."""
    def label(path: Any, mask: Any) -> str:
        if isinstance(mask, bool | jnp.bool_) or (hasattr(mask, "ndim") and mask.ndim == 0):
            if not bool(mask):
                return FROZEN
        in_projector = any(getattr(k, "key", getattr(k, "name", None)) == "projector" for k in path)
        return PROJECTOR if in_projector else TRAINED
    return jax.tree_util.tree_map_with_path(label, grad_mask)


def make_optimizer(
    optim_cfg: ml_collections.ConfigDict, total_steps: int, labels: Any | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`clip_by_global_norm → AdamW(schedule)`; with `labels` (`trainable_labels`) the projector
    follows `optim.peak_lr`, the trained LM groups `optim.lm_peak_lr` (when > 0, else the same
    rate) and frozen leaves get zero updates and no optimizer state (`optax.multi_transform` +
    `set_to_zero`, which saves two copies of e.g. the frozen `lm_head`). The clip norm is global
    over every leaf (frozen gradients are masked to zero before the update).

    Returns `(optimizer, schedule)`; the schedule is the projector's (reported as `lr`).
    """
    schedule = make_schedule(optim_cfg, total_steps)

    def adamw(rate: optax.Schedule) -> optax.GradientTransformation:
        return optax.adamw(rate, b1=optim_cfg.b1, b2=optim_cfg.b2, eps=optim_cfg.eps,
                           weight_decay=optim_cfg.weight_decay)

    clip = optax.clip_by_global_norm(optim_cfg.clip_norm)
    if labels is None:
        return optax.chain(clip, adamw(schedule)), schedule
    lm_schedule = schedule
    if optim_cfg.get("lm_peak_lr", 0.0) > 0:
        lm_cfg = ml_collections.ConfigDict({**optim_cfg.to_dict(), "peak_lr": optim_cfg.lm_peak_lr})
        lm_schedule = make_schedule(lm_cfg, total_steps)
    groups = {PROJECTOR: adamw(schedule), TRAINED: adamw(lm_schedule),
              FROZEN: optax.set_to_zero()}
    return optax.chain(clip, optax.multi_transform(groups, labels)), schedule
