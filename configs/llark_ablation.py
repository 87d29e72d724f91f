"""The paper's ablations (appendix E) as variants of the paper recipe (`configs/llark_7b.py`).

`python -m llark_jax train --config llark_ablation:VARIANT ...`; everything not listed below is the
paper recipe (same data, steps, optimiser). docs/training.md, "Ablations", has the paper's
reported effect of each.

- `clap` (E.1, audio encoder): one LAION-CLAP audio embedding per clip instead of 240 Jukebox
  frames: `data.encoder = "clap"` (`llark_jax.audio.encoders.clap`, records written with
  `python -m data_prep embed --encoder clap --encoder-arg clap_dir=DIR`), `model.audio_dim = 512`,
  `data.audio_frames = 1` (the reference's `scripts/clap/train_model_clap.sh`).
- `small_lm` (E.2, language model): a ~1B LM instead of Llama-2-7B. The paper used
  MPT-1b-RedPajama-200b-dolly (ALiBi, no rotary embeddings: not a Llama-family model, so not
  loadable here); this variant takes TinyLlama-1.1B-Chat-v1.0 (Llama architecture, the Llama-2
  tokenizer, so the LLark token ids are the same 32000-32003), with its own chat template. The
  paper attributes the MPT model's weak tempo to its tokenizer (Llama-2 splits digits); with the
  same tokenizer this variant isolates model size.
- `data1`, `data10`, `data50` (E.3, training-data scaling): 1%, 10% or 50% of every dataset's
  training clips (`data.fraction`, a seeded per-clip coin: the same clips every epoch and on any
  number of hosts; smaller shares are subsets of larger ones), same steps ("compute-matched").
"""

from pathlib import Path

import ml_collections

from llark_jax.config import load_config_file

FRACTIONS = {"data1": 0.01, "data10": 0.1, "data50": 0.5}
VARIANTS = ("clap", "small_lm", *FRACTIONS)


def get_config(variant: str = "clap") -> ml_collections.ConfigDict:
    if variant not in VARIANTS:
        raise ValueError(f"ablation {variant!r} not in {VARIANTS}")
    config = load_config_file(Path(__file__).with_name("llark_7b.py"))
    m, d = config.model, config.data
    if variant in FRACTIONS:
        d.fraction = FRACTIONS[variant]
    elif variant == "clap":
        d.path = "/path/to/llark_clap_tfrecords"  # placeholder: shards of CLAP embeddings
        d.encoder = "clap"
        d.encoder_args = ml_collections.ConfigDict(dict(clap_dir="/path/to/larger_clap_music"))
        d.audio_frames = 1  # one 10 s window per clip (the reference's T = 1)
        m.audio_dim = 512  # CLAP projection width
    else:
        m.path = "/path/to/TinyLlama-1.1B-Chat-v1.0"  # placeholder: a local HF directory
        m.llama = ml_collections.ConfigDict(dict(
            vocab_size=32004, hidden_size=2048, intermediate_size=5632, num_layers=22,
            num_heads=32, num_kv_heads=4, head_dim=64, rope_theta=10000.0, rms_norm_eps=1e-5,
            tie_word_embeddings=False, max_position_embeddings=2048,
        ))
        d.template = "tokenizer"  # TinyLlama-chat's own (Zephyr-style) chat template
        d.seq_len = 2048  # its context length
    return config
