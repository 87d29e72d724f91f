"""Sequence packing: tokenized examples -> static-shape batches of the batch contract
(`llark_jax.data.batch`: input_ids, labels, positions, segment_ids, audio, audio_mask,
audio_frame_index; B rows of L tokens, S audio slots of T_a frames of D features).

`Packer` keeps a pool of waiting examples. In "pack" mode every batch is filled best-fit-decreasing
from the pool (examples that have waited `max_wait` batches go first, so none starves); the rest
wait for the next batch. In "bucket" mode a batch holds one example per row, all from the bucket
(smallest `bucket_lengths` entry >= length) of the oldest waiting example, and L is that bucket.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from llark_jax.data.batch import AUDIO_DTYPES, BatchShape
from llark_jax.data.conversation import audio_frame_index


@dataclasses.dataclass(eq=False)
class Example:
    """One tokenized QA pair with its audio; `ref` locates it in the example stream (state)."""

    input_ids: np.ndarray  # [n] int32
    labels: np.ndarray  # [n] int32
    audio: list[np.ndarray]  # per audio segment [T_s, D]
    patch_starts: list[int]
    ref: tuple[int, int, int]  # (epoch, window, position)
    meta: dict[str, Any]
    waited: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclasses.dataclass(frozen=True)
class PackingConfig:
    batch_size: int
    seq_len: int
    max_segments: int  # S: audio slots per row
    max_frames: int  # T_a: frames per audio slot
    embed_dim: int  # D
    audio_dtype: str = "float32"
    mode: str = "pack"  # "pack" | "bucket"
    bucket_lengths: tuple[int, ...] = ()
    max_wait: int = 8  # batches an example may wait before it is placed first

    def __post_init__(self) -> None:
        if self.mode not in ("pack", "bucket"):
            raise ValueError(f"packing mode must be 'pack' or 'bucket', got {self.mode!r}")
        if self.audio_dtype not in AUDIO_DTYPES:
            raise ValueError(f"audio_dtype must be one of {list(AUDIO_DTYPES)}")
        if self.mode == "bucket" and (not self.bucket_lengths
                                      or max(self.bucket_lengths) != self.seq_len):
            raise ValueError("bucket mode needs bucket_lengths whose largest entry is seq_len")

    def batch_shape(self) -> BatchShape:
        return BatchShape(self.batch_size, self.seq_len, self.max_segments, self.max_frames,
                          self.embed_dim, self.audio_dtype)

    def fits(self, example: Example) -> bool:
        """Can the example go into an empty row at all?"""
        return len(example) <= self.seq_len and len(example.audio) <= self.max_segments and all(
            len(a) <= self.max_frames for a in example.audio)


class Packer:
    """Holds the waiting pool and builds batches from it (see module docstring)."""

    def __init__(self, config: PackingConfig):
        self.config = config
        self.pool: list[Example] = []
        self.tokens = 0  # non-pad tokens emitted
        self.capacity = 0  # B * L tokens emitted

    def add(self, example: Example) -> None:
        if not self.config.fits(example):
            raise ValueError(f"example {example.meta} does not fit an empty row")
        self.pool.append(example)

    def _choose_pack(self) -> list[list[Example]]:
        """Overdue examples first (best fit), then each row's free space filled as fully as
        the waiting examples allow (`_fill`)."""
        cfg = self.config
        rows: list[list[Example]] = [[] for _ in range(cfg.batch_size)]
        free = [cfg.seq_len] * cfg.batch_size
        slots = [cfg.max_segments] * cfg.batch_size

        def put(r: int, example: Example) -> None:
            rows[r].append(example)
            free[r] -= len(example)
            slots[r] -= len(example.audio)

        def fits(r: int, example: Example) -> bool:
            return free[r] >= len(example) and slots[r] >= len(example.audio)

        waiting = []
        for example in self.pool:
            fitting = [r for r in range(cfg.batch_size) if fits(r, example)]
            if example.waited >= cfg.max_wait and fitting:
                put(min(fitting, key=lambda i: (free[i], i)), example)
            else:
                waiting.append(example)
        for r in range(cfg.batch_size):
            chosen = _fill(waiting, free[r], slots[r])
            for example in chosen:
                put(r, example)
            taken = {id(e) for e in chosen}
            waiting = [e for e in waiting if id(e) not in taken]
        return rows

    def _choose_bucket(self) -> tuple[list[list[Example]], int]:
        cfg = self.config
        buckets = sorted(cfg.bucket_lengths)
        bucket_of = lambda e: next(b for b in buckets if b >= len(e))
        length = bucket_of(self.pool[0])
        chosen = [e for e in self.pool if bucket_of(e) == length][: cfg.batch_size]
        return [[e] for e in chosen] + [[] for _ in range(cfg.batch_size - len(chosen))], length

    def next_batch(self) -> tuple[dict[str, np.ndarray], list[list[Example]]]:
        """Builds one batch from the pool; returns it and the examples of each row."""
        if not self.pool:
            raise ValueError("packer pool is empty")
        if self.config.mode == "pack":
            rows, length = self._choose_pack(), self.config.seq_len
        else:
            rows, length = self._choose_bucket()
        placed = {id(e) for row in rows for e in row}
        self.pool = [e for e in self.pool if id(e) not in placed]
        for example in self.pool:
            example.waited += 1
        batch = self.assemble(rows, length)
        self.tokens += int((batch["segment_ids"] > 0).sum())
        self.capacity += batch["segment_ids"].size
        return batch, rows

    def assemble(self, rows: list[list[Example]], length: int) -> dict[str, np.ndarray]:
        """The batch arrays for rows of packed examples (module docstring)."""
        cfg = self.config
        t_a = cfg.max_frames
        batch = cfg.batch_shape().empty(length)
        for r, row in enumerate(rows):
            offset = slot = 0
            for k, example in enumerate(row):
                n = len(example)
                span = slice(offset, offset + n)
                batch["input_ids"][r, span] = example.input_ids
                batch["labels"][r, span] = example.labels
                batch["positions"][r, span] = np.arange(n)
                batch["segment_ids"][r, span] = k + 1
                frames = [len(a) for a in example.audio]
                batch["audio_frame_index"][r] += audio_frame_index(
                    length, example.patch_starts, frames, t_a, offset=offset, first_segment=slot)
                for audio in example.audio:
                    batch["audio"][r, slot, : len(audio)] = audio
                    batch["audio_mask"][r, slot, : len(audio)] = True
                    slot += 1
                offset += n
        return batch

    @property
    def non_pad_fraction(self) -> float:
        """Fraction of emitted token positions that hold example tokens (not padding)."""
        return self.tokens / self.capacity if self.capacity else 0.0


def _fill(examples: list[Example], room: int, slots: int) -> list[Example]:
    """A subset of `examples` with the largest total length <= room (exact subset-sum over a
    bitset of reachable lengths); largest-first greedy when that subset needs > `slots` audio."""
    reach = [1]  # reach[k]: bit n set <=> some subset of examples[:k] has total length n
    mask = (1 << (room + 1)) - 1
    for example in examples:
        reach.append((reach[-1] | (reach[-1] << len(example))) & mask)
    total = reach[-1].bit_length() - 1
    chosen = []
    for k in range(len(examples), 0, -1):
        if not (reach[k - 1] >> total) & 1:
            chosen.append(examples[k - 1])
            total -= len(examples[k - 1])
    if sum(len(e.audio) for e in chosen) <= slots:
        return chosen[::-1]
    chosen = []
    for example in sorted(examples, key=len, reverse=True):
        if len(example) <= room and len(example.audio) <= slots:
            chosen.append(example)
            room -= len(example)
            slots -= len(example.audio)
    return chosen
