"""The pure training step: micro-batch gradient accumulation, masks, AdamW, jitted with shardings.

The train state is a dict pytree `{"params", "rest", "opt_state", "step"}` built from
`nnx.split(model, nnx.Param, ...)`; the step rebuilds the module with `nnx.merge` inside the
traced function, so it is an ordinary `jax.jit` function with explicit in/out shardings and the
state donated (docs/architecture.md, decision 1).

Loss normalisation over the `A` micro-batches of one optimizer step (`llark_jax.model.loss`; with
`sum_i` the summed token loss and `n_i` the supervised-token count of micro-batch i):

- `micro_batch_mean` (reference, spec §4.2): `(1/A) Σ_i sum_i / n_i`
- `global_tokens`: `Σ_i sum_i / Σ_i n_i`

With A > 1, gradients accumulate in float32 (a `lax.scan` over micro-batches) and are cast to the
parameter dtype before the optimizer (so a pure-bf16 run keeps bf16 params and Adam moments like
the reference; an fp32-master run keeps fp32). With A = 1 no accumulator is allocated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from llark_jax.model.loss import (
    masked_lm_loss,
    masked_lm_loss_at,
    scored_positions,
    supervised_targets,
)
from llark_jax.model.trainable import apply_mask

TrainState = dict[str, Any]
Batch = dict[str, jax.Array]
NORMALIZATIONS = ("micro_batch_mean", "global_tokens")


def init_train_state(params: Any, rest: Any, tx: optax.GradientTransformation) -> TrainState:
    """`{"params", "rest", "opt_state", "step"}` for fresh training."""
    return {"params": params, "rest": rest, "opt_state": tx.init(params),
            "step": jnp.zeros((), jnp.int32)}


def split_micro_batches(batch: Batch, micro_steps: int) -> Batch:
    """`[B, ...]` -> `[A, B/A, ...]` (row i goes to micro-batch i // (B/A))."""
    def split(x: jax.Array) -> jax.Array:
        if x.shape[0] % micro_steps:
            raise ValueError(f"batch {x.shape[0]} not divisible into {micro_steps} micro-batches")
        return x.reshape(micro_steps, x.shape[0] // micro_steps, *x.shape[1:])
    return jax.tree.map(split, batch)


def make_loss_fn(graphdef: nnx.GraphDef, *, normalization: str = "micro_batch_mean",
                 head_positions: int = 0,
                 embed_grad_rows: tuple[int, ...] | None = None) -> Callable:
    """`loss_fn(params, rest, batch, total_tokens) -> (loss, (supervised, unscored))`: the LM
    loss of one (micro-)batch, shared by the train step (differentiated) and the eval step.

    `total_tokens` is the step's supervised-token count for `global_tokens` (None: this batch's);
    `head_positions` K > 0 scores only the first K supervised positions per row
    (`llark_jax.model.loss.scored_positions`) and counts the rest in `unscored`;
    `embed_grad_rows` (the rows a row mask trains) keeps a tied head's weight gradient to those
    rows (`llark_jax.model.llama.tied_logits`).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"loss normalization {normalization!r} not in {NORMALIZATIONS}")

    def loss_fn(params: Any, rest: Any, micro: Batch, total_tokens: jax.Array | None):
        model = nnx.merge(graphdef, params, rest)
        inputs = (micro["input_ids"], micro["audio"], micro["positions"])
        extras = {"segment_ids": micro["segment_ids"],
                  "audio_frame_index": micro["audio_frame_index"],
                  "audio_mask": micro["audio_mask"], "embed_grad_rows": embed_grad_rows}
        if head_positions:
            positions_bk, targets_bk, valid_bk, unscored = scored_positions(
                micro["labels"], micro["segment_ids"], head_positions)
            logits_bkv = model(*inputs, **extras, logits_at=positions_bk)
            loss, aux = masked_lm_loss_at(logits_bkv, targets_bk, valid_bk,
                                          normalization=normalization,
                                          global_token_count=total_tokens)
            return loss, (aux["n_tokens"], unscored)
        logits_btv = model(*inputs, **extras)
        loss, aux = masked_lm_loss(logits_btv, micro["labels"], micro["segment_ids"],
                                   normalization=normalization, global_token_count=total_tokens)
        return loss, (aux["n_tokens"], jnp.zeros((), jnp.int32))

    return loss_fn


def make_eval_step(graphdef: nnx.GraphDef, *, head_positions: int = 0) -> Callable:
    """`eval_step(params, rest, batch) -> {"loss", "supervised_tokens", "unscored_tokens"}`:
    the train step's loss (`make_loss_fn`) without gradients, `loss` = mean over the batch's
    supervised tokens (so a token-weighted mean over batches is the held-out token mean)."""
    loss_fn = make_loss_fn(graphdef, normalization="global_tokens", head_positions=head_positions)

    def eval_step(params: Any, rest: Any, batch: Batch) -> dict[str, jax.Array]:
        loss, (tokens, unscored) = loss_fn(params, rest, batch, None)
        return {"loss": loss, "supervised_tokens": tokens, "unscored_tokens": unscored}

    return eval_step


def trained_grad_fn(objective: Callable, grad_mask: Any | None
                    ) -> tuple[Callable, Callable, Callable]:
    """`(grad_fn, trained, expand)`: `grad_fn(params, ...)` is `value_and_grad` of
    `objective(params, ...)` with respect to `trained(params)`, the leaves `grad_mask` does not
    freeze outright (a False leaf), and `expand(grads, params)` the full gradient tree with zeros
    at the frozen leaves. Frozen weights then get no weight-gradient matmuls and
    no float32 accumulator under gradient accumulation (LoRA: ~4 bytes per frozen parameter)."""
    if grad_mask is None:
        return (jax.value_and_grad(objective, has_aux=True), lambda params: params,
                lambda grads, params: grads)
    frozen = [isinstance(m, bool) and not m for m in jax.tree.leaves(grad_mask)]

    def split(params: Any) -> tuple[list, list]:
        leaves = jax.tree.leaves(params)
        return ([x for x, f in zip(leaves, frozen, strict=True) if not f],
                [x for x, f in zip(leaves, frozen, strict=True) if f])

    def join(trained: list, fixed: list, like: Any) -> Any:
        trained_it, fixed_it = iter(trained), iter(fixed)
        leaves = [next(fixed_it) if f else next(trained_it) for f in frozen]
        return jax.tree.unflatten(jax.tree.structure(like), leaves)

    def partial_objective(trained: list, fixed: list, like: Any, *args: Any):
        return objective(join(trained, fixed, like), *args)

    value_and_grad = jax.value_and_grad(partial_objective, has_aux=True)

    def grad_fn(params: Any, *args: Any):
        trained, fixed = split(params)
        return value_and_grad(trained, fixed, params, *args)

    def expand(grads: list, params: Any) -> Any:
        zeros = [jnp.zeros(x.shape, x.dtype if jnp.issubdtype(x.dtype, jnp.floating)
                           else jnp.float32) for x in split(params)[1]]  # int8 bases
        return join(grads, zeros, params)

    return grad_fn, lambda params: split(params)[0], expand


def make_train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    micro_steps: int = 1,
    normalization: str = "micro_batch_mean",
    grad_mask: Any | None = None,
    head_positions: int = 0,
    embed_grad_rows: tuple[int, ...] | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
    """Returns `train_step(state, batch) -> (state, metrics)`, a pure function to jit.

    The batch follows the batch contract of `llark_jax.data.batch` (leading dim = global batch).
    `head_positions` K > 0 runs the LM head and the loss only at the first K positions per row
    that predict a supervised token (`llark_jax.model.loss.scored_positions`), the same loss
    when no row has more; 0 = every position. `embed_grad_rows`: the embedding rows
    `grad_mask` trains (`llark_jax.model.trainable.trained_rows`), see `make_loss_fn`.
    metrics: `loss` (normalised as above), `grad_norm` (global norm after masking, before
    clipping), `lr` (rate of this update), `supervised_tokens`, and with K > 0 `unscored_tokens`
    (supervised predictions beyond K in a row, left out: the caller checks it is 0).
    """
    objective = make_loss_fn(graphdef, normalization=normalization,
                             head_positions=head_positions, embed_grad_rows=embed_grad_rows)
    grad_fn, trained, expand = trained_grad_fn(objective, grad_mask)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
        params, rest = state["params"], state["rest"]
        micro_batches = split_micro_batches(batch, micro_steps)
        total_tokens = None
        if normalization == "global_tokens":
            total_tokens = jnp.maximum(count_supervised(batch), 1).astype(jnp.float32)

        def accumulate(carry, micro):
            grads_acc, loss_acc, counts_acc = carry
            (loss, counts), grads = grad_fn(params, rest, micro, total_tokens)
            grads_acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), grads_acc, grads)
            counts_acc = jax.tree.map(jnp.add, counts_acc, counts)
            return (grads_acc, loss_acc + loss, counts_acc), None

        if micro_steps == 1:  # no float32 accumulator: saves 4 bytes/param of memory
            (loss, (tokens, unscored)), grads = grad_fn(params, rest, batch, total_tokens)
        else:
            zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), trained(params))
            no_counts = (jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))
            init = (zeros, jnp.zeros((), jnp.float32), no_counts)
            (grads, loss, (tokens, unscored)), _ = jax.lax.scan(accumulate, init, micro_batches)
        if normalization == "micro_batch_mean":
            grads = jax.tree.map(lambda g: g / micro_steps, grads)
            loss = loss / micro_steps
        grads = expand(grads, params)
        if grad_mask is not None:
            grads = apply_mask(grads, grad_mask)
        grads = jax.tree.map(lambda g, p: g.astype(p.dtype)
                             if jnp.issubdtype(p.dtype, jnp.floating) else g, grads, params)
        grad_norm = optax.tree.norm(grads)
        updates, opt_state = tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        new_state = {"params": new_params, "rest": rest, "opt_state": opt_state,
                     "step": state["step"] + 1}
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state["step"]),
                   "supervised_tokens": tokens}
        if head_positions:
            metrics["unscored_tokens"] = unscored
        return new_state, metrics

    return train_step


def check_all_scored(metrics: dict[str, Any], head_positions: int, step: int) -> None:
    """Raises ValueError when a step with `head_positions` K left supervised tokens unscored."""
    unscored = int(metrics.get("unscored_tokens", 0))
    if unscored:
        raise ValueError(f"step {step}: {unscored} supervised tokens lie beyond the first "
                         f"{head_positions} scored positions of their row; raise "
                         "train.head_positions (0 = every position)")


def count_supervised(batch: Batch) -> jax.Array:
    """Number of supervised next-token predictions in the whole (global) batch."""
    return supervised_targets(batch["labels"], batch["segment_ids"])[1].sum()


def jit_train_step(
    train_step: Callable, state_shardings: Any, batch_shardings: Any, metrics_sharding: Any
) -> Callable:
    """`jax.jit` with explicit shardings and the train state donated."""
    return jax.jit(
        train_step,
        in_shardings=(state_shardings, batch_shardings),
        out_shardings=(state_shardings, metrics_sharding),
        donate_argnums=(0,),
    )
