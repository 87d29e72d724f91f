"""Rotary position embeddings in the Hugging Face rotate-half convention.

Hugging Face Llama checkpoints store q/k projections so that the two rotated halves of each head are
`[:head_dim/2]` and `[head_dim/2:]` (not interleaved pairs), so no weight permutation is needed.
Supported `rope_scaling` variants (from config.json): none/"default", "linear", "llama3".
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def inverse_frequencies(
    head_dim: int, theta: float, scaling: Mapping[str, Any] | None = None
) -> np.ndarray:
    """Per-pair angular frequencies [head_dim/2] (radians per position), float32 as in HF."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (1.0 / (np.float32(theta) ** exponents)).astype(np.float32)
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind == "default":
        return inv_freq
    if kind == "linear":
        return (inv_freq / np.float32(scaling["factor"])).astype(np.float32)
    if kind == "llama3":
        return _llama3_frequencies(inv_freq, scaling)
    raise NotImplementedError(f"rope_scaling type {kind!r} (supported: default, linear, llama3)")


def _llama3_frequencies(inv_freq: np.ndarray, scaling: Mapping[str, Any]) -> np.ndarray:
    """Llama 3.1 scaling: long wavelengths divided by `factor`, a smooth blend in between."""
    factor = float(scaling["factor"])
    low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
    old_context = float(scaling["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv_freq
    scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < old_context / high) & ~(wavelen > old_context / low)
    return np.where(medium, blended, scaled).astype(np.float32)


def rotary_tables(positions_bt: jax.Array, inv_freq_h: np.ndarray) -> tuple[jax.Array, jax.Array]:
    """cos/sin tables [B, T, head_dim] (float32) for integer positions [B, T]."""
    angles_bth = positions_bt.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_h)[None, None]
    angles_btd = jnp.concatenate([angles_bth, angles_bth], axis=-1)
    return jnp.cos(angles_btd), jnp.sin(angles_btd)


def apply_rotary(x_btnh: jax.Array, cos_bth: jax.Array, sin_bth: jax.Array) -> jax.Array:
    """Rotates q or k [B, T, heads, head_dim] (rotate-half); float32 math, result in x's dtype."""
    x = x_btnh.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_bth[:, :, None, :] + rotated * sin_bth[:, :, None, :]
    return out.astype(x_btnh.dtype)
