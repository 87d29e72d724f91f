"""The paper recipe with LoRA: Llama-2-7b-chat frozen in bf16 and low-rank adapters, on one GPU.

`python -m llark_jax train --config llark_7b_lora --workdir runs/llark_lora` (one device).
Same data, steps, schedule and LLark tokens as `configs/llark_7b.py`; what changes:

- `model.trainable = "lora"`: the decoder, final norm and LM head frozen; LoRA adapters (rank 16,
  alpha 32, on all seven projections q, k, v, o, gate, up, down; `llark_jax.model.lora`), the
  projector and the `<audio_start>`/`<audio_end>` embedding rows train. The frozen weights have
  no gradient and no Adam state, so memory is the bf16 weights (13.5 GB) + the small trained set
  in float32 + activations.
- Peak rates: 2e-4 for the adapters (`optim.lm_peak_lr`, a usual LoRA rate; the paper's 5e-5 is
  for full fine-tuning) and 5e-5 for the projector (`optim.peak_lr`, as the paper).
- One device (`mesh.fsdp = 1`); the global batch 32 is reached with micro-batches of 2
  (`train.micro_steps = 16`): planned 22.4 GB at most, so it fits a 24 GB card; on 48 / 80 GB
  cards `--config.train.micro_steps=8` / `=2` run fewer, larger micro-batches (docs/training.md,
  "LoRA": the planner's table).

`export` folds the adapters into the weights: the exported model is a plain Llama + projector.
"""

from pathlib import Path

import ml_collections

from llark_jax.config import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(Path(__file__).with_name("llark_7b.py"))
    m = config.model
    m.trainable = "lora"
    m.lora.rank = 16
    m.lora.alpha = 32.0
    m.lora.targets = "q,k,v,o,gate,up,down"

    config.train.micro_steps = 16  # 16 micro-batches of 2: the global batch of 32 on one device
    config.optim.lm_peak_lr = 2e-4  # adapters (and the two embedding rows)
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
    return config
