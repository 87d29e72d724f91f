"""`tfds.load` over the `llark_instruct` builder, and TensorFlow reading the writer's shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
from records_helpers import make_shards

from llark_jax.data.records import tf_feature_spec

tfds = pytest.importorskip("tensorflow_datasets")


def test_tfds_load_and_tf_parse_the_writer_shards(tmp_path):
    import tensorflow as tf

    import data_prep.tfds_llark_instruct  # noqa: F401  (registers the builder)

    shards, qa = make_shards(tmp_path, 5, shard_size=2)
    ds = tfds.load("llark_instruct", split="train", data_dir=str(tmp_path / "tfds"),
                   download_and_prepare_kwargs={"download_config": tfds.download.DownloadConfig(
                       manual_dir=str(shards))})
    seen = {}
    for ex in tfds.as_numpy(ds):
        clip_id = ex["clip_id"].decode()
        seen[clip_id] = ex
        emb = np.load(tmp_path / "embeddings" / f"{clip_id}.npy")
        assert ex["embedding"].shape == emb.shape
        np.testing.assert_allclose(ex["embedding"], emb, rtol=2**-8)  # stored as bfloat16
        pairs = [(q.decode(), a.decode(), t.decode()) for q, a, t in zip(
            ex["qa"]["question"], ex["qa"]["answer"], ex["qa"]["task"], strict=True)]
        assert pairs == qa[clip_id]
        assert json.loads(ex["metadata"])["clip_id"] == clip_id
    assert sorted(seen) == sorted(qa)

    # Plain tf.data reads the same files with the schema's feature spec.
    files = sorted(str(p) for p in shards.glob("*.tfrecord"))
    parsed = [tf.io.parse_single_example(r, tf_feature_spec())
              for r in tf.data.TFRecordDataset(files)]
    assert sorted(p["clip_id"].numpy().decode() for p in parsed) == sorted(qa)
    assert all(p["embedding_dtype"].numpy() == b"bfloat16" for p in parsed)
