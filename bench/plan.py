"""The paper's recipe (Llama-2-7B LLark, 100k steps x 32 examples) planned for two targets.

    python bench/plan.py [--config configs/llark_7b.py] [--mfu 0.4] [--json out.json]

For each target the real jitted train step is AOT-compiled on fake CPU devices (one child process
per target, since the device count is fixed at jax import) by `llark_jax.train.plan.plan`, which
reports XLA's per-device memory. Hours = steps x analytic FLOPs per step / (chips x dense bf16
peak x MFU). Targets (per-chip peak, HBM):

    8 x H100 SXM   mesh fsdp=8   989 TFLOP/s   80 GB
    TPU v5p-8      mesh fsdp=4   459 TFLOP/s   95 GB   (v5p-8 = 4 chips / 8 TensorCores)

The config's rows are `seq_len` (2048) tokens; `--tokens-per-example` (default 500: ~250 audio
positions + prompt + answer) also projects the packed run, where the same 3.2 M examples fill
fewer rows (FLOPs scale with real tokens; attention is counted at full row length, so this is an
upper bound).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import REPO, emit

TARGETS = {
    "8x H100 SXM": dict(mesh="fsdp=8", chips=8, peak=989e12, hbm_gb=80.0),
    "TPU v5p-8": dict(mesh="fsdp=4", chips=4, peak=459e12, hbm_gb=95.0),
}


def child(config_path: str, mesh: str, mfu: float) -> None:
    """Runs in a fresh process: fakes the mesh's devices, compiles, prints the plan as JSON."""
    from llark_jax.train import plan as planner

    n = 1
    for part in mesh.split(","):
        n *= int(part.split("=")[1])
    planner._fake_devices(n)
    from llark_jax.config import load_config
    from llark_jax.train.mesh import parse_mesh_flag

    config = load_config(config_path, [])
    result = planner.plan(config, parse_mesh_flag(mesh), mfu=mfu)
    result.update(seq_len=config.data.seq_len, batch_size=config.data.batch_size)
    print(json.dumps(result, default=float))


def measure(config_path: str, mfu: float, tokens_per_example: int) -> dict:
    rows = {}
    for name, target in TARGETS.items():
        proc = subprocess.run(
            [sys.executable, __file__, "--child", "--config", config_path,
             "--mesh", target["mesh"], "--mfu", str(mfu)],
            capture_output=True, text=True, check=True, cwd=REPO,
        )
        plan = json.loads(proc.stdout.strip().splitlines()[-1])
        step_s = plan["flops_per_step"] / (target["chips"] * target["peak"] * mfu)
        hours = plan["steps"] * step_s / 3600
        rows[name] = {
            **target, "mfu": mfu, "per_device_gb": plan["per_device_bytes"] / 1e9,
            "arguments_gb": plan["arguments_bytes"] / 1e9, "temp_gb": plan["temp_bytes"] / 1e9,
            "fits": plan["per_device_bytes"] / 1e9 < target["hbm_gb"],
            "flops_per_step": plan["flops_per_step"], "steps": plan["steps"],
            "params": plan["params"], "compile_s": plan["compile_s"],
            "seq_len": plan["seq_len"], "batch_size": plan["batch_size"],
            "hours_padded_rows": hours,
            "hours_packed": hours * min(1.0, tokens_per_example / plan["seq_len"]),
        }
    return {"config": config_path, "mfu": mfu, "tokens_per_example": tokens_per_example,
            "targets": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/llark_7b.py")
    parser.add_argument("--mfu", type=float, default=0.4)
    parser.add_argument("--tokens-per-example", type=int, default=500)
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mesh", default="fsdp=8", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.config, args.mesh, args.mfu)
        return
    emit({"benchmark": "plan", **measure(args.config, args.mfu, args.tokens_per_example)},
         args.json)


if __name__ == "__main__":
    main()
