"""Multiple-choice benchmarks: option parsing, the log-likelihood scorer against a plain forward
pass, MuChoMusic/MMAU readers, and the command on a model forced to say "piano", where scoring by
generation and by log-likelihood must choose the same options, with and without audio."""

from __future__ import annotations

import functools
import json
from collections import Counter

import jax
import numpy as np
import pytest
from benchmark_helpers import MUCHOMUSIC, muchomusic_dir, tiny_llark, tiny_model_dir
from flax import nnx
from tokenizer_fixtures import make_llark_tokenizer

from llark_jax.benchmarks.mcq import mcq_prompt, parse_choice
from llark_jax.benchmarks.mcq_data import read_mmau, read_muchomusic
from llark_jax.benchmarks.tracks import DatasetFormatError
from llark_jax.cli import main as cli_main
from llark_jax.data import conversation as conv
from llark_jax.infer.answer import Answerer, Request, request_from_windows
from llark_jax.infer.generate import Prompt, SamplingConfig
from llark_jax.infer.score import Scorer
from llark_jax.io import read_jsonl

OPTIONS = ["a solo piano", "piano", "drums and bass", "string quartet"]


@pytest.mark.parametrize("answer, expected", [
    ("(B)", 1), ("B", 1), ("B.", 1), ("b)", None), ("C) drums and bass", 2),
    ("The answer is D", 3), ("Answer: (A) a solo piano", 0), ("I choose option C.", 2),
    ("It is a string quartet.", 3), ("drums and bass, clearly", 2),
    ("a solo piano", 0),  # contains "piano" too: the longest option that holds the others
    ("A piano.", 1),  # "A" followed by a word is an article, not a letter
    ("piano or string quartet", None), ("no idea", None), ("", None),
    ("(B)\n### Human: (C)", 1),  # the template's separator ends the answer
])
def test_parse_choice(answer, expected):
    assert parse_choice(answer, OPTIONS) == expected


def test_mcq_prompt_letters_the_options():
    assert mcq_prompt("Which?", ["x", "y"]) == (
        "Which?\nOptions:\n(A) x\n(B) y\nAnswer with the letter of the correct option.")


@pytest.fixture(scope="module")
def random_model():
    return tiny_llark(make_llark_tokenizer(), seed=3)


@functools.partial(jax.jit, static_argnums=0)
def _logprobs(graphdef, state, ids, audio, index):
    logits = nnx.merge(graphdef, state)(ids, audio, audio_frame_index=index)
    return jax.nn.log_softmax(logits[0], axis=-1)


def test_scorer_equals_a_plain_forward_pass(random_model):
    """Batched, padded, bucketed scoring (rows with and without audio, 1 and 3 windows in one
    batch, a continuation past the 8-token bucket) == log_softmax of one unpadded forward pass
    per row."""
    tokenizer, model = make_llark_tokenizer(), random_model
    answerer = Answerer(model, tokenizer, conv.FASTCHAT_V0, SamplingConfig(4), batch_size=2,
                        length_buckets=(64, 128, 256))
    rng = np.random.default_rng(0)
    prompts = [answerer.prompt(request_from_windows(
        f"Question {n}?", [rng.normal(size=(t, 160)).astype(np.float32) for t in lengths], 20))
        for n, lengths in enumerate([(20,), (20, 20, 7)])]
    empty = Request("Text only?", np.zeros((0, 1, 1), np.float32), ())
    prompts.append(Prompt(answerer.prompt(empty).input_ids))
    continuations = [tokenizer.encode(t, add_special_tokens=False) for t in
                     ["piano", "a slow blues in A minor with drums and a bass", "jazz"]]
    assert max(map(len, continuations)) > 8
    scores = Scorer(model, batch_size=2, length_buckets=(64, 128, 256)).score(prompts,
                                                                             continuations)
    for prompt, continuation, score in zip(prompts, continuations, scores, strict=True):
        ids = np.concatenate([prompt.input_ids, continuation])[None].astype(np.int32)
        audio = None if prompt.audio is None else prompt.audio[None]
        index = None if prompt.audio is None else np.pad(
            prompt.audio_frame_index, (0, len(continuation)))[None]
        logprobs = np.asarray(_logprobs(*nnx.split(model), ids, audio, index))
        n = len(prompt.input_ids)
        expected = sum(logprobs[n - 1 + k, token] for k, token in enumerate(continuation))
        assert score.n_tokens == len(continuation)
        assert score.logprob == pytest.approx(float(expected), abs=1e-4)


