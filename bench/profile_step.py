"""Where the train step's time goes: its parts timed separately, interleaved, in one process.

    python bench/profile_step.py [--shape a] [--dtype float32] [--rounds 3] [--json out.json]

Parts (each its own `jax.jit`, forward + backward where it trains):
  step        the whole step (`bench/train_step.py`)
  grad        loss + gradients of every parameter (no optimizer)
  forward     loss only
  optimizer   clip + AdamW update of every parameter from given gradients
  layers      all decoder layers, forward + backward (input gradient + weight gradients)
  head_loss   final norm + lm_head + masked cross-entropy at the scored positions, fwd + bwd
  attention   the model's attention core of all layers (`self_attention`: scores, mask,
              softmax, values, causal query blocks), fwd + bwd; `attention_dot_product` the
              same through `jax.nn.dot_product_attention` (model.attention=dot_product)
The step, grad, forward and head_loss parts compute the LM head at the 200 positions per row
that predict an answer token, as `bench/train_step.py` does (`train.head_positions`).
Prints seconds (best of rounds), the share of `step`, analytic FLOPs and GFLOP/s of each part.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import emit, interleaved
from train_step import (
    ANSWER_TOKENS,
    AUDIO_DIM,
    AUDIO_FRAMES,
    bench_optimizer,
    build_ours,
    make_batch,
    our_step_and_state,
)


def parts(shape: str, dtype: str, batch_size: int, seq_len: int) -> tuple[dict, dict]:
    """({part: zero-argument callable}, {part: analytic FLOPs})."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from llark_jax.model.loss import masked_lm_loss_at, scored_positions
    from llark_jax.train.flops import train_flops_per_step

    model, cfg = build_ours(shape, dtype)
    batch = jax.device_put(make_batch(cfg.vocab_size, batch_size, seq_len))
    tx, _ = bench_optimizer()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    train_step, state = our_step_and_state(model)
    step = jax.jit(train_step)
    at_bk, targets_bk, valid_bk, _ = scored_positions(batch["labels"], batch["segment_ids"],
                                                      ANSWER_TOKENS)

    def loss_fn(p):
        m = nnx.merge(graphdef, p, rest)
        logits = m(batch["input_ids"], batch["audio"], batch["positions"],
                   segment_ids=batch["segment_ids"], audio_frame_index=batch["audio_frame_index"],
                   audio_mask=batch["audio_mask"], logits_at=at_bk)
        return masked_lm_loss_at(logits, targets_bk, valid_bk)[0]

    grad = jax.jit(jax.value_and_grad(loss_fn))
    forward = jax.jit(loss_fn)
    grads = jax.tree.map(jnp.ones_like, params)
    optimizer = jax.jit(lambda g, s, p: optax_apply(tx, g, s, p))

    b, t, d = batch_size, seq_len, cfg.hidden_size
    x_btd = jax.random.normal(jax.random.key(0), (b, t, d), cfg.dtype)
    positions = batch["positions"]
    seg = batch["segment_ids"]
    from llark_jax.model.rope import inverse_frequencies, rotary_tables

    cos, sin = rotary_tables(positions, inverse_frequencies(cfg.head_dim, cfg.rope_theta,
                                                            cfg.rope_scaling))
    from llark_jax.model.attention import self_attention
    from llark_jax.model.llama import ATTENTION_BLOCK, _scan_layers

    layer_gd, layer_params, layer_rest = nnx.split(model.llama.layers, nnx.Param, ...)

    def layers_loss(layer_params, x):  # the stacked layers, scanned as in the model
        stacked = nnx.merge(layer_gd, layer_params, layer_rest)
        x = _scan_layers(stacked, x, cos, sin, seg, remat=cfg.remat, unroll=not cfg.scan_layers)
        return jnp.sum(x.astype(jnp.float32))

    layers = jax.jit(jax.grad(layers_loss, argnums=(0, 1)))

    head_gd, head_params, head_rest = nnx.split(model.llama, nnx.Param, ...)

    def head_loss(hp, x):
        llama = nnx.merge(head_gd, hp, head_rest)
        return masked_lm_loss_at(llama.head(x, at_bk), targets_bk, valid_bk)[0]

    head = jax.jit(jax.grad(head_loss, argnums=(0, 1)))

    n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    q = jax.random.normal(jax.random.key(1), (cfg.num_layers, b, t, k, n // k, h), cfg.dtype)
    kv = jax.random.normal(jax.random.key(2), (cfg.num_layers, 2, b, t, k, h), cfg.dtype)

    def attention_grad(kind: str):  # the model's attention core of every layer, fwd + bwd
        def attention_loss(q, kv):
            total = 0.0
            for i in range(cfg.num_layers):
                out = self_attention(kind, q[i], kv[i, 0], kv[i, 1], seg, ATTENTION_BLOCK)
                total = total + jnp.sum(out.astype(jnp.float32))
            return total

        grad = jax.jit(jax.grad(attention_loss, argnums=(0, 1)))
        return lambda: jax.block_until_ready(grad(q, kv))

    fns = {
        "step": lambda: step(state, batch)[1]["loss"].block_until_ready(),
        "grad": lambda: grad(params)[0].block_until_ready(),
        "forward": lambda: forward(params).block_until_ready(),
        "optimizer": lambda: jax.block_until_ready(optimizer(grads, state["opt_state"], params)),
        "layers": lambda: jax.block_until_ready(layers(layer_params, x_btd)),
        "head_loss": lambda: jax.block_until_ready(head(head_params, x_btd)),
        "attention": attention_grad("einsum"),
        "attention_dot_product": attention_grad("dot_product"),
    }
    tokens = b * t
    total = train_flops_per_step(cfg, audio_dim=AUDIO_DIM, batch=b, seq_len=t,
                                 audio_frames=AUDIO_FRAMES, head_positions=ANSWER_TOKENS)
    attn_flops = 12 * cfg.num_layers * n * h * t * tokens
    layer_matmul = cfg.num_layers * (d * h * (2 * n + 2 * k) + 3 * d * cfg.intermediate_size)
    flops = {
        "step": total, "grad": total, "forward": total / 3,
        "optimizer": 0.0,
        "layers": 6 * layer_matmul * tokens + attn_flops,
        "head_loss": 6 * d * cfg.padded_vocab_size * b * at_bk.shape[1],
        "attention": attn_flops,
        "attention_dot_product": attn_flops,
    }
    return fns, flops


def optax_apply(tx, grads, opt_state, params):
    import optax

    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="a")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    fns, flops = parts(args.shape, args.dtype, args.batch, args.seq_len)
    times = interleaved(fns, args.rounds)
    step_s = times["step"]["min"]
    table = {name: {"seconds": t["min"], "median": t["median"], "share_of_step": t["min"] / step_s,
                    "gflops": flops[name] / t["min"] / 1e9} for name, t in times.items()}
    emit({"benchmark": "profile_step", "shape": args.shape, "dtype": args.dtype,
          "batch": args.batch, "seq_len": args.seq_len, "parts": table,
          "parts_sum_check": float(np.sum([table[p]["seconds"] for p in
                                           ("layers", "head_loss", "optimizer")]) / step_s)},
         args.json)


if __name__ == "__main__":
    main()
