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

TRAINED, FROZEN = "trained", "frozen"


def warmup_steps_for(optim_cfg: ml_collections.ConfigDict, total_steps: int) -> int:
    """Warmup length: `warmup_steps` when >= 0, else `ceil(warmup_ratio · total_steps)`."""
    if optim_cfg.warmup_steps >= 0:
        return int(optim_cfg.warmup_steps)
    return int(math.ceil(optim_cfg.warmup_ratio * total_steps))


def make_schedule(optim_cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `optim.peak_lr`, then half-cosine to 0 at `total_steps`."""
    warmup = warmup_steps_for(optim_cfg, total_steps)
    if not 0 <= warmup < total_steps:
        raise ValueError(f"warmup steps {warmup} must be in [0, total steps {total_steps})")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim_cfg.peak_lr,
        warmup_steps=warmup,
        decay_steps=total_steps,
        end_value=0.0,
    )


def closed_form_lr(step: int, peak: float, warmup: int, total: int) -> float:
    """The schedule formula in plain Python (the reference the tests compare against)."""
    if step < warmup:
        return peak * step / warmup
    progress = min(1.0, (step - warmup) / (total - warmup))
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def trainable_labels(grad_mask: Any) -> Any:
    """`"frozen"` for leaves whose mask is the Python/NumPy scalar False, else `"trained"`."""
    def label(mask: Any) -> str:
        if isinstance(mask, bool | jnp.bool_) or (hasattr(mask, "ndim") and mask.ndim == 0):
            return TRAINED if bool(mask) else FROZEN
        return TRAINED
    return jax.tree.map(label, grad_mask)


def make_optimizer(
    optim_cfg: ml_collections.ConfigDict, total_steps: int, labels: Any | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`clip_by_global_norm → AdamW(schedule)` on trained leaves, zero updates on frozen ones.

    Frozen leaves carry no optimizer state (`optax.multi_transform` + `set_to_zero`), which saves
    two copies of e.g. the frozen `lm_head`. Returns `(optimizer, schedule)`.
    """
    schedule = make_schedule(optim_cfg, total_steps)
    adamw = optax.chain(
        optax.clip_by_global_norm(optim_cfg.clip_norm),
        optax.adamw(
            schedule,
            b1=optim_cfg.b1,
            b2=optim_cfg.b2,
            eps=optim_cfg.eps,
            weight_decay=optim_cfg.weight_decay,
        ),
    )
    if labels is None:
        return adamw, schedule
    return optax.multi_transform({TRAINED: adamw, FROZEN: optax.set_to_zero()}, labels), schedule
