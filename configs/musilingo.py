"""MusiLingo (Deng et al. 2024) on this code base: frozen LM, projector-only, two stages.

Stages (pick one with `--config configs/musilingo.py:caption` or `:instruct`):
- `caption`: pre-training on music captions (LP-MusicCaps-MSD "caption_writing"), batch 32,
  20k steps (paper §4.1);
- `instruct`: instruction tuning (MusicInstruct / MusicQA), initialised from the caption stage's
  newest checkpoint (`train.init_from` = that run's workdir); the paper trains 2 epochs, so set
  `train.steps` to 2 x examples / batch for your data.

Model: Vicuna-7B (a Llama; HF directory placeholder) frozen, MERT-v1-330M features (1024-d, the
weighted average of its layers, computed offline), one Dense projector followed by temporal
compression (mean over groups of `temporal_pool` frames). Only the projector trains.
Not stated in the paper (our assumptions, documented in docs/training.md): the learning rate
(1e-4, warmup 3% then cosine), the compression group t (5), eps (1e-8).
"""

from pathlib import Path

import ml_collections

from llark_jax.config import load_config_file

STAGES = ("caption", "instruct")


def get_config(stage: str = "caption") -> ml_collections.ConfigDict:
    if stage not in STAGES:
        raise ValueError(f"musilingo stage {stage!r} not in {STAGES}")
    config = load_config_file(Path(__file__).with_name("llark_7b.py"))
    config.stage = stage

    m = config.model
    m.path = "/path/to/vicuna-7b"  # placeholder: a local HF Llama directory
    m.audio_dim = 1024
    m.temporal_pool = 5
    m.trainable = "projector_only"
    m.param_dtype = "bfloat16"  # frozen LM: bf16 weights; the projector's Adam moments are small
    m.dtype = "bfloat16"

    d = config.data
    d.path = f"/path/to/musilingo_{stage}_tfrecords"
    d.batch_size = 32
    d.audio_frames = 250  # MERT frames per clip after pooling (divisible by temporal_pool)
    d.encoder = "mert"  # MERT-v1-330M layer average (data_prep.encoders)

    t = config.train
    t.steps = 20_000 if stage == "caption" else 4_000
    t.checkpoint_every = 2_000 if stage == "caption" else 1_000
    t.init_from = "" if stage == "caption" else "/path/to/musilingo_caption_workdir"

    o = config.optim
    o.peak_lr = 1e-4
    o.warmup_steps = -1
    o.warmup_ratio = 0.03
    return config
