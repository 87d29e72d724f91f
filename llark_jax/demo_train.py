"""Demo training: LLark (demo LM + projector) on the demo's TFRecords, on one CPU device.

Reuses the project's pieces: `Pipeline` (packing, answer-only labels), `make_train_step` (masked
LM loss, gradient mask), `make_optimizer` (AdamW warmup-cosine, frozen leaves stateless) and the
trainable presets of `llark_jax.model.trainable`. The trained parameters (the groups the preset
trains) are saved to `trained_params.npz`; `load_trained` puts them back into a fresh model.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from llark_jax.data.conversation import AudioTokenIds, ConversationTemplate, template_from_tokenizer
from llark_jax.data.packing import PackingConfig
from llark_jax.data.pipeline import Pipeline, PipelineConfig, make_tokenize_fn
from llark_jax.demo_lm import load_demo_lm
from llark_jax.model.llark import LLark
from llark_jax.model.trainable import count_trainable, gradient_mask
from llark_jax.train.optim import make_schedule, trainable_labels
from llark_jax.train.step import check_all_scored, init_train_state, make_train_step

log = logging.getLogger("llark_jax.demo")
TRAINED_PARAMS = "trained_params.npz"
MEL_FRAME_RATE_HZ = 10.0


def build_demo_model(config: ml_collections.ConfigDict) -> tuple[LLark, Any, ConversationTemplate]:
    """`(LLark, tokenizer, template)`: the demo LM extended with the LLark tokens + projector."""
    llama, tokenizer = load_demo_lm(config.model.source)
    model = LLark.from_llama(llama, tokenizer, config.model.audio_dim, rngs=nnx.Rngs(config.seed),
                             seed=config.seed)
    template = template_from_tokenizer(tokenizer, system_prompt=config.data.system_prompt)
    return model, tokenizer, template


def audio_tokens_per_clip(config: ml_collections.ConfigDict) -> int:
    """`<audio_patch>` tokens of one clip: 10 Hz mel frames / `stages.temporal_pool`, rounded up."""
    frames = int(round(config.dataset.seconds * MEL_FRAME_RATE_HZ))
    return -(-frames // config.stages.temporal_pool)


def make_pipeline(config: ml_collections.ConfigDict, files: list[str], tokenizer: Any,
                  template: ConversationTemplate) -> Pipeline:
    """Packed training batches over the demo's train shards."""
    d = config.data
    packing = PackingConfig(batch_size=d.batch_size, seq_len=d.seq_len, max_segments=d.segments,
                            max_frames=audio_tokens_per_clip(config),
                            embed_dim=config.model.audio_dim)
    tokenize = make_tokenize_fn(tokenizer, template, AudioTokenIds.from_tokenizer(tokenizer),
                                max_len=d.seq_len)
    weights = d.task_weights.to_dict() if d.task_weights else None
    return Pipeline(PipelineConfig(files=tuple(files), packing=packing, seed=config.seed,
                                   task_weights=weights),
                    tokenize, process_index=0, process_count=1)


def demo_optimizer(optim: ml_collections.ConfigDict, steps: int,
                   mask: nnx.State) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Global-norm clipping, then AdamW with warmup-cosine at `optim.peak_lr` for the projector
    and `optim.lm_peak_lr` for the other trained groups; frozen leaves get no state."""
    labels = trainable_labels(mask)
    labels = jax.tree_util.tree_map_with_path(
        lambda path, label: "projector" if label == "trained" and "projector" in str(path)
        else label, labels)
    projector_lr = make_schedule(optim, steps)
    lm_lr = make_schedule(ml_collections.ConfigDict({**optim.to_dict(),
                                                     "peak_lr": optim.lm_peak_lr}), steps)

    def adamw(schedule):
        return optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                           weight_decay=optim.weight_decay)

    tx = optax.chain(optax.clip_by_global_norm(optim.clip_norm), optax.multi_transform(
        {"projector": adamw(projector_lr), "trained": adamw(lm_lr),
         "frozen": optax.set_to_zero()}, labels))
    return tx, projector_lr


def _flat(state: nnx.State) -> dict[str, Any]:
    return {"/".join(map(str, path)): var for path, var in nnx.to_flat_state(state)}


def train_demo(config: ml_collections.ConfigDict, model: LLark, tokenizer: Any,
               template: ConversationTemplate, files: list[str], workdir: Path) -> dict:
    """Trains `model` in place for `config.train.steps`; writes `metrics.jsonl` and the trained
    params into `workdir`; returns a summary (losses, seconds, trainable parameter count)."""
    workdir.mkdir(parents=True, exist_ok=True)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    mask = gradient_mask(params, config.model.trainable,
                         (model.audio_start_id, model.audio_end_id))
    steps = config.train.steps
    tx, schedule = demo_optimizer(config.optim, steps, mask)
    step_fn = jax.jit(make_train_step(graphdef, tx, schedule, grad_mask=mask,
                                      head_positions=config.train.head_positions),
                      donate_argnums=(0,))
    state = init_train_state(params, rest, tx)
    pipeline = make_pipeline(config, files, tokenizer, template)
    n_trainable = count_trainable(params, mask)
    log.info("training %d steps, %d trainable parameters (%s)", steps, n_trainable,
             config.model.trainable)
    losses, began = [], time.perf_counter()
    with open(workdir / "metrics.jsonl", "w") as metrics_file, \
            tqdm(total=steps, desc="train", unit="step") as bar:
        for step in range(steps):
            batch = {k: jnp.asarray(v) for k, v in next(pipeline).items()}
            state, metrics = step_fn(state, batch)
            check_all_scored(metrics, config.train.head_positions, step + 1)
            loss = float(metrics["loss"])
            if not np.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step + 1}")
            losses.append(loss)
            metrics_file.write(json.dumps({"step": step + 1, "loss": loss,
                                           "lr": float(metrics["lr"]),
                                           "grad_norm": float(metrics["grad_norm"]),
                                           "seconds": time.perf_counter() - began}) + "\n")
            metrics_file.flush()
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
            bar.update()
    nnx.update(model, state["params"])
    save_trained(model, mask, workdir / TRAINED_PARAMS)
    pipeline.close()
    return {"steps": steps, "loop_seconds": time.perf_counter() - began,
            "first_loss": float(np.mean(losses[:10])), "last_loss": float(np.mean(losses[-10:])),
            "trainable_params": n_trainable, "epochs_seen": pipeline.epoch,
            "non_pad_fraction": pipeline.non_pad_fraction}


def save_trained(model: LLark, mask: nnx.State, path: Path) -> None:
    """Writes every parameter the mask trains (any entry) to an .npz, atomically."""
    params, masks = _flat(nnx.state(model, nnx.Param)), _flat(mask)
    kept = {name: np.asarray(var.get_value()) for name, var in params.items()
            if bool(np.any(masks[name].get_value()))}
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **kept)
    os.replace(tmp, path)


def load_trained(model: LLark, path: Path) -> None:
    """Puts the parameters saved by `save_trained` back into `model` (same structure)."""
    params = _flat(nnx.state(model, nnx.Param))
    with np.load(path) as saved:
        for name in saved.files:
            if name not in params:
                raise KeyError(f"{path}: parameter {name} is not in the model")
            params[name].set_value(jnp.asarray(saved[name]))
