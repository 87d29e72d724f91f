"""Batched generation with the Llama KV cache: one jitted prefill + an on-device decode loop.

    prompts (token ids [T_i], optional audio [S, T_a, D]) --sort by length, batch, right-pad to a
    length bucket--> prefill (LLark splice or plain token embeddings) --> `lax.while_loop` of
    one-token cached steps --> per-row tokens, trimmed at EOS / stop sequence / max_new_tokens.

The prefill runs the model's cached forward; the loop's steps run `llark_jax.model.decode`
(per-layer cache arrays updated in place, per-layer fused weights that a `Generator` computes at
its first batch and keeps: a second copy of the layer weights while it lives).

Static shapes: a batch has the smallest of `batch_buckets` rows that holds it (default: always
`batch_size`; missing rows are inert one-token dummies that are done before the first step and
never extend the decode loop), prompts are right-padded to the smallest length bucket that fits,
and the decode loop is compiled for `max_new_tokens` steps, or, with `step_buckets`, for the
smallest step bucket that holds the batch's largest per-row limit (the loop still ends as soon as
every row is done). So XLA compiles once per (rows, length bucket, step bucket, audio shape) and
reuses it. Padding slots have segment id 0 in the cache and are never attended; each row's
positions continue from its own length, so a row's output does not depend on the other rows in
its batch.

Decoding: greedy when `temperature == 0` (the paper's setting), otherwise temperature sampling
restricted to the top-p nucleus. Each prompt gets its own PRNG stream, `fold_in(seed, key)` with
`key` its position in the call (or a caller-given integer), then `fold_in(stream, step)`, so
sampled outputs do not depend on batch composition either. `generate(..., rows=[RowSettings])`
gives each prompt its own token limit, temperature, top-p and seed; all of them are traced values,
so prompts with different settings share one compiled program and one batch.

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

from llark_jax.model.decode import DecodeWeights, decode_step, decode_weights, unstack_cache
from llark_jax.model.llama import Llama, init_cache

FINISH_REASONS = ("length", "eos", "stop")  # "cancelled": a streamed decode whose client left
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
class RowSettings:
    """One prompt's decoding settings when they differ per prompt (`Generator.generate(rows=)`)."""

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Generation:
    """Generated ids (without EOS / stop sequence) and why generation ended."""

    token_ids: list[int]
    finish_reason: Literal["length", "eos", "stop", "cancelled"]


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
    """Next token ids [B] int32 from logits [B, V]: greedy argmax where temperature == 0, else a
    nucleus sample with each row's key data [B, 2] folded with `step`. `temperature` and `top_p`
    are scalars or per-row [B], and may be traced (one compiled program for every setting); the
    sort of the nucleus is skipped when no row samples."""
    b = logits_bv.shape[0]
    temperature_b = jnp.broadcast_to(jnp.asarray(temperature, jnp.float32), (b,))
    top_p_b = jnp.broadcast_to(jnp.asarray(top_p, jnp.float32), (b,))
    greedy_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    sampling_b = temperature_b > 0

    def sampled(logits_bv):
        safe_b = jnp.where(sampling_b, temperature_b, 1.0)
        drawn_b = _sample_nucleus(logits_bv, keys_b2, step, safe_b[:, None], top_p_b[:, None])
        return jnp.where(sampling_b, drawn_b, greedy_b)

    return jax.lax.cond(jnp.any(sampling_b), sampled, lambda _: greedy_b, logits_bv)


@functools.partial(jax.jit, static_argnums=0)
def fused_decode_weights(graphdef, state) -> DecodeWeights:
    """`decode_weights` of the language model of `nnx.merge(graphdef, state)` (one copy)."""
    return decode_weights(_language_model(nnx.merge(graphdef, state)))


