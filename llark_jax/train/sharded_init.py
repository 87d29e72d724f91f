"""Shardings of NNX state trees from logical axis names, and sharded initialisation.

Parameters carry logical axis names in their `out_sharding` metadata (see `llark_jax.model.llama`);
a rules table turns them into `NamedSharding`s on the mesh. Anything without names (optimizer
counters, the step) is replicated. Optimizer moments built by `jax.tree.map` over the params keep
the Variables' metadata, so the same function shards them like their parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llark_jax.model.sharding import Rules, logical_to_spec


def _variable_sharding(variable: nnx.Variable, mesh: Mesh, rules: Rules) -> NamedSharding:
    names = variable.get_metadata().get("out_sharding")
    shape = getattr(variable.get_value(), "shape", ())
    if not names or len(names) != len(shape):
        return NamedSharding(mesh, PartitionSpec())
    return NamedSharding(mesh, logical_to_spec(tuple(names), rules, mesh=mesh, shape=shape))


def tree_shardings(tree: Any, mesh: Mesh, rules: Rules) -> Any:
    """`tree` with every array replaced by its `NamedSharding` (Variables keep their metadata)."""
    def sharding(leaf: Any) -> Any:
        if isinstance(leaf, nnx.Variable):
            if not hasattr(leaf.get_value(), "shape"):  # e.g. optax MaskedNode: no arrays
                return leaf
            return leaf.replace(value=_variable_sharding(leaf, mesh, rules))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(sharding, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def abstract_model(make_model: Callable[[], nnx.Module]) -> tuple[nnx.GraphDef, Any, Any]:
    """`(graphdef, abstract params, abstract rest)` without allocating any parameter."""
    model = nnx.eval_shape(make_model)
    return nnx.split(model, nnx.Param, ...)


def init_sharded(
    make_model: Callable[[], nnx.Module], mesh: Mesh, rules: Rules
) -> tuple[nnx.GraphDef, Any, Any]:
    """Initialises `make_model()` directly into its shardings (never whole on one device).

    Returns `(graphdef, params, rest)` as from `nnx.split(model, nnx.Param, ...)`.
    """
    graphdef, abstract_params, abstract_rest = abstract_model(make_model)
    out_shardings = (tree_shardings(abstract_params, mesh, rules),
                     tree_shardings(abstract_rest, mesh, rules))

    def init() -> tuple[Any, Any]:
        _, params, rest = nnx.split(make_model(), nnx.Param, ...)
        return params, rest

    params, rest = jax.jit(init, out_shardings=out_shardings)()
    return graphdef, params, rest


def place(tree: Any, shardings: Any) -> Any:
    """`jax.device_put` of host/device arrays into the given (prefix) shardings."""
    return jax.device_put(tree, shardings)
