"""Log-likelihood of given continuations (no generation): what an LLark model thinks of answers.

    prompt ids [T_i] (+ audio [S, T_a, D]) ++ continuation ids [K_i]
      --one forward pass per batch--> log p(continuation token k | prompt, tokens < k), summed

Multiple-choice benchmarks score every option this way (`llark_jax.benchmarks.mcq_runner`): the
option with the highest mean log-probability per token is the model's choice, with nothing to
parse. Prompts are `llark_jax.infer.generate.Prompt`s as `Answerer.prompt` builds them (ending
with the assistant prefix), so a continuation is scored exactly where generation would start.

Static shapes as in generation: rows are sorted by length and right-padded to a length bucket,
continuations to a power of two (at least 8), a short batch is filled with inert one-token rows,
so XLA compiles once per (length bucket, continuation bucket, audio shape). Audio of different
window counts or lengths shares a batch: segments and frames are zero-padded to the batch's
largest and each prompt's flat frame index is rewritten for the padded frame axis. Prompts with
and without audio go to separate batches.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llark_jax.infer.generate import DEFAULT_BUCKETS, Prompt, bucket_length

MIN_CONTINUATION_BUCKET = 8


@dataclasses.dataclass(frozen=True)
class ContinuationScore:
    """Summed natural-log probability of a continuation's tokens and their count."""

    logprob: float
    n_tokens: int

    @property
    def mean_logprob(self) -> float:
        return self.logprob / self.n_tokens if self.n_tokens else float("-inf")


@functools.partial(jax.jit, static_argnums=0)
def _continuation_logprobs(graphdef, state, input_ids_bt, mask_bt, audio, frame_index_bt,
                           at_bk, target_bk):
    """Log-probabilities [B, K] of `target_bk` at the positions `at_bk` (that predict them)."""
    model = nnx.merge(graphdef, state)
    logits_bkv = model(input_ids_bt, audio, attention_mask=mask_bt,
                       audio_frame_index=frame_index_bt, logits_at=at_bk)
    logprobs_bkv = jax.nn.log_softmax(logits_bkv.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logprobs_bkv, target_bk[..., None], axis=-1)[..., 0]


class Scorer:
    """Scores (prompt, continuation) pairs with an `LLark` model in batches of `batch_size`."""

    def __init__(self, model: nnx.Module, *, batch_size: int = 8,
                 length_buckets: Sequence[int] = DEFAULT_BUCKETS, pad_id: int = 0):
        self.graphdef, self.state = nnx.split(model)
        self.batch_size = batch_size
        self.length_buckets = tuple(sorted(length_buckets))
        self.pad_id = pad_id
        self.temporal_pool = int(getattr(model, "temporal_pool", 1))
        self.audio_patch_id = getattr(model, "audio_patch_id", None)

    def score(self, prompts: Sequence[Prompt],
              continuations: Sequence[Sequence[int]]) -> list[ContinuationScore]:
        """One `ContinuationScore` per (prompt, continuation), in input order."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        if any(len(c) == 0 for c in continuations):
            raise ValueError("every continuation needs at least one token")
        for p, c in zip(prompts, continuations, strict=True):
            bucket_length(len(p.input_ids) + len(c), self.length_buckets)  # PromptTooLong early
        order = sorted(range(len(prompts)), key=lambda i: (prompts[i].audio is None,
                                                          len(prompts[i].input_ids)))
        results: list[ContinuationScore | None] = [None] * len(prompts)
        start = 0
        while start < len(order):
            chunk = order[start : start + self.batch_size]
            with_audio = prompts[chunk[0]].audio is not None
            chunk = [i for i in chunk if (prompts[i].audio is not None) == with_audio]
            for i, score in zip(chunk, self._run_batch(prompts, continuations, chunk),
                                strict=True):
                results[i] = score
            start += len(chunk)
        return results  # type: ignore[return-value]

    def _run_batch(self, prompts, continuations, chunk: list[int]) -> list[ContinuationScore]:
        rows = self.batch_size
        t = bucket_length(max(len(prompts[i].input_ids) + len(continuations[i]) for i in chunk),
                          self.length_buckets)
        k = max(MIN_CONTINUATION_BUCKET,
                1 << (max(len(continuations[i]) for i in chunk) - 1).bit_length())
        input_ids = np.full((rows, t), self.pad_id, np.int32)
        mask = np.zeros((rows, t), np.int32)
        mask[:, 0] = 1  # a filler row attends to its one padding token
        at = np.zeros((rows, k), np.int32)
        target = np.zeros((rows, k), np.int32)
        valid = np.zeros((rows, k), bool)
        for r, i in enumerate(chunk):
            ids = np.concatenate([prompts[i].input_ids, continuations[i]]).astype(np.int32)
            n_prompt, n_cont = len(prompts[i].input_ids), len(continuations[i])
            input_ids[r, : len(ids)], mask[r, : len(ids)] = ids, 1
            at[r, :n_cont] = n_prompt - 1 + np.arange(n_cont)  # position t predicts token t + 1
            target[r, :n_cont] = continuations[i]
            valid[r, :n_cont] = True
        audio, frame_index = self._audio_batch(prompts, chunk, rows, t)
        logprobs_bk = np.asarray(_continuation_logprobs(
            self.graphdef, self.state, jnp.asarray(input_ids), jnp.asarray(mask), audio,
            frame_index, jnp.asarray(at), jnp.asarray(target)))
        return [ContinuationScore(float(np.sum(logprobs_bk[r], where=valid[r])),
                                  int(valid[r].sum())) for r in range(len(chunk))]

    def _audio_batch(self, prompts, chunk: list[int], rows: int, t: int) -> tuple[Any, Any]:
        """Audio [rows, S_max, T_max, D] + frame index [rows, t], or (None, None)."""
        if prompts[chunk[0]].audio is None:
            return None, None
        p = self.temporal_pool
        clips = [np.asarray(prompts[i].audio, np.float32) for i in chunk]
        clips = [c[None] if c.ndim == 2 else c for c in clips]
        s_max = max(c.shape[0] for c in clips)
        t_max = -(-max(c.shape[1] for c in clips) // p) * p
        audio = np.zeros((rows, s_max, t_max, clips[0].shape[2]), np.float32)
        frame_index = np.zeros((rows, t), np.int32)
        for r, (i, clip) in enumerate(zip(chunk, clips, strict=True)):
            audio[r, : clip.shape[0], : clip.shape[1]] = clip
            index = prompts[i].audio_frame_index
            if index is None:  # k-th patch token takes flat frame k
                index = np.maximum(np.cumsum(prompts[i].input_ids == self.audio_patch_id) - 1, 0)
            index = np.asarray(index)
            own = max(clip.shape[1] // p, 1)
            frame_index[r, : len(index)] = index // own * (t_max // p) + index % own
        return jnp.asarray(audio), jnp.asarray(frame_index)
