"""Measures the performance levers the defaults rest on (same run, interleaved where timed).

    python bench/levers.py [--shape a] [--rounds 2] [--json out.json]

- compile cache: compile time of the train step in a fresh process with an empty persistent
  compilation cache (`jax_compilation_cache_dir`), then in a second fresh process reading it.
- remat: step time with `LlamaConfig.remat` on vs off (off is the default for models that fit).
- donation: step time with the train state donated vs copied.
- blocked attention: step time with `llama.ATTENTION_BLOCK` causal query blocks vs one block.
- scored head: step time with the LM head at the 200 answer positions per row
  (`train.head_positions`, the default here) vs at all 512.
- host syncs: 3 steps fetching the loss to the host after each (the trainer's loop) vs 3 steps
  dispatched back to back with one fetch at the end.
(dtype policy: `bench/train_step.py --dtype bfloat16`, a row of RESULTS.md.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import tempfile
import time

from common import REPO, emit, interleaved
from train_step import ANSWER_TOKENS, build_ours, make_batch, our_step_and_state

SYNC_STEPS = 3


def _step_parts(shape: str, remat: bool, head_positions: int = ANSWER_TOKENS):
    import jax
    from flax import nnx

    from llark_jax.model.llama import Llama
    from llark_jax.model.llark import LLark

    model, cfg = build_ours(shape, "float32")
    if remat:
        cfg = dataclasses.replace(cfg, remat=True)
        v = cfg.vocab_size
        model = LLark(Llama(cfg, rngs=nnx.Rngs(0)), model.projector.kernel.shape[0],
                      audio_start_id=v - 3, audio_patch_id=v - 2, audio_end_id=v - 1,
                      rngs=nnx.Rngs(1))
    train_step, state = our_step_and_state(model, head_positions)
    batch = jax.device_put(make_batch(cfg.vocab_size, 4, 512))
    return train_step, state, batch


def compile_child(shape: str, cache_dir: str) -> None:
    """Fresh process: compile the step with the persistent cache at `cache_dir`; print seconds."""
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    step_fn, state, batch = _step_parts(shape, remat=False)
    began = time.perf_counter()
    jax.jit(step_fn, donate_argnums=(0,)).lower(state, batch).compile()
    print(json.dumps({"compile_s": time.perf_counter() - began}))


def compile_cache(shape: str) -> dict:
    with tempfile.TemporaryDirectory() as cache:
        runs = []
        for _ in range(2):
            proc = subprocess.run([sys.executable, __file__, "--compile-child", cache,
                                   "--shape", shape], cwd=REPO, capture_output=True, text=True,
                                  check=True)
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1])["compile_s"])
    return {"cold_compile_s": runs[0], "warm_compile_s": runs[1], "speedup": runs[0] / runs[1]}


def step_variants(shape: str, rounds: int) -> dict:
    """Step time of the default against one lever flipped at a time (compiled up front)."""
    import jax

    from llark_jax.model import llama as llama_module

    variants = [("default", False, True, None, ANSWER_TOKENS),
                ("remat", True, True, None, ANSWER_TOKENS),
                ("no_donation", False, False, None, ANSWER_TOKENS),
                ("full_head", False, True, None, 0)]
    if hasattr(llama_module, "ATTENTION_BLOCK"):
        variants.append(("unblocked_attention", False, True, 1 << 30, ANSWER_TOKENS))
    fns = {}
    for name, remat, donate, block, head_positions in variants:
        step_fn, state, batch = _step_parts(shape, remat, head_positions)
        saved = getattr(llama_module, "ATTENTION_BLOCK", None)
        if block is not None:
            llama_module.ATTENTION_BLOCK = block  # read at trace time
        try:
            compiled = jax.jit(step_fn, donate_argnums=(0,) if donate else ()).lower(
                state, batch).compile()
        finally:
            if block is not None:
                llama_module.ATTENTION_BLOCK = saved
        holder = {"state": state}

        def run(compiled=compiled, holder=holder, batch=batch):
            holder["state"], metrics = compiled(holder["state"], batch)
            metrics["loss"].block_until_ready()

        fns[name] = run
    times = interleaved(fns, rounds)
    base = times["default"]["min"]
    return {name: {**t, "relative_to_default": t["min"] / base} for name, t in times.items()}


def host_syncs(shape: str) -> dict:
    """Seconds for SYNC_STEPS steps with a host fetch of the loss after each vs one at the end."""
    import jax

    step_fn, state, batch = _step_parts(shape, remat=False)
    step = jax.jit(step_fn, donate_argnums=(0,)).lower(state, batch).compile()
    holder = {"state": state}

    def loop(sync_each: bool) -> None:
        losses = []
        for _ in range(SYNC_STEPS):
            holder["state"], metrics = step(holder["state"], batch)
            losses.append(float(metrics["loss"]) if sync_each else metrics["loss"])
        jax.device_get(losses)

    times = interleaved({"sync_each_step": lambda: loop(True),
                         "sync_at_end": lambda: loop(False)}, rounds=1)
    return {**times, "steps": SYNC_STEPS,
            "ratio": times["sync_each_step"]["min"] / times["sync_at_end"]["min"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="a")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--compile-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.compile_child:
        compile_child(args.shape, args.compile_child)
        return
    emit({"benchmark": "levers", "shape": args.shape, "compile_cache": compile_cache(args.shape),
          "step_variants": step_variants(args.shape, args.rounds),
          "host_syncs": host_syncs(args.shape)}, args.json)


if __name__ == "__main__":
    main()
