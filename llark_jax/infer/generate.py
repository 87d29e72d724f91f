"""Batched generation with the Llama KV cache: one jitted prefill + an on-device decode loop.

    prompts (token ids [T_i], optional audio [S, T_a, D]) --sort by length, batch, right-pad to a
    length bucket--> prefill (LLark splice or plain token embeddings) --> `lax.while_loop` of
    one-token cached steps --> per-row tokens, trimmed at EOS / stop sequence / max_new_tokens.

Static shapes: a batch is always `batch_size` rows (short batches are padded with copies of a real
prompt whose outputs are discarded) and prompts are right-padded to the smallest length bucket that
fits, so XLA compiles once per (bucket, audio shape) and reuses it. Padding slots have segment id 0
in the cache and are never attended; each row's positions continue from its own length, so a row's
output does not depend on the other rows in its batch.

Decoding: greedy when `temperature == 0` (the paper's setting), otherwise temperature sampling
restricted to the top-p nucleus. Each prompt gets its own PRNG stream, `fold_in(seed, key)` with
`key` its position in the call (or a caller-given integer), then `fold_in(stream, step)`, so
sampled outputs do not depend on batch composition either.

Stopping: a row stops when it emits one of `eos_ids` (the EOS is not returned) or completes one of
`stop_sequences` (token-id sequences such as the template's "\\n### " separator; the sequence is
not returned), otherwise after `max_new_tokens`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llark_jax.model.llama import Llama, init_cache

FINISH_REASONS = ("length", "eos", "stop")
DEFAULT_BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096)


class PromptTooLong(ValueError):
    """A prompt is longer than the largest length bucket."""


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """Decoding settings; temperature 0 is greedy."""

    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    eos_ids: tuple[int, ...] = ()
    stop_sequences: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {self}")
        if any(len(s) == 0 for s in self.stop_sequences):
            raise ValueError("stop sequences must be non-empty")


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt: token ids [T] and, for LLark, audio [S, T_a, D] (or [T_a, D]) plus optionally
    the flat frame index [T] of each `<audio_patch>` (default: k-th patch takes frame k)."""

    input_ids: np.ndarray
    audio: np.ndarray | None = None
    audio_frame_index: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Generation:
    """Generated ids (without EOS / stop sequence) and why generation ended."""

    token_ids: list[int]
    finish_reason: Literal["length", "eos", "stop"]


def bucket_length(length: int, buckets: Sequence[int]) -> int:
    """Smallest bucket >= length; PromptTooLong when none fits."""
    for bucket in sorted(buckets):
        if bucket >= length:
            return bucket
    raise PromptTooLong(f"prompt of {length} tokens exceeds the largest bucket {max(buckets)}")


def _language_model(model: nnx.Module) -> Llama:
    return model.llama if hasattr(model, "llama") else model


def _sample_nucleus(logits_bv, keys_b2, step, temperature, top_p):
    """A sample from softmax(logits / temperature) restricted to the top-p nucleus."""
    logits_bv = logits_bv / temperature
    sorted_bv = jnp.sort(logits_bv, axis=-1)[:, ::-1]
    probs_bv = jax.nn.softmax(sorted_bv, axis=-1)
    before_bv = jnp.cumsum(probs_bv, axis=-1) - probs_bv  # mass strictly above each token
    n_keep_b = jnp.maximum(jnp.sum(before_bv < top_p, axis=-1), 1)
    threshold_b1 = jnp.take_along_axis(sorted_bv, (n_keep_b - 1)[:, None], axis=-1)
    logits_bv = jnp.where(logits_bv >= threshold_b1, logits_bv, -jnp.inf)
    step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step))(keys_b2)
    return jax.vmap(jax.random.categorical)(step_keys, logits_bv).astype(jnp.int32)


def next_token(
    logits_bv: jax.Array, keys_b2: jax.Array, step: jax.Array | int, temperature: jax.Array | float,
    top_p: jax.Array | float,
) -> jax.Array:
    """Next token ids [B] int32 from logits [B, V]: greedy argmax when temperature == 0, else a
    nucleus sample with each row's key data [B, 2] folded with `step` (one compiled program for
    both: temperature and top_p may be traced scalars)."""
    return jax.lax.cond(
        temperature > 0,
        _sample_nucleus,
        lambda logits, *_: jnp.argmax(logits, axis=-1).astype(jnp.int32),
        logits_bv, keys_b2, step, temperature, top_p,
    )  # fmt: skip


