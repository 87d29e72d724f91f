"""`python -m llark_jax demo --system musilingo`: MusiLingo's two-stage recipe in miniature.

Derived from `configs/demo.py` (same synthetic data, `mir` features pooled to 1 Hz and
standardised, SmolLM2-135M-Instruct from the embedded GGUF), with MusiLingo's choices
(`configs/musilingo.py`, docs/musilingo.md): the LM frozen and only the projector trained
(`projector_only`), no system prompt, MusiLingo's templates, and two stages:

- stage 1, caption pre-training (`pretrain` section, template `musilingo_caption`:
  `<s>[audio]{caption}\\n`), on one ground-truth caption per training clip;
- stage 2, instruction tuning (`train`/`optim`/`data`, template `musilingo`:
  `<s>###Human: <Audio>[audio]</Audio> {question} ###Assistant: {answer}###`) on the demo's QA
  records, initialised from stage 1 (`train.init_from`, set by `llark_jax/demo/musilingo.py`).

Stand-ins: SmolLM2-135M-Instruct for Vicuna-7B, the `mir` encoder for MERT-v1-330M (its weights
are not here). Step counts and learning rates fit the 2-core CPU budget (docs/musilingo.md,
"MusiLingo in miniature"), not the paper's 20k + 30k steps at 1e-4 / 3e-5.
"""

from pathlib import Path

import ml_collections

from llark_jax.config import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(Path(__file__).with_name("demo.py"))
    config.dataset.n_clips = 96  # 76 train, 20 held out (seed 0)
    config.dataset.seconds = 10.0

    config.model.trainable = "projector_only"  # LM frozen, as MusiLingo
    config.model.keep_layers = 0  # all layers: a frozen LM cut short cannot relearn its head

    d = config.data
    d.template = "musilingo"  # stage 2; stage 1 uses pretrain.template
    d.system_prompt = ""  # MusiLingo has none
    d.seq_len = 144  # ~3 QA examples (~45 tokens) per row
    # the three paper prompts; key needs the most examples (docs/demo.md)
    d.task_weights = ml_collections.ConfigDict({"key": 0.6, "instruments": 0.3, "tempo": 0.1})

    t = config.train
    t.steps = 30  # stage 2
    t.head_positions = 56  # LM head only where answers are scored (<= 3 x 17 per row)
    t.checkpoint_every = 30
    t.keep_checkpoints = 1

    o = config.optim
    o.peak_lr = 1e-2  # projector (MusiLingo: 3e-5 over 30k steps)
    o.lm_peak_lr = 0.0  # nothing else trains
    o.warmup_steps = 3

    # Stage 1: these fields replace the ones above for the caption pre-training run.
    config.pretrain = ml_collections.ConfigDict(dict(
        template="musilingo_caption",
        steps=30,
        peak_lr=1e-2,  # MusiLingo: 1e-4 over 20k steps
        warmup_steps=3,
        seq_len=144,  # ~3 captions (BOS + 10 audio + <= 32 caption tokens + "\n") per row
        head_positions=0,  # captions are most of a row: the LM head everywhere
    ))

    e = config.eval
    e.batch_size = 32
    e.max_new_tokens = 32  # captions are cut to 32 tokens in training; QA answers stop at ###
    e.caption_prompt = "Please give a caption to the music."  # MusiLingo's MusicCaps prompt
    e.examples = 4
    return config
