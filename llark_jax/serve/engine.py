"""Chat turns + audio features -> LLark prompt ids -> batched generation -> answer text.

Prompts are built segment by segment with `llark_jax.data.conversation.build_example` (the
checkpoint's template; an empty final answer whose closing suffix, the template's stop sequence,
is cut off), so a served prompt is token-for-token the prompt the model was trained on. The audio
blocks of a conversation (each window heard of each clip, `llark_jax.infer.windows`) go into its
first user turn, audio before the question (`audio_first`), each as `<audio_start>` + n x
`<audio_patch>` + `<audio_end>` with n = audio tokens of that block.

Compiled programs form a small fixed set: each block's features are zero-padded to a training
window (padded frames are never referenced by a patch token), a batch has 1, 2, 4,
... or `batch_size` rows (the smallest that holds the requests queued; never `batch_size` copies
of one request), and the decode loop runs for a step bucket (powers of two from 16 up to the
`max_new_tokens` limit) that holds the batch's largest `max_tokens`; each row stops at its own
limit and the loop ends when every row is done. Temperature, top-p and seed are per-row traced
values, so requests with different sampling settings share a batch and a program. XLA compiles
once per (rows, prompt-length bucket, step bucket, blocks per request); `compile_stats()` counts
the compilations of this process.

Generation goes through `llark_jax.infer.generate.Generator` with `keys=[0]` per request and the
request's own `RowSettings` (token limit, temperature, top-p, seed), so an answer does not depend
on which other requests share its batch: it equals
`Generator(model, config).generate([prompt], keys=[0])` with the request's settings in `config`.
A streamed request (`ChatPrompt.on_token`) is decoded alone by `StreamDecoder`, which gives the
same tokens and stops early when its `cancel` event is set (the client disconnected).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Sequence

import numpy as np

from llark_jax.checkpoints.model_dir import LoadedModel
from llark_jax.data import conversation as conv
from llark_jax.infer.generate import (
    DEFAULT_BUCKETS,
    Generation,
    Generator,
    Prompt,
    RowSettings,
    SamplingConfig,
)
from llark_jax.serve.stream_decode import StreamDecoder

MIN_STEP_BUCKET = 16


def power_buckets(limit: int, low: int = 1) -> tuple[int, ...]:
    """Powers of two from `low` below `limit`, then `limit`: (1, 2, 4, 8) for 8, (16, 32, 48)
    for limit 48 and low 16."""
    buckets, size = [], low
    while size < limit:
        buckets.append(size)
        size *= 2
    return (*buckets, limit)


class _CompileCounter:
    """XLA backend compilations of this process (a `jax.monitoring` listener, registered once)."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._registered = False
        self._lock = threading.Lock()

    def register(self) -> None:
        with self._lock:
            if self._registered:
                return
            import jax

            jax.monitoring.register_event_duration_secs_listener(self._on_event)
            self._registered = True

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            self.count += 1
            self.seconds += duration


_COMPILES = _CompileCounter()


def compile_stats() -> dict:
    """{"compiles", "compile_seconds"} of this process since the first `Engine`."""
    return {"compiles": _COMPILES.count, "compile_seconds": round(_COMPILES.seconds, 3)}


@dataclasses.dataclass(frozen=True)
class ChatPrompt:
    """A conversation ready to generate: prompt ids, audio and the batching key. With `on_token`
    (a streamed request) it is decoded alone, token by token (`StreamDecoder`), until done or
    until `cancel` is set."""

    prompt: Prompt
    sampling: RowSettings
    on_token: Callable[[int], None] | None = dataclasses.field(default=None, compare=False)
    cancel: threading.Event | None = dataclasses.field(default=None, compare=False)

    @property
    def batch_key(self) -> tuple:
        """Requests with equal keys may share a batch: same audio shape (sampling settings and
        token limits are per row)."""
        if self.on_token is not None:
            return ("stream", id(self))
        audio = self.prompt.audio
        return ("batch", None if audio is None else audio.shape)


