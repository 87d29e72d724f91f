"""Synthetic LLark batches with the real batch structure, deterministic in (seed, step).

Each row holds one example: `<audio_start>` + T_a × `<audio_patch>` + `<audio_end>` per audio
segment, a random "question", then a random "answer" that is supervised; the rest is padding.
The arrays are the batch contract of `llark_jax.data.batch`.

B is the global batch: every process draws the same global batch from (seed, step) and keeps its
own contiguous rows, so the data (and the losses) do not depend on how many hosts train.
The iterator exposes `get_state()`/`set_state()` (a JSON-able dict), like the TFRecord pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from llark_jax.data.batch import BatchShape


@dataclass(frozen=True)
class SyntheticSpec:
    """Shapes and special ids of the synthetic batches."""

    batch_size: int
    seq_len: int
    vocab_size: int
    audio_segments: int
    audio_frames: int
    audio_dim: int
    audio_start_id: int
    audio_patch_id: int
    audio_end_id: int


class SyntheticBatches(Iterator[dict[str, np.ndarray]]):
    """Infinite iterator of host-local numpy batches; global batch `k` depends only on (seed, k).

    Process `process_index` of `process_count` yields rows
    `[i * B / n, (i + 1) * B / n)` of the global batch (B = `spec.batch_size`).
    """

    def __init__(self, spec: SyntheticSpec, seed: int, *, process_index: int = 0,
                 process_count: int = 1):
        block = spec.audio_segments * (spec.audio_frames + 2)
        if block + 4 > spec.seq_len:
            raise ValueError(f"seq_len {spec.seq_len} cannot hold {block} audio tokens + text")
        if spec.batch_size % process_count:
            raise ValueError(f"global batch {spec.batch_size} does not split over "
                             f"{process_count} processes")
        self.spec = spec
        self.seed = int(seed)
        self.step = 0
        rows = spec.batch_size // process_count
        self._rows = slice(process_index * rows, (process_index + 1) * rows)

    def get_state(self) -> dict[str, Any]:
        return {"kind": "synthetic", "seed": self.seed, "step": self.step}

    def set_state(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "synthetic" or int(state["seed"]) != self.seed:
            raise ValueError(f"input state {state} does not belong to synthetic seed {self.seed}")
        self.step = int(state["step"])

    def __next__(self) -> dict[str, np.ndarray]:
        batch = make_batch(self.spec, np.random.default_rng([self.seed, self.step]))
        self.step += 1
        return {name: rows[self._rows] for name, rows in batch.items()}


def make_batch(spec: SyntheticSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One synthetic batch (see the module docstring for the arrays)."""
    b_size, length = spec.batch_size, spec.seq_len
    n_seg, n_frames = spec.audio_segments, spec.audio_frames
    text_vocab = min(spec.audio_start_id, spec.audio_patch_id, spec.audio_end_id)
    batch = BatchShape(b_size, length, n_seg, n_frames, spec.audio_dim).empty()
    input_ids, labels = batch["input_ids"], batch["labels"]
    positions, segment_ids = batch["positions"], batch["segment_ids"]
    frame_index = batch["audio_frame_index"]
    block = n_seg * (n_frames + 2)
    for row in range(b_size):
        question_len = int(rng.integers(1, 4))
        answer_len = int(rng.integers(2, length - block - question_len + 1))
        tokens: list[int] = [1]
        for seg in range(n_seg):
            frame_index[row, len(tokens) + 1 : len(tokens) + 1 + n_frames] = (
                seg * n_frames + np.arange(n_frames)
            )
            tokens += [spec.audio_start_id] + [spec.audio_patch_id] * n_frames + [spec.audio_end_id]
        tokens += rng.integers(2, text_vocab, question_len - 1).tolist()
        answer_start = len(tokens)
        tokens += rng.integers(2, text_vocab, answer_len).tolist()
        n = len(tokens)
        input_ids[row, :n] = tokens
        labels[row, answer_start:n] = tokens[answer_start:]
        positions[row, :n] = np.arange(n)
        segment_ids[row, :n] = 1
    batch["audio"][...] = rng.standard_normal(batch["audio"].shape).astype(np.float32)
    batch["audio_mask"][...] = True
    return batch
