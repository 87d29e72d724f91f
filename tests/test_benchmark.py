"""`python -m llark_jax benchmark`: dataset folders in the published layouts made here, audio
synthesised here, a tiny model directory; report numbers against hand-computed values for the
model (its logged answers replaced by known texts, which the rerun must reuse) and for every
baseline (majority, madmom on music whose key and tempo madmom reads, random), plus the clear
errors for bad input."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import mir_eval.key
import numpy as np
import pytest
from benchmark_helpers import (
    GIANTSTEPS,
    giantsteps_dir,
    tiny_model_dir,
    tone,
    write_audio,
)

from llark_jax.benchmarks.evaluate import score_and_report
from llark_jax.benchmarks.registry import BENCHMARKS
from llark_jax.benchmarks.runner import AnswerLog, add_text_answers, row_key
from llark_jax.benchmarks.scoring import ScoringOptions
from llark_jax.cli import main as cli_main
from llark_jax.io import read_jsonl

COMMON = ["--max-new-tokens", "4", "--batch-size", "4"]
CLIPS = [f"{name.split('.')[0]}-start0.000-end6.000" for name, *_ in GIANTSTEPS]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("benchmark") / "model")


@pytest.fixture(scope="module")
def giantsteps(tmp_path_factory) -> Path:
    return giantsteps_dir(tmp_path_factory.mktemp("giantsteps"))


def rewrite_model_answers(path: Path, answers: dict[str, str]) -> None:
    """Replaces the logged `model` answers (by track id): what a rerun must score."""
    rows = read_jsonl(path)
    for row in rows:
        if row["system"] == "model":
            row["answer"] = answers[row["track_id"]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def metric(report: dict, system: str, name: str) -> dict:
    return report["systems"][system][name]


def test_giantsteps_key_end_to_end_baselines_and_resume(model_dir, giantsteps, tmp_path,
                                                         capsys):
    out = tmp_path / "key"
    argv = ["benchmark", "giantsteps-key", "--data-dir", str(giantsteps), "--model",
            str(model_dir), "--output", str(out), *COMMON]
    assert cli_main(argv) == 0
    rows = read_jsonl(out / "answers.jsonl")
    assert Counter(r["system"] for r in rows) == {
        "model": 4, "model-shuffled": 4, "majority": 4, "madmom": 4, "random": 4}
    model_rows = [r for r in rows if r["system"] == "model"]
    assert sorted(r["clip_id"] for r in model_rows) == CLIPS
    assert all(r["windows"] == 3 and r["question"] == "What is the key of this song?"
               for r in model_rows)  # 6 s crop, 2 s training windows
    shuffled = [r for r in rows if r["system"] == "model-shuffled"]
    assert all(r["audio_of"] != r["clip_id"] for r in shuffled)
    assert sorted(r["audio_of"] for r in shuffled) == CLIPS  # every clip's audio used once
    madmom = {r["track_id"]: r["answer"] for r in rows if r["system"] == "madmom"}
    assert madmom == {"1001": "C major", "1002": "A minor", "1003": "G major",
                      "1004": "D major"}

    rewrite_model_answers(out / "answers.jsonl", {
        "1001": "It is in C major.",  # same: 1.0
        "1002": "C major",  # relative of A minor: 0.3
        "1003": "The key is D major",  # a fifth above G major: 0.5
        "1004": "E minor, I think"})  # unrelated to F# minor: 0
    assert cli_main(argv) == 0  # reuses every logged answer: no model call, no new row
    assert len(read_jsonl(out / "answers.jsonl")) == 20
    report = json.loads((out / "report.json").read_text())
    assert report["reused_answers"] == 20 and report["n_clips"] == 4 and report["skipped"] == []
    model = metric(report, "model", "key_mirex")
    assert model["value"] == pytest.approx((1 + 0.3 + 0.5 + 0) / 4)
    assert model["exact_accuracy"] == pytest.approx(0.25)
    assert model["ci95"][0] <= model["value"] <= model["ci95"][1]
    assert model["interval"] == "percentile-bootstrap" and model["n"] == 4
    # majority: C major (the first clip's label; all differ) for every clip
    assert metric(report, "majority", "key_mirex")["value"] == pytest.approx((1 + 0.3) / 4)
    assert metric(report, "madmom", "key_mirex")["value"] == pytest.approx(3 / 4)
    labels = {name.split(".")[0]: key for name, key, *_ in GIANTSTEPS}
    random = [(labels[r["track_id"]], r["answer"]) for r in rows if r["system"] == "random"]
    expected = np.mean([mir_eval.key.weighted_score(t, a) for t, a in random])
    assert metric(report, "random", "key_mirex")["value"] == pytest.approx(expected)
    assert report["paper"]["model"] == {"key_mirex": [0.7, 0.04]}
    assert report["paper"]["madmom"] == {"key_mirex": [0.729, None]}
    markdown = (out / "report.md").read_text()
    assert "| model | 0.450 |" in markdown and "| madmom | 0.750 |" in markdown
    assert "0.7 ± 0.04" in markdown and "Essentia" in markdown
    assert (out / "systems.png").stat().st_size > 0 and (out / "key_confusion.png").exists()
    capsys.readouterr()
    assert cli_main([*argv, "--seed", "1"]) == 2  # would mix two runs' answers in one log
    assert "holds the answers of another run (seed 0 -> 1)" in capsys.readouterr().err


def test_giantsteps_tempo_reuses_logged_answers_and_scores_acc1_acc2(model_dir, giantsteps,
                                                                      tmp_path):
    out = tmp_path / "tempo"
    out.mkdir()
    answers = {"1001": "120 BPM", "1002": "about 50 bpm",  # half the tempo: Acc2 only
               "1003": "The tempo is 150.", "1004": "I cannot tell."}
    log = AnswerLog(out / "answers.jsonl")
    log.append([{"key": row_key("model", clip), "system": "model", "clip_id": clip,
                 "track_id": clip.split("-")[0], "answer": answers[clip.split("-")[0]]}
                for clip in CLIPS])  # as a killed run would have left them
    assert cli_main(["benchmark", "giantsteps-tempo", "--data-dir", str(giantsteps),
                     "--model", str(model_dir), "--output", str(out), *COMMON]) == 0
    rows = read_jsonl(out / "answers.jsonl")
    assert Counter(r["system"] for r in rows) == {"model": 4, "model-shuffled": 4,
                                                   "madmom": 4, "random": 4}
    report = json.loads((out / "report.json").read_text())
    acc1, acc2 = metric(report, "model", "tempo_acc1"), metric(report, "model", "tempo_acc2")
    assert (acc1["value"], acc2["value"]) == (0.25, 0.5)
    assert acc1["n_unparsed"] == 1 and acc1["interval"] == "clopper-pearson"
    madmom = {r["track_id"]: r["answer"] for r in rows if r["system"] == "madmom"}
    assert madmom == {"1001": "120.0 BPM", "1002": "100.0 BPM", "1003": "139.5 BPM",
                      "1004": "90.9 BPM"}  # all within 4% of 120, 100, 140, 90
    assert metric(report, "madmom", "tempo_acc1")["value"] == 1.0
    assert report["paper"]["model"] == {"tempo_acc2": [0.86, 0.03]}
    assert (out / "tempo_scatter.png").exists()


def word_count_embedder(texts):
    """Counts of each GTZAN genre word (an embedding with exact expectations)."""
    genres = BENCHMARKS["gtzan"].classes
    return np.array([[t.split().count(g) for g in genres] + [0.01] for t in texts], np.float32)


def report_from_log(name: str, root: Path, out: Path, model_answers: list[str],
                    options: ScoringOptions | None = None) -> tuple[list, dict]:
    """Reads a layout, logs known model answers and writes the report (no model needed)."""
    benchmark = BENCHMARKS[name]
    clips, skipped, notes = benchmark.read(root, None, 0)
    log = AnswerLog(out / "answers.jsonl")
    add_text_answers(log, "model", clips, model_answers, benchmark.prompt)
    info = {"benchmark": name, "description": benchmark.description, "task": benchmark.task,
            "prompt": benchmark.prompt, "model": "known answers", "step": 0,
            "n_clips": len(clips), "skipped": skipped, "notes": notes}
    report = score_and_report(benchmark, clips, log, info, options or ScoringOptions(), out)
    return clips, report


def test_gtzan_layout_genre_accuracy_and_majority(tmp_path):
    root = tmp_path / "gtzan"
    for genre in ("blues", "jazz", "rock"):
        for n in range(2):
            write_audio(root / "genres" / genre / f"{genre}.0000{n}.wav", tone(1.0, seed=n))
    write_audio(root / "genres" / "rock" / "misfiled.wav", tone(1.0))
    answers = ["a slow blues", "jazz", "jazz, or maybe rock", "polka", "rock", "rock, rock, blues"]
    clips, report = report_from_log("gtzan", root, tmp_path / "out", answers,
                                    ScoringOptions(embedder=word_count_embedder))
    assert [c.label for c in clips] == ["blues", "blues", "jazz", "jazz", "rock", "rock"]
    assert report["skipped"] == [{"item": "misfiled.wav", "reason":
                                  "file name does not start with its genre folder 'rock'"}]
    # nearest label: blues, jazz, jazz (tie -> first), blues (no word -> first), rock, rock
    assert metric(report, "model", "genre_acc1")["value"] == pytest.approx(4 / 6)
    assert metric(report, "majority", "genre_acc1")["value"] == pytest.approx(2 / 6)
    assert metric(report, "majority", "genre_acc1")["genres"] == list(BENCHMARKS["gtzan"].classes)
    assert report["paper"]["majority"] == {"genre_acc1": [0.1, 0.02]}
    assert (tmp_path / "out" / "genre_confusion.png").exists()


def medleydb_dir(root: Path) -> Path:
    """Two tracks: a 70 s one with activations (cropped to [30, 55)) and an unknown instrument,
    a 6 s one without activations (every stem counts)."""
    meta = root / "Metadata"
    meta.mkdir(parents=True)
    (meta / "Band_Long_METADATA.yaml").write_text(
        "genre: Rock\nstems:\n"
        "  S01:\n    instrument: drum set\n  S02:\n    instrument: female singer\n"
        "  S03:\n    instrument: electric bass\n  S04:\n    instrument: tabla\n"
        "  S05:\n    instrument: kazoo\n")
    (meta / "Duo_Short_METADATA.yaml").write_text(
        "genre: Jazz\nstems:\n  S01:\n    instrument: piano\n"
        "  S02:\n    instrument: acoustic guitar\n")
    act = root / "Annotations" / "Instrument_Activations" / "ACTIVATION_CONF"
    act.mkdir(parents=True)
    lines = ["time,S01,S02,S03,S04,S05"]
    for t in np.arange(0.0, 70.0, 5.0):  # drums always, vocals [40, 45), bass [0, 20)
        lines.append(f"{t},0.9,{0.8 if t == 40 else 0.1},{0.9 if t < 20 else 0.0},0.9,0.9")
    (act / "Band_Long_ACTIVATION_CONF.lab").write_text("\n".join(lines) + "\n")
    write_audio(root / "Audio" / "Band_Long" / "Band_Long_MIX.wav", tone(70.0))
    write_audio(root / "Audio" / "Duo_Short" / "Duo_Short_MIX.wav", tone(6.0))
    return root


def test_medleydb_active_instruments_mapping_and_f1(tmp_path):
    root = medleydb_dir(tmp_path / "medleydb")
    answers = ["I hear drums and a female voice, no bass.", "A solo piano."]
    clips, report = report_from_log("medleydb", root, tmp_path / "out", answers)
    assert [(c.clip_id, c.label) for c in clips] == [
        ("Band_Long-start30.000-end55.000", ["drum", "vocals"]),  # bass ended, tabla ignored
        ("Duo_Short-start0.000-end6.000", ["guitar", "piano"])]
    [note] = report["notes"]
    assert "'kazoo'" in note and "Band_Long_METADATA.yaml" in note and "INSTRUMENT_MAP" in note
    model = report["systems"]["model"]
    assert model["instruments_clip_f1"]["value"] == pytest.approx((1 + 2 / 3) / 2)
    assert model["instruments_micro_f1"]["value"] == pytest.approx(6 / 7)  # tp 3, fp 0, fn 1
    # majority: the (up to) 5 most frequent instruments: all four, tp 2 + fp 2 per clip
    rows = read_jsonl(tmp_path / "out" / "answers.jsonl")
    majority = {r["answer"] for r in rows if r["system"] == "majority"}
    assert majority == {"drum, vocals, guitar, piano"}
    assert report["systems"]["majority"]["instruments_clip_f1"]["value"] == pytest.approx(2 / 3)
    assert report["paper"]["model"] == {"instruments_clip_f1": [0.31, 0.02]}


def test_musicnet_windows_and_distractor_vocabulary(tmp_path):
    root = tmp_path / "musicnet"
    (root / "test_labels").mkdir(parents=True)
    header = "start_time,end_time,instrument,note,start_beat,end_beat,note_value\n"
    sr = 44100  # label times are samples
    (root / "test_labels" / "2303.csv").write_text(header + "".join(
        f"{int(a * sr)},{int(b * sr)},{program},60,0,1,Quarter\n"
        for a, b, program in [(0, 10, 1), (12, 20, 41), (30, 40, 1)]))
    (root / "test_labels" / "2382.csv").write_text(header + f"0,{30 * sr},43,48,0,1,Whole\n")
    write_audio(root / "test_data" / "2303.wav", tone(55.0))
    write_audio(root / "test_data" / "2382.wav", tone(30.0))
    answers = ["piano and violin", "only piano", "a cello and a guitar"]
    clips, report = report_from_log("musicnet", root, tmp_path / "out", answers)
    assert [(c.clip_id, c.label) for c in clips] == [
        ("2303-start0.000-end25.000", ["piano", "violin"]),
        ("2303-start25.000-end50.000", ["piano"]),  # every full 25 s window
        ("2382-start0.000-end25.000", ["cello"])]
    model = report["systems"]["model"]["instruments_micro_f1"]
    assert model["value"] == pytest.approx(8 / 9)  # tp 4, fp 1 (guitar, a distractor), fn 0
    assert "guitar" in model["vocabulary"] and "banjo" in model["vocabulary"]
    # majority "piano": tp 2, fp 1, fn 2
    assert report["systems"]["majority"]["instruments_micro_f1"]["value"] == pytest.approx(4 / 7)


def test_missing_audio_of_an_annotated_track_is_one_error_naming_the_file(tmp_path, capsys):
    root = tmp_path / "giantsteps"
    (root / "annotations" / "key").mkdir(parents=True)
    (root / "annotations" / "key" / "2000.LOFI.key").write_text("E minor")
    code = cli_main(["benchmark", "giantsteps-key", "--data-dir", str(root), "--model",
                     str(tmp_path / "no-model"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0] == (f"error: {root}/audio/2000.LOFI.mp3: no audio for the annotated track "
                      "2000 (annotations/key/2000.LOFI.key)")
    assert not (tmp_path / "out").exists()  # checked before the model is loaded


def test_musiccaps_eval_half_and_caption_metrics(tmp_path):
    root = tmp_path / "musiccaps"
    root.mkdir()
    captions = {"aaa": "A calm solo piano piece with soft reverb and a slow tempo.",
                "bbb": "Loud rock band with distorted electric guitars and heavy drums.",
                "ccc": "Train-only caption.", "ddd": " "}
    rows = ["ytid,start_s,end_s,caption,is_audioset_eval"]
    for ytid, caption in captions.items():
        rows.append(f'{ytid},30,40,"{caption}",{ytid != "ccc"}')
        write_audio(root / f"{ytid}.wav", tone(2.0))
    (root / "musiccaps-public.csv").write_text("\n".join(rows) + "\n")
    clips, report = report_from_log("musiccaps", root, tmp_path / "out",
                                    [captions["aaa"], captions["bbb"]],
                                    ScoringOptions(meteor=False))
    assert [c.track_id for c in clips] == ["aaa", "bbb"]  # the AudioSet-eval half
    assert report["skipped"] == [{"item": "ddd", "reason": "empty caption"}]
    model = report["systems"]["model"]
    assert model["bleu1"]["value"] == pytest.approx(1.0)  # the references themselves
    assert model["rouge_l"]["value"] == pytest.approx(1.0)
    assert "meteor" not in model and "bertscore_f1" not in model
    random = read_jsonl(tmp_path / "out" / "answers.jsonl")
    swapped = {r["track_id"]: r["answer"] for r in random if r["system"] == "random"}
    assert swapped == {"aaa": captions["bbb"], "bbb": captions["aaa"]}  # another clip's caption
    assert report["systems"]["random"]["rouge_l"]["value"] < 0.3
    assert report["paper"]["model"]["bleu4"] == [0.01, None]
