"""Decode throughput: ours (`llark_jax.infer.generate.Generator`) vs HF `generate`, same weights.

    python bench/generate.py [--shape b] [--batches 1,8] [--prompt-len 64] [--new-tokens 64]

The model is a random-weight Llama of a `bench/train_step.py` shape (default b = SmolLM2-135M);
torch gets the same weights (`tests/llark_torch_reference.TorchLLark`, sdpa attention). Both
decode greedily in float32 from the same prompts for exactly `--new-tokens` tokens (no EOS), so
both do the same work; tokens/s = batch x new tokens / wall time of the whole call (prefill of the
prompt included, the same for both). Each is also timed generating 1 token (the prefill and its
token; ours: the same compiled program with a per-row limit of 1), so the decode steps alone take
(call - 1-token call) / (new tokens - 1): their tokens/s is what the bandwidth bound below
limits (a prefill is compute-bound, not read-bound). The run also reports the fraction of rows
whose tokens are identical in both frameworks (a check that the weights and the decoding agree).

Machine limit: a decode step reads every weight once, so at batch b no implementation exceeds
b x (memory read bandwidth / weight bytes) tokens/s. The read bandwidth is measured in the same
run (best of a numpy and an XLA reduction over 512 MB); each row reports that bound and ours as a
fraction of it. The run also times XLA's floor for our decode: one jitted program doing nothing
but the matrix-vector products of one token (every weight matrix times a vector, as the model
contracts it), the time no XLA decode step on this machine goes below.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
from common import cpu_count, emit, interleaved, setup_torch
from train_step import SHAPES

BANDWIDTH_BYTES = 512 * 2**20


def build(shape: str):
    """(our Llama, the HF LlamaForCausalLM with the same weights)."""
    import jax.numpy as jnp
    from flax import nnx
    from llark_torch_reference import TorchLLark

    from llark_jax.model.llama import Llama, LlamaConfig
    from llark_jax.model.llark import LLark

    cfg = LlamaConfig(**SHAPES[shape], dtype=jnp.float32, param_dtype=jnp.float32)
    llama = Llama(cfg, rngs=nnx.Rngs(0))
    v = cfg.vocab_size
    wrapper = LLark(llama, 8, audio_start_id=v - 3, audio_patch_id=v - 2, audio_end_id=v - 1,
                    rngs=nnx.Rngs(1))
    hf = TorchLLark(wrapper).lm
    hf.set_attn_implementation("sdpa")
    hf.eval()
    return llama, hf


def read_bandwidth(rounds: int = 5, nbytes: int = BANDWIDTH_BYTES, host: bool = True) -> float:
    """Bytes/s of the best streaming read over `nbytes`: a jitted XLA sum on the default device
    and (`host`) a numpy sum."""
    import jax
    import jax.numpy as jnp

    device = jnp.ones(nbytes // 4, jnp.float32)
    xla_sum = jax.jit(jnp.sum)
    candidates = {"xla": lambda: xla_sum(device).block_until_ready()}
    if host:
        candidates["numpy"] = np.ones(nbytes // 4, np.float32).sum
    times = interleaved(candidates, rounds)
    return nbytes / min(t["min"] for t in times.values())


def matvec_floor_s(llama, rounds: int = 10) -> float:
    """Seconds of one token's weight matrix-vector products alone, in one jitted program."""

    import jax
    import jax.numpy as jnp
    from flax import nnx

    flat = [(str(path[-1]), var.get_value()) for path, var in
            nnx.to_flat_state(nnx.state(llama, nnx.Param)) if var.get_value().ndim >= 2]
    names = [name for name, _ in flat]

    @jax.jit
    def products(weights):
        total = jnp.zeros((), jnp.float32)
        for name, w in zip(names, weights, strict=True):
            if name == "embed":  # the tied LM head: logits = W_vd @ x_d
                total += jnp.sum(w @ jnp.ones(w.shape[1], w.dtype))
            else:  # [d_in..., d_out] contracted on its input axes
                rows = w.shape[0] * (w.shape[1] if name == "o" else 1)
                total += jnp.sum(jnp.ones(rows, w.dtype) @ w.reshape(rows, -1))
        return total

    weights = [w for _, w in flat]
    times = interleaved({"products": lambda: products(weights).block_until_ready()}, rounds)
    return times["products"]["min"]


