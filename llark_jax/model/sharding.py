"""Logical axis names -> mesh axes (docs/architecture.md, decision 2).

Model code names the axes of every parameter and key activation with logical names (`layers, vocab,
embed, mlp, heads, kv_heads, head_dim, batch, length`; `layers` is the leading axis of the stacked
decoder-layer parameters). A rules table, chosen per config, maps each logical name to a mesh
axis, a tuple of mesh axes, or None (replicated):

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

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]

# A sensible default for meshes with axes ("data", "fsdp", "tensor"); axes a mesh lacks are dropped.
DEFAULT_RULES: tuple[tuple[str, MeshAxes], ...] = (
    ("layers", None),
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
)

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


def active_rules() -> tuple[Mesh, Rules] | None:
    """The (mesh, rules) in effect, or None."""
    return _ACTIVE.get()


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
