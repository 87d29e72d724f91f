"""The LLark paper recipe (reference code `scripts/training/train_llark.sh`, spec §4.1).

Llama-2-7b-chat (HF directory, vocabulary extended to 32004 by the LLark tokens), Jukebox-5B
features (4800-d, 240 frames per clip), global batch 32, max_len 2048, 100k steps, AdamW
(0.9, 0.999, eps 1e-8 as the code; the paper says 1e-6), lr 5e-5 with 3000 warmup steps
(warmup_ratio 0.03) then cosine to 0, weight decay 0, clip 1.0, remat, pure bf16 params and
Adam moments (the reference casts the whole model to bf16; set model.param_dtype=float32 for
fp32 master weights), trainable set = the reference's actual one (lm_head frozen, only the
<audio_start>/<audio_end> embedding rows train).

Loss normalisation: the reference averages per-micro-batch means over 4 GPUs x 4 accumulation
steps of 2 examples; a micro-batch of 2 cannot be split over an 8-way FSDP mesh, so this config
takes the mean over the global batch (`micro_batch_mean` with micro_steps=1; micro_steps=4 gives
4 micro-batches of 8). `--config.train.loss_normalization=global_tokens` averages over all
supervised tokens of the step instead.

Plan memory first: `python -m llark_jax plan --config configs/llark_7b.py --mesh fsdp=8`.
"""


import ml_collections

from llark_jax.config_base import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()  # the one schema (llark_jax.config_base)
    config.seed = 42  # the HF Trainer default seed the reference ran with

    m = config.model
    m.source = "hf"
    m.path = "/path/to/Llama-2-7b-chat-hf"  # placeholder: a local HF directory
    m.vocab_size = 32004  # 32000 + [PAD], <audio_patch>, <audio_start>, <audio_end>
    # Llama-2-7B dims (what `plan` compiles; `hf` reads the real ones from config.json).
    m.llama = ml_collections.ConfigDict(dict(
        vocab_size=32004, hidden_size=4096, intermediate_size=11008, num_layers=32,
        num_heads=32, num_kv_heads=32, head_dim=128, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, max_position_embeddings=4096,
    ))
    m.audio_dim = 4800
    m.temporal_pool = 1
    m.audio_patch_id, m.audio_start_id, m.audio_end_id = 32001, 32002, 32003
    m.param_dtype = "bfloat16"
    m.dtype = "bfloat16"
    m.remat = True
    m.scan_layers = True  # 32 layers compile as one scanned body
    m.trainable = "llark_reference"

    d = config.data
    d.source = "tfrecord"
    d.path = "/path/to/llark_tfrecords"  # placeholder: shards written by `python -m data_prep`
    d.batch_size = 32
    d.seq_len = 2048
    d.audio_segments = 1
    d.audio_frames = 240
    d.encoder = "jukebox"  # Jukebox-5B layer-36 features (llark_jax.audio.encoders)

    t = config.train
    t.steps = 100_000
    t.micro_steps = 1  # planned 21.3 GB per device on fsdp=8; 4 micro-batches: 17.7 GB
    t.loss_normalization = "micro_batch_mean"
    t.checkpoint_every = 5000  # as the reference's save_steps
    t.keep_checkpoints = 2  # the reference keeps 1; 2 lets a corrupt newest one fall back

    o = config.optim
    o.peak_lr = 5e-5
    o.warmup_steps = -1
    o.warmup_ratio = 0.03  # ceil(0.03 * 100k) = 3000 steps
    o.b1, o.b2 = 0.9, 0.999
    o.eps = 1e-8  # reference code (HF default); the paper states 1e-6
    o.weight_decay = 0.0
    o.clip_norm = 1.0

    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    config.metrics.peak_flops_per_device = 989e12  # H100 SXM dense bf16
    return config
