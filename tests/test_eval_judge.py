"""GPT judges against the real local fake Chat Completions server (with injected faults)."""

from __future__ import annotations

import re

import pytest
from fake_openai_server import FakeChatServer, FaultSchedule

from llark_jax.eval.judge import (
    MUSICAL_DETAIL_PROMPT,
    PairwiseItem,
    build_matching_items,
    judge_audio_text_matching,
    judge_musical_detail,
    parse_choice,
)
from llark_jax.llm.client import RetryPolicy
from llark_jax.llm.errors import ReplyParseError

FAST = RetryPolicy(max_attempts=8, timeout_s=2.0, backoff_base_s=0.01, backoff_max_s=0.03)
KEY = "sk-judge-test"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("A", "A"), ("B", "B"), (" **B**\n", "B"), ("A.", "A"), ('"A"', "A"), ("(B)", "B"),
        ("Caption B", "B"), ("Answer: A", "A"), ("The caption with more detail is B.", "B"),
        ("A caption with more musical detail is B.", "B"),
        ("Sure! Here is the JSON you asked for:\n```json\nB\n```\nEnjoy.", "B"),
    ],
)  # fmt: skip
def test_parse_choice(reply, expected):
    assert parse_choice(reply) == expected


@pytest.mark.parametrize("reply", ["", "I can't decide.", "A or B", "Both A and B", "C"])
def test_parse_choice_rejects(reply):
    with pytest.raises(ReplyParseError):
        parse_choice(reply)


def test_parse_choice_more_labels():
    assert parse_choice("Answer C", ("A", "B", "C")) == "C"


def longer_caption_judge(request):
    """A deterministic judge: the caption with more words has more detail."""
    user = request["messages"][-1]["content"]
    a, b = re.match(r"Caption A: (.*)\n\nCaption B: (.*)", user, re.S).groups()
    return "A" if len(a.split()) > len(b.split()) else "B"


def test_musical_detail_win_rate_with_faults():
    items = [
        PairwiseItem(
            f"item{i}",
            candidate="A minor, 120 BPM, distorted guitar and a four on the floor kick"
            if i < 30
            else "rock",
            baseline="a song" if i < 30 else "a song in E minor with piano, strings and drums",
        )
        for i in range(40)
    ]
    faults = FaultSchedule.random(
        0.3, seed=1, kinds=("rate_limit", "server_error", "non_json", "prose")
    )
    with FakeChatServer(
        longer_caption_judge, faults, retry_after_s=0.01, expected_key=KEY
    ) as server:
        result, records = judge_musical_detail(
            items, model="gpt-4", seed=7, base_url=server.base_url, policy=FAST, temperature=0
        )
        calls = list(server.calls)
    assert result.value == pytest.approx(30 / 40) and result.n == 40 and result["n_failed"] == 0
    assert result.interval == "clopper-pearson"
    assert sum(c.fault is not None for c in calls) >= 5  # faults happened and were retried
    shown_first = sum(r["candidate_label"] == "A" for r in records)
    assert 10 <= shown_first <= 30  # randomised order
    first = next(c for c in calls if c.fault is None)
    assert first.request["messages"][0]["content"] == MUSICAL_DETAIL_PROMPT
    assert first.request["temperature"] == 0


def test_unanswerable_item_is_counted_not_scored():
    items = [PairwiseItem("ok", "long long caption here", "short"), PairwiseItem("bad", "x", "y")]

    def reply(request):
        return (
            "no idea"
            if "Caption A: x" in request["messages"][-1]["content"]
            or ("Caption B: x" in request["messages"][-1]["content"])
            else longer_caption_judge(request)
        )

    with FakeChatServer(reply, expected_key=KEY) as server:
        result, records = judge_musical_detail(
            items, base_url=server.base_url, policy=RetryPolicy(3, 2.0, 0.01, 0.02)
        )
    assert result.n == 1 and result.value == 1.0
    assert result["n_failed"] == 1 and result["failures"] == {"parse": 1}
    assert {r["item_id"]: r.get("attempts") for r in records}["bad"] == 3


def overlap_judge(request):
    """Picks the answer sharing most words with the music description."""
    user = request["messages"][-1]["content"]
    description = set(re.search(r"Music description: (.*?)\n", user).group(1).lower().split())
    answers = dict(re.findall(r"Answer ([A-Z]): (.*)", user))
    return max(answers, key=lambda k: len(description & set(answers[k].lower().split())))


def test_audio_text_matching():
    genres = ["jazz", "metal", "reggae", "polka", "techno", "blues"]
    question = "What mood does this track convey?"
    responses = [
        {"clip_id": f"c{i}", "question": question, "answer": f"A {g} groove, full of {g} energy"}
        for i, g in enumerate(genres)
    ]
    descriptions = {
        f"c{i}": f"{g} track with typical {g} instruments" for i, g in enumerate(genres)
    }
    items = build_matching_items(responses, descriptions, n_options=3, seed=0)
    assert len(items) == 6 and all(len(it.distractors) == 2 for it in items)
    assert all(it.true_response not in it.distractors for it in items)
    with FakeChatServer(overlap_judge, expected_key=KEY) as server:
        result, records = judge_audio_text_matching(items, base_url=server.base_url, policy=FAST)
    assert result.value == 1.0 and result.n == 6 and result["chance"] == pytest.approx(1 / 3)
    assert len({r["true_label"] for r in records}) > 1  # the true answer moves around


def test_eval_cli_detail_and_matching(tmp_path):
    import json

    from llark_jax.eval.cli import main as eval_main

    def write(name, rows):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        return str(tmp_path / name)

    genres = ["jazz", "metal", "reggae", "polka"]
    question = "Describe this track."
    candidate = write("cand.jsonl", [
        {"clip_id": f"c{i}", "question": question, "answer": f"A {g} tune, {g} rhythm, 90 BPM"}
        for i, g in enumerate(genres)
    ])  # fmt: skip
    baseline = write("base.jsonl", [{"clip_id": f"c{i}", "answer": "music"} for i in range(4)])
    descriptions = write("desc.jsonl", [
        {"clip_id": f"c{i}", "description": f"{g} song"} for i, g in enumerate(genres)
    ])  # fmt: skip

    def reply(request):
        user = request["messages"][-1]["content"]
        return (
            longer_caption_judge(request) if user.startswith("Caption") else overlap_judge(request)
        )

    with FakeChatServer(reply, expected_key=KEY) as server:
        common = ["--predictions", candidate, "--openai-base-url", server.base_url]
        out = tmp_path / "detail.json"
        assert eval_main(["detail", *common, "--labels", baseline, "--output", str(out)]) == 0
        detail = json.loads(out.read_text())["metrics"]
        out = tmp_path / "matching.json"
        assert eval_main(["matching", *common, "--labels", descriptions, "--output", str(out)]) == 0
        matching = json.loads(out.read_text())["metrics"]
    assert detail["musical_detail_win_rate"]["value"] == 1.0
    assert len(detail["judgments"]) == 4
    assert matching["audio_text_match_rate"]["value"] == 1.0
    assert matching["audio_text_match_rate"]["n"] == 4
