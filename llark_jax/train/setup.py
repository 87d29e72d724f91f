"""`TrainSetup`: the mesh, the jitted train and eval steps, the shardings and the optimizer of a
config: everything the loop, the planner and the validation need, built from the abstract model
(nothing is allocated until `fresh_state`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import jax
import ml_collections

from llark_jax.checkpoints.build import (
    abstract_model,
    build_model,
    llama_config,
    model_fn,
    tree_shardings,
)
from llark_jax.config import ConfigError
from llark_jax.data.batch import NDIMS as batch_ndims
from llark_jax.model.trainable import gradient_mask, trained_rows
from llark_jax.train.checkpoint import TrainCheckpointer
from llark_jax.train.flops import train_flops_per_step
from llark_jax.train.mesh import batch_sharding, make_mesh, replicated, rules_of
from llark_jax.train.optim import make_optimizer, trainable_labels
from llark_jax.train.step import (
    init_train_state,
    jit_train_step,
    make_eval_step,
    make_train_step,
)

log = logging.getLogger("llark_jax.train")


def audio_rows(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """The embedding rows a rows-trained preset trains: `<audio_start>`, `<audio_end>` (spec
    §1.4-1.5)."""
    return config.model.audio_start_id, config.model.audio_end_id


def gradient_mask_for(config: ml_collections.ConfigDict, params: Any) -> Any:
    """The trainable-set mask of preset `config.model.trainable` (`llark_jax.model.trainable`)."""
    return gradient_mask(params, config.model.trainable, audio_rows(config))


def check_batch_fits_mesh(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> None:
    """Raises `ConfigError` unless `data.batch_size` splits into `train.micro_steps`
    micro-batches and over the mesh's batch shards (data x fsdp devices)."""
    batch, micro = int(config.data.batch_size), int(config.train.micro_steps)
    shards = int(mesh.shape["data"] * mesh.shape["fsdp"])
    if batch % micro:
        raise ConfigError(f"data.batch_size {batch} does not split into train.micro_steps "
                          f"{micro} micro-batches: set --config.data.batch_size to a multiple "
                          f"of {micro}")
    if batch % shards:
        raise ConfigError(
            f"data.batch_size {batch} does not split over the mesh's {shards} batch shards "
            f"(data {mesh.shape['data']} x fsdp {mesh.shape['fsdp']} devices): set "
            f"--config.data.batch_size to a multiple of {shards}, or a mesh whose data x fsdp "
            f"divides {batch}")


def init_from_step(run_dir: Path) -> int:
    """The newest checkpoint step of `train.init_from`'s run (a workdir or model directory);
    `ConfigError` when it has none. Reads, never writes."""
    steps = []
    if (run_dir / "checkpoints").is_dir():
        source = TrainCheckpointer(run_dir / "checkpoints", keep=1_000_000, async_save=False)
        try:
            steps = source.steps()
        finally:
            source.close()
    if not steps:
        raise ConfigError(f"train.init_from: no checkpoint under {run_dir}/checkpoints")
    return steps[-1]


class TrainSetup:
    """Mesh, jitted train step (state donated) and eval step (`eval_step(params, rest, batch)`),
    shardings, optimizer."""

    def __init__(self, config: ml_collections.ConfigDict, mesh_sizes: dict | None = None,
                 devices: list | None = None):
        self.config = config
        self.mesh = make_mesh(mesh_sizes if mesh_sizes is not None else config.mesh.to_dict(),
                              devices)
        check_batch_fits_mesh(config, self.mesh)
        self.rules = rules_of(config)
        # Structure and shardings come from the abstract model: nothing is allocated here.
        graphdef, abstract_params, abstract_rest = abstract_model(
            model_fn(config.model, config.seed))
        self.graphdef = graphdef
        self.grad_mask = gradient_mask_for(config, abstract_params)
        self.tx, self.schedule = make_optimizer(config.optim, config.train.steps,
                                                trainable_labels(self.grad_mask))
        self.abstract_state = jax.eval_shape(
            lambda p, r: init_train_state(p, r, self.tx), abstract_params, abstract_rest)
        self.state_shardings = tree_shardings(self.abstract_state, self.mesh, self.rules)
        step_fn = make_train_step(
            graphdef, self.tx, self.schedule, micro_steps=config.train.micro_steps,
            normalization=config.train.loss_normalization, grad_mask=self.grad_mask,
            head_positions=config.train.head_positions,
            embed_grad_rows=trained_rows(config.model.trainable, audio_rows(config)))
        self.batch_shardings = {k: batch_sharding(self.mesh, nd)
                                for k, nd in batch_ndims.items()}
        self.train_step = jit_train_step(step_fn, self.state_shardings, self.batch_shardings,
                                         replicated(self.mesh))
        eval_fn = make_eval_step(graphdef, head_positions=config.train.head_positions)
        self.eval_step = jax.jit(eval_fn, in_shardings=(
            self.state_shardings["params"], self.state_shardings["rest"], self.batch_shardings),
            out_shardings=replicated(self.mesh))

    def abstract_state_with_shardings(self) -> Any:
        return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                            self.abstract_state, self.state_shardings)

    def fresh_state(self) -> Any:
        """Initial train state, every array created directly in its sharding.

        Params come from `train.init_from` (another run's newest checkpoint, e.g. the MusiLingo
        caption stage) when set, else from the model source; optimizer and step start fresh.
        """
        cfg = self.config
        if cfg.train.init_from:
            params, rest = self._params_from_run(Path(cfg.train.init_from))
        else:
            _, params, rest = build_model(cfg.model, self.mesh, self.rules, cfg.seed)
        init = jax.jit(lambda p, r: init_train_state(p, r, self.tx),
                       out_shardings=self.state_shardings)
        return init(params, rest)

    def _params_from_run(self, run_dir: Path) -> tuple[Any, Any]:
        """Params and rest of `run_dir`'s newest checkpoint (its optimizer state is not read,
        so the stages may train different parameter sets)."""
        step = init_from_step(run_dir)
        source = TrainCheckpointer(run_dir / "checkpoints", keep=1_000_000, async_save=False)
        try:
            target = self.abstract_state_with_shardings()
            state = source.restore_subtrees(step, {"params": target["params"],
                                                   "rest": target["rest"]})
        finally:
            source.close()
        log.info("initialised params from %s step %d", run_dir, step)
        return state["params"], state["rest"]

    def flops_per_step(self) -> float:
        cfg = self.config
        return train_flops_per_step(
            llama_config(cfg.model), audio_dim=cfg.model.audio_dim, batch=cfg.data.batch_size,
            seq_len=cfg.data.seq_len,
            audio_frames=cfg.data.audio_segments * cfg.data.audio_frames,
            audio_layers=cfg.model.get("audio_layers", 0),
            head_positions=cfg.train.head_positions)

