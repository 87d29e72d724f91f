"""The TFRecord writer (`python -m data_prep write`) and the record schema codec."""

from __future__ import annotations

import json
import os

import ml_dtypes
import numpy as np
import pytest
from records_helpers import make_inputs

from data_prep.stages.write import main as write_main
from llark_jax.data.records import (
    ClipRecord,
    QAPair,
    RecordError,
    decode_clip,
    encode_clip,
    encode_example,
    iter_records,
)
from llark_jax.errors import UserError


def _run_writer(root, *extra):
    return write_main(["--annotations", str(root / "annotations.jsonl"), "--qa",
                       str(root / "qa.jsonl"), "--embeddings", str(root / "embeddings"),
                       "--output-dir", str(root / "records"), "--split", "train",
                       "--shard-size", "4", *extra])


def _read_all(records_dir):
    return {c.clip_id: c for name in sorted(os.listdir(records_dir)) if name.endswith(".tfrecord")
            for c in map(decode_clip, iter_records(str(records_dir / name)))}


def test_writer_joins_shards_counts_and_reports(tmp_path):
    qa = make_inputs(tmp_path, 10)
    emb = tmp_path / "embeddings"
    # Break the join in four ways: no QA, no embedding, wrong shape, another encoder.
    lines = (tmp_path / "qa.jsonl").read_text().splitlines()
    (tmp_path / "qa.jsonl").write_text("\n".join(lines[1:] + ["{not json"]) + "\n")
    os.remove(emb / "clip.0001-start0.000.npy")
    np.save(emb / "clip.0002-start0.000.npy", np.zeros((3, 4, 5), np.float32))
    (emb / "clip.0003-start0.000.json").write_text(json.dumps({"encoder": "jukebox"}))
    with open(tmp_path / "annotations.jsonl", "a") as f:
        f.write(json.dumps({"clip_id": "eval.clip", "split": "eval"}) + "\n")

    assert _run_writer(tmp_path) == 0
    out = tmp_path / "records"
    names = sorted(n for n in os.listdir(out) if n.endswith(".tfrecord"))
    assert names == ["train-mel-00000-of-00002.tfrecord", "train-mel-00001-of-00002.tfrecord"]
    report = json.loads((out / "train-mel-report.json").read_text())
    kinds = {(p["clip_id"], p["kind"]) for p in report["not_written"]}
    assert kinds == {("clip.0000-start0.000", "no QA pairs"),
                     ("clip.0001-start0.000", "no embedding file"),
                     ("clip.0002-start0.000", "bad embedding"),
                     ("clip.0003-start0.000", "encoder mismatch"),
                     (None, "bad QA row")}

    clips = _read_all(out)
    written = [f"clip.{i:04d}-start0.000" for i in range(4, 10)]
    assert sorted(clips) == written
    index = json.loads((out / "train-mel-index.json").read_text())
    # Shards are cut from the joinable clips, before bad embeddings are found: 4 - 2 bad, 4.
    assert index["records"] == 6 and [s["records"] for s in index["shards"]] == [2, 4]
    assert index["qa_pairs"] == sum(len(qa[c]) for c in written)
    assert sum(d["clips"] for d in index["datasets"].values()) == 6
    for clip_id in written:
        clip = clips[clip_id]
        assert [(p.question, p.answer, p.task) for p in clip.qa] == qa[clip_id]
        source = np.load(emb / f"{clip_id}.npy")
        assert clip.embedding.dtype == ml_dtypes.bfloat16 and clip.encoder == "mel"
        # bf16 round trip is exact: the stored bits are those of the float32 -> bf16 cast.
        np.testing.assert_array_equal(clip.embedding.view(np.uint16),
                                      source.astype(ml_dtypes.bfloat16).view(np.uint16))
        assert clip.metadata["tempo"] == 90 + int(clip_id[5:9])

    # Idempotent: a re-run leaves complete shards untouched.
    mtimes = {n: os.stat(out / n).st_mtime_ns for n in names}
    assert _run_writer(tmp_path) == 0
    assert mtimes == {n: os.stat(out / n).st_mtime_ns for n in names}


def test_writer_float32_option_is_bit_exact(tmp_path):
    make_inputs(tmp_path, 3)
    assert _run_writer(tmp_path, "--embedding-dtype", "float32") == 0
    for clip_id, clip in _read_all(tmp_path / "records").items():
        np.testing.assert_array_equal(clip.embedding,
                                      np.load(tmp_path / "embeddings" / f"{clip_id}.npy"))


def test_writer_refuses_when_no_clip_can_be_written(tmp_path):
    """Embeddings of other clips (or none): a user mistake, not an empty shard for training."""
    make_inputs(tmp_path, 3)
    for npy in (tmp_path / "embeddings").glob("*.npy"):
        npy.rename(npy.with_name("other-" + npy.name))
    with pytest.raises(UserError, match=r"no 'train' record to write .*no embedding file: 3"):
        _run_writer(tmp_path)
    assert not (tmp_path / "records").exists()
    rows = [json.loads(line) for line in (tmp_path / "annotations.jsonl").read_text().splitlines()]
    (tmp_path / "annotations.jsonl").write_text(
        "".join(json.dumps({**row, "split": "train"}) + "\n" for row in rows))
    with pytest.raises(UserError, match=r"no 'test' record to write .*the annotations' clips "
                                        r"are of split\(s\) train: 3 \(pass --split\)"):
        _run_writer(tmp_path, "--split", "test")  # the error names the split the clips have


def _clip(**changes):
    base = dict(clip_id="c1", dataset="fma", split="train", encoder="mel",
                embedding=np.arange(12, dtype=np.float16).reshape(3, 4),
                qa=(QAPair("q?", "a.", "mir"),), metadata={"k": [1, 2]})
    return ClipRecord(**{**base, **changes})


def test_codec_round_trip_and_typed_errors():
    clip = decode_clip(encode_clip(_clip()))
    assert clip.embedding.dtype == np.float16 and clip.embedding.shape == (3, 4)
    assert clip.qa == (QAPair("q?", "a.", "mir"),) and clip.metadata == {"k": [1, 2]}

    good = {k: [v.encode()] for k, v in dict(
        clip_id="c2", dataset="d", split="train", encoder="mel", embedding_dtype="float32",
        qa='[{"question": "q", "answer": "a"}]', metadata="{}").items()}
    good["embedding"] = [np.zeros((2, 3), np.float32).tobytes()]
    good["embedding_shape"] = [2, 3]
    assert decode_clip(encode_example(good)).qa[0].task == "unknown"
    for name, value, message in [
        ("embedding_shape", [3, 3], "does not match"),
        ("qa", [b"[{"], "not valid JSON"),
        ("qa", [b"[]"], "non-empty"),
        ("metadata", [b"{oops"], "metadata"),
        ("embedding_dtype", [b"int8"], "not supported"),
    ]:
        with pytest.raises(RecordError, match=message) as err:
            decode_clip(encode_example({**good, name: value}))
        assert "c2" in str(err.value)