def test_muchomusic_reader_shuffles_by_id_and_names_bad_files(tmp_path):
    root = muchomusic_dir(tmp_path / "mc")
    questions = read_muchomusic(root / "muchomusic.json")
    assert questions == read_muchomusic(root / "muchomusic.json")  # seeded: same order again
    for question, (text, correct, distractors, _) in zip(questions, MUCHOMUSIC, strict=True):
        assert question.question == text and question.options[question.answer] == correct
        assert sorted(question.options) == sorted([correct, *distractors])
        assert question.audio_path.endswith(f"audio/track{questions.index(question)}.wav")
    assert len({q.answer for q in questions}) > 1  # the correct answer is not always (A)
    assert questions[0].categories == ("Melody",)
    assert questions[2].categories == ("Melody", "Harmony")

    bad = tmp_path / "bad.json"
    bad.write_text('[{"question": "x",')
    with pytest.raises(DatasetFormatError, match=rf"^{bad}: invalid JSON"):
        read_muchomusic(bad)
    bad.write_text(json.dumps([{"question": "x", "correct_answer": "y"}]))
    with pytest.raises(DatasetFormatError, match=rf"^{bad}: item 0: missing or malformed"):
        read_muchomusic(bad)


def test_mmau_reader_keeps_the_music_items(tmp_path):
    items = [{"id": "m1", "audio_id": "./test-mini-audios/m1.wav", "question": "Tempo?",
              "choices": ["slow", "fast"], "answer": "fast", "category": "music",
              "sub-category": "Temporal"},
             {"id": "s1", "audio_id": "./test-mini-audios/s1.wav", "question": "Who?",
              "choices": ["a", "b"], "answer": "a", "category": "speech"}]
    path = tmp_path / "mmau-test-mini.json"
    path.write_text(json.dumps(items))
    [question] = read_mmau(path)
    assert (question.id, question.answer, question.categories) == ("m1", 1, ("Temporal",))
    assert question.audio_path == str(tmp_path / "test-mini-audios" / "m1.wav")
    items[0]["answer"] = "medium"
    path.write_text(json.dumps(items))
    with pytest.raises(DatasetFormatError, match="item 0"):
        read_mmau(path)


def test_forced_model_generation_and_loglik_choose_the_same_options(random_model, tmp_path):
    """The model only ever says "piano": generation parses to the "piano" option and
    log-likelihood ranks it first, for every question, with, without and with another
    question's audio; two of the three questions have "piano" as the answer."""
    model = tiny_model_dir(tmp_path / "model", random_model, forced_word="piano")
    root = muchomusic_dir(tmp_path / "mc")
    out = tmp_path / "out"
    assert cli_main(["benchmark", "muchomusic", "--data-dir", str(root), "--model", str(model),
                     "--output", str(out), "--max-new-tokens", "3", "--batch-size", "4"]) == 0
    rows = read_jsonl(out / "answers.jsonl")
    systems = ("model", "model-no-audio", "model-shuffled")
    assert Counter((r["system"], r["method"]) for r in rows) == {
        **{(s, m): 3 for s in systems for m in ("generate", "loglik")}, ("random", "pick"): 3}
    questions = {q.id: q for q in read_muchomusic(root / "muchomusic.json")}
    by_key = {(r["system"], r["method"], r["question_id"]): r for r in rows}
    for system in systems:
        for qid, question in questions.items():
            generated, scored = by_key[system, "generate", qid], by_key[system, "loglik", qid]
            assert generated["answer"].startswith("piano")
            assert generated["choice"] == scored["choice"] == question.options.index("piano")
            assert np.argmax(scored["mean_logprobs"]) == scored["choice"]
    assert all(by_key["model-shuffled", "generate", q]["audio_of"] != q for q in questions)
    assert all(by_key["model-no-audio", "loglik", q]["audio_of"] is None for q in questions)

    report = json.loads((out / "report.json").read_text())
    assert report["chance"] == 0.25 and report["n_clips"] == 3
    for system in systems:
        for method in ("generate", "loglik"):
            result = report["systems"][system][method]
            assert result["accuracy"]["value"] == pytest.approx(2 / 3)
            assert result["accuracy"]["interval"] == "clopper-pearson"
            by_category = {c: r["value"] for c, r in result["by_category"].items()}
            assert by_category == {"Harmony": 1.0, "Melody": 1.0, "Rhythm": 0.0}
    assert report["systems"]["model"]["generate"]["accuracy"]["n_unparsed"] == 0
    markdown = (out / "report.md").read_text()
    assert "| model-no-audio | loglik | 0.667 |" in markdown and "Rhythm" in markdown


def test_malformed_benchmark_json_is_one_error_naming_the_file(tmp_path, capsys):
    (tmp_path / "muchomusic.json").write_text("{not json")
    code = cli_main(["benchmark", "muchomusic", "--data-dir", str(tmp_path), "--model",
                     str(tmp_path / "no-model"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path}/muchomusic.json: invalid JSON")
