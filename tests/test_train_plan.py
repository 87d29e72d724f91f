"""The AOT planner compiles the real Llama-2-7B LLark train step on 8 fake CPU devices."""

import os
import re
import subprocess
import sys

import pytest
from train_helpers import REPO


@pytest.mark.slow
def test_plan_llark_7b_fsdp8_fits_80gb():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the planner sets its own
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-m", "llark_jax", "plan", "--config", "configs/llark_7b.py",
         "--mesh", "fsdp=8"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=1800,
    ).stdout
    assert "(8 devices), 6.7" in out  # Llama-2-7B + 4800->4096 projector, vocab 32004
    total_gb = float(re.search(r"total\s+([\d.]+) GB", out).group(1))
    assert total_gb < 80.0 and total_gb > 1.0
    flops = float(re.search(r"FLOPs per step .*: ([\d.e+]+)", out).group(1))
    assert 2e15 < flops < 4e15  # 6 N tokens: 6 x 6.7e9 x 65536 = 2.6e15, plus attention
    for name in ("H100", "TPU v5p", "TPU v5e"):
        assert re.search(rf"{name}\s+\(peak \d+ TFLOP/s bf16\):\s+[\d.]+ h", out)


@pytest.mark.slow
def test_plan_llark_7b_lora_fits_one_24gb_gpu():
    """configs/llark_7b_lora.py on one device: the bf16 base without gradients or Adam state,
    16 micro-batches of 2; the accelerator bound (temp measured without XLA:CPU's float32 copies
    of bf16 weights) stays under 24 GB, while the CPU compile itself counts those copies."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [sys.executable, "-m", "llark_jax", "plan", "--config", "llark_7b_lora", "--mesh",
         "fsdp=1"], cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=1800,
    ).stdout
    accelerator = float(re.search(r"accelerator\s+([\d.]+) GB", out).group(1))
    cpu_total = float(re.search(r"total\s+([\d.]+) GB", out).group(1))
    assert 13.5 < accelerator < 24.0, out  # the bf16 weights alone are 13.6 GB
    assert cpu_total > accelerator + 20.0  # + 27 GB of float32 weight copies on XLA:CPU


def test_plan_without_mesh_takes_the_configs_explicit_mesh():
    """Without --mesh the config's explicit mesh is planned (`plan --config demo` failed: a
    hidden fsdp=8 default did not split its batch of 4); a small model's count and time read in
    units that show them (it printed 0.000 B params, 0.0 h)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = str(REPO)

    out = subprocess.run(  # tiny with an explicit mesh, as the demo's (fsdp=1) is
        [sys.executable, "-m", "llark_jax", "plan", "--config", "tiny", "--config.mesh.fsdp=2"],
        cwd=REPO, env=env, capture_output=True, text=True, check=True, timeout=600).stdout
    assert "mesh {'data': 1, 'fsdp': 2, 'tensor': 1} (2 devices), 35,520 params" in out
    assert re.search(r"H100\s+\(peak \d+ TFLOP/s bf16\):\s+[\d.]+ s", out)
