"""Low-rank adapters (LoRA, Hu et al. 2021) on the decoder's projections.

A projection `y = einsum(spec, x, W)` with an adapter becomes `y + (alpha / r) * (x A) B`:
for a weight W of shape `in_dims + out_dims` (in_dims: the axes `x` contracts with, e.g. `d` of
`btd,dnh->btnh`; two for the output projection `o`: `nhd`), A is `[*in_dims, r]` and B is
`[r, *out_dims]`. A is initialised as PEFT does (uniform, bound 1/sqrt(fan_in)), B at zero, so a
fresh adapter leaves the model unchanged. Adapters are float32 whatever the base's `param_dtype`
(the frozen base may be bf16); the delta is computed in the layer's compute dtype.

`add_lora(llama, rank, alpha, targets, seed)` attaches adapters to every decoder layer (stacked
[L, ...] like the layer weights, logical axes `layers`, the weight's own axes and `lora` for r)
as attributes `<target>_lora` of the attention / MLP modules; `merged(llama)` returns a copy with
`W + (alpha / r) A B` folded in and no adapters (what `export` writes: a plain Llama).
Targets: `q, k, v, o` (attention) and `gate, up, down` (MLP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

ATTENTION_TARGETS = ("q", "k", "v", "o")
MLP_TARGETS = ("gate", "up", "down")
TARGETS = ATTENTION_TARGETS + MLP_TARGETS
IN_DIMS = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}  # axes x contracts


def parse_targets(text: str) -> list[str]:
    """The config's comma-separated target list (`model.lora.targets`) as names."""
    return [t.strip() for t in str(text).split(",") if t.strip()]


class LoraAdapter(nnx.Module):
    """A `[*in_dims, r]`, B `[r, *out_dims]` (float32) and the scale alpha / r of one weight."""

    def __init__(self, weight_shape: Sequence[int], weight_axes: Sequence[str], n_in: int,
                 rank: int, alpha: float, *, rngs: nnx.Rngs):
        in_shape, out_shape = tuple(weight_shape[:n_in]), tuple(weight_shape[n_in:])
        bound = 1.0 / math.sqrt(math.prod(in_shape))
        a = jax.random.uniform(rngs.params(), (*in_shape, rank), jnp.float32, -bound, bound)
        self.a = nnx.Param(a, out_sharding=(*weight_axes[:n_in], "lora"), eager_sharding=False)
        self.b = nnx.Param(jnp.zeros((rank, *out_shape), jnp.float32),
                           out_sharding=("lora", *weight_axes[n_in:]), eager_sharding=False)
        self.scale = alpha / rank

    def __call__(self, spec: str, x: jax.Array) -> jax.Array:
        """The delta `scale * (x A) B` for the projection `einsum(spec, x, W)`."""
        inputs, out = spec.split("->")
        x_axes, w_axes = inputs.split(",")
        n_in = self.a[...].ndim - 1
        in_axes, out_axes = w_axes[:n_in], w_axes[n_in:]
        lead = out[: len(out) - len(out_axes)]
        x_r = jnp.einsum(f"{x_axes},{in_axes}r->{lead}r", x, self.a[...].astype(x.dtype))
        delta = jnp.einsum(f"{lead}r,r{out_axes}->{out}", x_r, self.b[...].astype(x.dtype))
        return (self.scale * delta).astype(x.dtype)


def project(module: nnx.Module, name: str, spec: str, x: jax.Array, dtype: Any) -> jax.Array:
    """`einsum(spec, x, module.<name>)` in `dtype`, the weight dequantised by `<name>_scale` when
    it is stored quantised (`llark_jax.model.quant`), plus the `<name>_lora` adapter if any."""
    w = getattr(module, name)[...].astype(dtype)
    scale = getattr(module, f"{name}_scale", None)
    if scale is not None:  # per output channel: the trailing axes of the weight
        w = w * scale[...].astype(dtype)
    y = jnp.einsum(spec, x, w)
    adapter = getattr(module, f"{name}_lora", None)
    return y if adapter is None else y + adapter(spec, x)


def owner(layers: nnx.Module, target: str) -> nnx.Module:
    """The attention or MLP module of `layers` that holds the weight `target`."""
    return layers.attn if target in ATTENTION_TARGETS else layers.mlp


def _stacked_adapters(weight: nnx.Param, n_in: int, rank: int, alpha: float, n_layers: int,
                      rngs: nnx.Rngs) -> LoraAdapter:
    """L adapters for a stacked weight [L, ...], stacked the same way (leading `layers` axis)."""
    shape, axes = weight.get_value().shape[1:], weight.get_metadata()["out_sharding"][1:]

    @nnx.split_rngs(splits=n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(layer_rngs: nnx.Rngs) -> LoraAdapter:
        return LoraAdapter(shape, axes, n_in, rank, alpha, rngs=layer_rngs)

    return create(rngs)


def add_lora(llama: nnx.Module, rank: int, alpha: float, targets: Sequence[str],
             seed: int = 0) -> nnx.Module:
    """Attaches stacked adapters for `targets` to every layer of `llama` (in place; returned)."""
    unknown = sorted(set(targets) - set(TARGETS))
    if rank <= 0 or unknown or not targets:
        raise ValueError(f"LoRA needs rank > 0 and targets from {TARGETS}; got rank {rank}, "
                         f"targets {list(targets)}")
    layers = llama.layers
    for i, target in enumerate(targets):
        weight = getattr(owner(layers, target), target)
        adapters = _stacked_adapters(weight, IN_DIMS[target], rank, alpha,
                                     llama.config.num_layers, nnx.Rngs(seed * 1000 + i))
        setattr(owner(layers, target), f"{target}_lora", adapters)
    return llama


def merged(llama: nnx.Module) -> nnx.Module:
    """A copy of `llama` with every adapter folded into its weight (in the weight's dtype) and
    removed; `llama` itself when it has none."""
    copy = nnx.clone(llama)
    found = False
    for target in TARGETS:
        module = owner(copy.layers, target)
        adapter = getattr(module, f"{target}_lora", None)
        if adapter is None:
            continue
        found = True
        weight = getattr(module, target)
        w = weight[...]
        a_lir = adapter.a[...].reshape(w.shape[0], -1, adapter.a.shape[-1])
        b_lro = adapter.b[...].reshape(w.shape[0], adapter.b.shape[1], -1)
        delta = adapter.scale * jnp.einsum("lir,lro->lio", a_lir, b_lro)
        weight.set_value((w.astype(jnp.float32) + delta.reshape(w.shape)).astype(w.dtype))
        delattr(module, f"{target}_lora")
    return copy if found else llama


def has_lora(llama: nnx.Module) -> bool:
    return any(getattr(owner(llama.layers, t), f"{t}_lora", None) is not None for t in TARGETS)