@functools.partial(jax.jit, static_argnums=(0, 11))
def _generate_batch(
    graphdef,
    state,
    weights,
    input_ids_bt,
    mask_bt,
    audio,
    frame_index_bt,
    keys_b2,
    stop_table_nl,
    stop_valid_nl,
    eos_e,
    max_new_tokens: int,
    temperature_b,
    top_p_b,
    limit_b,
):
    """-> tokens [B, N] int32, number of returned tokens [B], finish reason index [B].

    `weights`: `fused_decode_weights(graphdef, state)`, for the decode steps.
    N = `max_new_tokens` (static: the cache and output size); row b stops after `limit_b[b]`
    tokens (<= N; 0 = an inert padding row) and the loop ends when every row has stopped."""
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
    cache = unstack_cache(cache)
    stop_len = stop_table_nl.shape[1]
    stop_lengths_n = jnp.sum(stop_valid_nl, axis=1)

    def body(carry):
        step, cache, logits_bv, out_bn, recent_bl, done_b, n_out_b, reason_b = carry
        token_b = next_token(logits_bv, keys_b2, step, temperature_b, top_p_b)
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
        done_b = done_b | newly_b | (step + 1 >= limit_b)  # n_out stays limit_b: "length"
        step_logits_btv, cache = decode_step(llama, weights, llama.embed_tokens(token_b[:, None]),
                                             cache)
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
        limit_b <= 0,
        limit_b,
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
    """Generates for many prompts in batches (see the module docstring).

    Args:
      model: an `LLark` (prompts carry audio) or a plain `Llama`.
      config: decoding settings (with `rows=`, only its EOS ids and stop sequences are used, and
        its `max_new_tokens` bounds every row's limit).
      batch_size: the most rows per batch.
      length_buckets: allowed padded prompt lengths.
      pad_id: id written into padding positions (never attended).
      batch_buckets: allowed row counts of a compiled batch (each <= batch_size; default: only
        `batch_size`); a batch gets the smallest that holds it, the rest are inert dummy rows.
      step_buckets: allowed decode-loop lengths (default: only `config.max_new_tokens`); a batch
        gets the smallest that holds its largest per-row token limit.
    """

    def __init__(
        self,
        model: nnx.Module,
        config: SamplingConfig,
        *,
        batch_size: int = 8,
        length_buckets: Sequence[int] = DEFAULT_BUCKETS,
        pad_id: int = 0,
        batch_buckets: Sequence[int] | None = None,
        step_buckets: Sequence[int] | None = None,
    ):
        self.graphdef, self.state = nnx.split(model)
        self.config = config
        self.batch_size = batch_size
        self.length_buckets = tuple(sorted(length_buckets))
        self.batch_buckets = tuple(sorted({*(batch_buckets or ()), batch_size}))
        if self.batch_buckets[0] < 1 or self.batch_buckets[-1] > batch_size:
            raise ValueError(f"batch buckets {batch_buckets} must lie in [1, {batch_size}]")
        self.step_buckets = tuple(sorted({*(step_buckets or ()), config.max_new_tokens}))
        if self.step_buckets[0] < 1 or self.step_buckets[-1] > config.max_new_tokens:
            raise ValueError(f"step buckets {step_buckets} must lie in "
                             f"[1, {config.max_new_tokens}]")
        self.pad_id = pad_id
        self.audio_patch_id = getattr(model, "audio_patch_id", None)
        self.temporal_pool = int(getattr(model, "temporal_pool", 1))
        self._stop_table, self._stop_valid, self._eos = _stop_arrays(config)
        self.rows_computed = 0  # batch rows run, dummies included
        self._decode_weights = None  # fused_decode_weights, computed at the first batch

    def generate(
        self,
        prompts: Sequence[Prompt],
        keys: Sequence[int] | None = None,
        rows: Sequence[RowSettings] | None = None,
    ) -> list[Generation]:
        """One `Generation` per prompt, in input order. `keys` seed each prompt's sampling stream
        (default: its index); `rows` give each prompt its own settings (default: all `config`'s).
        PromptTooLong names the first prompt that fits no bucket."""
        for i, prompt in enumerate(prompts):
            try:
                bucket_length(len(prompt.input_ids), self.length_buckets)
            except PromptTooLong as error:
                raise PromptTooLong(f"prompt {i}: {error}") from None
        keys = list(range(len(prompts))) if keys is None else list(keys)
        if rows is None:
            c = self.config
            rows = [RowSettings(c.max_new_tokens, c.temperature, c.top_p, c.seed)] * len(prompts)
        for i, row in enumerate(rows):
            if not 1 <= row.max_new_tokens <= self.config.max_new_tokens:
                raise ValueError(f"prompt {i}: max_new_tokens {row.max_new_tokens} is outside "
                                 f"[1, {self.config.max_new_tokens}]")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i].input_ids))
        results: list[Generation | None] = [None] * len(prompts)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            for i, generation in zip(chunk, self._run_batch(prompts, keys, rows, chunk),
                                     strict=True):
                results[i] = generation
        return results  # type: ignore[return-value]

    def _run_batch(self, prompts, keys, rows, chunk: list[int]) -> list[Generation]:
        """Runs `chunk` (indices into prompts) as one batch of the smallest fitting row bucket;
        dummy rows (index None) have one padding token and a token limit of 0."""
        n_rows = bucket_length(len(chunk), self.batch_buckets)
        batch = chunk + [None] * (n_rows - len(chunk))
        steps = bucket_length(max(rows[i].max_new_tokens for i in chunk), self.step_buckets)
        t = bucket_length(max(len(prompts[i].input_ids) for i in chunk), self.length_buckets)
        input_ids = np.full((n_rows, t), self.pad_id, np.int32)
        mask = np.zeros((n_rows, t), np.int32)
        mask[:, 0] = 1  # a dummy row attends to its one padding token
        limit = np.zeros(n_rows, np.int32)
        temperature = np.zeros(n_rows, np.float32)
        top_p = np.ones(n_rows, np.float32)
        row_keys = np.zeros((n_rows, 2), np.uint32)
        for r, i in enumerate(chunk):
            n = len(prompts[i].input_ids)
            input_ids[r, :n], mask[r, :n] = prompts[i].input_ids, 1
            row = rows[i]
            limit[r], temperature[r], top_p[r] = row.max_new_tokens, row.temperature, row.top_p
            base = jax.random.key_data(jax.random.PRNGKey(row.seed))
            row_keys[r] = np.asarray(jax.random.fold_in(base, keys[i]))
        audio, frame_index = self._audio_batch(prompts, batch, t)
        if self._decode_weights is None:
            self._decode_weights = fused_decode_weights(self.graphdef, self.state)
        out, n_out, reason = _generate_batch(
            self.graphdef, self.state, self._decode_weights, jnp.asarray(input_ids),
            jnp.asarray(mask), audio, frame_index, jnp.asarray(row_keys),
            jnp.asarray(self._stop_table), jnp.asarray(self._stop_valid), jnp.asarray(self._eos),
            steps,
            jnp.asarray(temperature), jnp.asarray(top_p), jnp.asarray(limit),
        )  # fmt: skip
        self.rows_computed += n_rows
        out, n_out, reason = np.asarray(out), np.asarray(n_out), np.asarray(reason)
        return [
            Generation(out[r, : n_out[r]].tolist(), FINISH_REASONS[int(reason[r])])
            for r in range(len(chunk))
        ]

    def _audio_batch(self, prompts, batch: list[int | None], t: int) -> tuple[Any, Any]:
        """Audio [B, S_max, T_max, D] (segments and frames zero-padded to the batch's largest)
        + frame index [B, t], or (None, None). Dummy rows (None) get zeros.

        A prompt's flat index s * T' + t (T' = its frames / temporal_pool) is rewritten for the
        padded frame axis, so prompts whose audio differs in length can share a batch."""
        real = [i for i in batch if i is not None]
        if prompts[real[0]].audio is None:
            return None, None
        p = self.temporal_pool
        clips = {i: np.asarray(prompts[i].audio, np.float32) for i in real}
        clips = {i: c[None] if c.ndim == 2 else c for i, c in clips.items()}
        s_max = max(c.shape[0] for c in clips.values())
        t_max = -(-max(c.shape[1] for c in clips.values()) // p) * p
        d = next(iter(clips.values())).shape[2]
        audio = np.zeros((len(batch), s_max, t_max, d), np.float32)
        frame_index = np.zeros((len(batch), t), np.int32)
        for r, i in enumerate(batch):
            if i is None:
                continue
            clip = clips[i]
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
