"""The one config schema: every field any config may set, with neutral defaults.

Every config file (`configs/tiny.py`, `demo.py`, `llark_7b.py`, `musilingo.py`) starts from
`base_config()` and changes values; `--config.a.b=v` overrides can only set fields that exist
here, so a typo is an error, not a silently ignored key. Sections:

- `model`: the LM source and dims, the projector, the audio token ids, dtypes, trainable preset.
- `data`: the input pipeline (records, template, packing shape) and the feature pipeline that
  turns stored encoder frames into audio tokens (`feature_pool`, `standardize`); the same feature
  spec is saved with the model, so inference reproduces it (`llark_jax.data.features`).
- `train`, `optim`: the loop, checkpoints and AdamW + warmup-cosine.
- `mesh` (axis sizes), `logical_axis_rules` (logical axis -> mesh axes, as MaxText's), `metrics`.
"""

import ml_collections
from ml_collections import config_dict

from llark_jax.model.sharding import DEFAULT_RULES, rules_to_config


def base_config() -> ml_collections.ConfigDict:
    """A fresh copy of the schema with its default values."""
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.model = ml_collections.ConfigDict()
    config.model.source = "random"  # random | hf | gguf
    config.model.path = ""  # HF dir or GGUF file for hf/gguf ("" with gguf = embedded SmolLM2)
    config.model.tokenizer = ""  # HF tokenizer dir; "" = the source's own (hf/gguf)
    # Llama dims: used as given for `random`; for hf/gguf the checkpoint's dims replace them when
    # a run starts (the resolved config is saved with every checkpoint and model directory).
    config.model.llama = ml_collections.ConfigDict(dict(
        vocab_size=256, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4,
        num_kv_heads=2, head_dim=8, tie_word_embeddings=False, max_position_embeddings=512,
    ))
    # > 0: only the first N decoder layers of the hf/gguf checkpoint (a shallower, faster LM;
    # the rest of the checkpoint is not read). 0: all of them.
    config.model.keep_layers = 0
    config.model.audio_dim = 16  # stored feature width D (L*D with audio_layers = L)
    config.model.temporal_pool = 1  # projected frames averaged per audio token (MusiLingo)
    config.model.audio_layers = 0  # L > 0: audio_dim = L*D stored layers, learned mix (MusiLingo)
    config.model.projector_init_scale = 1.0  # x the torch Linear init (1: the reference)
    # Audio token ids; -1 = the ids the LLark token extension gives the tokenizer (hf/gguf).
    config.model.audio_start_id = -1
    config.model.audio_patch_id = -1
    config.model.audio_end_id = -1
    config.model.param_dtype = "float32"  # master weights: float32 or bfloat16 (reference)
    config.model.dtype = "float32"  # compute dtype
    config.model.remat = False
    config.model.scan_layers = False  # lax.scan over layers: one compiled body (big models)
    # Attention core: einsum | dot_product (jax.nn.dot_product_attention: XLA, cuDNN on GPU) |
    # splash (Pallas TPU kernel; seq_len a multiple of 128). docs/performance.md measures them.
    config.model.attention = "einsum"
    config.model.trainable = "llark_reference"  # preset of llark_jax.model.trainable
    config.model.vocab_size = 0  # vocabulary after the LLark token extension (0 = derived)

    config.model.lora = ml_collections.ConfigDict()  # LoRA adapters (llark_jax.model.lora)
    config.model.lora.rank = 0  # > 0: adapters of this rank on every decoder layer
    config.model.lora.alpha = 16.0  # scale alpha / rank
    config.model.lora.targets = "q,k,v,o"  # comma-separated: q, k, v, o, gate, up, down
    config.model.quantize_base = ""  # "int8" | "int4": frozen decoder weights stored quantised

    config.data = ml_collections.ConfigDict()
    config.data.source = "synthetic"  # synthetic | tfrecord
    config.data.path = ""  # tfrecord: comma-separated shard globs
    config.data.eval_path = ""  # held-out shard globs for train.eval_every (tfrecord)
    # Training-data fraction (the paper's data-scaling ablation): each clip is kept by a coin
    # seeded by (seed, clip id), so each dataset keeps about this share of its clips, the same
    # ones every epoch; dataset_fractions {dataset: share} overrides it per dataset.
    config.data.fraction = 1.0
    config.data.dataset_fractions = ml_collections.ConfigDict()
    config.data.template = "fastchat_v0"  # llark_jax.data.conversation name, or "tokenizer"
    config.data.system_prompt = config_dict.placeholder(str)  # None = the template's own
    config.data.batch_size = 8  # global batch (examples per optimizer step)
    config.data.seq_len = 32
    config.data.audio_segments = 1  # audio slots per packed row
    config.data.audio_frames = 4  # audio tokens per slot (after feature_pool); records checked
    # Share of training examples per QA task name (empty = each pair once per epoch).
    config.data.task_weights = ml_collections.ConfigDict()
    # Feature pipeline (saved with the model; inference applies the same): the encoder that made
    # the stored frames and its constructor arguments, frames averaged per audio token, and
    # per-dimension standardisation with statistics of the training records.
    config.data.encoder = "mel"
    config.data.encoder_args = ml_collections.ConfigDict()
    config.data.feature_pool = 1
    config.data.standardize = False
    # Clips the input pipeline leaves out: comma-separated clip ids, or "@FILE" with one clip id
    # per line (a NaN stop writes W/nan_step_<N>_clips.txt for this). Counted and summarised.
    config.data.skip_clips = ""

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
    config.train.model_dir = ""  # written at the end: a model directory (params, no optimizer)
    config.train.prefetch = 2  # batches built and put on the devices ahead (0 = in the loop)
    config.train.log_every = 10  # steps between metric fetches to the host (and jsonl writes)
    config.train.eval_every = 0  # steps between validation losses (0 = none)
    config.train.eval_batches = 4  # held-out batches per validation (the same ones each time)
    config.train.profile_steps = ""  # "N:M": JAX profiler trace of steps N..M in W/profile

    config.optim = ml_collections.ConfigDict()
    config.optim.peak_lr = 1e-3  # the projector's (and every trained group's when lm_peak_lr=0)
    config.optim.lm_peak_lr = 0.0  # > 0: peak rate of the trained LM groups (projector: peak_lr)
    config.optim.warmup_steps = 2  # -1: use warmup_ratio
    config.optim.warmup_ratio = 0.03
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.eps = 1e-8
    config.optim.weight_decay = 0.0
    config.optim.clip_norm = 1.0

    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1))
    # [[logical_name, mesh_axes], ...] (`llark_jax.model.sharding`): FSDP by default; every name
    # but `batch` -> None is data parallel (docs/training.md).
    config.logical_axis_rules = rules_to_config(DEFAULT_RULES)

    config.metrics = ml_collections.ConfigDict()
    config.metrics.peak_flops_per_device = 0.0  # FLOP/s; 0 = unknown (mfu reported as 0)
    config.metrics.tensorboard = True
    config.metrics.wandb = False  # Weights & Biases (pip install wandb; WANDB_MODE=offline)
    config.metrics.wandb_project = "llark-jax"
    config.metrics.wandb_entity = ""  # "" = the account's default
    config.metrics.wandb_run_name = ""  # "" = the workdir's name
    return config
