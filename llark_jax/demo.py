"""Interim `make demo`: the embedded SmolLM2-135M-Instruct (GGUF) in Flax answers a chat prompt.

Greedy decoding with the KV cache (`llark_jax.model.greedy.greedy_generate`); prints the answer and
the decoding speed (after a warm-up call that compiles the prefill and the decode step).
"""

from __future__ import annotations

import argparse
import time

import jax.numpy as jnp
import numpy as np

DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m llark_jax demo", description=__doc__)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--gguf", default=None, help="GGUF file (default: embedded SmolLM2)")
    args = parser.parse_args(argv)

    from llark_jax.checkpoints.gguf import load_gguf_llama
    from llark_jax.model.greedy import greedy_generate

    start = time.perf_counter()
    model, tokenizer = load_gguf_llama(args.gguf)
    print(f"loaded {model.config.num_layers}-layer Llama from GGUF in "
          f"{time.perf_counter() - start:.1f} s")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}],
                                        add_generation_prompt=True, return_dict=False)
    ids_bt = jnp.asarray([ids], jnp.int32)
    gen = dict(eos_id=tokenizer.eos_token_id, cache_len=len(ids) + args.max_new_tokens)

    start = time.perf_counter()
    greedy_generate(model, ids_bt, max_new_tokens=2, **gen).block_until_ready()
    print(f"compiled prefill + decode step in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    out = np.asarray(greedy_generate(model, ids_bt, max_new_tokens=args.max_new_tokens, **gen))[0]
    seconds = time.perf_counter() - start
    eos_at = np.flatnonzero(out == tokenizer.eos_token_id)
    answer = out[: eos_at[0] + 1] if eos_at.size else out
    print(f"user: {args.prompt}")
    print(f"assistant: {tokenizer.decode(answer, skip_special_tokens=True).strip()}")
    print(f"{len(answer)} tokens in {seconds:.2f} s = {len(answer) / seconds:.1f} tokens/s "
          f"(prompt {len(ids)} tokens, greedy, KV cache)")
    return 0