def generator_calls(llama, prompts_np: np.ndarray, new_tokens: int,
                    outputs: dict) -> dict[str, Callable[[], None]]:
    """{"ours": a greedy `Generator` call on the prompts [B, T] for exactly `new_tokens` tokens
    (they go to outputs["ours"]), "ours_prefill": the same compiled program stopped after one
    token (per-row limit 1: the prefill and its token)}."""
    from llark_jax.infer.generate import Generator, Prompt, RowSettings, SamplingConfig

    generator = Generator(llama, SamplingConfig(max_new_tokens=new_tokens, temperature=0.0),
                          batch_size=len(prompts_np), length_buckets=(prompts_np.shape[1],))
    prompts = [Prompt(row) for row in prompts_np]
    one_token = [RowSettings(max_new_tokens=1)] * len(prompts)

    def full() -> None:
        outputs["ours"] = [g.token_ids for g in generator.generate(prompts)]

    return {"ours": full, "ours_prefill": lambda: generator.generate(prompts, rows=one_token)}


def decode_stats(times: dict, name: str, batch: int, new_tokens: int) -> dict[str, float]:
    """Decode steps alone from `name` and `name_prefill` times: (call - 1-token call) / steps."""
    step_s = (times[name]["min"] - times[f"{name}_prefill"]["min"]) / (new_tokens - 1)
    return {f"{name}_step_ms": step_s * 1e3, f"{name}_prefill_s": times[f"{name}_prefill"]["min"],
            f"{name}_decode_tokens_per_s": batch / step_s}


def measure(shape: str, batches: list[int], prompt_len: int, new_tokens: int, rounds: int) -> dict:
    torch = setup_torch()
    llama, hf = build(shape)
    rng = np.random.default_rng(0)
    rows = []
    for batch in batches:
        prompts_np = rng.integers(2, llama.config.vocab_size - 3, (batch, prompt_len)).astype(
            np.int32)
        ids_t = torch.from_numpy(prompts_np).long()
        outputs = {}

        def hf_call(n: int, ids_t=ids_t, outputs=outputs):
            def run():
                with torch.inference_mode():
                    out = hf.generate(ids_t, attention_mask=torch.ones_like(ids_t),
                                      do_sample=False, max_new_tokens=n, min_new_tokens=n,
                                      eos_token_id=None, pad_token_id=0)
                outputs[f"hf{n}"] = out[:, prompt_len:].tolist()
            return run

        times = interleaved({**generator_calls(llama, prompts_np, new_tokens, outputs),
                             "hf": hf_call(new_tokens), "hf_prefill": hf_call(1)}, rounds)
        same = np.mean([a == b for a, b in zip(outputs["ours"], outputs[f"hf{new_tokens}"],
                                               strict=True)])
        tokens = batch * new_tokens
        row = {
            "batch": batch, "seconds": times,
            "ours_tokens_per_s": tokens / times["ours"]["min"],
            "hf_tokens_per_s": tokens / times["hf"]["min"],
            "speedup": times["hf"]["min"] / times["ours"]["min"],
            "speedup_median": times["hf"]["median"] / times["ours"]["median"],
            "identical_rows": float(same),
            **decode_stats(times, "ours", batch, new_tokens),
            **decode_stats(times, "hf", batch, new_tokens),
        }
        rows.append(row)
    import jax
    from flax import nnx

    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(llama, nnx.Param)))
    bandwidth = read_bandwidth()
    floor_s = matvec_floor_s(llama)
    for row in rows:
        row["bound_tokens_per_s"] = row["batch"] * bandwidth / weight_bytes
        row["ours_fraction_of_bound"] = row["ours_tokens_per_s"] / row["bound_tokens_per_s"]
        row["ours_decode_fraction_of_bound"] = (row["ours_decode_tokens_per_s"]
                                                / row["bound_tokens_per_s"])
        row["max_speedup"] = row["bound_tokens_per_s"] / row["hf_tokens_per_s"]
    return {"shape": shape, "dims": SHAPES[shape], "prompt_len": prompt_len,
            "new_tokens": new_tokens, "cores": cpu_count(), "weight_bytes": weight_bytes,
            "read_bandwidth_gb_s": bandwidth / 1e9, "matvec_floor_ms": floor_s * 1e3,
            "matvec_floor_tokens_per_s": 1.0 / floor_s, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="b")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = measure(args.shape, [int(b) for b in args.batches.split(",")], args.prompt_len,
                     args.new_tokens, args.rounds)
    emit({"benchmark": "generate", **result}, args.json)


if __name__ == "__main__":
    main()
