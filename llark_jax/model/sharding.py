"""Logical axis names -> mesh axes (docs/architecture.md, decision 2).

Model code names the axes of every parameter and key activation with logical names (`LOGICAL_AXES`;
`layers` is the leading axis of the stacked decoder-layer parameters). A rules table maps each
logical name to a mesh axis, a tuple of mesh axes, or None (replicated). The table is data held in
the config (`config.logical_axis_rules`, as MaxText's `logical_axis_rules`): `DEFAULT_RULES` is the
schema's default, and `parse_rules` turns a config's table (lists, as JSON stores it) into `Rules`:

    rules = (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("mlp", "tensor"), ("head_dim", None))

`logical_rules(mesh, rules)` makes a table active for the code traced inside it;
`constrain(x, axes)` is then a sharding constraint and a no-op when no table is active.
`logical_to_spec` maps names to a `PartitionSpec` for parameters
(used for `jit(in_shardings=...)` and sharded loading).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

LOGICAL_AXES = ("layers", "batch", "length", "vocab", "embed", "mlp", "heads", "kv_heads",
                "head_dim", "audio_features", "lora")

# FSDP (ZeRO-3 style) over a ("data", "fsdp", "tensor") mesh: parameters split along `embed` over
# `fsdp`, heads/mlp/vocab over `tensor` (a no-op when that axis has size 1), the batch over
# (data, fsdp). Axes a mesh lacks, or that do not divide a dimension, are dropped for it, so the
# 32004-row Llama-2+LLark embedding needs no padding. The stacked layer axis is never split (the
# layer scan reads one row per step; a pipeline axis would be the place to split it).
DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("layers", None),
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("audio_features", None),
)


def parse_rules(table: Any) -> tuple[tuple[str, MeshAxes], ...]:
    """A config's rules table (`[[name, axes], ...]`; axes a mesh-axis name, a list of names, or
    None) as `Rules`; raises `ValueError` naming the bad entry. Each logical name at most once."""
    rules: list[tuple[str, MeshAxes]] = []
    for entry in table:
        if isinstance(entry, str) or len(entry) != 2:
            raise ValueError(f"rule {entry!r}: expected [logical_name, mesh_axes]")
        name, axes = entry
        if name not in LOGICAL_AXES:
            raise ValueError(f"rule {entry!r}: unknown logical axis {name!r}; "
                             f"names are {list(LOGICAL_AXES)}")
        if name in dict(rules):
            raise ValueError(f"rule {entry!r}: {name!r} has two rules")
        if not (axes is None or isinstance(axes, str)
                or all(isinstance(a, str) for a in axes)):
            raise ValueError(f"rule {entry!r}: mesh axes must be a name, a list of names or None")
        rules.append((name, axes if axes is None or isinstance(axes, str) else tuple(axes)))
    return tuple(rules)


def rules_to_config(rules: Rules) -> list[list[Any]]:
    """`rules` as the JSON-friendly lists a config holds."""
    return [[name, axes if axes is None or isinstance(axes, str) else list(axes)]
            for name, axes in rules]


_ACTIVE: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "llark_logical_rules", default=None
)


@contextlib.contextmanager
def logical_rules(mesh: Mesh, rules: Rules = DEFAULT_RULES) -> Iterator[None]:
    """Makes `rules` on `mesh` active for `constrain` calls traced inside the block."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def _as_tuple(axes: MeshAxes) -> tuple[str, ...]:
    if axes is None:
        return ()
    return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(
    logical_axes: Sequence[str | None],
    rules: Rules,
    *,
    mesh: Mesh | None = None,
    shape: Sequence[int] | None = None,
) -> PartitionSpec:
    """Maps logical axis names to a `PartitionSpec` through `rules`.

    Names without a rule are replicated. A mesh axis is used at most once (first dimension wins).
    With `mesh`, axes the mesh lacks are dropped; with `mesh` and `shape`, a dimension keeps only
    the mesh axes whose product divides it (e.g. vocab 32004 on a tensor axis of 8 is replicated).
    """
    table = dict(rules)
    used: set[str] = set()
    spec: list[MeshAxes] = []
    for dim, name in enumerate(logical_axes):
        chosen: list[str] = []
        size = 1
        for axis in _as_tuple(table.get(name) if name is not None else None):
            if axis in used or (mesh is not None and axis not in mesh.shape):
                continue
            axis_size = mesh.shape[axis] if mesh is not None else 1
            if shape is not None and shape[dim] % (size * axis_size) != 0:
                continue
            chosen.append(axis)
            size *= axis_size
        used.update(chosen)
        spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
    return PartitionSpec(*spec)


def named_sharding(
    mesh: Mesh, rules: Rules, logical_axes: Sequence[str | None], shape: Sequence[int]
) -> NamedSharding:
    """The `NamedSharding` of an array of `shape` with the given logical axes."""
    return NamedSharding(mesh, logical_to_spec(logical_axes, rules, mesh=mesh, shape=shape))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """`with_sharding_constraint` by logical names when rules are active; otherwise `x`."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    return jax.lax.with_sharding_constraint(x, named_sharding(mesh, rules, logical_axes, x.shape))
