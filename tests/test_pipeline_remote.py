"""Remote shards (`PROTOCOL://...`) read through fsspec, without TensorFlow: the same batches as
from local files. fsspec's in-memory filesystem stands in for `gs://` (gcsfs is the same
interface); `file://` URLs go through the same path."""

from __future__ import annotations

import sys

import fsspec
import numpy as np
import pytest
from records_helpers import make_pipeline, make_shards

from llark_jax.data import shards as shards_module
from llark_jax.data.pipeline import Pipeline, PipelineConfig


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_shards(tmp_path_factory.mktemp("remote"), 12, shard_size=5)[0]


def _same_batches(local: Pipeline, remote: Pipeline, n: int = 3) -> None:
    for _ in range(n):
        a, b = next(local), next(remote)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def _remote_pipeline(local: Pipeline, pattern: str) -> Pipeline:
    config = PipelineConfig(files=(pattern,), packing=local.config.packing, seed=0)
    return Pipeline(config, local.tokenize_fn, process_index=0, process_count=1)


@pytest.mark.parametrize("url", ["memory", "file"])
def test_remote_shards_read_like_local_ones_without_tensorflow(shards, url, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any TF import would fail
    if url == "memory":
        fs = fsspec.filesystem("memory")
        for path in shards.iterdir():
            fs.pipe(f"/bucket/records/{path.name}", path.read_bytes())
        pattern = "memory://bucket/records/*.tfrecord"
    else:
        pattern = f"file://{shards}/*.tfrecord"
    local = make_pipeline(shards)
    remote = _remote_pipeline(local, pattern)
    assert len(remote.source.files) == len(local.source.files) == 3
    assert all(f.startswith(f"{url}://") for f in remote.source.files)
    _same_batches(local, remote)
    directory = remote.source.files[0].rsplit("/", 1)[0]
    assert shards_module._glob(f"{directory}/*-index.json")  # task counts come from these
    assert remote.source.task_counts() == local.source.task_counts()


def test_a_missing_remote_pattern_is_a_clear_error():
    with pytest.raises(FileNotFoundError, match="nothing"):
        shards_module._open("memory://nothing/here.tfrecord")
