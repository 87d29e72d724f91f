"""MusiLingo (Deng et al.) on this code base: frozen Vicuna-7B, projector-only, two stages.

Stages (pick one with `--config configs/musilingo.py:caption` or `:instruct`):
- `caption`: pre-training on LP-MusicCaps-MSD `caption_writing` (paper §4.1), 20k steps of 32;
- `instruct`: instruction tuning on MusicQA or Music Instruct (pick partitions with task weights:
  tasks `musicqa`, `mi_short`, `mi_long`), initialised from the caption stage's newest checkpoint
  (`train.init_from` = that run's workdir).

Settings follow MusiLingo's released training configs where the paper is silent (docs/musilingo.md
lists them): stage 1 AdamW lr 1e-4, stage 2 lr 3e-5, 5000 warmup steps, weight decay 0.05,
effective batch 32, stage 2 6 x 5000 iterations. (The released schedule decays per epoch to a
floor of 8e-5 / 1e-5; ours is warmup + cosine to 0.)

Audio: MERT-v1-330M features embedded with
`--encoder mert --encoder-arg frame_rate=group325 --encoder-arg layers=mean`, i.e. the mean of its
25 hidden states (what the released code uses) averaged over groups of 325 frames at 75 Hz: the
released code's temporal compression, done at embedding time (exact: the layer mean, projector and
group mean are affine), so `temporal_pool` = 1 and a 30.5 s MSD clip gives 8 audio tokens (15.5 s
MusicQA: 4; 10 s MusicCaps / Music Instruct: 3). `model.audio_layers` stays 0 (no learned
layer weights: the stored features are already the layer mean). For the paper's learned layer
weights store `layers=all` ([T, 25 * 1024]) and set `model.audio_dim=25600`,
`model.audio_layers=25` and `data.encoder_args.layers=all` (a `LayerMix` inside the projector).
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
    caption = stage == "caption"

    m = config.model
    m.path = "/path/to/vicuna-7b"  # placeholder: a local HF Llama directory
    m.audio_dim = 1024  # MERT-v1-330M width (layers=mean storage)
    m.temporal_pool = 1  # compression is in the stored group325 frames
    m.trainable = "projector_only"
    m.param_dtype = "bfloat16"  # frozen LM: bf16 weights; the projector's Adam moments are small
    m.dtype = "bfloat16"

    d = config.data
    d.path = f"/path/to/musilingo_{stage}_tfrecords"
    d.batch_size = 32
    d.template = "musilingo_caption" if caption else "musilingo"  # llark_jax.data.conversation
    d.audio_frames = 8  # group325 frames of a 30.5 s clip: ceil(2287 / 325)
    d.encoder = "mert"  # MERT-v1-330M (llark_jax.audio.encoders), embedded with these arguments:
    d.encoder_args = ml_collections.ConfigDict(dict(frame_rate="group325", layers="mean"))

    t = config.train
    t.steps = 20_000 if caption else 30_000
    t.checkpoint_every = 2_000 if caption else 5_000
    t.init_from = "" if caption else "/path/to/musilingo_caption_workdir"

    o = config.optim
    o.peak_lr = 1e-4 if caption else 3e-5
    o.warmup_steps = 5_000
    o.weight_decay = 0.05
    return config
