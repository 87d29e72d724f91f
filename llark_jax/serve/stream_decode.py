"""Token-by-token decoding for streamed answers: one jitted prefill, one jitted step per token.

`Generator` (llark_jax.infer.generate) decodes a whole batch inside one on-device
`lax.while_loop`, so nothing is available before the longest row ends. A streamed request instead
runs here, alone: the host loop gets every token as soon as it is sampled and hands it to
`on_token`. The computation mirrors `Generator` for a batch of one (same length bucket, cache
length, LLark splice, per-prompt PRNG stream `fold_in(fold_in(PRNGKey(seed), 0), step)` and
`next_token`, the fused decode steps of `llark_jax.model.decode`), so the streamed answer equals
the non-streamed one.

Stop sequences: a token that could begin (or continue) the template's stop sequence is held back
until the sequence is either completed (the held tokens are dropped: finish "stop") or broken
(they are released), so clients never see part of the `"\\n### "` separator.

Compiled programs: the cache is sized for the smallest of `step_buckets` that holds the request's
`max_new_tokens` (the loop still stops at the request's own limit), and temperature and top-p are
traced arguments, so the stream path compiles once per (length bucket, step bucket, audio shape)
whatever the sampling settings. A set `cancel` event (the client disconnected) ends the decode
before the next step (finish "cancelled").
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llark_jax.infer.generate import (
    Generation,
    Prompt,
    SamplingConfig,
    bucket_length,
    fused_decode_weights,
    next_token,
)
from llark_jax.model.decode import decode_step, unstack_cache
from llark_jax.model.llama import init_cache


@functools.partial(jax.jit, static_argnums=(0, 6))
def _prefill(graphdef, state, input_ids_bt, mask_bt, audio, frame_index_bt, cache_len: int):
    """-> (logits [B, V] at each row's last real token, per-layer cache of `cache_len` advanced
    by T), as `Generator` starts its decode loop."""
    model = nnx.merge(graphdef, state)
    llama = model.llama
    b = input_ids_bt.shape[0]
    if audio is None:
        x_btd = llama.embed_tokens(input_ids_bt)
    else:
        x_btd = model.embed_inputs(input_ids_bt, audio, frame_index_bt)
    cache = init_cache(llama.config, b, cache_len)
    logits_b1v, cache = llama.decode_embeddings(
        x_btd, attention_mask_bt=mask_bt, cache=cache, logits_at=jnp.sum(mask_bt, axis=1) - 1
    )
    return logits_b1v[:, 0], unstack_cache(cache)


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(4,))
def _step(graphdef, state, weights, token_b, cache):
    """One cached step on `token_b` [B] -> (logits [B, V], cache)."""
    llama = nnx.merge(graphdef, state).llama
    logits_btv, cache = decode_step(llama, weights, llama.embed_tokens(token_b[:, None]), cache)
    return logits_btv[:, 0], cache


@jax.jit
def _sample(logits_bv, keys_b2, step, temperature, top_p):
    return next_token(logits_bv, keys_b2, step, temperature, top_p)


class StreamDecoder:
    """Decodes one LLark prompt token by token (see the module docstring)."""

    def __init__(self, model, length_buckets, pad_id: int, step_buckets: Sequence[int] = ()):
        self.graphdef, self.state = nnx.split(model)
        self.length_buckets = tuple(length_buckets)
        self.step_buckets = tuple(sorted(step_buckets))
        self.pad_id = pad_id
        self._decode_weights = None  # fused_decode_weights, computed at the first decode

    def decode(self, prompt: Prompt, config: SamplingConfig, on_token: Callable[[int], None],
               cancel: threading.Event | None = None) -> Generation:
        """Calls `on_token(id)` for every released token; returns the whole `Generation`
        (finish "cancelled", with the tokens decoded so far, once `cancel` is set)."""
        n = len(prompt.input_ids)
        t = bucket_length(n, self.length_buckets)
        ids = np.full((1, t), self.pad_id, np.int32)
        ids[0, :n] = prompt.input_ids
        mask = (np.arange(t) < n).astype(np.int32)[None]
        audio = index = None
        if prompt.audio is not None:
            audio = jnp.asarray(np.asarray(prompt.audio, np.float32)[None])
            index = np.zeros((1, t), np.int32)
            index[0, :n] = prompt.audio_frame_index
            index = jnp.asarray(index)
        steps = config.max_new_tokens
        if self.step_buckets and steps <= self.step_buckets[-1]:
            steps = bucket_length(steps, self.step_buckets)
        logits, cache = _prefill(self.graphdef, self.state, jnp.asarray(ids), jnp.asarray(mask),
                                 audio, index, t + steps)
        if self._decode_weights is None:
            self._decode_weights = fused_decode_weights(self.graphdef, self.state)
        base = jax.random.key_data(jax.random.PRNGKey(config.seed))
        keys = jnp.stack([jax.random.fold_in(base, 0)])
        stops = [tuple(s) for s in config.stop_sequences]
        out: list[int] = []
        released = 0
        temperature, top_p = np.float32(config.temperature), np.float32(config.top_p)
        for step in range(config.max_new_tokens):
            if cancel is not None and cancel.is_set():
                return Generation(out, "cancelled")
            token = int(_sample(logits, keys, np.int32(step), temperature, top_p)[0])
            if token in config.eos_ids:
                return Generation(out, "eos")
            out.append(token)
            done = next((s for s in stops if tuple(out[-len(s):]) == s), None)
            if done is not None:
                return Generation(out[: len(out) - len(done)], "stop")
            held = max((k for s in stops for k in range(1, len(s))
                        if tuple(out[-k:]) == s[:k]), default=0)
            for token_id in out[released : len(out) - held]:
                on_token(token_id)
            released = max(released, len(out) - held)
            if step + 1 < config.max_new_tokens:
                logits, cache = _step(self.graphdef, self.state, self._decode_weights,
                                      jnp.asarray([token], jnp.int32), cache)
        for token_id in out[released:]:
            on_token(token_id)
        return Generation(out, "length")
