"""The machine's matmul limit: square n x n x n matmul GFLOP/s in JAX (XLA) and torch, fp32 + bf16.

    python bench/matmul_peak.py [--n 2048] [--rounds 8] [--json out.json]

All four candidates run interleaved in one process (see `bench/common.py`); per dtype the higher of
the two frameworks is the machine limit that the train-step benchmark divides by.
"""

from __future__ import annotations

import argparse

from common import cpu_count, emit, interleaved, setup_torch


def measure(n: int, rounds: int) -> dict:
    """{"jax_float32": GFLOP/s, ..., "limit": {"float32": ..., "bfloat16": ...}}."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    torch = setup_torch()
    rng = np.random.default_rng(0)
    a_np, b_np = (rng.standard_normal((n, n), np.float32) for _ in range(2))
    matmul = jax.jit(jnp.matmul)
    candidates = {}
    for name, jdt, tdt in (("float32", jnp.float32, torch.float32),
                           ("bfloat16", jnp.bfloat16, torch.bfloat16)):
        a_j, b_j = jnp.asarray(a_np, jdt), jnp.asarray(b_np, jdt)
        a_t, b_t = torch.from_numpy(a_np).to(tdt), torch.from_numpy(b_np).to(tdt)
        candidates[f"jax_{name}"] = lambda a=a_j, b=b_j: matmul(a, b).block_until_ready()
        candidates[f"torch_{name}"] = lambda a=a_t, b=b_t: torch.mm(a, b)
    with torch.inference_mode():
        times = interleaved(candidates, rounds)
    flops = 2.0 * n**3
    gflops = {k: flops / t["min"] / 1e9 for k, t in times.items()}
    gflops_median = {k: flops / t["median"] / 1e9 for k, t in times.items()}
    limit = {dt: max(gflops[f"jax_{dt}"], gflops[f"torch_{dt}"]) for dt in ("float32", "bfloat16")}
    return {"n": n, "cores": cpu_count(), "gflops": gflops, "gflops_median": gflops_median,
            "limit": limit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--json", default=None, help="also write the result here")
    args = parser.parse_args()
    emit({"benchmark": "matmul_peak", **measure(args.n, args.rounds)}, args.json)


if __name__ == "__main__":
    main()
