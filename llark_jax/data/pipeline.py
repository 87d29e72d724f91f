"""Input pipeline: TFRecord clip shards -> QA examples -> tokens -> packed static-shape batches.

A pure-Python reader (no TensorFlow, no torch): `llark_jax.data.records` frames and decodes the
records, so every record is addressable by (file, offset) and the whole stream is a function of
(seed, position). That makes the pipeline exactly resumable from a small JSON state.

Order of one host's stream (epochs repeat forever):

1. epoch e: a seeded permutation of ALL records of all shards (a full interleave and a global
   clip shuffle); host h of n takes every n-th clip of it, so hosts are disjoint and their union
   is the epoch.
2. the host's clips are read in windows of `window_clips`; each valid clip expands into one
   example per QA pair (times a task multiplicity when `task_weights` is set), and the window's
   examples are shuffled, so neighbouring examples rarely share a clip.
3. every example is tokenized by `tokenize_fn` (audio before/after the question by a seeded coin
   per example) and handed to the `Packer`, which emits batches (see `packing.py`).

Bad records (corrupt frames, wrong embedding shape, bad JSON, empty QA), examples too long for a
row and clips with more frames than T_a are skipped and counted in `counters`, never raised.

State (`get_state()`): the cursor (epoch, window, position), the refs of the examples waiting in
the packer and the counters; `set_state()` re-reads only the windows those refs point to.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from llark_jax.data.conversation import ExampleTooLong, audio_first_for, build_example
from llark_jax.data.packing import Example, Packer, PackingConfig
from llark_jax.data.records import ClipRecord, RecordError, decode_clip, read_payload, scan_offsets

TokenizeFn = Callable[[str, str, int, bool], dict[str, Any]]
FeatureFn = Callable[[np.ndarray], np.ndarray]  # stored frames [T, D] -> audio tokens [T', D]
STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    files: tuple[str, ...]  # shard paths or glob patterns
    packing: PackingConfig
    seed: int = 0
    window_clips: int = 256
    pool_size: int = 0  # examples kept waiting for the packer; 0 = 2 * B * S
    task_weights: dict[str, float] | None = None  # e.g. {"captioning": .15, "reasoning": .55, ...}
    task_counts: dict[str, int] | None = None  # epoch totals per task; default: the *-index.json


def make_tokenize_fn(tokenizer: Any, template: Any, audio_token_ids: Any,
                     max_len: int) -> TokenizeFn:
    """`tokenize_fn` over `conversation.build_example` (answers right-truncated to `max_len`)."""

    def tokenize(question: str, answer: str, n_frames: int, audio_first: bool) -> dict[str, Any]:
        return build_example(tokenizer, template, question, answer, n_frames, audio_first,
                             audio_token_ids=audio_token_ids, max_len=max_len)

    return tokenize


class _Source:
    """Random access to every record of the shards (offsets from the frame headers)."""

    def __init__(self, patterns: Sequence[str]):
        self.files = sorted({p for pat in patterns for p in (_glob(pat) or [pat])})
        if not self.files:
            raise FileNotFoundError(f"no TFRecord shards match {list(patterns)}")
        self.locations: list[tuple[int, int, int]] = []
        self.framing_errors: list[str] = []
        for i, path in enumerate(self.files):
            with _open(path) as f:
                offsets, error = scan_offsets(f, path)
            self.locations += [(i, off, n) for off, n in offsets]
            if error:
                self.framing_errors.append(error)
        self._handles: dict[int, Any] = {}

    def fingerprint(self) -> list:
        counts = Counter(i for i, _, _ in self.locations)
        return [[os.path.basename(p), counts[i]] for i, p in enumerate(self.files)]

    def read(self, record: int) -> ClipRecord:
        file_index, offset, length = self.locations[record]
        if file_index not in self._handles:
            self._handles[file_index] = _open(self.files[file_index])
        path = self.files[file_index]
        return decode_clip(read_payload(self._handles[file_index], offset, length, path))

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def task_counts(self) -> dict[str, int]:
        """Epoch totals per task from the `*-index.json` files beside the shards."""
        counts: Counter = Counter()
        for directory in sorted({os.path.dirname(p) for p in self.files}):
            for index in sorted(_glob(os.path.join(directory, "*-index.json"))):
                with _open(index) as f:
                    counts.update(json.load(f)["tasks"])
        if not counts:
            raise FileNotFoundError("task_weights need task counts: no *-index.json beside shards")
        return dict(counts)


def clip_embeddings(patterns: Sequence[str]) -> Iterator[tuple[str, np.ndarray]]:
    """(clip id, stored embedding [T, D]) of every readable record of the shards, in file order
    (unreadable records are skipped; the training pipeline counts them)."""
    source = _Source(patterns)
    try:
        for record in range(len(source.locations)):
            try:
                clip = source.read(record)
            except RecordError:
                continue
            yield clip.clip_id, clip.embedding
    finally:
        source.close()


def _open(path: str) -> Any:
    """Local files with `open`; `gs://` and other remote paths through `tf.io.gfile` (lazy TF)."""
    if "://" not in path:
        return open(path, "rb")
    import tensorflow as tf

    return tf.io.gfile.GFile(path, "rb")


def _glob(pattern: str) -> list[str]:
    if "://" not in pattern:
        return glob.glob(pattern)
    import tensorflow as tf

    return tf.io.gfile.glob(pattern)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([k & 0xFFFFFFFF for k in key]))


class Pipeline:
    """Infinite iterator of packed batches for one host; see the module docstring."""

    def __init__(self, config: PipelineConfig, tokenize_fn: TokenizeFn, *,
                 process_index: int | None = None, process_count: int | None = None,
                 feature_fn: FeatureFn | None = None):
        if process_index is None or process_count is None:
            import jax

            process_index, process_count = jax.process_index(), jax.process_count()
        self.config, self.tokenize_fn, self.feature_fn = config, tokenize_fn, feature_fn
        self.process_index, self.process_count = process_index, process_count
        self.source = _Source(config.files)
        if len(self.source.locations) < process_count:
            raise ValueError(f"{len(self.source.locations)} records cannot feed "
                             f"{process_count} hosts")
        self.packer = Packer(config.packing)
        pk = config.packing
        self.pool_size = config.pool_size or 2 * pk.batch_size * pk.max_segments
        self.multiplicity = self._task_multiplicity()
        self.cursor = [0, 0, 0]  # epoch, window, position in the window's example list
        self.counters: Counter = Counter({"framing_errors": len(self.source.framing_errors)})
        self.batches = 0
        self.last_examples: list[list[dict[str, Any]]] = []
        self._window: tuple[tuple[int, int], list[ClipRecord | None], list] | None = None
        self._clips: tuple[int, np.ndarray] | None = None
        self._examples_at_epoch_start: int | None = 0  # None: epoch entered by set_state

    # ------------------------------------------------------------ stream of examples

    def _task_multiplicity(self) -> dict[str, float] | None:
        weights = self.config.task_weights
        if not weights:
            return None
        counts = self.config.task_counts or self.source.task_counts()
        total_w, total_n = sum(weights.values()), sum(counts.values())
        return {t: weights.get(t, 0.0) / total_w * total_n / n for t, n in counts.items() if n}

    def _host_clips(self, epoch: int) -> np.ndarray:
        """Record numbers of this host's clips in epoch order."""
        if self._clips is None or self._clips[0] != epoch:
            perm = _rng(self.config.seed, 1, epoch).permutation(len(self.source.locations))
            self._clips = (epoch, perm[self.process_index :: self.process_count])
        return self._clips[1]

    def _load_window(self, epoch: int, window: int, count: bool) -> tuple:
        """Records of the window and its shuffled example list [(clip slot, qa index, copy)]."""
        w = self.config.window_clips
        clip_ids = self._host_clips(epoch)[window * w : (window + 1) * w]
        records: list[ClipRecord | None] = []
        for record in clip_ids:
            try:
                records.append(self.source.read(int(record)))
            except RecordError:
                records.append(None)
                self.counters["bad_records"] += count
        rng = _rng(self.config.seed, 2, epoch, window)
        examples = []
        for slot, clip in enumerate(records):
            for qa_index, pair in enumerate(clip.qa if clip else ()):
                copies = 1
                if self.multiplicity is not None:
                    m = self.multiplicity.get(pair.task, 0.0)
                    copies = int(m) + int(rng.random() < m - int(m))
                examples += [(slot, qa_index, c) for c in range(copies)]
        order = rng.permutation(len(examples))
        return (epoch, window), records, [examples[i] for i in order]

    def _window_at(self, epoch: int, window: int, count: bool) -> tuple:
        if self._window is None or self._window[0] != (epoch, window):
            self._window = self._load_window(epoch, window, count)
        return self._window

    def _materialize(self, ref: tuple[int, int, int]) -> Example | None:
        """Tokenizes the example at `ref`; None (counted) when it cannot be used."""
        epoch, window, position = ref
        _, records, examples = self._window_at(epoch, window, count=False)
        slot, qa_index, copy = examples[position]
        clip = records[slot]
        pair = clip.qa[qa_index]
        if clip.embedding.shape[1] != self.packer.config.embed_dim:
            self.counters["wrong_embed_dim"] += 1
            return None
        audio_first = audio_first_for(self.config.seed,
                                      f"{clip.clip_id}/{qa_index}/{epoch}/{copy}")
        audio_td = clip.embedding if self.feature_fn is None else self.feature_fn(clip.embedding)
        try:
            tokens = self.tokenize_fn(pair.question, pair.answer, len(audio_td), audio_first)
        except ExampleTooLong:
            self.counters["too_long"] += 1
            return None
        meta = {"clip_id": clip.clip_id, "qa_index": qa_index, "copy": copy, "epoch": epoch,
                "task": pair.task, "audio_first": audio_first}
        example = Example(tokens["input_ids"], tokens["labels"], [audio_td],
                          list(tokens["audio_patch_starts"]), tuple(ref), meta)
        if not self.packer.config.fits(example):
            self.counters["too_long" if len(example) > self.packer.config.seq_len
                          else "too_many_frames"] += 1
            return None
        return example

    def _next_example(self) -> Example:
        while True:
            epoch, window, position = self.cursor
            if window * self.config.window_clips >= len(self._host_clips(epoch)):
                if self._examples_at_epoch_start == self.counters["examples"]:
                    raise RuntimeError(f"epoch {epoch} of host {self.process_index} produced no "
                                       f"usable example; counters: {dict(self.counters)}")
                self.cursor = [epoch + 1, 0, 0]
                self.counters["epochs_completed"] += 1
                self._examples_at_epoch_start = self.counters["examples"]
                continue
            _, _, examples = self._window_at(epoch, window, count=position == 0)
            if position >= len(examples):
                self.cursor = [epoch, window + 1, 0]
                continue
            self.cursor = [epoch, window, position + 1]
            example = self._materialize((epoch, window, position))
            if example is not None:
                self.counters["examples"] += 1
                return example

    # ------------------------------------------------------------ batches and state

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        while len(self.packer.pool) < self.pool_size:
            self.packer.add(self._next_example())
        batch, rows = self.packer.next_batch()
        self.batches += 1
        self.last_examples = [[e.meta for e in row] for row in rows]
        return batch

    def close(self) -> None:
        """Closes the shard files (the pipeline reopens them if iterated again)."""
        self.source.close()

    @property
    def epoch(self) -> int:
        return self.cursor[0]

    @property
    def non_pad_fraction(self) -> float:
        return self.packer.non_pad_fraction

    def get_state(self) -> dict[str, Any]:
        """JSON-serialisable position: restoring it makes the next batches equal this run's."""
        return {
            "version": STATE_VERSION, "seed": self.config.seed,
            "process": [self.process_index, self.process_count],
            "shards": self.source.fingerprint(), "cursor": list(self.cursor),
            "pool": [[*e.ref, e.waited] for e in self.packer.pool],
            "counters": dict(self.counters), "batches": self.batches,
            "tokens": [self.packer.tokens, self.packer.capacity],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores `get_state()` output (same seed, hosts and shards, else ValueError)."""
        expected = {"version": STATE_VERSION, "seed": self.config.seed,
                    "process": [self.process_index, self.process_count],
                    "shards": self.source.fingerprint()}
        mismatched = [k for k, v in expected.items() if state.get(k) != v]
        if mismatched:
            raise ValueError(f"pipeline state does not match this pipeline: {mismatched}")
        self.counters = Counter(state["counters"])
        pool = []
        for epoch, window, position, waited in sorted(state["pool"], key=lambda r: r[:3]):
            example = self._materialize((epoch, window, position))
            if example is None:
                raise ValueError(f"state refers to an unusable example {[epoch, window, position]}")
            example.waited = waited
            pool.append(example)
        order = {tuple(r[:3]): i for i, r in enumerate(state["pool"])}
        self.packer.pool = sorted(pool, key=lambda e: order[e.ref])
        self.cursor = list(state["cursor"])
        self._examples_at_epoch_start = None
        self.batches = state["batches"]
        self.packer.tokens, self.packer.capacity = state["tokens"]
