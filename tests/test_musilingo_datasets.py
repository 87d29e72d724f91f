"""MusiLingo's datasets from fixture files in their released formats: LP-MusicCaps-MSD parquet,
MusicQA JSON, Music Instruct JSON; splits, grouping per clip, MusicCaps eval-audio exclusion."""

from __future__ import annotations

import json

import pytest
from musilingo_fixtures import (
    lp_row,
    mi_item,
    musicqa_item,
    write_lp_musiccaps,
    write_music_instruct,
    write_musiccaps_csv,
    write_musicqa,
)

from data_prep.datasets import lp_musiccaps, music_instruct, musicqa
from data_prep.datasets.base import DatasetFormatError, JsonifyContext, RowSkip, TrackRecord


def _read(reader, root, split=None, **options):
    out = list(reader(JsonifyContext(root, split, options=options)))
    return ([r for r in out if isinstance(r, TrackRecord)], [r for r in out if isinstance(r,
                                                                                   RowSkip)])


def test_lp_musiccaps_parquet_splits_and_caption_writing(tmp_path):
    root = write_lp_musiccaps(tmp_path / "lp", {
        "train-00000-of-00002-aa": [lp_row("TRAAAAW128F429D538"), lp_row("TRBBBBB128F0000001")],
        "train-00001-of-00002-bb": [lp_row("TRCCCCC128F0000002", caption="  ")],
        "valid-00000-of-00001-cc": [lp_row("TRDDDDD128F0000003")],
        "test-00000-of-00001-dd": [lp_row("TREEEEE128F0000004")],
    })
    records, skipped = _read(lp_musiccaps.read_records, root)
    assert {r.id: r.split for r in records} == {
        "TRAAAAW128F429D538": "train", "TRBBBBB128F0000001": "train",
        "TRDDDDD128F0000003": "validation", "TREEEEE128F0000004": "test"}
    assert [s.item for s in skipped] == ["TRCCCCC128F0000002"]
    first = next(r for r in records if r.id == "TRAAAAW128F429D538")
    assert first.metadata["qa"] == [{"question": "", "answer": "A calm piano piece.",
                                     "task": "caption_pretrain"}]
    assert first.metadata["tag"] == ["piano", "calm"] and first.metadata["year"] == 1994
    assert first.audio_path == str(root / "A" / "A" / "TRAAAAW128F429D538.clip.mp3")
    json.dumps(first.to_json())  # JSON-serialisable as jsonify writes it
    train, _ = _read(lp_musiccaps.read_records, root, "train")
    assert len(train) == 2


