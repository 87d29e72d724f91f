"""LLark on a small modern backbone: Qwen2.5-0.5B-Instruct instead of Llama-2-7b-chat.

`python -m llark_jax train --config llark_qwen --workdir runs/llark_qwen
 --config.model.path=/path/to/Qwen2.5-0.5B-Instruct --config.data.path=...`

The paper recipe (`configs/llark_7b.py`: Jukebox features, data, schedule) on a Qwen2-family LM
(`llark_jax.model.llama_config`: q/k/v biases, rope theta 1e6, tied embeddings, GQA 14/2), read
from its Hugging Face directory; the LLark tokens are added to its tokenizer (ids read from the
tokenizer, `vocab_size` 0 = derived), and the conversation uses its own ChatML template.
Full fine-tuning in float32 fits one 24 GB GPU with 16 micro-batches of 2 (planned 17.6 GB:
`python -m llark_jax plan --config llark_qwen --mesh fsdp=1`); `export` writes a
`Qwen2ForCausalLM` + projector.
"""

from pathlib import Path

import ml_collections

from llark_jax.config import load_config_file


def get_config() -> ml_collections.ConfigDict:
    config = load_config_file(Path(__file__).with_name("llark_7b.py"))
    m = config.model
    m.path = "/path/to/Qwen2.5-0.5B-Instruct"  # placeholder: a local HF directory
    m.vocab_size = 0  # derived: the checkpoint's rows + the LLark tokens
    m.audio_patch_id = m.audio_start_id = m.audio_end_id = -1  # from the tokenizer
    # Qwen2.5-0.5B-Instruct dims (what `plan` compiles; `hf` reads the real ones from config.json)
    m.llama = ml_collections.ConfigDict(dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_layers=24, num_heads=14,
        num_kv_heads=2, head_dim=64, rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True,
        max_position_embeddings=32768, model_type="qwen2", attention_bias=True,
    ))
    m.param_dtype = m.dtype = "float32"  # 0.5 B parameters: float32 master weights fit
    m.scan_layers = True
    config.train.micro_steps = 16  # micro-batches of 2: planned 17.6 GB on one device
    config.data.template = "tokenizer"  # Qwen's ChatML template
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1))
    return config
