"""Packing efficiency on a realistic length mix, bucketed padding, and bad-record handling."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from records_helpers import make_pipeline, make_shards

from llark_jax.data.records import (
    ClipRecord,
    QAPair,
    decode_example,
    encode_clip,
    encode_example,
    frame_record,
)


def test_packing_is_at_least_95_percent_tokens_on_a_realistic_mix(tmp_path):
    # 250 audio frames per clip (25 s at 10 Hz) + short MIR answers and long reasoning answers.
    records, _ = make_shards(tmp_path, 40, frames=(250, 250), dim=4, qa_per_clip=(2, 6),
                             long_fraction=0.4)
    pipeline = make_pipeline(records, batch_size=4, seq_len=2048, max_segments=8,
                             max_frames=250, dim=4)
    lengths = []
    for _ in range(25):
        batch = next(pipeline)
        lengths += [int((batch["segment_ids"][r] == k + 1).sum())
                    for r, row in enumerate(pipeline.last_examples) for k in range(len(row))]
    assert min(lengths) > 250 and max(lengths) > 400  # the mix really is mixed
    assert batch["audio"].shape == (4, 8, 250, 4) and batch["audio"].dtype == np.float32
    assert pipeline.non_pad_fraction >= 0.95, pipeline.non_pad_fraction
    assert max(e.waited for e in pipeline.packer.pool) <= pipeline.packer.config.max_wait


def test_bucketed_padding_uses_the_smallest_bucket(tmp_path):
    records, _ = make_shards(tmp_path, 8, long_fraction=0.5)
    buckets = (128, 256, 384, 512)
    pipeline = make_pipeline(records, mode="bucket", bucket_lengths=buckets,
                             audio_dtype="bfloat16")
    for _ in range(6):
        batch = next(pipeline)
        length = batch["input_ids"].shape[1]
        assert length in buckets and batch["audio"].dtype.name == "bfloat16"
        used = (batch["segment_ids"] > 0).sum(1)
        assert used.max() <= length and used.max() > max([0, *(b for b in buckets if b < length)])
        assert (batch["segment_ids"] <= 1).all()


def _good(clip_id: str, frames: int = 20, question: str = "What is the tempo?") -> ClipRecord:
    return ClipRecord(clip_id, "fma", "train", "mel", np.ones((frames, 8), np.float32),
                      (QAPair(question, "a short answer", "mir"),), {})


def _edited(clip_id: str, **features: list) -> bytes:
    """A record of a good clip with some features replaced (still a valid tf.train.Example)."""
    return encode_example({**decode_example(encode_clip(_good(clip_id))), **features})


def test_bad_records_are_skipped_and_counted(tmp_path):
    payloads = [encode_clip(_good(f"ok{i}")) for i in range(4)] + [
        _edited("bad_json", qa=[b"[{"]),
        _edited("no_answer", qa=[json.dumps([{"question": "q"}]).encode()]),
        _edited("empty_qa", qa=[b"[]"]),
        _edited("bad_shape", embedding_shape=[20, 9]),
        _edited("bad_metadata", metadata=[b"{"]),
        encode_clip(_good("too_many_frames", frames=60)),
        encode_clip(_good("too_long", question="word " * 200)),
        encode_clip(dataclasses.replace(_good("wide"), embedding=np.ones((20, 9), np.float32))),
    ]
    records = tmp_path / "records"
    records.mkdir()
    data = b"".join(frame_record(p) for p in payloads)
    (records / "train-mel-00000-of-00001.tfrecord").write_bytes(data + b"\x07" * 11)
    pipeline = make_pipeline(records, seq_len=128, max_frames=40)
    seen = set()
    for _ in range(4):
        next(pipeline)
        seen |= {m["clip_id"] for row in pipeline.last_examples for m in row}
    assert seen == {"ok0", "ok1", "ok2", "ok3"}
    counters = pipeline.counters
    assert counters["framing_errors"] == 1  # the 11 trailing garbage bytes
    epochs = counters["epochs_completed"] + 1
    assert counters["bad_records"] == 5 * epochs or counters["bad_records"] == 5 * (epochs - 1)
    assert counters["too_many_frames"] >= 1 and counters["too_long"] >= 1
    assert counters["wrong_embed_dim"] >= 1