def test_lp_musiccaps_bad_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="parquet"):
        _read(lp_musiccaps.read_records, tmp_path)
    (tmp_path / "train.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetFormatError, match="train.parquet"):
        _read(lp_musiccaps.read_records, tmp_path)


def test_musicqa_partitions_grouping_and_bad_items(tmp_path):
    root = write_musicqa(tmp_path / "mqa", {
        "Finetune": [musicqa_item("000001.wav", "Describe the audio", "Rock."),
                     musicqa_item("000001.wav", "What tempo?", "Fast."),
                     musicqa_item("000002.wav", "Genre?", "Jazz."),
                     {"audio_name": "x.wav", "conversation": [{"from": "gpt", "value": "?"}]}],
        "Eval": [musicqa_item("012542.wav", "Describe the audio", "Post-rock.")],
        "Pretrain": [musicqa_item("abcdefghijk.wav", "Q", "A")],
    })
    records, skipped = _read(musicqa.read_records, root)
    assert {r.id: r.split for r in records} == {"000001": "train", "000002": "train",
                                                "012542": "test"}  # Pretrain only when asked
    first = records[0]
    assert [p["question"] for p in first.metadata["qa"]] == ["Describe the audio", "What tempo?"]
    assert {p["task"] for p in first.metadata["qa"]} == {"musicqa"}
    assert first.audio_path == str(root / "MusicQA" / "audios" / "000001.wav")
    assert len(skipped) == 1 and "FinetuneMusicQA.json#3" in skipped[0].item


def test_musicqa_pretrain_drops_musiccaps_eval_audio(tmp_path):
    root = write_musicqa(tmp_path / "mqa", {"Pretrain": [
        musicqa_item("evalclip001.wav", "Q", "A"), musicqa_item("mc_trainclip01.wav", "Q", "A"),
        musicqa_item("mc_evalclip001.wav", "Q", "A")]})
    with pytest.raises(DatasetFormatError, match="musiccaps-public.csv"):
        _read(musicqa.read_records, root, "pretrain")
    write_musiccaps_csv(root / "MusicCaps", ["evalclip001"], ["trainclip01"])
    records, skipped = _read(musicqa.read_records, root, "pretrain")
    assert [r.id for r in records] == ["mc_trainclip01"]
    assert sorted(s.item for s in skipped) == ["evalclip001", "mc_evalclip001"]
    assert all("leakage" in s.reason for s in skipped)


def test_music_instruct_short_long_split_by_audioset_eval(tmp_path):
    root = write_music_instruct(tmp_path / "mi", short=[
        mi_item("ytA", "What instruments?", "Piano.", False),
        mi_item("ytB", "Tempo?", "Slow.", True),
        mi_item("ytC", "Mood?", "Sad.", None),  # split from the CSV
        {"ytid": "ytD", "question": "", "answer": "x"},
    ], long=[mi_item("ytA", "Describe the music.", "A long answer.", False)])
    records, skipped = _read(music_instruct.read_records, root)
    assert {r.id: r.split for r in records} == {"ytA": "train", "ytB": "test"}
    assert len(skipped) == 2 and "musiccaps-public.csv" in skipped[0].reason
    ytA = records[0]
    assert [(p["task"], p["question"]) for p in ytA.metadata["qa"]] == [
        ("mi_short", "What instruments?"), ("mi_long", "Describe the music.")]
    assert ytA.audio_path == str(root / "ytA.wav")

    write_musiccaps_csv(root, ["ytC"], ["ytA"])
    records, _ = _read(music_instruct.read_records, root, "test")
    assert sorted(r.id for r in records) == ["ytB", "ytC"]


def test_music_instruct_missing_and_malformed_files(tmp_path):
    with pytest.raises(DatasetFormatError, match="music_instruct"):
        _read(music_instruct.read_records, tmp_path)
    (tmp_path / "music_instruct_short.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="music_instruct_short.json"):
        _read(music_instruct.read_records, tmp_path)


def test_jsonify_cli_reads_the_musilingo_datasets(tmp_path):
    """`python -m data_prep jsonify --dataset musicqa` as a process; the others in-process."""
    import subprocess
    import sys

    from data_prep.stages import jsonify
    from llark_jax.io import read_jsonl

    root = write_musicqa(tmp_path / "mqa", {
        "Finetune": [musicqa_item("000001.wav", "Describe the audio", "Rock.")],
        "Eval": [musicqa_item("012542.wav", "Genre?", "Post-rock.")]})
    out = tmp_path / "musicqa.jsonl"
    subprocess.run([sys.executable, "-m", "data_prep", "jsonify", "--dataset", "musicqa",
                    "--root", str(root), "--output", str(out)], check=True)
    rows = read_jsonl(out)
    assert [(r["id"], r["split"], r["metadata"]["qa"][0]["answer"]) for r in rows] == [
        ("000001", "train", "Rock."), ("012542", "test", "Post-rock.")]

    lp = write_lp_musiccaps(tmp_path / "lp", {"train-00000-of-00001-a": [lp_row("TRAAAAW128F1")]})
    mi = write_music_instruct(tmp_path / "mi", short=[mi_item("ytA", "Tempo?", "Slow.", False)],
                              long=None)
    for name, dataset_root, ids in (("lp-musiccaps-msd", lp, ["TRAAAAW128F1"]),
                                    ("music-instruct", mi, ["ytA"])):
        assert jsonify.main(["--dataset", name, "--root", str(dataset_root),
                             "--output", str(tmp_path / f"{name}.jsonl")]) == 0
        assert [r["id"] for r in read_jsonl(tmp_path / f"{name}.jsonl")] == ids


def test_jsonify_records_feed_the_writer_through_metadata_qa(tmp_path):
    """jsonify output serves as both --annotations and --qa: pairs come from `metadata.qa`
    (LP-MusicCaps' empty stage-1 question included); a row without pairs is reported."""
    import numpy as np

    from data_prep.records import write_records
    from data_prep.stages import jsonify
    from llark_jax.data.records import decode_clip, iter_records

    mqa = write_musicqa(tmp_path / "mqa", {"Finetune": [
        musicqa_item("000001.wav", "Describe the audio", "Rock."),
        musicqa_item("000001.wav", "What tempo?", "Fast.")]})
    lp = write_lp_musiccaps(tmp_path / "lp", {"train-00000-of-00001-a": [lp_row("TRAAAAW128F1")]})
    records = tmp_path / "records.jsonl"
    for name, root in (("musicqa", mqa), ("lp-musiccaps-msd", lp)):
        out = tmp_path / f"{name}.jsonl"
        assert jsonify.main(["--dataset", name, "--root", str(root), "--output", str(out),
                             "--split", "train"]) == 0
        with open(records, "a") as f:
            f.write(out.read_text())
    with open(records, "a") as f:  # a record whose metadata.qa is not a list
        f.write(json.dumps({"id": "broken", "split": "train", "metadata": {"qa": "x"}}) + "\n")
    emb = tmp_path / "emb"
    emb.mkdir()
    for clip_id in ("000001", "TRAAAAW128F1", "broken"):
        np.save(emb / f"{clip_id}.npy", np.ones((3, 4), np.float32))

    index = write_records(records, [records], emb, tmp_path / "out", "train", encoder="mert")
    assert index["records"] == 2 and index["tasks"] == {"caption_pretrain": 1, "musicqa": 2}
    clips = {c.clip_id: c for c in map(decode_clip, iter_records(
        str(tmp_path / "out" / index["shards"][0]["file"])))}
    assert [(p.question, p.answer) for p in clips["000001"].qa] == [
        ("Describe the audio", "Rock."), ("What tempo?", "Fast.")]
    assert [(p.question, p.answer, p.task) for p in clips["TRAAAAW128F1"].qa] == [
        ("", "A calm piano piece.", "caption_pretrain")]
    report = json.loads((tmp_path / "out" / "train-mert-report.json").read_text())
    assert {(p["clip_id"], p["kind"]) for p in report["not_written"]} == {
        ("broken", "bad QA row"), ("broken", "no QA pairs")}
