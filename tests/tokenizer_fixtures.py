"""A small REAL tokenizer built locally for tests (no downloads).

`make_base_tokenizer()` trains a byte-level BPE with the `tokenizers` library on a few KB of text
generated here (music-QA sentences, the FastChat header and a few thousand random words), wraps it
in a transformers `PreTrainedTokenizerFast` with `<s>`/`</s>`/`<unk>` and a SmolLM2-style ChatML
chat template. Like Llama-2 it has no pad token. `make_llark_tokenizer()` adds the LLark tokens in
the reference's order (`[PAD]`, `<audio_patch>`, `<audio_start>`, `<audio_end>`, spec §1.3).

Reused by the pipeline, generation and serving tests: treat the returned object as read-only
(both builders return a fresh copy on every call; training happens once per process).
"""

from __future__ import annotations

import copy
import functools
import random

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from llark_jax.checkpoints.tokens import extend_tokenizer

VOCAB_SIZE = 600

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SENTENCES = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions.",
    "### Human: What is the tempo of this song?\n### Assistant: The tempo is 120 BPM.\n### ",
    "### Human: Which key is this piece in?\n### Assistant: It is in A minor.\n### ",
    "### Human: Describe the instruments you hear.\n### Assistant: A piano and a bass guitar.\n",
    "[INST] <<SYS>>\nYou are a helpful assistant.\n<</SYS>>\n\nName the genre. [/INST] Jazz.",
    "The song has a slow groove, bright drums, warm strings and a soft vocal melody.",
)
_WORDS = (
    "music song track piano guitar bass drums violin cello flute voice tempo key chord "
    "major minor beat rhythm melody harmony genre jazz rock pop blues classical loud soft "
    "fast slow happy sad bright dark what which how is the a an of in this it and with "
    "describe tell me about hear you 0 1 2 3 4 5 6 7 8 9 BPM C D E F G A B sharp flat"
).split()


def _training_corpus(seed: int = 0) -> list[str]:
    """About 20 KB of text: fixed sentences plus seeded random word salad."""
    rng = random.Random(seed)
    lines = list(_SENTENCES) * 20
    for _ in range(400):
        lines.append(" ".join(rng.choice(_WORDS) for _ in range(8)) + rng.choice(".?!\n"))
    return lines


@functools.lru_cache(maxsize=1)
def _trained_base() -> PreTrainedTokenizerFast:
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_training_corpus(), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=4096,
        padding_side="right",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def make_base_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh copy of the trained byte-level BPE tokenizer (no pad, no LLark tokens)."""
    return copy.deepcopy(_trained_base())


def make_llark_tokenizer() -> PreTrainedTokenizerFast:
    """Base tokenizer + `[PAD]`, `<audio_patch>`, `<audio_start>`, `<audio_end>` (in that order)."""
    tokenizer = make_base_tokenizer()
    extend_tokenizer(tokenizer)
    return tokenizer