@functools.partial(jax.jit, static_argnums=(0, 10))
def _generate_batch(
    graphdef,
    state,
    input_ids_bt,
    mask_bt,
    audio,
    frame_index_bt,
    keys_b2,
    stop_table_nl,
    stop_valid_nl,
    eos_e,
    max_new_tokens: int,
    temperature,
    top_p,
):
    """-> tokens [B, N] int32, number of returned tokens [B], finish reason index [B]."""
    model = nnx.merge(graphdef, state)
    llama = _language_model(model)
    b, t = input_ids_bt.shape
    if audio is None:
        x_btd = llama.embed_tokens(input_ids_bt)
    else:
        x_btd = model.embed_inputs(input_ids_bt, audio, frame_index_bt)
    cache = init_cache(llama.config, b, t + max_new_tokens)
    last_b = jnp.sum(mask_bt, axis=1) - 1
    logits_b1v, cache = llama.decode_embeddings(
        x_btd, attention_mask_bt=mask_bt, cache=cache, logits_at=last_b
    )
    logits_bv = logits_b1v[:, 0]
    stop_len = stop_table_nl.shape[1]
    stop_lengths_n = jnp.sum(stop_valid_nl, axis=1)

    def body(carry):
        step, cache, logits_bv, out_bn, recent_bl, done_b, n_out_b, reason_b = carry
        token_b = next_token(logits_bv, keys_b2, step, temperature, top_p)
        out_bn = out_bn.at[:, step].set(jnp.where(done_b, 0, token_b))
        recent_bl = jnp.concatenate([recent_bl[:, 1:], token_b[:, None]], axis=1)
        matches_bn = (
            jnp.all((recent_bl[:, None, :] == stop_table_nl[None]) | ~stop_valid_nl[None], axis=-1)
            & (stop_lengths_n[None] > 0)
            & (step + 1 >= stop_lengths_n[None])
        )
        stop_b = jnp.any(matches_bn, axis=1)
        eos_b = jnp.any(token_b[:, None] == eos_e[None], axis=1)
        matched_len_b = jnp.max(jnp.where(matches_bn, stop_lengths_n[None], 0), axis=1)
        newly_b = ~done_b & (eos_b | stop_b)
        n_out_b = jnp.where(newly_b, jnp.where(eos_b, step, step + 1 - matched_len_b), n_out_b)
        reason_b = jnp.where(newly_b, jnp.where(eos_b, 1, 2), reason_b)
        done_b = done_b | newly_b
        step_logits_btv, cache = llama.decode_embeddings(
            llama.embed_tokens(token_b[:, None]), cache=cache
        )
        return step + 1, cache, step_logits_btv[:, 0], out_bn, recent_bl, done_b, n_out_b, reason_b

    def cond(carry):
        step, done_b = carry[0], carry[5]
        return (step < max_new_tokens) & ~jnp.all(done_b)

    init = (
        jnp.zeros((), jnp.int32),
        cache,
        logits_bv,
        jnp.zeros((b, max_new_tokens), jnp.int32),
        jnp.full((b, stop_len), -1, jnp.int32),
        jnp.zeros((b,), bool),
        jnp.full((b,), max_new_tokens, jnp.int32),
        jnp.zeros((b,), jnp.int32),
    )
    _, _, _, out_bn, _, _, n_out_b, reason_b = jax.lax.while_loop(cond, body, init)
    return out_bn, n_out_b, reason_b


