"""Input pipeline: TFRecord clip shards -> QA examples -> tokens -> packed static-shape batches.

A pure-Python reader (no TensorFlow, no torch): `llark_jax.data.shards` reads the records (framed
and decoded by `llark_jax.data.records`), so every record is addressable by (file, offset) and the
whole stream is a function of (seed, position). That makes the pipeline exactly resumable from a
small JSON state.

Order of one host's stream (epochs repeat forever):

1. epoch e: a seeded permutation of ALL records of all shards (a full interleave and a global
   clip shuffle); host h of n takes every n-th clip of it, so hosts are disjoint and their union
   is the epoch.
2. the host's clips are read in windows of `window_clips`; each valid clip expands into one
   example per QA pair (times a task multiplicity when `task_weights` is set), and the window's
   examples are shuffled, so neighbouring examples rarely share a clip.
3. every example is tokenized by `tokenize_fn` (audio before/after the question by a seeded coin
   per example) and handed to the `Packer`, which emits batches (see `packing.py`).

Bad records (corrupt frames, wrong embedding shape, non-finite embeddings, bad JSON, empty QA,
a feature width other than the model's), examples too long for a row and clips with more frames
than T_a are skipped and counted in `counters`, never raised. Every bad record is logged once
with its shard and byte offset (the start of its TFRecord frame) and kept in `bad_records` (the
trainer's summary lists them); when nothing at all is usable, `NoUsableDataError` names the
shards and what was wrong with them, and `task_weights` that give none of the records' tasks a
weight stop when the pipeline is built (`UnweightedTasksError`). `PipelineConfig.skip_clips`
leaves clips out (the trainer's `data.skip_clips`), counted as `skipped_clip_examples`;
`last_batch_clips()` names the clips of the latest batch (the trainer's NaN stop).

Training-data fraction (`PipelineConfig.fraction`, `dataset_fractions`; the trainer's
`data.fraction`): a clip of dataset d is used iff `u(seed, clip_id) < share(d)`, with `u` a
uniform number from a hash of the seed and the clip id. The kept set is the same in every epoch,
on any number of hosts and in any shard layout, each dataset keeps about `share(d)` of its clips
(a seeded Bernoulli sample per clip), and the kept set of a smaller share is a subset of a larger
one's. Clips left out are counted as `fraction_left_out` (per epoch visit), not as bad records.

State (`get_state()`): the cursor (epoch, window, position), the refs of the examples waiting in
the packer and the counters; `set_state()` re-reads only the windows those refs point to.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from llark_jax.data.conversation import ExampleTooLong, audio_first_for, build_example
from llark_jax.data.packing import Example, Packer, PackingConfig
from llark_jax.data.records import ClipRecord
from llark_jax.data.shards import BadRecordError, NoUsableDataError, ShardSource, describe_shards

TokenizeFn = Callable[[str, str, int, bool], dict[str, Any]]
FeatureFn = Callable[[np.ndarray], np.ndarray]  # stored frames [T, D] -> audio tokens [T', D]
STATE_VERSION = 1
MAX_LISTED_BAD = 1000  # bad records kept (with shard and offset) for the run summary
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    files: tuple[str, ...]  # shard paths or glob patterns
    packing: PackingConfig
    seed: int = 0
    window_clips: int = 256
    pool_size: int = 0  # examples kept waiting for the packer; 0 = 2 * B * S
    task_weights: dict[str, float] | None = None  # e.g. {"captioning": .15, "reasoning": .55, ...}
    task_counts: dict[str, int] | None = None  # epoch totals per task; default: the *-index.json
    skip_clips: frozenset[str] = frozenset()  # clip ids left out (counted, summarised)
    fraction: float = 1.0  # share of each dataset's clips used (module docstring)
    dataset_fractions: dict[str, float] | None = None  # {dataset: share} overriding `fraction`

    def share(self, dataset: str) -> float:
        """The share of `dataset`'s clips this pipeline uses."""
        return (self.dataset_fractions or {}).get(dataset, self.fraction)

    def keeps(self, clip_id: str, dataset: str) -> bool:
        """Whether the training-data fraction keeps this clip (module docstring)."""
        share = self.share(dataset)
        if share >= 1.0:
            return True
        digest = hashlib.blake2b(f"{self.seed}/{clip_id}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2.0**64 < share

    def subset_fingerprint(self) -> dict[str, Any]:
        """The fraction settings a saved state depends on ({} when every clip is used)."""
        shares = {"fraction": self.fraction, "dataset_fractions": self.dataset_fractions or {}}
        return {} if shares == {"fraction": 1.0, "dataset_fractions": {}} else shares


class UnweightedTasksError(NoUsableDataError):
    """No task of the records has a weight > 0 in `task_weights`, so every example would get 0
    copies; `weighted` and `found` ({task: examples per epoch}) are the two sides."""

    def __init__(self, weighted: dict[str, float], found: dict[str, int]):
        self.weighted, self.found = weighted, found
        super().__init__(f"task_weights {weighted} give none of the records' tasks a weight "
                         f"> 0 (examples per task, *-index.json: {found}): every example would "
                         f"be left out")


def make_tokenize_fn(tokenizer: Any, template: Any, audio_token_ids: Any,
                     max_len: int) -> TokenizeFn:
    """`tokenize_fn` over `conversation.build_example` (answers right-truncated to `max_len`)."""

    def tokenize(question: str, answer: str, n_frames: int, audio_first: bool) -> dict[str, Any]:
        return build_example(tokenizer, template, question, answer, n_frames, audio_first,
                             audio_token_ids=audio_token_ids, max_len=max_len)

    return tokenize


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
        self.source = ShardSource(config.files)
        if len(self.source.locations) < process_count:
            raise ValueError(f"{len(self.source.locations)} records cannot feed "
                             f"{process_count} hosts")
        self.packer = Packer(config.packing)
        pk = config.packing
        self.pool_size = config.pool_size or 2 * pk.batch_size * pk.max_segments
        self.multiplicity = self._task_multiplicity()
        self.cursor = [0, 0, 0]  # epoch, window, position in the window's example list
        self.counters: Counter = Counter({"framing_errors": len(self.source.framing_errors)})
        self.bad_records: list[dict[str, Any]] = []
        self._reported: set[tuple[str, int]] = set()
        for error in self.source.framing_errors:
            self._note_bad(error, logged=True)
        self.skipped_clips: set[str] = set()
        self.batches = 0
        self.last_examples: list[list[dict[str, Any]]] = []
        self._window: tuple[tuple[int, int], list[ClipRecord | None], list] | None = None
        self._clips: tuple[int, np.ndarray] | None = None
        self._examples_at_epoch_start: int | None = 0  # None: epoch entered by set_state

    # ------------------------------------------------------------ stream of examples

    def _note_bad(self, error: BadRecordError, logged: bool = False) -> None:
        """Logs a bad record once and keeps it for the summary (the first MAX_LISTED_BAD)."""
        key = (error.shard, error.offset)
        if key in self._reported:
            return
        self._reported.add(key)
        if not logged:
            log.warning("bad record skipped: %s", error)
        if len(self.bad_records) < MAX_LISTED_BAD:
            self.bad_records.append(error.as_dict())

    def last_batch_clips(self) -> list[dict[str, Any]]:
        """{clip_id, shard, offset} of every clip in the latest batch, in order, once each."""
        found: dict[str, dict[str, Any]] = {}
        for row in self.last_examples:
            for meta in row:
                shard, offset = self.source.where(meta["record"])
                found.setdefault(meta["clip_id"], {"clip_id": meta["clip_id"], "shard": shard,
                                                   "offset": offset})
        return list(found.values())

    def _task_multiplicity(self) -> dict[str, float] | None:
        """Copies per example of each task (`task_weights` share over the epoch's counts); None
        without weights. `UnweightedTasksError` when no task of the records has a weight > 0."""
        weights = self.config.task_weights
        if not weights:
            return None
        counts = self.config.task_counts or self.source.task_counts()
        if not any(weights.get(task, 0.0) > 0 for task, n in counts.items() if n):
            raise UnweightedTasksError(weights, counts)
        absent = sorted(task for task, w in weights.items() if w > 0 and not counts.get(task))
        if absent:
            log.warning("task_weights: the records hold no example of %s, so its share is "
                        "left out (examples per task: %s)", ", ".join(absent), counts)
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
                clip = self.source.read(int(record))
            except BadRecordError as err:
                records.append(None)
                self.counters["bad_records"] += count
                self._note_bad(err)
                continue
            if not self.config.keeps(clip.clip_id, clip.dataset):
                clip = None
                self.counters["fraction_left_out"] += count
            records.append(clip)
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
        record = int(self._host_clips(epoch)[window * self.config.window_clips + slot])
        if clip.clip_id in self.config.skip_clips:
            self.counters["skipped_clip_examples"] += 1
            self.skipped_clips.add(clip.clip_id)
            return None
        if clip.embedding.shape[1] != self.packer.config.embed_dim:
            self.counters["wrong_embed_dim"] += 1
            self._note_bad(BadRecordError(
                *self.source.where(record), f"clip {clip.clip_id}: {clip.embedding.shape[1]}-dim "
                f"features, the model's audio_dim is {self.packer.config.embed_dim}"))
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
                "task": pair.task, "audio_first": audio_first, "record": record}
        example = Example(tokens["input_ids"], tokens["labels"], [audio_td],
                          list(tokens["audio_patch_starts"]), tuple(ref), meta)
        if not self.packer.config.fits(example):
            self.counters["too_long" if len(example) > self.packer.config.seq_len
                          else "too_many_frames"] += 1
            return None
        return example

    def _clip_at(self, ref: tuple[int, int, int]) -> ClipRecord:
        epoch, window, position = ref
        _, records, examples = self._window_at(epoch, window, count=False)
        return records[examples[position][0]]

    def _next_example(self) -> Example:
        while True:
            epoch, window, position = self.cursor
            if window * self.config.window_clips >= len(self._host_clips(epoch)):
                if self._examples_at_epoch_start == self.counters["examples"]:
                    bad = "; ".join(f"{b['shard']} @ byte {b['offset']}: {b['reason']}"
                                    for b in self.bad_records[:3])
                    more = f" (+{len(self.bad_records) - 3} more)" if len(
                        self.bad_records) > 3 else ""
                    raise NoUsableDataError(
                        f"epoch {epoch} of host {self.process_index} produced no usable example "
                        f"from {describe_shards(self.source.files)}; counters: "
                        f"{dict(self.counters)}{'; bad records: ' + bad + more if bad else ''}")
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
            "bad_records": [dict(b) for b in self.bad_records],
            "skipped_clips": sorted(self.skipped_clips),
            **self.config.subset_fingerprint(),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores `get_state()` output (same seed, hosts, shards and training-data fraction,
        else ValueError)."""
        expected = {"version": STATE_VERSION, "seed": self.config.seed,
                    "process": [self.process_index, self.process_count],
                    "shards": self.source.fingerprint(),
                    "fraction": 1.0, "dataset_fractions": {},
                    **self.config.subset_fingerprint()}
        defaults = {"fraction": 1.0, "dataset_fractions": {}}  # states saved without them
        mismatched = [k for k, v in expected.items() if state.get(k, defaults.get(k)) != v]
        if mismatched:
            raise ValueError(f"pipeline state does not match this pipeline: {mismatched}")
        self.counters = Counter(state["counters"])
        for bad in state.get("bad_records", []):
            self._note_bad(BadRecordError(bad["shard"], bad["offset"], bad["reason"]), logged=True)
        self.skipped_clips |= set(state.get("skipped_clips", []))
        pool = []
        for epoch, window, position, waited in sorted(state["pool"], key=lambda r: r[:3]):
            example = self._materialize((epoch, window, position))
            if example is None:
                if self._clip_at((epoch, window, position)).clip_id in self.config.skip_clips:
                    continue  # waiting in the saved pool, now skipped (data.skip_clips)
                raise ValueError(f"state refers to an unusable example {[epoch, window, position]}")
            example.waited = waited
            pool.append(example)
        order = {tuple(r[:3]): i for i, r in enumerate(state["pool"])}
        self.packer.pool = sorted(pool, key=lambda e: order[e.ref])
        self.cursor = list(state["cursor"])
        self._examples_at_epoch_start = None
        self.batches = state["batches"]
        self.packer.tokens, self.packer.capacity = state["tokens"]
