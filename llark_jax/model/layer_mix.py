"""MusiLingo's learned layer average: softmax-normalised weights over the L encoder states.

MusiLingo feeds the projector "the weighted average of the outputs from each transformer block"
of MERT. Here the weights are w = softmax(logits), logits [L] float32 initialised to 0, so the mix
starts as the plain mean over layers (what `data_prep` stores with `--layers mean`) and stays a
convex combination while it trains:

    y[..., t, d] = sum_l w[l] * x[..., l, t, d]            (`__call__`, layer axis -3 by default)
    y[..., t, d] = sum_l w[l] * x[..., t, l * D + d]       (`mix_flat`, the stored [T, L*D] layout)

The stored MERT layout (data_prep.encoders.mert, layers="all") is layer-major within a frame, so
`x_flat.reshape(..., T, L, D)` recovers the states. The sum is computed in float32 and returned
in the input's dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class LayerMix(nnx.Module):
    """Learned convex combination of L layers. Param: `logits` float32 [L] (zeros: uniform)."""

    def __init__(self, n_layers: int, *, param_dtype=jnp.float32):
        if n_layers < 1:
            raise ValueError(f"LayerMix needs n_layers >= 1, got {n_layers}")
        self.n_layers = n_layers
        self.logits = nnx.Param(jnp.zeros((n_layers,), param_dtype))

    def weights(self) -> jax.Array:
        """softmax(logits): float32 [L], non-negative, summing to 1."""
        return jax.nn.softmax(self.logits[...].astype(jnp.float32))

    def __call__(self, x: jax.Array, layer_axis: int = -3) -> jax.Array:
        """x with L entries on `layer_axis` (e.g. [B, S, L, T, D]) -> x without that axis."""
        if x.shape[layer_axis] != self.n_layers:
            raise ValueError(f"LayerMix({self.n_layers}): axis {layer_axis} of {x.shape} has "
                             f"{x.shape[layer_axis]} layers")
        x_l_last = jnp.moveaxis(x, layer_axis, -1).astype(jnp.float32)
        return jnp.einsum("...l,l->...", x_l_last, self.weights()).astype(x.dtype)

    def mix_flat(self, x_f: jax.Array) -> jax.Array:
        """Stored layout [..., T, L*D] -> [..., T, D]."""
        width = x_f.shape[-1]
        if width % self.n_layers:
            raise ValueError(f"LayerMix({self.n_layers}): feature width {width} is not L * D")
        x_ld = x_f.reshape(*x_f.shape[:-1], self.n_layers, width // self.n_layers)
        return self(x_ld, layer_axis=-2)
