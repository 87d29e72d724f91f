"""`python -m llark_jax plan --config configs/llark_7b.py --mesh fsdp=8`: AOT memory, FLOPs, hours.

Compiles the real jitted train step for the given mesh from `jax.ShapeDtypeStruct` inputs on fake
CPU devices (no parameter is materialised), then prints per-device memory from XLA's
`memory_analysis()`, the analytic FLOPs per step, and the hours the configured steps take at a
stated MFU on named accelerators (dense bf16 peaks per chip, vendor figures):

    H100 SXM  989 TFLOP/s      TPU v5p  459 TFLOP/s      TPU v5e  197 TFLOP/s

The device count is the mesh size; a pretrained model source is planned with its `model.llama`
dims (identical shapes, random-init structure).
"""

from __future__ import annotations

import argparse
import math
import os
import time

from llark_jax.argtypes import unit_fraction

PEAK_BF16_FLOPS = {"H100": 989e12, "TPU v5p": 459e12, "TPU v5e": 197e12}
GB = 1e9
DEFAULT_MESH = "fsdp=8"  # when neither --mesh nor the config gives explicit sizes


MEMORY_SCHEDULER_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"


def _fake_devices(n: int) -> None:
    """Asks XLA for `n` host devices and its memory-minimising CPU scheduler (before jax import).

    The default CPU scheduler favours concurrency and, on an unrolled layer stack, keeps every
    layer's rematerialised activations alive at once (measured: 7.5 GB/layer vs 1.5 GB/layer for
    Llama-2-7B, batch 32 x 2048, fsdp=8); accelerator backends schedule for memory.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        flags = f"{flags} --xla_force_host_platform_device_count={n}"
    if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
        flags = f"{flags} {MEMORY_SCHEDULER_FLAG}"
    os.environ["XLA_FLAGS"] = flags.strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _compile(config, mesh_sizes: dict[str, int]):
    """(setup, XLA memory analysis, compile seconds) of the config's train step."""
    import jax

    from llark_jax.data.batch import NDIMS, BatchShape
    from llark_jax.model.sharding import logical_rules
    from llark_jax.train.loop import TrainSetup
    from llark_jax.train.mesh import batch_sharding

    began = time.perf_counter()
    setup = TrainSetup(config, mesh_sizes)
    batch = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(setup.mesh, NDIMS[k]))
             for k, (shape, dtype) in BatchShape.from_config(config).specs().items()}
    with logical_rules(setup.mesh, setup.rules):
        lowered = setup.train_step.lower(setup.abstract_state_with_shardings(), batch)
    compiled = lowered.compile()
    return setup, compiled.memory_analysis(), time.perf_counter() - began


def plan(config, mesh_sizes: dict[str, int], *, mfu: float) -> dict:
    """Compiles the train step for `mesh_sizes`; returns the numbers `main` prints.

    XLA:CPU has no bf16 matmul: it converts bf16 weights to float32 copies, which its temp
    memory then counts (measured: +27 GB for Llama-2-7B with bf16 params, 2.4 GB temp with
    float32 params and the same batch). So with a non-float32 compute dtype a second compile
    with float32 params and compute measures the step's temp memory without those copies; as
    float32 activations are twice bf16 ones it is an upper bound on an accelerator's temp
    (`accelerator_bytes` = the real compile's arguments and outputs + that temp)."""
    import jax

    from llark_jax.checkpoints.build import resolve_config

    config = config.copy_and_resolve_references()
    if config.model.source != "random" and os.path.exists(config.model.path or "/"):
        config, _ = resolve_config(config)  # the checkpoint's dims and ids (no weights read)
    config.model.source = "random"
    config.train.init_from = ""
    setup, mem, compile_s = _compile(config, mesh_sizes)
    resident = mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
    accelerator_temp = mem.temp_size_in_bytes
    if config.model.dtype != "float32" or config.model.param_dtype != "float32":
        probe = config.copy_and_resolve_references()
        probe.model.dtype = probe.model.param_dtype = "float32"
        _, probe_mem, probe_s = _compile(probe, mesh_sizes)
        accelerator_temp, compile_s = min(probe_mem.temp_size_in_bytes, accelerator_temp), (
            compile_s + probe_s)
    n_devices = setup.mesh.devices.size
    flops = setup.flops_per_step()
    hours = {name: config.train.steps * flops / (n_devices * peak * mfu) / 3600
             for name, peak in PEAK_BF16_FLOPS.items()}
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(setup.abstract_state["params"]))
    return {
        "mesh": dict(setup.mesh.shape), "devices": n_devices, "params": n_params,
        "arguments_bytes": mem.argument_size_in_bytes, "outputs_bytes": mem.output_size_in_bytes,
        "aliased_bytes": mem.alias_size_in_bytes, "temp_bytes": mem.temp_size_in_bytes,
        "per_device_bytes": resident + mem.temp_size_in_bytes,
        "accelerator_temp_bytes": accelerator_temp,
        "accelerator_bytes": resident + accelerator_temp, "flops_per_step": flops,
        "steps": config.train.steps, "mfu": mfu, "hours": hours, "compile_s": compile_s,
    }


