"""Device mesh `("data", "fsdp", "tensor")`, multi-host start-up, and the config's rules table.

Model code names axes logically (`llark_jax.model.sharding.LOGICAL_AXES`); the config's
`logical_axis_rules` maps each logical name to mesh axes (default `model.sharding.DEFAULT_RULES`,
FSDP with heads/mlp/vocab over `tensor`). A data-parallel run replicates every parameter by
mapping every name but `batch` to None (docs/training.md). Batches are always split over
`("data", "fsdp")`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from llark_jax.model.sharding import DEFAULT_RULES, Rules, parse_rules

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

log = logging.getLogger(__name__)


def rules_of(config: ml_collections.ConfigDict) -> Rules:
    """The logical-axis rules table of `config` (`logical_axis_rules`; `DEFAULT_RULES` for configs
    saved before the table was a config field). Raises `ValueError` for an unknown logical name or
    a mesh axis outside `MESH_AXES` (which would otherwise silently replicate)."""
    table = config.get("logical_axis_rules")
    rules = DEFAULT_RULES if table is None else parse_rules(table)
    for name, axes in rules:
        named = (axes,) if isinstance(axes, str) else axes or ()
        unknown = [axis for axis in named if axis not in MESH_AXES]
        if unknown:
            raise ValueError(f"rule {name!r}: unknown mesh axes {unknown}; axes are {MESH_AXES}")
    return rules


def resolve_mesh_shape(sizes: Mapping[str, int], n_devices: int) -> tuple[int, int, int]:
    """Mesh shape for `MESH_AXES` from `sizes` (missing axes = 1; one axis may be -1 = the rest)."""
    unknown = set(sizes) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"unknown mesh axes {sorted(unknown)}; axes are {MESH_AXES}")
    shape = [int(sizes.get(axis, 1)) for axis in MESH_AXES]
    fill = [i for i, size in enumerate(shape) if size == -1]
    if len(fill) > 1:
        named = dict(zip(MESH_AXES, shape, strict=True))
        raise ValueError(f"only one mesh axis may be -1, got {named}")
    known = int(np.prod([size for size in shape if size != -1]))
    if fill:
        if n_devices % known:
            raise ValueError(f"{n_devices} devices do not divide into mesh {sizes}")
        shape[fill[0]] = n_devices // known
    if int(np.prod(shape)) != n_devices:
        named = dict(zip(MESH_AXES, shape, strict=True))
        raise ValueError(f"mesh {named} needs {int(np.prod(shape))} devices, {n_devices} available")
    return tuple(shape)


def make_mesh(sizes: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A `("data", "fsdp", "tensor")` mesh with `AxisType.Auto` over `devices` (default: all).

    In a single-process run, fixed sizes (no -1) asking for fewer devices than there are use the
    first ones (e.g. the demo's one-device mesh on a machine with several)."""
    devices = list(jax.devices() if devices is None else devices)
    wanted = [int(v) for v in dict(sizes).values()]
    if -1 not in wanted and jax.process_count() == 1 and 0 < int(np.prod(wanted)) < len(devices):
        devices = devices[: int(np.prod(wanted))]
    shape = resolve_mesh_shape(dict(sizes), len(devices))
    device_grid = np.asarray(devices).reshape(shape)
    return Mesh(device_grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def parse_mesh_flag(text: str) -> dict[str, int]:
    """Parses `fsdp=8` / `data=2,fsdp=4` into `{"fsdp": 8}` / `{"data": 2, "fsdp": 4}`."""
    sizes: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        axis, _, size = part.partition("=")
        if axis not in MESH_AXES or not size.lstrip("-").isdigit():
            raise ValueError(f"bad mesh spec {part!r}: expected AXIS=SIZE with AXIS in {MESH_AXES}")
        sizes[axis] = int(size)
    return sizes


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a batch array with `ndim` dims: leading dim over `("data", "fsdp")`."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def maybe_initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    port: int | None = None,
) -> bool:
    """Calls `jax.distributed.initialize` for multi-host runs; returns whether it did.

    Arguments fall back to the environment: `LLARK_COORDINATOR` (host or host:port),
    `LLARK_COORDINATOR_PORT`, `LLARK_NUM_PROCESSES`, `LLARK_PROCESS_ID`. With
    `LLARK_DISTRIBUTED=auto` JAX auto-detects the cluster (TPU pods, SLURM, Open MPI). With none of
    these set, nothing happens (single host).
    """
    env = os.environ
    coordinator_address = coordinator_address or env.get("LLARK_COORDINATOR")
    port = port or (int(env["LLARK_COORDINATOR_PORT"]) if "LLARK_COORDINATOR_PORT" in env else None)
    if num_processes is None and "LLARK_NUM_PROCESSES" in env:
        num_processes = int(env["LLARK_NUM_PROCESSES"])
    if process_id is None and "LLARK_PROCESS_ID" in env:
        process_id = int(env["LLARK_PROCESS_ID"])
    if coordinator_address and port and ":" not in coordinator_address:
        coordinator_address = f"{coordinator_address}:{port}"
    if coordinator_address:
        log.info("jax.distributed.initialize(%s, num_processes=%s, process_id=%s)",
                 coordinator_address, num_processes, process_id)
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
        return True
    if env.get("LLARK_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
        return True
    return False
