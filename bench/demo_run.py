"""`make demo` from an empty workdir, timed by its own stage markers (issue #22, goal 1).

Runs `python -m llark_jax demo` (the default config, `configs/demo.py`) into a fresh workdir
(deleted first; default runs/bench/demo) with an empty XLA compilation cache of its own (a
newcomer's first run compiles every program; `--warm-cache` uses the user's cache instead) and
reads its `report.json`: the wall and CPU seconds
of every stage (set-up, i.e. `make`'s venv check, is not in them) and, for the held-out and the
out-of-distribution sets, each metric's own-audio score and whether it is grounded (beats
shuffled audio and the best constant answer with disjoint 95% intervals).

    python bench/demo_run.py [--workdir runs/bench/demo] [--json out.json]

Targets: total <= 600 s on the 2-core machine; held-out tempo Acc2 >= 0.5 and grounded.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, emit  # noqa: E402

METRICS = ("key_mirex", "tempo_acc2", "instruments_f1")


def summary(report: dict) -> dict:
    """Stage seconds and, per evaluation set, each metric's own-audio score and grounding."""
    sets = {"held_out": report, **({"ood": report["ood"]} if "ood" in report else {})}
    return {
        "total_s": sum(report["stage_seconds"].values()),
        "total_cpu_s": sum(report["stage_cpu_seconds"].values()),
        "stage_seconds": report["stage_seconds"],
        "scores": {name: {m: {"audio": s[m]["audio"], "grounded": s[m]["grounded"]}
                          for m in METRICS} for name, s in sets.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench" / "demo")
    parser.add_argument("--json", default=None)
    parser.add_argument("--warm-cache", action="store_true",
                        help="use the user's XLA compilation cache (a rerun's compile times)")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    env = dict(os.environ)
    if not args.warm_cache:
        cache = args.workdir.with_name(args.workdir.name + ".xla-cache")
        shutil.rmtree(cache, ignore_errors=True)
        env["LLARK_JAX_COMPILATION_CACHE"] = str(cache)
        env.pop("JAX_COMPILATION_CACHE_DIR", None)  # it would take precedence
    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "llark_jax", "demo", "--workdir", str(args.workdir)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL, env=env)
    result = {"benchmark": "demo_run", "compilation_cache": "warm" if args.warm_cache else "empty",
              **summary(json.loads((args.workdir / "report.json").read_text())),
              "command_s": time.perf_counter() - began}
    emit(result, args.json)


if __name__ == "__main__":
    main()
