"""`make bench`: runs every benchmark (one process each) and regenerates bench/RESULTS.md.

    python bench/run_all.py [--only train_a,generate] [--render-only] [--out bench/RESULTS.md]

Raw results go to runs/bench/<name>.json (git-ignored); `--render-only` rebuilds RESULTS.md from
them without measuring. bench/accelerator.json (committed, written by `bench/accelerator.py
--write` on a GPU/TPU) adds the Accelerator section; this machine does not rerun it. Each
benchmark runs in its own process so XLA flags, thread pools and device counts do not leak
between them.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, cpu_count
from render import render

from llark_jax.io import atomic_write_text

RAW = REPO / "runs" / "bench"
ACCELERATOR_JSON = REPO / "bench" / "accelerator.json"
BENCHMARKS = {
    "train_a": ["bench/train_step.py", "--shape", "a"],
    "train_a_bf16": ["bench/train_step.py", "--shape", "a", "--dtype", "bfloat16", "--rounds", "2"],
    "train_b": ["bench/train_step.py", "--shape", "b", "--batch", "2", "--rounds", "2",
                "--compare-attention", ""],  # the attention A/B runs on shape (a) only
    "profile": ["bench/profile_step.py", "--shape", "a", "--rounds", "2"],
    "levers": ["bench/levers.py", "--shape", "a"],
    "generate": ["bench/generate.py", "--rounds", "2", "--new-tokens", "32"],
    "plan": ["bench/plan.py"],
    "pipeline": ["bench/pipeline.py"],
    "host_loop": ["bench/host_loop.py"],
    "demo_run": ["bench/demo_run.py"],
    "demo_distortions": ["bench/demo_distortions.py", "--workdir", "runs/bench/demo"],  # demo_run's
}
JSON_FLAG = {"pipeline": False}  # bench/pipeline.py prints its JSON; the others write --json


def run_one(name: str) -> float:
    """Runs benchmark `name`, stores runs/bench/<name>.json; returns seconds taken."""
    RAW.mkdir(parents=True, exist_ok=True)
    out = RAW / f"{name}.json"
    cmd = [sys.executable, *BENCHMARKS[name]]
    if JSON_FLAG.get(name, True):
        cmd += ["--json", str(out)]
    began = time.perf_counter()
    print(f"[bench] {name}: {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"[bench] {name} failed with status {proc.returncode}")
    if not JSON_FLAG.get(name, True):
        atomic_write_text(out, proc.stdout[proc.stdout.index("{"):])
    print(f"[bench] {name}: {seconds:.0f} s", flush=True)
    return seconds


def machine() -> dict:
    import jax
    import torch

    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
                 platform.processor())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    return {"cpu": model, "cores": cpu_count(), "jax": jax.__version__,
            "torch": torch.__version__, "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma list of {','.join(BENCHMARKS)}")
    parser.add_argument("--render-only", action="store_true")
    parser.add_argument("--out", default=str(REPO / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmarks {unknown}; known: {sorted(BENCHMARKS)}")
    durations = {}
    if not args.render_only:
        durations = {name: run_one(name) for name in names}
    results = {p.stem: json.loads(p.read_text()) for p in sorted(RAW.glob("*.json"))}
    info_path = RAW / "machine.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if durations or not info:
        info = {**machine(), "durations_s": {**info.get("durations_s", {}), **durations}}
        info_path.write_text(json.dumps(info, indent=1))
    results.pop("machine", None)
    if ACCELERATOR_JSON.exists():  # committed from a run on a GPU/TPU (`bench/accelerator.py`)
        results["accelerator"] = json.loads(ACCELERATOR_JSON.read_text())
    text = render(results, info)
    atomic_write_text(args.out, text)
    print(f"[bench] wrote {args.out}")


if __name__ == "__main__":
    main()
