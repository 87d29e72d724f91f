"""One LLark training step: ours (jit, donated state) vs the PyTorch reference, same run.

    python bench/train_step.py --shape a [--dtype float32] [--rounds 3] [--json out.json]

Shapes:
  a      hidden 512, 8 layers, 8 heads, MLP 1376, vocab 32004, untied lm_head
  b      SmolLM2-135M: hidden 576, 30 layers, 9 heads / 3 kv heads, MLP 1536, vocab 49152, tied
Rows of 512 tokens (every token real: no padding; batch 4 by default, `make bench` runs shape b at
batch 2 to fit its time budget), one audio segment of 250 frames of 4800 features (Jukebox)
spliced at positions 2..251, the answer (last 200 tokens) supervised.

Ours: `llark_jax.train.step.make_train_step` (AdamW + global-norm clipping, every parameter
trainable) with `head_positions=200` (the LM head and the loss only at the positions that predict
an answer token; `--full-head` computes all 512 like the reference), `jax.jit` with the state
donated. Reference: `tests/llark_torch_reference.TorchLLark`
(HF `LlamaForCausalLM`, sdpa attention, `nn.Linear` projector, the official per-row splice, masked
CE) + `clip_grad_norm_` + `torch.optim.AdamW`, `torch.set_num_threads(cores)`, weights copied from
ours. `--dtype bfloat16`: ours computes in bf16 with fp32 master weights; torch runs under
`torch.autocast(bfloat16)`.

Prints tokens/s of both, the ratio, the GFLOP/s each executes (analytic 6·N·tokens + attention +
projector, `llark_jax.train.flops.train_flops_per_step`, the LM head counted at the
positions each computes) and that as a fraction of the matmul limit of the step's dtype, measured
in this process (`bench/matmul_peak.py`). `--compare-attention` (default dot_product) also times
ours with the other attention core (`model.attention`), same weights, same run: its step time
over ours' is `other_attention.time_ratio`.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import cpu_count, emit, interleaved, setup_torch
from matmul_peak import measure as measure_matmul_peak

ATTENTION_ON_CPU = ("einsum", "dot_product")  # model.attention values that run here (no splash)

SHAPES = {
    "a": dict(vocab_size=32004, hidden_size=512, intermediate_size=1376, num_layers=8,
              num_heads=8, num_kv_heads=8, head_dim=64, tie_word_embeddings=False),
    "b": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
              num_heads=9, num_kv_heads=3, head_dim=64, tie_word_embeddings=True,
              rope_theta=100000.0),
    # `bench/accelerator.py`: a ~1B Llama (TinyLlama-1.1B dims) and its CPU stand-in
    "1b": dict(vocab_size=32004, hidden_size=2048, intermediate_size=5632, num_layers=22,
               num_heads=32, num_kv_heads=4, head_dim=64, tie_word_embeddings=False),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2,
                 num_heads=4, num_kv_heads=2, head_dim=16, tie_word_embeddings=False),
}
AUDIO_FRAMES, AUDIO_DIM, ANSWER_TOKENS = 250, 4800, 200


def make_batch(vocab: int, batch: int, seq_len: int, seed: int = 0, *,
               audio_frames: int = AUDIO_FRAMES, audio_dim: int = AUDIO_DIM,
               answer_tokens: int = ANSWER_TOKENS) -> dict[str, np.ndarray]:
    """Full rows: BOS, <audio_start>, 250 x <audio_patch>, <audio_end>, question, answer."""
    from llark_jax.data.batch import BatchShape

    rng = np.random.default_rng(seed)
    start, patch, end = vocab - 3, vocab - 2, vocab - 1
    out = BatchShape(batch, seq_len, 1, audio_frames, audio_dim).empty()
    ids = out["input_ids"]
    ids[...] = rng.integers(2, vocab - 3, (batch, seq_len))
    ids[:, 0], ids[:, 1], ids[:, 2 + audio_frames] = 1, start, end
    ids[:, 2 : 2 + audio_frames] = patch
    out["labels"][:, -answer_tokens:] = ids[:, -answer_tokens:]
    out["audio_frame_index"][:, 2 : 2 + audio_frames] = np.arange(audio_frames)
    out["positions"][...] = np.arange(seq_len, dtype=np.int32)
    out["segment_ids"][...] = 1
    out["audio"][...] = rng.standard_normal(out["audio"].shape)
    out["audio_mask"][...] = True
    return out


def build_ours(shape: str, dtype: str, *, attention: str = "einsum", audio_dim: int = AUDIO_DIM):
    """(LLark in fp32 params, its LlamaConfig) with the audio ids at the top of the vocabulary."""
    import jax.numpy as jnp
    from flax import nnx

    from llark_jax.model.llama import Llama, LlamaConfig
    from llark_jax.model.llark import LLark

    cfg = LlamaConfig(**SHAPES[shape], dtype=getattr(jnp, dtype), param_dtype=jnp.float32,
                      attention=attention)
    v = cfg.vocab_size
    model = LLark(Llama(cfg, rngs=nnx.Rngs(0)), audio_dim, audio_start_id=v - 3,
                  audio_patch_id=v - 2, audio_end_id=v - 1, rngs=nnx.Rngs(1))
    return model, cfg


def bench_optimizer():
    """(optax AdamW, schedule) every benchmark step uses: lr 1e-4, no warmup, clip 1.0."""
    import ml_collections

    from llark_jax.train.optim import make_optimizer

    optim = ml_collections.ConfigDict(dict(peak_lr=1e-4, warmup_steps=0, warmup_ratio=0.0,
                                           b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.0,
                                           clip_norm=1.0))
    return make_optimizer(optim, total_steps=1_000_000)


def our_step_and_state(model, head_positions: int = ANSWER_TOKENS):
    """(unjitted train step, initial state) of `model` with `bench_optimizer`; the LM head at
    `head_positions` per row (0 = every position)."""
    from flax import nnx

    from llark_jax.train.step import init_train_state, make_train_step

    tx, schedule = bench_optimizer()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return (make_train_step(graphdef, tx, schedule, head_positions=head_positions),
            init_train_state(params, rest, tx))

def ours_step(model, batch: dict[str, np.ndarray], head_positions: int):
    """A zero-argument callable running one donated jitted step (blocks on the loss)."""
    import jax

    train_step, state = our_step_and_state(model, head_positions)
    holder = {"state": state}
    step = jax.jit(train_step, donate_argnums=(0,))
    device_batch = jax.device_put(batch)

    def run() -> float:
        holder["state"], metrics = step(holder["state"], device_batch)
        return float(metrics["loss"])

    return run


def torch_step(model, batch: dict[str, np.ndarray], dtype: str):
    """The reference step on weights copied from `model`: a zero-argument callable."""
    torch = setup_torch()
    from llark_torch_reference import TorchLLark

    ref = TorchLLark(model)
    ref.lm.set_attn_implementation("sdpa")
    ref.train()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=0.0)
    ids = torch.from_numpy(batch["input_ids"]).long()
    labels = torch.from_numpy(batch["labels"]).long()
    mask = torch.from_numpy(batch["segment_ids"]).long()
    audio = torch.from_numpy(batch["audio"][:, 0])
    autocast = dtype == "bfloat16"

    def run() -> float:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = ref(ids, audio, mask, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        return float(loss)

    return run


def measure(shape: str, dtype: str, rounds: int, batch_size: int, seq_len: int,
            peak_n: int, full_head: bool, attention: str, compare_attention: str) -> dict:
    from llark_jax.train.flops import train_flops_per_step

    model, cfg = build_ours(shape, dtype, attention=attention)
    batch = make_batch(cfg.vocab_size, batch_size, seq_len)
    reference = torch_step(model, batch, dtype)  # copies the weights before ours donates them
    reference_loss = reference()
    began = time.perf_counter()
    head_positions = 0 if full_head else ANSWER_TOKENS
    ours = ours_step(model, batch, head_positions)
    first_loss = ours()  # compiles
    compile_s = time.perf_counter() - began
    candidates = {"ours": ours, "torch": reference}
    if compare_attention:  # the same weights (same seeds) with the other attention core
        other = ours_step(build_ours(shape, dtype, attention=compare_attention)[0], batch,
                          head_positions)
        other_loss = other()
        candidates["ours_other_attention"] = other
    times = interleaved(candidates, rounds, warmup=0)
    peak = measure_matmul_peak(peak_n, rounds=4)
    tokens = batch_size * seq_len
    flops = {name: train_flops_per_step(cfg, audio_dim=AUDIO_DIM, batch=batch_size,
                                        seq_len=seq_len, audio_frames=AUDIO_FRAMES,
                                        head_positions=k)
             for name, k in (("ours", head_positions), ("torch", 0))}
    limit = peak["limit"][dtype] * 1e9
    out = {"shape": shape, "dims": SHAPES[shape], "dtype": dtype, "batch": batch_size,
           "seq_len": seq_len, "cores": cpu_count(), "flops_per_step": flops,
           "head_positions": head_positions,
           "first_step_s_incl_compile": compile_s,
           "first_loss": {"ours": first_loss, "torch": reference_loss},
           "matmul_peak": peak, "seconds": times}
    for name in ("ours", "torch"):
        t = times[name]
        out[f"{name}_tokens_per_s"] = tokens / t["min"]
        out[f"{name}_tokens_per_s_median"] = tokens / t["median"]
        out[f"{name}_gflops"] = flops[name] / t["min"] / 1e9
        out[f"{name}_fraction_of_limit"] = flops[name] / t["min"] / limit
    out["speedup"] = times["torch"]["min"] / times["ours"]["min"]
    # Ours at 100% of the matmul limit: the most this machine allows against this torch time.
    out["max_speedup"] = times["torch"]["min"] / (flops["ours"] / limit)
    out["speedup_median"] = times["torch"]["median"] / times["ours"]["median"]
    out["attention"] = attention
    if compare_attention:
        out["other_attention"] = {
            "attention": compare_attention, "first_loss": other_loss,
            "step_s": times["ours_other_attention"]["min"],
            # > 1: the other attention's step takes longer than ours
            "time_ratio": times["ours_other_attention"]["min"] / times["ours"]["min"]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="a")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--peak-n", type=int, default=2048, help="matmul size of the limit")
    parser.add_argument("--full-head", action="store_true",
                        help="ours computes the LM head at every position, like the reference")
    parser.add_argument("--attention", default="einsum", choices=ATTENTION_ON_CPU,
                        help="ours' attention core (model.attention)")
    parser.add_argument("--compare-attention", default="dot_product",
                        choices=("", *ATTENTION_ON_CPU),
                        help="also time ours with this attention core, same run ('' = none)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    result = measure(args.shape, args.dtype, args.rounds, args.batch, args.seq_len, args.peak_n,
                     args.full_head, args.attention, args.compare_attention)
    emit({"benchmark": "train_step", **result}, args.json)


if __name__ == "__main__":
    main()