class Engine:
    """Builds prompts for one loaded model and generates answers in batches.

    Args:
      served: the loaded workdir or model directory (`llark_jax.checkpoints.model_dir`).
      batch_size: the most rows per batch.
      block_tokens: audio tokens of a training window (each block's features are padded to it).
      max_new_tokens: the largest `max_tokens` a request may ask for.
    """

    def __init__(self, served: LoadedModel, *, batch_size: int, block_tokens: int,
                 max_new_tokens: int = 1024):
        _COMPILES.register()
        self.served = served
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        pool = served.model.temporal_pool
        self.block_frames = -(-block_tokens // pool) * pool  # features per padded block
        self.audio_ids = conv.AudioTokenIds(served.model.audio_start_id,
                                            served.model.audio_patch_id,
                                            served.model.audio_end_id)
        self.stop = tuple(conv.stop_ids(served.tokenizer, served.template))
        eos = served.tokenizer.eos_token_id
        self.eos_ids = () if eos is None else (int(eos),)
        self.pad_id = served.tokenizer.pad_token_id or 0
        self.length_buckets = DEFAULT_BUCKETS
        self.batch_buckets = power_buckets(batch_size)
        self.step_buckets = power_buckets(max_new_tokens, min(MIN_STEP_BUCKET, max_new_tokens))
        self.generator = Generator(
            served.model, self.sampling_config(RowSettings(max_new_tokens)),
            batch_size=batch_size, length_buckets=self.length_buckets, pad_id=self.pad_id,
            batch_buckets=self.batch_buckets, step_buckets=self.step_buckets)
        self.stream_decoder = StreamDecoder(served.model, self.length_buckets, self.pad_id,
                                            self.step_buckets)
        self.stream_rows = 0  # streamed requests decoded (each is one row)
        self.cancelled = 0  # streamed decodes stopped because their client left

    @property
    def rows_computed(self) -> int:
        """Batch rows run (padding rows included) + streamed rows."""
        return self.generator.rows_computed + self.stream_rows

    def sampling_config(self, sampling: RowSettings) -> SamplingConfig:
        """The `SamplingConfig` a request's settings map to (template stop sequence + EOS)."""
        return SamplingConfig(
            max_new_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
            top_p=sampling.top_p, seed=sampling.seed, eos_ids=self.eos_ids,
            stop_sequences=(self.stop,) if self.stop else (),
        )  # fmt: skip

    def build_prompt(
        self,
        exchanges: Sequence[tuple[str, str]],
        blocks: Sequence[np.ndarray],
        sampling: RowSettings,
        system_prompt: str | None = None,
    ) -> ChatPrompt:
        """`exchanges` = [(question, answer), ..., (last question, "")]; blocks: features [T, D].

        Raises `ValueError` for an empty conversation.
        """
        if not exchanges:
            raise ValueError("the conversation has no user message")
        template = self.served.template
        if system_prompt is not None:
            template = dataclasses.replace(template, system_prompt=system_prompt)
        pool = self.served.model.temporal_pool
        blocks = [b[: max(pool, len(b) // pool * pool)] for b in blocks]
        tokens = [len(b) // pool for b in blocks]
        (question, answer), *turns = exchanges
        example = conv.build_example(
            self.served.tokenizer, template, question, answer, tokens, True,
            audio_token_ids=self.audio_ids, turns=turns,
        )  # fmt: skip
        ids = example["input_ids"]
        n = len(ids) - len(self.stop)
        if self.stop and tuple(ids[n:].tolist()) != self.stop:
            raise AssertionError("the prompt does not end with the template's stop sequence")
        ids = ids[:n]
        if not blocks:
            return ChatPrompt(Prompt(ids), sampling)
        audio = np.zeros((len(blocks), self.block_frames, blocks[0].shape[1]), np.float32)
        for s, block in enumerate(blocks):
            audio[s, : len(block)] = block[: self.block_frames]
        index = conv.audio_frame_index(len(ids), example["audio_patch_starts"], tokens,
                                       self.block_frames // pool)
        return ChatPrompt(Prompt(ids, audio, index), sampling)

    def generate(self, prompts: Sequence[ChatPrompt]) -> list[Generation]:
        """Generates for prompts that share one `batch_key` (at most `batch_size` of them)."""
        first = prompts[0]
        if first.on_token is not None:
            config = self.sampling_config(first.sampling)
            self.stream_rows += 1
            generation = self.stream_decoder.decode(first.prompt, config, first.on_token,
                                                    first.cancel)
            if generation.finish_reason == "cancelled":
                self.cancelled += 1
            return [generation]
        rows = [p.sampling for p in prompts]
        return self.generator.generate([p.prompt for p in prompts], keys=[0] * len(prompts),
                                       rows=rows)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self.served.tokenizer.decode(list(token_ids), skip_special_tokens=True)


class TextStream:
    """Turns tokens arriving one by one into text pieces whose concatenation is the decoded
    answer; a token that ends inside a multi-byte character waits for the rest of it."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token_id: int) -> str:
        """The new text after `token_id` ("" while a character is incomplete)."""
        self.ids.append(token_id)
        text = self.engine.decode(self.ids)
        if text.endswith("\ufffd") or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta

    def finish(self, token_ids: Sequence[int]) -> str:
        """The rest of the final answer `token_ids` not sent yet."""
        final = self.engine.decode(token_ids)
        if not final.startswith(self.sent):  # not prefix-stable (never seen with byte-level BPE)
            raise ValueError("streamed text is not a prefix of the answer")
        return final[len(self.sent):]
