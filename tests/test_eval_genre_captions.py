"""Genre nearest-label accuracy, caption metrics, and the eval CLI end to end."""

import json
import shutil

import numpy as np
import pytest

from llark_jax.errors import MissingInputError, UserError
from llark_jax.eval import captions
from llark_jax.eval.captions import caption_metrics, length_statistics, tokenize
from llark_jax.eval.cli import main as eval_main
from llark_jax.eval.genre import (
    genre_accuracy,
    local_embedder,
    nearest_labels,
    normalize_genre_text,
)

GENRES = ["blues", "classical", "hiphop", "jazz", "rock"]


def word_count_embedder(texts):
    """Counts of each genre word (a transparent embedding for exact expectations)."""
    return np.array(
        [[t.split().count(g) for g in GENRES] + [0.01] for t in texts], dtype=np.float32
    )


def test_normalize_genre_text():
    assert normalize_genre_text(" Hip-Hop!\n###") == "hiphop"
    assert normalize_genre_text("Rock & Roll.") == "rock roll"


def test_genre_accuracy_hand_computed():
    answers = ["This is a rock song.", "Hip hop, with some jazz hip hop", "classical", "jazz"]
    labels = ["rock", "hiphop", "jazz", "blues"]
    result = genre_accuracy(answers, labels, word_count_embedder, genres=GENRES)
    assert result["predicted"] == ["rock", "hiphop", "classical", "jazz"]
    assert result.value == 0.5 and result.n == 4 and result.interval == "clopper-pearson"
    assert result["string_match"] == 0.5
    top2 = nearest_labels(["jazz jazz hiphop"], GENRES, word_count_embedder, k=2)
    assert top2 == [["jazz", "hiphop"]]
    with pytest.raises(ValueError, match="not in the genre set"):
        genre_accuracy(["x"], ["polka"], word_count_embedder, genres=GENRES)


@pytest.mark.slow
def test_local_minilm_embedder_picks_sensible_genres():
    embed = local_embedder()
    vectors = embed(["rock", "jazz"])
    assert vectors.shape == (2, 384)
    assert np.linalg.norm(vectors, axis=-1) == pytest.approx([1.0, 1.0], abs=1e-4)
    answers = [
        "A loud rock anthem with distorted electric guitars",
        "Swinging jazz with a walking bass and saxophone improvisation",
        "An orchestral classical piece with strings",
    ]
    predicted = nearest_labels(answers, GENRES, embed)
    assert [p[0] for p in predicted] == ["rock", "jazz", "classical"]


def test_caption_metrics_hand_computed():
    assert tokenize("The cat's PIANO, 4/4!\n###") == ["the", "cat's", "piano", "4", "4"]
    results = caption_metrics(["a b c d", "x y z w"], ["a b e f", "x y z w"], meteor=False)
    # BLEU-1 corpus: matches (2 + 4) / 8 hypothesis unigrams, brevity penalty 1
    assert results["bleu1"].value == pytest.approx(6 / 8, abs=1e-6)
    # ROUGE-L per clip: LCS 2/4 -> F=0.5; identical -> 1.0
    assert results["rouge_l"].value == pytest.approx(0.75, abs=1e-6)
    assert results["cider"].n == 2 and "meteor" not in results
    stats_ = results["lengths"]["predictions"]
    assert stats_["tokens_mean"] == 4.0 and stats_["vocabulary_size"] == 8


def test_length_statistics():
    stats_ = length_statistics(["one two two", "three"])
    assert stats_ == {
        "n_texts": 2, "tokens_mean": 2.0, "tokens_median": 2.0, "tokens_min": 1,
        "tokens_max": 3, "tokens_total": 4, "vocabulary_size": 3, "type_token_ratio": 0.75,
    }  # fmt: skip


def test_meteor_reports_unavailable_without_java(monkeypatch):
    monkeypatch.setattr(captions.shutil, "which", lambda name: None)
    results = caption_metrics(["a piano"], ["a piano"], meteor=True)
    assert "java" in results["meteor"]["unavailable"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR 1.5 needs java")
def test_meteor_with_java():
    results = caption_metrics(
        ["a man plays the guitar", "slow sad piano"], ["a man is playing guitar", "happy drums"]
    )
    meteor = results["meteor"]
    assert 0.0 < meteor.value < 1.0 and meteor.n == 2
    assert meteor["per_clip_mean"] > 0


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")


def test_eval_cli_key_and_tempo_reports(tmp_path):
    _write_jsonl(
        tmp_path / "pred.jsonl",
        [
            {"clip_id": "a", "answer": " The key of this song is F minor, at 120 BPM.\n###"},
            {"clip_id": "b", "answer": "G major at 120 BPM"},
            {"clip_id": "zz", "answer": "unlabelled"},
        ],
    )
    (tmp_path / "labels.jsonl").write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"clip_id": "a", "key": "F minor", "tempo": 60},
                {"clip_id": "b", "key": "C major", "tempo": 120},
                {"clip_id": "c", "key": "A minor", "tempo": 90},
            ]
        )
    )
    for task in ("key", "tempo"):
        out = tmp_path / f"{task}.json"
        code = eval_main([
            task, "--predictions", str(tmp_path / "pred.jsonl"),
            "--labels", str(tmp_path / "labels.jsonl"), "--output", str(out),
            "--report-dir", str(tmp_path / task),
        ])  # fmt: skip
        assert code == 0
        report = json.loads(out.read_text())
        assert report["missing_predictions"] == 1 and report["unlabelled_predictions"] == 1
        assert len(report["skipped_lines"]) == 1 and "invalid JSON" in report["skipped_lines"][0]
        assert (tmp_path / task / "report.md").read_text().startswith(f"# {task} evaluation")
    key = json.loads((tmp_path / "key.json").read_text())["metrics"]["key_mirex"]
    assert key["value"] == pytest.approx((1.0 + 0.5 + 0.0) / 3) and key["n"] == 3
    tempo = json.loads((tmp_path / "tempo.json").read_text())["metrics"]
    assert tempo["tempo_acc1"]["value"] == pytest.approx(1 / 3)
    assert tempo["tempo_acc2"]["value"] == pytest.approx(2 / 3)
    assert (tmp_path / "key" / "key_confusion.png").stat().st_size > 1000
    assert (tmp_path / "tempo" / "tempo_scatter.png").stat().st_size > 1000


