"""Training-data fraction (`data.fraction`, `data.dataset_fractions`; the paper's data-scaling
ablation): a seeded per-clip choice, the same clips in every epoch and on any number of hosts,
nested across shares, per dataset, and part of the resumable state."""

from __future__ import annotations

import pytest
from records_helpers import make_pipeline, make_shards
from train_helpers import tiny_config

from llark_jax.config import ConfigError
from llark_jax.data.packing import PackingConfig
from llark_jax.data.pipeline import PipelineConfig
from llark_jax.train.inputs import make_batches

CLIPS = 40  # clip i belongs to dataset ("fma", "musiccaps")[i % 2]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("fraction"), CLIPS, shard_size=7,
                       frames=(4, 8), qa_per_clip=(1, 2), long_fraction=0.0)


def _dataset(clip_id: str) -> str:
    return ("fma", "musiccaps")[int(clip_id.split(".")[1][:4]) % 2]


def _clips_by_epoch(pipeline, epochs: int = 2, max_batches: int = 400) -> list[set[str]]:
    """Clip ids of the examples trained in each of the first `epochs` epochs."""
    seen: list[set[str]] = [set() for _ in range(epochs)]
    for _ in range(max_batches):
        next(pipeline)
        for row in pipeline.last_examples:
            for meta in row:
                if meta["epoch"] < epochs:
                    seen[meta["epoch"]].add(meta["clip_id"])
        if pipeline.epoch >= epochs and all(e.ref[0] >= epochs for e in pipeline.packer.pool):
            return seen
    raise AssertionError("epochs did not finish")


def test_the_fraction_keeps_a_seeded_per_dataset_subset_every_epoch(shards):
    records, qa = shards
    half = _clips_by_epoch(make_pipeline(records, fraction=0.5, window_clips=8))
    assert half[0] == half[1]  # the same clips in every epoch
    config = PipelineConfig(files=(), packing=PackingConfig(4, 512, 4, 40, 8), fraction=0.5)
    assert half[0] == {c for c in qa if config.keeps(c, _dataset(c))}
    for dataset in ("fma", "musiccaps"):  # each dataset contributes, none whole
        kept = [c for c in half[0] if _dataset(c) == dataset]
        assert 0 < len(kept) < CLIPS // 2

    quarter = _clips_by_epoch(make_pipeline(records, fraction=0.25, window_clips=8), epochs=1)
    assert quarter[0] < half[0]  # nested: a smaller share keeps a subset
    other_seed = _clips_by_epoch(make_pipeline(records, fraction=0.5, seed=1), epochs=1)
    assert other_seed[0] != half[0]

    # Two hosts together train the same clips as one.
    hosts = [_clips_by_epoch(make_pipeline(records, fraction=0.5, process_index=i,
                                           process_count=2), epochs=1)[0] for i in range(2)]
    assert hosts[0] | hosts[1] == half[0] and not hosts[0] & hosts[1]

    only_fma = _clips_by_epoch(make_pipeline(records, dataset_fractions={"musiccaps": 0.0}),
                               epochs=1)
    assert only_fma[0] == {c for c in qa if _dataset(c) == "fma"}


def test_the_share_kept_is_close_to_the_fraction_over_many_clips():
    config = PipelineConfig(files=(), packing=PackingConfig(4, 512, 4, 40, 8), fraction=0.1,
                            dataset_fractions={"b": 0.6})
    kept_a = sum(config.keeps(f"clip-{i}", "a") for i in range(4000))
    kept_b = sum(config.keeps(f"clip-{i}", "b") for i in range(4000))
    assert 340 <= kept_a <= 460 and 2300 <= kept_b <= 2500  # 4000 x p ± ~4.5 sigma


def test_a_saved_state_refuses_another_fraction_and_resumes_the_same(shards):
    records, _ = shards
    first = make_pipeline(records, fraction=0.5)
    for _ in range(3):
        next(first)
    state = first.get_state()
    assert state["fraction"] == 0.5 and first.counters["fraction_left_out"] > 0
    with pytest.raises(ValueError, match="fraction"):
        make_pipeline(records).set_state(state)
    resumed = make_pipeline(records, fraction=0.5)
    resumed.set_state(state)
    assert [m for row in (next(resumed), resumed.last_examples)[1] for m in row] == \
        [m for row in (next(first), first.last_examples)[1] for m in row]
    unchanged = make_pipeline(records).get_state()  # fraction 1: the state format as before
    assert "fraction" not in unchanged


def test_synthetic_batches_refuse_a_fraction():
    with pytest.raises(ConfigError, match="data.fraction needs data.source=tfrecord"):
        make_batches(tiny_config(data__fraction="0.5"))
    with pytest.raises(ConfigError, match=r"data.fraction=1.5: a share"):
        make_batches(tiny_config(data__source="tfrecord", data__fraction="1.5"),
                     tokenizer=object())
