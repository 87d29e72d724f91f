"""Decode throughput: ours (`llark_jax.infer.generate.Generator`) vs HF `generate`, same weights.

    python bench/generate.py [--shape b] [--batches 1,8] [--prompt-len 64] [--new-tokens 64]

The model is a random-weight Llama of a `bench/train_step.py` shape (default b = SmolLM2-135M);
torch gets the same weights (`tests/llark_torch_reference.TorchLLark`, sdpa attention). Both
decode greedily in float32 from the same prompts for exactly `--new-tokens` tokens (no EOS), so
both do the same work; tokens/s = batch x new tokens / wall time of the whole call (prefill of the
prompt included, the same for both). The run also reports the fraction of rows whose tokens are
identical in both frameworks (a check that the weights and the decoding agree).

Machine limit: a decode step reads every weight once, so at batch b no implementation exceeds
b x (memory read bandwidth / weight bytes) tokens/s. The read bandwidth is measured in the same
run (best of a numpy and an XLA reduction over 512 MB); each row reports that bound and ours as a
fraction of it. The run also times XLA's floor for our decode: one jitted program doing nothing
but the matrix-vector products of one token (every weight matrix times a vector, as the model
contracts it), the time no XLA decode step on this machine goes below.
"""

from __future__ import annotations

import argparse

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


def read_bandwidth(rounds: int = 5) -> float:
    """Bytes/s of the best streaming read: a numpy sum and a jitted XLA sum over 512 MB."""
    import jax
    import jax.numpy as jnp

    host = np.ones(BANDWIDTH_BYTES // 4, np.float32)
    device = jnp.asarray(host)
    xla_sum = jax.jit(jnp.sum)
    times = interleaved({"numpy": host.sum,
                         "xla": lambda: xla_sum(device).block_until_ready()}, rounds)
    return BANDWIDTH_BYTES / min(t["min"] for t in times.values())


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


def measure(shape: str, batches: list[int], prompt_len: int, new_tokens: int, rounds: int) -> dict:
    from llark_jax.infer.generate import Generator, Prompt, SamplingConfig

    torch = setup_torch()
    llama, hf = build(shape)
    rng = np.random.default_rng(0)
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.0)
    rows = []
    for batch in batches:
        prompts_np = rng.integers(2, llama.config.vocab_size - 3, (batch, prompt_len)).astype(
            np.int32)
        ours = Generator(llama, sampling, batch_size=batch, length_buckets=(prompt_len,))
        prompts = [Prompt(row) for row in prompts_np]
        ids_t = torch.from_numpy(prompts_np).long()
        outputs = {}

        def run_ours(prompts=prompts, ours=ours, outputs=outputs):
            outputs["ours"] = [g.token_ids for g in ours.generate(prompts)]

        def run_hf(ids_t=ids_t, outputs=outputs):
            with torch.inference_mode():
                out = hf.generate(ids_t, attention_mask=torch.ones_like(ids_t), do_sample=False,
                                  max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                  eos_token_id=None, pad_token_id=0)
            outputs["hf"] = out[:, prompt_len:].tolist()

        times = interleaved({"ours": run_ours, "hf": run_hf}, rounds)
        same = np.mean([a == b for a, b in zip(outputs["ours"], outputs["hf"], strict=True)])
        tokens = batch * new_tokens
        rows.append({
            "batch": batch, "seconds": times,
            "ours_tokens_per_s": tokens / times["ours"]["min"],
            "hf_tokens_per_s": tokens / times["hf"]["min"],
            "speedup": times["hf"]["min"] / times["ours"]["min"],
            "speedup_median": times["hf"]["median"] / times["ours"]["median"],
            "identical_rows": float(same),
        })
    import jax
    from flax import nnx

    weight_bytes = sum(x.nbytes for x in jax.tree.leaves(nnx.state(llama, nnx.Param)))
    bandwidth = read_bandwidth()
    floor_s = matvec_floor_s(llama)
    for row in rows:
        row["bound_tokens_per_s"] = row["batch"] * bandwidth / weight_bytes
        row["ours_fraction_of_bound"] = row["ours_tokens_per_s"] / row["bound_tokens_per_s"]
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
