"""One accelerator's numbers: MFU of the LLark train step at a ~1B Llama shape in bf16, and decode
tokens/s at batch 1, 8 and 32.

    python bench/accelerator.py [--budget-s 240] [--write] [--json out.json]
    python bench/accelerator.py --tiny      # a tiny CPU stand-in (what the test runs)

Train step: `bench/train_step.py`'s LLark step (AdamW + global-norm clipping, every parameter
trainable, the LM head at the 200 answer positions) at shape `1b` (TinyLlama-1.1B dims: hidden
2048, 22 layers, 32 heads / 4 kv heads, MLP 5632, vocab 32004), batch 8 x 2048 real tokens
with 250 Jukebox frames (4800 features) per row; bf16 compute with fp32 master weights;
attention `dot_product` (cuDNN) on GPU, `splash` on TPU, `einsum` elsewhere. MFU = analytic
FLOPs (`llark_jax.train.flops.train_flops_per_step`) / step time / the device's dense bf16 peak
(`PEAK_BF16_FLOPS`; where the device is not listed, e.g. a CPU, the measured XLA bf16 matmul
rate of the run stands in).

Decode: `Generator` greedy on the same Llama with bf16 weights, 128-token prompts, 128 new
tokens, batch 1/8/32: tokens/s of the whole call and of the decode steps alone (call minus the
same program stopped after 1 token, `bench/generate.py`), and the decode steps as a fraction of
the weight-read bound (batch x read bandwidth / weight bytes; bandwidth of a jitted reduction
over 1 GB, measured in the run).

`--budget-s` bounds the run (default 240 s; on an H200 the whole run, compiles included, should
stay under 5 min): the train part times rounds until 40% of the budget has passed, each decode
batch until its share of the rest, and a decode batch that would start after the budget is
skipped (listed as such). `--write` stores the result in bench/accelerator.json and rewrites the
"Accelerator" section of bench/RESULTS.md; `make bench` renders that file too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import REPO, emit, interleaved
from generate import decode_stats, generator_calls, read_bandwidth
from render import ACCELERATOR_HEADING, accelerator_section, replace_section
from train_step import SHAPES, build_ours, make_batch, ours_step

PEAK_BF16_FLOPS = (  # (device_kind substring, dense bf16 FLOP/s); first match wins
    ("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L4", 121e12),
    ("TPU v6", 918e12), ("TPU v5p", 459e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12),
    ("TPU v4", 275e12),
)
SETTINGS = {
    "full": dict(shape="1b", batch=8, seq_len=2048, audio_frames=250, audio_dim=4800,
                 answer_tokens=200, prompt_len=128, new_tokens=128, bandwidth_bytes=2**30),
    "tiny": dict(shape="tiny", batch=2, seq_len=128, audio_frames=16, audio_dim=32,
                 answer_tokens=32, prompt_len=16, new_tokens=128, bandwidth_bytes=2**24),
}
DECODE_BATCHES = (1, 8, 32)
TRAIN_SHARE = 0.4  # of the budget


def attention_for(platform: str) -> str:
    return {"gpu": "dot_product", "tpu": "splash"}.get(platform, "einsum")


def peak_bf16_flops(device_kind: str, rounds: int = 3) -> tuple[float, str]:
    """(FLOP/s, where it comes from): the table's entry, else a measured 2048^3 bf16 matmul."""
    import jax
    import jax.numpy as jnp

    for name, flops in PEAK_BF16_FLOPS:
        if name.lower() in device_kind.lower():
            return flops, f"{name} dense bf16 (spec)"
    a = jnp.ones((2048, 2048), jnp.bfloat16)
    matmul = jax.jit(jnp.matmul)
    seconds = interleaved({"mm": lambda: matmul(a, a).block_until_ready()}, rounds)["mm"]["min"]
    return 2 * 2048**3 / seconds, "measured XLA bf16 matmul"