def test_eval_scores_each_task_on_its_rows_of_infer_records_output(tmp_path, capsys):
    """`infer --records` writes one row per question, each with its `task`: `eval tempo` scores
    the tempo rows, not whichever row of a clip came last (it used to score the instruments
    answers as tempo: 0.0)."""
    rows = []
    for clip, bpm in (("a", 120), ("b", 90)):
        rows += [{"clip_id": clip, "task": "key", "answer": "C major"},
                 {"clip_id": clip, "task": "tempo", "answer": f"{bpm} BPM"},
                 {"clip_id": clip, "task": "instruments", "answer": "piano, drums"}]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
        {"clip_id": "a", "tempo": 120}, {"clip_id": "b", "tempo": 90}]))
    out = tmp_path / "tempo.json"
    assert eval_main(["tempo", "--predictions", str(tmp_path / "pred.jsonl"), "--labels",
                      str(tmp_path / "labels.jsonl"), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["metrics"]["tempo_acc1"]["value"] == 1.0 and report["skipped_lines"] == []
    assert "warning" not in capsys.readouterr().err


def test_eval_refuses_a_clip_with_answers_to_several_questions_of_another_task(tmp_path):
    """Records of `instruct --task mir` carry task families ("mir", "captioning"): no row is a
    key row, and keeping each clip's last answer scored a caption as the key (0.0, status 0)."""
    rows = [{"clip_id": "a", "task": "mir", "question": "What key?", "answer": "C major"},
            {"clip_id": "a", "task": "captioning", "question": "Describe it.",
             "answer": "bass, drums"}]
    (tmp_path / "pred.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "labels.jsonl").write_text(json.dumps({"clip_id": "a", "key": "C major"}) + "\n")
    with pytest.raises(UserError, match=r"clip 'a' has answers to 2 different questions \(tasks "
                                        r"captioning, mir; none is 'key'\)"):
        eval_main(["key", "--predictions", str(tmp_path / "pred.jsonl"), "--labels",
                   str(tmp_path / "labels.jsonl"), "--output", str(tmp_path / "r.json")])
    assert not (tmp_path / "r.json").exists()


def test_eval_scores_the_labels_of_the_predicted_clips_splits(tmp_path, capsys):
    """`data_prep merge` metadata holds every split; predictions of the held-out clips are
    scored against that split's labels (an unpredicted held-out clip stays missing), not against
    every training clip as an empty answer."""
    labels = [{"clip_id": f"t{i}", "split": "train", "key": "C major"} for i in range(8)]
    labels += [{"clip_id": f"e{i}", "split": "eval", "key": "A minor"} for i in range(3)]
    (tmp_path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    (tmp_path / "pred.jsonl").write_text("".join(
        json.dumps({"clip_id": f"e{i}", "answer": "A minor"}) + "\n" for i in range(2)))
    out = tmp_path / "key.json"
    assert eval_main(["key", "--predictions", str(tmp_path / "pred.jsonl"), "--labels",
                      str(tmp_path / "labels.jsonl"), "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["label_splits"] == ["eval"] and report["missing_predictions"] == 1
    assert report["metrics"]["key_mirex"]["value"] == pytest.approx(2 / 3)
    assert "scoring the labels of split(s) eval" in capsys.readouterr().err


def test_eval_refuses_files_that_do_not_join_or_are_not_jsonl(tmp_path, capsys):
    (tmp_path / "pred.jsonl").write_text(json.dumps({"clip_id": "track1", "answer": "C"}) + "\n")
    (tmp_path / "labels.jsonl").write_text(json.dumps({"clip_id": "clip1", "key": "C major"})
                                           + "\n")
    (tmp_path / "audio.wav").write_bytes(b"RIFF\xe8\x00\x00\x00WAVEfmt ")
    args = ["--labels", str(tmp_path / "labels.jsonl"), "--output", str(tmp_path / "r.json")]
    assert eval_main(["key", "--predictions", str(tmp_path / "pred.jsonl"), *args]) == 2
    assert "nothing to score" in capsys.readouterr().err
    with pytest.raises(UserError, match="not a UTF-8 JSONL file"):
        eval_main(["key", "--predictions", str(tmp_path / "audio.wav"), *args])
    with pytest.raises(MissingInputError, match="a folder, not a JSONL file"):
        eval_main(["key", "--predictions", str(tmp_path), *args])
    assert not (tmp_path / "r.json").exists()


def test_score_task_in_process_with_report(tmp_path):
    from llark_jax.eval.cli import score_task

    results, plots = score_task(
        "tempo", ["120 BPM", "about 61 bpm", "fast"], [120, 120, 90], tmp_path, tolerance=0.04
    )
    assert results["tempo_acc1"]["value"] == pytest.approx(1 / 3)
    assert results["tempo_acc2"]["value"] == pytest.approx(2 / 3)
    assert [p.name for p in plots] == ["tempo_scatter.png"]
    assert "tempo_acc2" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="unknown option"):
        score_task("tempo", [], [], tolerances=1)
