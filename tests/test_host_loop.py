"""The host loop: background prefetch (`llark_jax.data.prefetch`) and metrics fetched every
`train.log_every` steps change no number the run produces, and every checkpoint holds the input
state of the last batch trained (not of the batches prefetched beyond it)."""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest
from records_helpers import make_inputs
from tokenizer_fixtures import make_llark_tokenizer
from train_helpers import tiny_config

from data_prep.records import write_records
from llark_jax.data.prefetch import Prefetcher
from llark_jax.train.loop import train


class Counting:
    """An iterator of 0, 1, 2, ... that records how far it was drawn (and can fail at `fail`)."""

    def __init__(self, fail: int | None = None):
        self.drawn, self.fail = 0, fail

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.drawn == self.fail:
            raise RuntimeError(f"bad item {self.drawn}")
        self.drawn += 1
        return self.drawn - 1


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_prefetch_keeps_order_snapshots_each_draw_and_stops_at_the_limit(depth):
    source = Counting()
    prefetch = Prefetcher(source, put=lambda x: x * 10, snapshot=lambda: source.drawn,
                          depth=depth, limit=7)
    items = list(prefetch)
    prefetch.close()
    assert [i.batch for i in items] == [0, 10, 20, 30, 40, 50, 60]
    # The snapshot is the iterator's position right after drawing that item, whatever the
    # producer had drawn by the time the consumer got it.
    assert [i.info for i in items] == [1, 2, 3, 4, 5, 6, 7]
    assert source.drawn == 7  # never past the limit


def test_prefetch_runs_at_most_depth_ahead_of_the_consumer():
    source = Counting()
    prefetch = Prefetcher(source, put=lambda x: x, depth=2)
    assert next(prefetch).batch == 0
    deadline = time.monotonic() + 10
    while source.drawn < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # a producer without a bound would keep drawing
    # 1 consumed + 2 queued + 1 built and waiting for room in the queue.
    assert source.drawn == 4
    prefetch.close()  # returns although the producer is blocked on the full queue
    assert not any(t.name == "prefetch" for t in threading.enumerate())


@pytest.mark.parametrize("depth", [0, 2])
def test_a_producer_error_surfaces_at_its_position(depth):
    prefetch = Prefetcher(Counting(fail=3), put=lambda x: x, depth=depth)
    assert [next(prefetch).batch for _ in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="bad item 3"):
        next(prefetch)
    prefetch.close()


def _metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _saved_input_state(workdir, step):
    meta = json.loads((workdir / "checkpoints" / str(step) / "data" / "metadata").read_text())
    return meta["processes"][0] if "processes" in meta else meta


@pytest.mark.slow  # two training runs: ~35 s on a loaded 2-core host
def test_prefetch_and_log_every_change_no_loss_and_checkpoints_hold_the_trained_position(
        tmp_path):
    common = dict(train__steps="6", train__checkpoint_every="2", train__keep_checkpoints="3",
                  metrics__tensorboard="False")
    inline = tiny_config(train__prefetch="0", train__log_every="1", **common)
    ahead = tiny_config(train__prefetch="3", train__log_every="4", **common)
    assert train(inline, tmp_path / "inline") == 0
    assert train(ahead, tmp_path / "ahead") == 0
    one, other = _metrics(tmp_path / "inline"), _metrics(tmp_path / "ahead")
    assert [r["step"] for r in other] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "grad_norm", "lr"):
        assert [r[key] for r in other] == [r[key] for r in one]
    assert all(r["step_time"] > 0 for r in other)
    for step in (2, 4, 6):  # the synthetic stream's position = batches trained
        assert _saved_input_state(tmp_path / "ahead", step)["step"] == step


def _records(root):
    make_inputs(root, 24, frames=(4, 4), dim=8, qa_per_clip=(1, 2), long_fraction=0.0)
    records = root / "records"
    write_records(root / "annotations.jsonl", [root / "qa.jsonl"], root / "embeddings", records,
                  "train", shard_size=8, embedding_dtype="float32")
    tokenizer = root / "tokenizer"
    make_llark_tokenizer().save_pretrained(str(tokenizer))
    return records, tokenizer


def records_config(records, tokenizer, **overrides: str):
    """configs/tiny.py on TFRecord shards with the test BPE tokenizer (as the fault suite)."""
    return tiny_config(
        data__source="tfrecord", data__path=f"{records}/*.tfrecord",
        model__tokenizer=str(tokenizer), model__llama__vocab_size="640",
        model__audio_start_id="-1", model__audio_patch_id="-1", model__audio_end_id="-1",
        model__audio_dim="8", data__seq_len="96", data__audio_frames="4",
        metrics__tensorboard="False", **overrides)


@pytest.mark.slow  # two training runs: ~35 s on a loaded 2-core host
def test_records_run_resumed_from_a_middle_checkpoint_equals_the_uninterrupted_run(tmp_path):
    """The pipeline (window reads, packing pool, counters) is 3 batches ahead when the step-2
    checkpoint is saved; resuming from it must replay steps 3-6 exactly."""
    records, tokenizer = _records(tmp_path)
    config = records_config(records, tokenizer, train__steps="6", train__checkpoint_every="2",
                            train__keep_checkpoints="3", train__prefetch="3",
                            train__log_every="3", train__async_checkpoint="False")
    workdir = tmp_path / "w"
    assert train(config, workdir) == 0
    full = _metrics(workdir)
    for step in ("4", "6"):
        shutil.rmtree(workdir / "checkpoints" / step)
    assert train(config, workdir) == 0
    resumed = _metrics(workdir)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed] == [r["loss"] for r in full]
    assert [r["skipped_examples"] for r in resumed] == [r["skipped_examples"] for r in full]
    saved = _saved_input_state(workdir, 6)
    assert saved["batches"] == 6


@pytest.mark.parametrize("override, message", [
    ("train__log_every", "train.log_every=0: must be >= 1"),
    ("train__eval_batches", "train.eval_batches=0: must be >= 1"),
])
def test_loop_settings_are_checked_with_the_field_named(override, message):
    from llark_jax.config import ConfigError, validate_config

    with pytest.raises(ConfigError, match=message):
        validate_config(tiny_config(**{override: "0"}))