def train_part(s: dict, attention: str, peak: float, deadline: float) -> dict:
    from llark_jax.train.flops import train_flops_per_step

    model, cfg = build_ours(s["shape"], "bfloat16", attention=attention,
                            audio_dim=s["audio_dim"])
    batch = make_batch(cfg.vocab_size, s["batch"], s["seq_len"], audio_frames=s["audio_frames"],
                       audio_dim=s["audio_dim"], answer_tokens=s["answer_tokens"])
    began = time.perf_counter()
    step = ours_step(model, batch, s["answer_tokens"])
    first_loss = step()  # compiles
    compile_s = time.perf_counter() - began
    seconds = interleaved({"step": step}, rounds=50, warmup=0, deadline=deadline)["step"]
    flops = train_flops_per_step(cfg, audio_dim=s["audio_dim"], batch=s["batch"],
                                 seq_len=s["seq_len"], audio_frames=s["audio_frames"],
                                 head_positions=s["answer_tokens"])
    return {"shape": s["shape"], "batch": s["batch"], "seq_len": s["seq_len"],
            "params": sum(int(np.prod(x.shape)) for x in _params(model)),
            "first_loss": first_loss, "compile_s": compile_s, "seconds": seconds,
            "tokens_per_s": s["batch"] * s["seq_len"] / seconds["min"],
            "tflops": flops / seconds["min"] / 1e12, "mfu": flops / seconds["min"] / peak}


def _params(model) -> list:
    import jax
    from flax import nnx

    return jax.tree.leaves(nnx.state(model, nnx.Param))


def decode_part(s: dict, deadline: float) -> dict:
    import jax.numpy as jnp
    from flax import nnx

    from llark_jax.model.llama import Llama, LlamaConfig

    cfg = LlamaConfig(**SHAPES[s["shape"]], dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    llama = Llama(cfg, rngs=nnx.Rngs(0))
    weight_bytes = sum(x.nbytes for x in _params(llama))
    bandwidth = read_bandwidth(nbytes=s["bandwidth_bytes"], host=False)
    rng = np.random.default_rng(0)
    rows = []
    for i, batch in enumerate(DECODE_BATCHES):
        now = time.perf_counter()
        if now > deadline:
            rows.append({"batch": batch, "skipped": "budget"})
            continue
        prompts = rng.integers(2, cfg.vocab_size, (batch, s["prompt_len"])).astype(np.int32)
        calls = generator_calls(llama, prompts, s["new_tokens"], {})
        share = now + (deadline - now) / (len(DECODE_BATCHES) - i)
        times = interleaved(calls, rounds=20, deadline=share)
        stats = decode_stats(times, "ours", batch, s["new_tokens"])
        bound = batch * bandwidth / weight_bytes
        rows.append({"batch": batch, "seconds": times,
                     "tokens_per_s": batch * s["new_tokens"] / times["ours"]["min"],
                     **stats, "bound_tokens_per_s": bound,
                     "decode_fraction_of_bound": stats["ours_decode_tokens_per_s"] / bound})
    return {"prompt_len": s["prompt_len"], "new_tokens": s["new_tokens"],
            "weight_bytes": weight_bytes, "read_bandwidth_gb_s": bandwidth / 1e9, "rows": rows}


def measure(tiny: bool, budget_s: float) -> dict:
    import jax

    began = time.perf_counter()
    s = SETTINGS["tiny" if tiny else "full"]
    device = jax.devices()[0]
    peak, peak_source = peak_bf16_flops(device.device_kind)
    attention = attention_for(device.platform)
    train = train_part(s, attention, peak, began + TRAIN_SHARE * budget_s)
    decode = decode_part(s, began + budget_s)
    return {"benchmark": "accelerator", "device": device.device_kind,
            "platform": device.platform, "devices": jax.device_count(), "tiny": tiny,
            "attention": attention, "peak_bf16_flops": peak, "peak_source": peak_source,
            "budget_s": budget_s, "train": train, "decode": decode,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "wall_s": time.perf_counter() - began}


def write(result: dict, store: Path, results_md: Path) -> None:
    """Stores the JSON and rewrites the Accelerator section of RESULTS.md."""
    from llark_jax.io import atomic_write_text

    atomic_write_text(store, json.dumps(result, indent=1, default=float))
    text = results_md.read_text() if results_md.exists() else ""
    atomic_write_text(results_md, replace_section(text, ACCELERATOR_HEADING,
                                                  accelerator_section(result)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (CPU stand-in)")
    parser.add_argument("--budget-s", type=float, default=240.0)
    parser.add_argument("--write", action="store_true",
                        help="store --store and update the Accelerator section of --results")
    parser.add_argument("--store", default=str(REPO / "bench" / "accelerator.json"))
    parser.add_argument("--results", default=str(REPO / "bench" / "RESULTS.md"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = measure(args.tiny, args.budget_s)
    emit(result, args.json)
    print("\n".join(accelerator_section(result)))
    if args.write:
        write(result, Path(args.store), Path(args.results))


if __name__ == "__main__":
    main()
