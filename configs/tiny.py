"""Tiny random LLark on synthetic batches: the test and smoke-run config (CPU, float32, seconds).

`python -m llark_jax train --config configs/tiny.py --workdir /tmp/tiny --config.train.steps=20`
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.source = "random"  # random | hf | gguf
    config.model.path = ""  # HF dir or GGUF file for hf/gguf ("" with gguf = embedded SmolLM2)
    config.model.llama = ml_collections.ConfigDict(dict(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, tie_word_embeddings=False, max_position_embeddings=512,
    ))
    config.model.audio_dim = 16
    config.model.temporal_pool = 1
    config.model.audio_layers = 0  # L > 0: audio_dim = L*D stored layers, learned mix (MusiLingo)
    config.model.audio_start_id = 253
    config.model.audio_patch_id = 254
    config.model.audio_end_id = 255
    config.model.param_dtype = "float32"  # master weights: float32 or bfloat16 (reference)
    config.model.dtype = "float32"  # compute dtype
    config.model.remat = False
    config.model.scan_layers = False  # lax.scan over layers: one compiled body (big models)
    config.model.trainable = "llark_reference"  # preset of llark_jax.model.trainable
    config.model.vocab_size = 0  # hf: vocabulary after the LLark token extension (0 = file)

    config.data = ml_collections.ConfigDict()
    config.data.source = "synthetic"  # synthetic | tfrecord
    config.data.path = ""  # tfrecord: comma-separated shard globs
    config.data.template = "fastchat_v0"  # conversation template (llark_jax.data.conversation)
    config.data.batch_size = 8  # global batch (examples per optimizer step)
    config.data.seq_len = 32
    config.data.audio_segments = 1
    config.data.audio_frames = 4
    config.data.encoder = "mel"  # data_prep.encoders name that made the features (infer --audio)

    config.train = ml_collections.ConfigDict()
    config.train.steps = 20
    config.train.micro_steps = 1  # gradient accumulation: micro-batches per optimizer step
    config.train.loss_normalization = "micro_batch_mean"  # or global_tokens
    # LM head + loss only at the first K positions per row that predict a supervised token
    # (0 = all positions); a row with more stops the run with an error.
    config.train.head_positions = 0
    config.train.checkpoint_every = 5
    config.train.keep_checkpoints = 2
    config.train.async_checkpoint = True
    config.train.init_from = ""  # workdir whose newest checkpoint initialises the params

    config.optim = ml_collections.ConfigDict()
    config.optim.peak_lr = 1e-3
    config.optim.warmup_steps = 2  # -1: use warmup_ratio
    config.optim.warmup_ratio = 0.03
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.weight_decay = 0.0
    config.optim.clip_norm = 1.0

    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    config.sharding_rules = "fsdp"  # fsdp | fsdp_tensor | data_parallel

    config.metrics = ml_collections.ConfigDict()
    config.metrics.peak_flops_per_device = 0.0  # FLOP/s; 0 = unknown (mfu reported as 0)
    config.metrics.tensorboard = True
    return config
