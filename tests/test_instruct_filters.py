"""Table 9 filters (word-boundary and reference substring modes), captions, lenient JSON parsing."""

from __future__ import annotations

import json

import pytest

from data_prep.instruct.captions import (
    LONG_CAPTION_PROMPTS,
    SHORT_CAPTION_PROMPTS,
    caption_to_qa,
)
from data_prep.instruct.filters import ANSWER_PHRASES, QUESTION_PHRASES, QAFilter
from data_prep.instruct.parsing import parse_caption_reply, parse_lenient_json, parse_qa_reply
from data_prep.instruct.prompts import (
    available_prompts,
    build_messages,
    choose_model,
    load_prompt,
    text_hash,
)
from llark_jax.llm.errors import ReplyParseError, ReplySchemaError

PAIRS = [
    {"question": "What is in the package of sounds?", "answer": "A warm pad."},  # 0 "pack"
    {"question": "Which strings play?", "answer": "Violin 12 and a cello."},  # 1 "violin 1"
    {"question": "Who is the artist?", "answer": "Someone."},  # 2 question phrase
    {"question": "What mood?", "answer": "Based on the provided metadata, calm."},  # 3 two hits
    {"question": "How long?", "answer": "The DURATION is short."},  # 4 answer-only: kept
    {"question": "Who plays?", "answer": "Violin 1 leads."},  # 5 "violin 1"
    {"question": "What tempo?", "answer": "About 120 BPM."},  # 6 clean
    {"question": "", "answer": "empty question"},  # 7 invalid
]


def test_word_mode_spares_words_that_only_contain_a_phrase():
    qa_filter = QAFilter("word")
    kept = qa_filter.apply(PAIRS)
    assert kept == [PAIRS[i] for i in (0, 1, 4, 6)]
    stats = qa_filter.stats.as_dict()
    assert (stats["seen"], stats["kept"], stats["dropped"], stats["invalid"]) == (8, 4, 4, 1)
    assert stats["by_phrase"] == {
        "question: who is the artist": 1,
        "answer: metadata": 1,
        "answer: based on the provided metadata": 1,
        "answer: violin 1": 1,
    }


def test_substring_mode_reproduces_the_reference():
    qa_filter = QAFilter("substring")
    kept = qa_filter.apply(PAIRS)
    assert kept == [PAIRS[i] for i in (4, 6)]
    by_phrase = qa_filter.stats.by_phrase
    assert by_phrase["question: pack"] == 1 and by_phrase["answer: violin 1"] == 2


def test_phrase_lists_match_table_9():
    assert len(QUESTION_PHRASES) == 19 and len(ANSWER_PHRASES) == 23
    assert "what is the length of this clip" in QUESTION_PHRASES
    assert "As an AI assistant, I am unable to" in ANSWER_PHRASES
    with pytest.raises(ValueError, match="filter mode"):
        QAFilter("regex")


def test_caption_questions_are_seeded_and_sized_by_dataset():
    short = caption_to_qa(" A bright pop tune. ", "clip1", "musiccaps", seed=0)
    assert short["question"] in SHORT_CAPTION_PROMPTS and short["answer"] == "A bright pop tune."
    assert short == caption_to_qa("A bright pop tune.", "clip1", "musiccaps", seed=0)
    assert caption_to_qa("x", "clip1", "musicnet", seed=0)["question"] in LONG_CAPTION_PROMPTS
    questions = {caption_to_qa("x", f"c{i}", "musiccaps", seed=0)["question"] for i in range(60)}
    assert len(questions) > 8


@pytest.mark.parametrize(
    "text, n_pairs, repaired",
    [
        ('[{"question": "a", "answer": "b"}]', 1, False),
        ('Sure! ```json\n[{"question": "a", "answer": "b"}]\n``` Hope it helps [1].', 1, False),
        ('[{"question": "a", "answer": "b"}, {"question": "c", "answer": "d"}, {"quest', 2, True),
        ('[{"question": "a [x]", "answer": "b \\" ]"}, {"question": "c", "ans', 1, True),
        ('{"qa": [{"question": "a", "answer": "b"}]}', 1, False),
        ('{"question": "a", "answer": "b"} trailing', 1, False),
        ('See [1]. [{"question": "a", "answer": "b"}]', 1, False),
    ],
)
def test_lenient_parser(text, n_pairs, repaired):
    parsed = parse_qa_reply(text)
    assert len(parsed["qa"]) == n_pairs and parsed["repaired"] is repaired
    assert parsed["qa"][0] == {"question": "a" if "[x]" not in text else "a [x]",
                               "answer": "b" if '\\"' not in text else 'b " ]'}


def test_parser_errors_are_typed():
    with pytest.raises(ReplyParseError):
        parse_lenient_json("I'm sorry, I can't help with that.")
    with pytest.raises(ReplySchemaError):
        parse_qa_reply('[{"question": "a"}, "text", {"question": "", "answer": "b"}]')
    assert parse_qa_reply('[{"question": "a", "answer": "b"}, 3]')["dropped"] == 1
    with pytest.raises(ReplySchemaError):
        parse_caption_reply("Too short.")


def test_prompts_exist_for_every_dataset_and_hide_identifiers():
    pairs = set(available_prompts())
    for dataset in ("fma", "mtg-jamendo", "magnatagatune", "musicnet", "demo"):
        assert {("mir", dataset), ("reasoning", dataset)} <= pairs
    assert ("captioning", "musicnet") in pairs
    for task, dataset in pairs:
        prompt = load_prompt(task, dataset)
        assert "@include" not in prompt and "downbeats_madmom" in prompt
        assert "tempo_in_beats_per_minute_madmom" in prompt and '"metadata"' in prompt
    assert text_hash(load_prompt("mir", "fma")) != text_hash(load_prompt("mir", "demo"))
    record = {"clip_id": "c1", "path": "/a.wav", "start_secs": 30, "title": "T", "artist": "A",
              "mp3_path": "x/y.mp3", "key": "A minor", "composer": "Bach"}
    sent = json.loads(build_messages("sys", record)[1]["content"])
    assert sent == [{"key": "A minor", "composer": "Bach"}]


def test_model_choice_follows_the_paper():
    assert choose_model("reasoning", "fma", 100) == "gpt-4"
    assert choose_model("mir", "fma", 100) == "gpt-3.5-turbo"
    assert choose_model("mir", "fma", 5000) == "gpt-3.5-turbo-16k"
    assert choose_model("captioning", "musicnet", 100) == "gpt-3.5-turbo-16k"
    assert choose_model("mir", "fma", 100, override="local-model") == "local-model"