def format_plan(result: dict) -> str:
    lines = [
        f"mesh {result['mesh']} ({result['devices']} devices), {_count(result['params'])} "
        f"params, compiled in {result['compile_s']:.1f} s",
        "per-device memory (XLA memory_analysis):",
        f"  arguments {result['arguments_bytes'] / GB:8.2f} GB  (params + optimizer + batch)",
        f"  outputs   {result['outputs_bytes'] / GB:8.2f} GB  (aliased with donated inputs: "
        f"{result['aliased_bytes'] / GB:.2f} GB)",
        f"  temp      {result['temp_bytes'] / GB:8.2f} GB  (activations, gradients, workspace)",
        f"  total     {result['per_device_bytes'] / GB:8.2f} GB  (as XLA:CPU compiles it)",
    ]
    if result["accelerator_bytes"] != result["per_device_bytes"]:
        lines.append(f"  accelerator {result['accelerator_bytes'] / GB:6.2f} GB  (temp "
                     f"{result['accelerator_temp_bytes'] / GB:.2f} GB without XLA:CPU's float32 "
                     "copies of bf16 weights; an upper bound)")
    lines += [
        f"FLOPs per step (analytic 6·N·tokens + attention): {result['flops_per_step']:.3e}",
        f"{result['steps']} steps at MFU {result['mfu']:.0%} on {result['devices']} chips:",
    ]
    for name, peak in PEAK_BF16_FLOPS.items():
        lines.append(f"  {name:8s} (peak {peak / 1e12:.0f} TFLOP/s bf16): "
                     f"{_duration(result['hours'][name])}")
    return "\n".join(lines)


def _count(n: int) -> str:
    """7.000 B, 1.24 M, 9,604: a parameter count at a readable scale."""
    return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n:,}"


def _duration(hours: float) -> str:
    """Hours, or seconds below a tenth of an hour (a tiny config's plan printed 0.0 h)."""
    return f"{hours:8.1f} h" if hours >= 0.1 else f"{hours * 3600:8.1f} s"


def _config_mesh(config, default: dict[str, int], devices: int,
                 parser: argparse.ArgumentParser) -> dict[str, int]:
    """The config's mesh when every size is explicit and fits the `devices` faked, else
    `default` (`DEFAULT_MESH`)."""
    sizes = {axis: int(size) for axis, size in config.mesh.items()}
    if any(size < 1 for size in sizes.values()):
        return default  # "all devices" (-1): a machine's count, which planning must be told
    if math.prod(sizes.values()) > devices:
        parser.error(f"the config's mesh {sizes} has more than {devices} devices: pass --mesh")
    return sizes


def main(argv: list[str]) -> int:
    from llark_jax.config import split_overrides

    rest, overrides = split_overrides(argv)
    parser = argparse.ArgumentParser(prog="python -m llark_jax plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--mesh", default=None,
                        help=f"e.g. fsdp=8 or data=2,fsdp=4 (default: the config's mesh when "
                             f"its sizes are explicit, e.g. the demo's one device, else "
                             f"{DEFAULT_MESH})")
    parser.add_argument("--mfu", type=unit_fraction, default=0.4,
                        help="assumed model FLOPs utilisation, in (0, 1]")
    args = parser.parse_args(rest)

    mesh = args.mesh or DEFAULT_MESH
    try:  # the device count must be known before jax is imported
        devices = math.prod(int(part.split("=")[1]) for part in mesh.split(","))
    except (IndexError, ValueError):
        parser.error(f"--mesh {args.mesh!r}: expected AXIS=SIZE[,AXIS=SIZE...]")
    _fake_devices(devices)

    from llark_jax.config import load_config, validate_config
    from llark_jax.train.mesh import parse_mesh_flag

    try:
        sizes = parse_mesh_flag(mesh)
    except ValueError as err:
        parser.error(f"--mesh: {err}")
    if any(size < 1 for size in sizes.values()):
        parser.error("--mesh sizes must be explicit positive numbers for planning")

    config = load_config(args.config, overrides)
    validate_config(config)
    if args.mesh is None:
        sizes = _config_mesh(config, sizes, devices, parser)
    print(format_plan(plan(config, sizes, mfu=args.mfu)))
    return 0
