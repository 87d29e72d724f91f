"""Weight-only quantisation of the frozen decoder projections (the base of QLoRA-style training).

`quantize_base(llama, bits)` replaces each decoder projection weight W `[L, *in, *out]` (q, k, v,
o, gate, up, down) by `round(W / s)` stored as int8 (`bits=8`) or int4 (`bits=4`, XLA's S4 type,
two values per byte on accelerators) and adds its scale `s = max|W| / qmax` per output channel,
`[L, *out]`, as the float32 Param `<w>_scale` (logical axes: `layers` and the weight's output
axes). `llark_jax.model.lora.project` then computes `x (Wq * s)` in the compute dtype: the
dequantised weights of one layer exist only inside that layer's step. Symmetric per-channel
rounding: relative weight error <= 1 / (2 qmax) of the channel's largest weight (qmax 127 / 7).

Quantised weights cannot train (they are integers): use them with a trainable set that freezes
the decoder (`lora`, `projector_only`, `lm_frozen_new_tokens`; checked by the config).
`dequantized(llama)` returns a float copy in `param_dtype`; `plain(llama)` also folds LoRA adapters
in (what `export` writes and the decode loop fuses).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from llark_jax.model.lora import IN_DIMS, TARGETS, merged, owner

QMAX = {8: 127, 4: 7}
STORAGE = {8: jnp.int8, 4: jnp.int4}


def quantize_base(llama: nnx.Module, bits: int) -> nnx.Module:
    """Quantises every decoder projection of `llama` in place (see the module docstring)."""
    if bits not in QMAX:
        raise ValueError(f"quantisation bits must be one of {sorted(QMAX)}, got {bits}")
    for target in TARGETS:
        module = owner(llama.layers, target)
        weight = getattr(module, target)
        w = weight[...].astype(jnp.float32)
        in_axes = tuple(range(1, 1 + IN_DIMS[target]))  # axis 0 is the stacked layer axis
        scale = jnp.max(jnp.abs(w), axis=in_axes, keepdims=True) / QMAX[bits]
        scale = jnp.where(scale == 0, 1.0, scale)
        q = jnp.clip(jnp.round(w / scale), -QMAX[bits], QMAX[bits]).astype(STORAGE[bits])
        axes = weight.get_metadata()["out_sharding"]
        weight.set_value(q)
        scale_axes = (axes[0], *axes[1 + IN_DIMS[target]:])
        setattr(module, f"{target}_scale", nnx.Param(
            jnp.squeeze(scale, in_axes), out_sharding=scale_axes, eager_sharding=False))
    return llama


def dequantized(llama: nnx.Module) -> nnx.Module:
    """A copy of `llama` with float weights (`param_dtype`) and no scales; `llama` itself when it
    is not quantised."""
    if getattr(owner(llama.layers, "q"), "q_scale", None) is None:
        return llama
    copy = nnx.clone(llama)
    for target in TARGETS:
        module = owner(copy.layers, target)
        weight, scale = getattr(module, target), getattr(module, f"{target}_scale")
        s = scale[...].reshape(scale.shape[:1] + (1,) * IN_DIMS[target] + scale.shape[1:])
        weight.set_value((weight[...].astype(jnp.float32) * s).astype(llama.config.param_dtype))
        delattr(module, f"{target}_scale")
    return copy


def plain(llama: nnx.Module) -> nnx.Module:
    """`llama` as a plain float Llama: dequantised, LoRA adapters folded in (export, decode)."""
    return merged(dequantized(llama))