def _stop_arrays(config: SamplingConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Right-aligned stop table [N, L] + validity mask, and EOS ids [E] (-1 = none). N, L and E
    are padded to at least 4, 8 and 4 so that common settings share one compiled program."""
    sequences = config.stop_sequences
    n = max(4, len(sequences))
    width = max([8, *(len(seq) for seq in sequences)])
    table = np.full((n, width), -1, np.int32)
    valid = np.zeros((n, width), bool)
    for i, seq in enumerate(sequences):
        table[i, width - len(seq) :] = seq
        valid[i, width - len(seq) :] = True
    eos = np.full(max(4, len(config.eos_ids)), -1, np.int32)
    eos[: len(config.eos_ids)] = config.eos_ids
    return table, valid, eos


class Generator:
    """Generates for many prompts in fixed-size batches (see the module docstring).

    Args:
      model: an `LLark` (prompts carry audio) or a plain `Llama`.
      config: decoding settings.
      batch_size: rows per compiled batch.
      length_buckets: allowed padded prompt lengths.
      pad_id: id written into padding positions (never attended).
    """

    def __init__(
        self,
        model: nnx.Module,
        config: SamplingConfig,
        *,
        batch_size: int = 8,
        length_buckets: Sequence[int] = DEFAULT_BUCKETS,
        pad_id: int = 0,
    ):
        self.graphdef, self.state = nnx.split(model)
        self.config = config
        self.batch_size = batch_size
        self.length_buckets = tuple(sorted(length_buckets))
        self.pad_id = pad_id
        self.audio_patch_id = getattr(model, "audio_patch_id", None)
        self.temporal_pool = int(getattr(model, "temporal_pool", 1))
        self._stop_table, self._stop_valid, self._eos = _stop_arrays(config)

    def generate(
        self, prompts: Sequence[Prompt], keys: Sequence[int] | None = None
    ) -> list[Generation]:
        """One `Generation` per prompt, in input order. `keys` seed each prompt's sampling stream
        (default: its index); PromptTooLong names the first prompt that fits no bucket."""
        for i, prompt in enumerate(prompts):
            try:
                bucket_length(len(prompt.input_ids), self.length_buckets)
            except PromptTooLong as error:
                raise PromptTooLong(f"prompt {i}: {error}") from None
        keys = list(range(len(prompts))) if keys is None else list(keys)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, generation in zip(chunk, self._run_batch(prompts, keys, chunk), strict=False):
                results[i] = generation
        return results  # type: ignore[return-value]

    def _run_batch(self, prompts, keys, chunk: list[int]) -> list[Generation]:
        rows = chunk + [chunk[0]] * (self.batch_size - len(chunk))  # pad with copies
        t = bucket_length(max(len(prompts[i].input_ids) for i in rows), self.length_buckets)
        input_ids = np.full((len(rows), t), self.pad_id, np.int32)
        mask = np.zeros((len(rows), t), np.int32)
        for r, i in enumerate(rows):
            n = len(prompts[i].input_ids)
            input_ids[r, :n], mask[r, :n] = prompts[i].input_ids, 1
        audio, frame_index = self._audio_batch(prompts, rows, t)
        base = jax.random.key_data(jax.random.PRNGKey(self.config.seed))
        row_keys = np.stack([jax.random.fold_in(base, keys[i]) for i in rows])
        out, n_out, reason = _generate_batch(
            self.graphdef, self.state, jnp.asarray(input_ids), jnp.asarray(mask), audio,
            frame_index, jnp.asarray(row_keys), jnp.asarray(self._stop_table),
            jnp.asarray(self._stop_valid), jnp.asarray(self._eos),
            self.config.max_new_tokens, jnp.float32(self.config.temperature),
            jnp.float32(self.config.top_p),
        )  # fmt: skip
        out, n_out, reason = np.asarray(out), np.asarray(n_out), np.asarray(reason)
        return [
            Generation(out[r, : n_out[r]].tolist(), FINISH_REASONS[int(reason[r])])
            for r in range(len(chunk))
        ]

    def _audio_batch(self, prompts, rows: list[int], t: int) -> tuple[Any, Any]:
        """Audio [B, S_max, T_max, D] (segments and frames zero-padded to the batch's largest)
        + frame index [B, t], or (None, None).

        A prompt's flat index s * T' + t (T' = its frames / temporal_pool) is rewritten for the
        padded frame axis, so prompts whose audio differs in length can share a batch."""
        if prompts[rows[0]].audio is None:
            return None, None
        p = self.temporal_pool
        clips = [np.asarray(prompts[i].audio, np.float32) for i in rows]
        clips = [c[None] if c.ndim == 2 else c for c in clips]
        s_max = max(c.shape[0] for c in clips)
        t_max = -(-max(c.shape[1] for c in clips) // p) * p
        audio = np.zeros((len(rows), s_max, t_max, clips[0].shape[2]), np.float32)
        frame_index = np.zeros((len(rows), t), np.int32)
        for r, (i, clip) in enumerate(zip(rows, clips, strict=True)):
            audio[r, : clip.shape[0], : clip.shape[1]] = clip
            ids = np.asarray(prompts[i].input_ids)
            index = prompts[i].audio_frame_index
            if index is None:  # k-th patch token takes flat frame k
                index = np.maximum(np.cumsum(ids == self.audio_patch_id) - 1, 0)
            own = max(clip.shape[1] // p, 1)
            if own != t_max // p:
                index = np.asarray(index) // own * (t_max // p) + np.asarray(index) % own
            frame_index[r, : len(ids)] = index
        return jnp.asarray(audio), jnp.asarray(frame_index)
