"""Resumable stage CLI: crop/annotate over good + broken files, process pools, SIGKILL + resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
import soundfile as sf
from audio_fixtures import drum_pattern, write_bad_corpus, write_wav

from data_prep.stages import annotate as annotate_stage
from data_prep.stages import crop as crop_stage
from data_prep.stages import jsonify as jsonify_stage
from data_prep.stages.runner import SkipItem, run_cached
from llark_jax.io import read_jsonl

REPO = Path(__file__).resolve().parents[1]


def _good_tracks(directory: Path) -> dict[str, np.ndarray]:
    tracks = {"groove-long": np.tile(drum_pattern(128, 10.0), 7),  # 70 s: single-crop rule
              "groove-short": drum_pattern(90, 8.0)}
    for name, audio_n in tracks.items():
        write_wav(directory / f"{name}.wav", audio_n, subtype="FLOAT")
    return tracks


def _report(output: Path) -> dict:
    return json.loads(output.with_name(output.name + ".report.json").read_text())


def test_crop_stage_bad_corpus_report_and_idempotent_rerun(tmp_path):
    good_dir, mixed_dir = tmp_path / "good", tmp_path / "mixed"
    tracks = _good_tracks(good_dir)
    _good_tracks(mixed_dir)
    expected = write_bad_corpus(mixed_dir / "bad")
    assert crop_stage.main(["--input-dir", str(good_dir), "--output-dir", str(tmp_path / "a")]) == 0
    assert crop_stage.main(["--input-dir", str(mixed_dir), "--output-dir", str(tmp_path / "b"),
                            "--workers", "2"]) == 0
    manifest_a, manifest_b = tmp_path / "a" / "crops.jsonl", tmp_path / "b" / "crops.jsonl"
    report = _report(manifest_b)
    skipped = {Path(s["reason"].split(": ")[0]).name: s["error"] for s in report["skipped"]}
    assert skipped == expected and report["errors"] == [] and report["ok"]
    assert report["counts"]["results"] == 2 and report["clips"] == 2
    clips_a = {r["id"]: r for r in read_jsonl(manifest_a)}
    clips_b = {r["id"]: r for r in read_jsonl(manifest_b)}
    assert clips_a.keys() == clips_b.keys()
    for clip in clips_a.values():  # good outputs are unaffected by the broken neighbours
        audio_a, rate = sf.read(str(tmp_path / "a" / clip["path"]), dtype="float32")
        audio_b, _ = sf.read(str(tmp_path / "b" / clip["path"]), dtype="float32")
        np.testing.assert_array_equal(audio_a, audio_b)
        source = tracks[clip["track_id"]]
        start = int(clip["start_secs"] * rate)
        np.testing.assert_allclose(audio_a, source[start: start + audio_a.size], atol=1e-6)
    assert clips_a["groove-short-start0.000-end8.000"]["end_secs"] == 8.0
    before = manifest_a.read_bytes()
    assert crop_stage.main(["--input-dir", str(good_dir), "--output-dir", str(tmp_path / "a")]) == 0
    assert _report(manifest_a)["counts"]["cached"] == 2 and manifest_a.read_bytes() == before


def _explode(item: str) -> dict:
    if item == "bug":
        raise KeyError("unexpected")
    if item == "skip":
        raise SkipItem("not wanted")
    return {"item": item}


def test_runner_separates_skips_from_errors_and_retries_failures(tmp_path):
    result = run_cached(["a", "skip", "bug", "b", "a"], _explode, key=str, cache_dir=tmp_path,
                        stage="t")
    assert list(result.results) == ["a", "b"] and not result.ok
    kinds = {(f.item, f.error, f.expected) for f in result.failures}
    assert kinds == {("skip", "SkipItem", True), ("bug", "KeyError", False),
                     ("a", "DuplicateKey", True)}
    again = run_cached(["a", "skip", "b"], _explode, key=str, cache_dir=tmp_path, stage="t")
    assert again.counts["cached"] == 2 and again.counts["skipped"] == 1 and again.ok


@pytest.mark.slow
def test_annotate_sigkill_then_rerun_equals_uninterrupted_run(tmp_path):
    """Good tracks plus the bad-input corpus; kill -9 mid-run; the rerun completes the cache."""
    audio_dir = tmp_path / "tracks"
    for i, bpm in enumerate([96, 124, 140]):
        write_wav(audio_dir / f"track{i}.wav", drum_pattern(bpm, 4.0, seed=i))
    expected_skips = write_bad_corpus(audio_dir / "bad")
    reference = tmp_path / "uninterrupted.jsonl"
    assert annotate_stage.main(["--audio-dir", str(audio_dir), "--output", str(reference)]) == 0

    output = tmp_path / "killed.jsonl"
    cache = output.with_name(output.name + ".cache")
    command = [sys.executable, "-m", "data_prep", "annotate", "--audio-dir", str(audio_dir),
               "--output", str(output)]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(cache.rglob("*.json")) and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done_at_kill = len(list(cache.rglob("*.json")))
    assert done_at_kill in (1, 2) and not output.exists()

    assert annotate_stage.main(["--audio-dir", str(audio_dir), "--output", str(output)]) == 0
    assert read_jsonl(output) == read_jsonl(reference)
    report = _report(output)
    assert report["counts"]["cached"] == done_at_kill
    assert report["counts"]["processed"] == 3 - done_at_kill
    skipped = {Path(s["reason"].split(": ")[0]).name: s["error"] for s in report["skipped"]}
    assert skipped == expected_skips and report["errors"] == []
    rows = read_jsonl(reference)
    assert [r["id"] for r in rows] == [f"track{i}" for i in range(3)]
    assert {"tempo_in_beats_per_minute_madmom", "downbeats_madmom", "chords", "key"} < set(rows[0])


def test_jsonify_multicrop_annotate_pipeline_crops_beats_chords_and_notes(tmp_path):
    """MusicNet-style track: jsonify -> crop --multicrop --records -> annotate --records --crops."""
    root = tmp_path / "musicnet"
    root.joinpath("musicnet_metadata.csv").parent.mkdir(parents=True)
    root.joinpath("musicnet_metadata.csv").write_text(
        "id,composer,composition,movement,ensemble,source,transcriber,catalog_name,seconds\n"
        "1727,Schubert,Quintet,2. Andante,Piano Quintet,EA,x,D667,24\n")
    write_wav(root / "train_data" / "1727.wav", np.tile(drum_pattern(120, 8.0), 3))  # 24 s
    midi = pretty_midi.PrettyMIDI()
    violin = pretty_midi.Instrument(40)
    violin.notes += [pretty_midi.Note(80, 60 + i, 4.0 * i + 1.0, 4.0 * i + 3.5) for i in range(6)]
    midi.instruments.append(violin)
    (root / "musicnet_em").mkdir()
    midi.write(str(root / "musicnet_em" / "1727.mid"))
    records = tmp_path / "records.jsonl"
    assert jsonify_stage.main(["--dataset", "musicnet", "--root", str(root), "--output",
                               str(records)]) == 0
    crops_dir = tmp_path / "crops"
    assert crop_stage.main(["--records", str(records), "--output-dir", str(crops_dir),
                            "--multicrop", "--crop-seconds", "10"]) == 0
    output = tmp_path / "clips.jsonl"
    assert annotate_stage.main(["--records", str(records), "--output", str(output),
                                "--crops", str(crops_dir / "crops.jsonl"),
                                "--max-crop-seconds", "10"]) == 0
    clips = read_jsonl(output)
    assert [c["id"] for c in clips] == ["1727-start0.000-end10.000", "1727-start10.000-end20.000"]
    for clip in clips:
        assert clip["track_id"] == "1727" and clip["dataset"] == "musicnet"
        assert clip["end_secs"] - clip["start_secs"] == 10.0
        times = [b["time"] for b in clip["downbeats_madmom"]]
        assert 0.0 <= min(times) and max(times) <= 10.0 and len(times) >= 18
        assert all(0.0 <= c["start_time"] <= c["end_time"] <= 10.0 for c in clip["chords"])
        assert clip["key"] == clips[0]["key"]  # track-level fields are shared by all clips
    second_notes = clips[1]["metadata"]["notes"]["Violin"]
    # Notes [9, 11.5) D5, [13, 15.5) D#5, [17, 19.5) E5 meet the window [10, 20).
    assert second_notes == [{"start": 0.0, "end": 1.5, "pitch": "D5"},
                            {"start": 3.0, "end": 5.5, "pitch": "D#5"},
                            {"start": 7.0, "end": 9.5, "pitch": "E5"}]


def test_merge_stage_truth_wins_and_keeps_madmom_key_and_chords(tmp_path):
    """`data_prep merge`: what the demo's instruct stage did inline, byte for byte, plus clips
    without dataset labels (madmom's key/chords stay as the fields instruct reads)."""
    from data_prep.stages import merge as merge_stage
    from llark_jax.io import write_jsonl_atomic

    madmom = {"chords": [{"start_time": 0.0, "end_time": 2.0, "chord": "A#major"}],
              "downbeats_madmom": [{"time": 0.5, "beat_number": 1}], "key": "Bb major",
              "tempo_in_beats_per_minute_madmom": 121.0}
    truth = {"tempo": 120.0, "key": "A minor", "time_signature": "4/4",
             "instruments": ["piano", "bass", "drums"], "chords": ["A minor", "F major"]}
    annotations = [{"dataset": "demo", "id": "c0", "metadata": truth, "split": "train", **madmom},
                   {"dataset": "fma", "id": "c1", "split": "test", **madmom}]
    source, output = tmp_path / "annotations.jsonl", tmp_path / "metadata.jsonl"
    write_jsonl_atomic(source, annotations, sort_keys=True)  # as the annotate stage writes it
    assert merge_stage.main(["--annotations", str(source), "--output", str(output)]) == 0
    first, second = read_jsonl(output)

    inline = []  # the demo's former inline merge (llark_jax/demo/run.py stage_instruct)
    for row in read_jsonl(source)[:1]:
        labels = row.pop("metadata")
        row["key_madmom"], row["chords_madmom"] = row.pop("key", None), row.pop("chords", [])
        inline.append({"clip_id": row.pop("id"), **row, **labels})
    assert output.read_text().splitlines()[0] == json.dumps(inline[0], ensure_ascii=False)
    assert first["key"] == "A minor" and first["tempo"] == 120.0 and "metadata" not in first
    assert first["key_madmom"] == "Bb major" and first["chords_madmom"] == madmom["chords"]
    assert first["tempo_in_beats_per_minute_madmom"] == 121.0 and list(first)[0] == "clip_id"
    assert second["key"] == second["key_madmom"] == "Bb major"  # no dataset key: madmom's stays
    assert second["chords"] == madmom["chords"] and "tempo" not in second


def test_every_stage_is_a_module_of_data_prep_stages():
    import importlib

    from data_prep.cli import STAGES

    for name, (module, _) in STAGES.items():
        assert module == f"data_prep.stages.{name.replace('-', '_')}"
        assert callable(importlib.import_module(module).main)
