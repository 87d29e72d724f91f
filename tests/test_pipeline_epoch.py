"""Writer -> pipeline round trip: epoch coverage, labels, audio gather, hosts, resumable state."""

from __future__ import annotations

import json
from collections import Counter

import ml_dtypes
import numpy as np
import pytest
from records_helpers import make_pipeline, make_shards
from tokenizer_fixtures import make_llark_tokenizer

from llark_jax.data.conversation import AudioTokenIds


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("pipe"), 24, shard_size=5)


def _epoch_examples(pipeline, epoch=0, max_batches=200):
    """(batch, row, segment, meta) of every example of `epoch`, running until all came out."""
    found = []
    for _ in range(max_batches):
        batch = next(pipeline)
        for r, row in enumerate(pipeline.last_examples):
            found += [(batch, r, k, meta) for k, meta in enumerate(row) if meta["epoch"] == epoch]
        if pipeline.epoch > epoch and all(e.ref[0] > epoch for e in pipeline.packer.pool):
            return found
    raise AssertionError("epoch did not finish")


def test_every_qa_pair_once_labels_are_the_answers_audio_gathers(shards):
    records, qa = shards
    tokenizer = make_llark_tokenizer()
    patch_id = AudioTokenIds.from_tokenizer(tokenizer).patch
    pipeline = make_pipeline(records, window_clips=7)
    found = _epoch_examples(pipeline)
    keys = Counter((m["clip_id"], m["qa_index"]) for *_, m in found)
    assert keys == Counter((c, i) for c, pairs in qa.items() for i in range(len(pairs)))
    assert {m["audio_first"] for *_, m in found} == {True, False}

    for batch, r, k, meta in found:
        span = batch["segment_ids"][r] == k + 1
        ids, labels = batch["input_ids"][r][span], batch["labels"][r][span]
        np.testing.assert_array_equal(batch["positions"][r][span], np.arange(span.sum()))
        assert ids[0] == tokenizer.bos_token_id
        question, answer, _ = qa[meta["clip_id"]][meta["qa_index"]]
        # Supervised tokens are exactly the assistant turn (FastChat-v0): header, answer, "\n### ".
        assert tokenizer.decode(labels[labels != -100]) == f"### Assistant: {answer}\n### "
        assert question in tokenizer.decode(ids)
        # Every <audio_patch> gathers its clip's frame, in order, from the flattened row audio.
        emb = np.load(records.parent / "embeddings" / f"{meta['clip_id']}.npy")
        flat = batch["audio"][r].reshape(-1, batch["audio"].shape[-1])
        gathered = flat[batch["audio_frame_index"][r][span][ids == patch_id]]
        np.testing.assert_array_equal(gathered, emb.astype(ml_dtypes.bfloat16).astype(np.float32))
        slot = batch["audio_frame_index"][r][span][ids == patch_id][0] // batch["audio"].shape[2]
        assert batch["audio_mask"][r, slot].sum() == len(emb)
    pad = batch["segment_ids"] == 0
    assert (batch["input_ids"][pad] == 0).all() and (batch["labels"][pad] == -100).all()


def test_two_hosts_are_disjoint_and_cover_the_epoch(shards):
    records, qa = shards
    seen = []
    for host in (0, 1):
        pipeline = make_pipeline(records, process_index=host, process_count=2, window_clips=4)
        seen.append(Counter((m["clip_id"], m["qa_index"]) for *_, m in _epoch_examples(pipeline)))
    assert not set(seen[0]) & set(seen[1])
    assert seen[0] + seen[1] == Counter((c, i) for c, p in qa.items() for i in range(len(p)))


@pytest.mark.parametrize("mode", ["pack", "bucket"])
def test_restored_state_continues_identically(shards, mode):
    records, _ = shards
    kwargs = dict(window_clips=5, mode=mode, bucket_lengths=(256, 384, 512) if mode == "bucket"
                  else ())
    first = make_pipeline(records, **kwargs)
    for _ in range(7):  # crosses window and epoch boundaries
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    expected = [next(first) for _ in range(10)]
    restored = make_pipeline(records, **kwargs)
    restored.set_state(state)
    for want in expected:
        got = next(restored)
        assert got.keys() == want.keys()
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    assert restored.get_state() == first.get_state()
    if mode == "bucket":
        assert all(len(row) <= 1 for row in restored.last_examples)
    with pytest.raises(ValueError, match="seed"):
        make_pipeline(records, seed=1, **kwargs).set_state(state)


def test_task_weights_resample_tasks(shards):
    records, qa = shards
    tasks = Counter(t for pairs in qa.values() for _, _, t in pairs)
    weights = {"mir": 0.5, "reasoning": 0.5}
    pipeline = make_pipeline(records, task_weights=weights, window_clips=6)
    drawn = Counter()
    for _ in range(3):
        drawn += Counter(m["task"] for *_, m in _epoch_examples(pipeline, pipeline.epoch))
    assert tasks["mir"] > 2 * tasks["reasoning"]  # the unweighted mix is skewed ...
    assert abs(drawn["mir"] / sum(drawn.values()) - 0.5) < 0.1  # ... the weighted one is not
