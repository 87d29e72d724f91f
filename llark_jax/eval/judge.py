"""GPT judges of the paper's §6.3-6.4: musical-detail pairwise comparison and audio-text matching.

Both go through the fault-tolerant Chat Completions client that instruction generation also uses
(`llark_jax.llm.client.ChatClient`, imported lazily: it needs `openai`, not torch), so rate
limits, 5xx, timeouts and unparseable replies are retried with bounded backoff; an item that still
fails is counted by reason and left out of the rate, never silently scored.

* Musical detail (paper Fig. 5, Tables 3 and 5): for each item the candidate's and the baseline's
  responses are shown as "A" and "B" in an order drawn from `seed` and the item id (so reruns are
  identical and half the items put the candidate first); the judge answers "A" or "B". The win rate
  of the candidate has a Clopper-Pearson interval; win rates by position expose order bias.
* Audio-text matching (paper §6.4, Fig. 4, run by humans there): the judge cannot hear, so the audio
  is represented by a reference description of the clip (its caption or metadata). The true
  response and `n_options - 1` responses of the same model to the same question for other clips are
  shuffled and labelled A, B, C, ...; the match rate (true response chosen) has a Clopper-Pearson
  interval and chance level 1 / n_options.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from llark_jax.eval.intervals import MetricResult, proportion_result
from llark_jax.llm.errors import ReplyParseError

# The paper's Figure 5 prompt (the protocol itself), reflowed.
MUSICAL_DETAIL_PROMPT = """\
You will be provided two different pieces of text ("captions"). Both captions describe the same \
piece of music. Your goal is to determine which caption contains the most musical detail.

Musical detail can include any information about the musical characteristics of the audio. This \
includes:
- instruments present (or absent) in the audio
- notes, patterns, or themes being played by different instruments
- the style, genre, or other general descriptors of the type of music being played
- harmonic characteristics of the song such as the key, mode (major/minor), and chords being played
- techniques used by the performers playing the instruments
- audio effects applied to the instruments (delay, distortion, etc.)
- techniques used in the songwriting or composition of the music
- information about the time signature
- the tempo of the song, e.g. in beats per minute (BPM)
- descriptions of the emotional characteristics of the song

The following would NOT be considered musical details:
- where the song might be played (e.g. in a church, in a dance club, in a video game)
- descriptions of what the performers are doing while they are making the music (what they are \
wearing, how they are dancing, etc.)
- subjective judgments about whether the music is good or bad

Since you do not have direct access to the audio being described, assume both captions are \
correctly describing the audio and that the information contained in them is true.

IMPORTANT: your goal is to assess only which caption has the most MUSICAL details. Ignore details \
which are not about the music.

The provided captions will be labeled "A" and "B". In your response, return only either "A" or \
"B"."""

MATCHING_PROMPT = """\
You will be given a description of a piece of music, which stands in for the audio itself, a \
question that a listener asked about that music, and {n} candidate answers labeled {labels}. \
Exactly one answer was written for this piece of music; the others were written for other pieces. \
Decide which answer best answers the question for the described music. In your response, return \
only the letter of that answer."""


@dataclasses.dataclass(frozen=True)
class PairwiseItem:
    """One musical-detail comparison: the candidate model's and a baseline's response."""

    item_id: str
    candidate: str
    baseline: str


@dataclasses.dataclass(frozen=True)
class MatchingItem:
    """One audio-text matching trial: the true response among distractors (same question)."""

    item_id: str
    question: str
    description: str
    true_response: str
    distractors: tuple[str, ...]


# "A caption ..." is an article; "A or B", "A is better", "A has more" name option A.
_ARTICLE_FOLLOWER = re.compile(
    r"\s+(?!(?:or|and|is|has|have|was|contains|wins|because|since|as|with|but)\b)[a-z]"
)


def parse_choice(text: str, labels: Sequence[str] = ("A", "B")) -> str:
    """The single option label a judge reply names ("B", "**A**", "Caption B.", "Answer: (C)").

    Raises `ReplyParseError` (so the client retries) when no label or several labels are named.
    """
    letters = "".join(labels)
    bare = re.sub(r"[\s*\"'`.()\[\]:]+", "", text)
    if bare in labels:
        return bare
    named = set(
        re.findall(rf"\b(?:caption|answer|response|option|choice)\s*[:\-]?\s*\(?([{letters}])\b",
                   text, re.I)
    )  # fmt: skip
    if len(named) != 1:
        # standalone capital letters, except "A" used as an article ("A caption ...").
        named = {
            m.group(1)
            for m in re.finditer(rf"(?<![\w'])([{letters}])(?![\w'])", text)
            if not (m.group(1) == "A" and _ARTICLE_FOLLOWER.match(text[m.end() :]))
        }
    if len(named) != 1:
        raise ReplyParseError(
            f"expected exactly one of {list(labels)} in judge reply: {text[:80]!r}"
        )
    return named.pop()


def _item_rng(seed: int, item_id: str) -> random.Random:
    return random.Random(f"{seed}:{item_id}")


async def _judge_all(
    client: Any, jobs: list[tuple[list[dict], Sequence[str]]], model: str, options
):
    """Runs every (messages, labels) job; returns the chosen label or a failure reason per job."""
    from llark_jax.llm.client import RequestFailedError

    async def one(messages, labels):
        try:
            result = await client.request(
                messages, model=model, parse=lambda t: parse_choice(t, labels), **options
            )
            return {"choice": result.value, "attempts": result.attempts}
        except RequestFailedError as error:
            return {"failed": error.reason, "attempts": error.attempts}

    return await asyncio.gather(*(one(m, labels) for m, labels in jobs))


def _run(jobs, model, base_url, concurrency, seed, policy, options):
    """Judges `jobs` with a fresh ChatClient (reads OPENAI_API_KEY; OPENAI_BASE_URL optional)."""
    from llark_jax.llm.client import ChatClient

    async def go():
        client = ChatClient(base_url=base_url, policy=policy, concurrency=concurrency, seed=seed)
        try:
            return await _judge_all(client, jobs, model, options)
        finally:
            await client.close()

    return asyncio.run(go())


def _records(
    items: Sequence[Any], labels: list[str], outcomes: list[dict], label_key: str, hit_key: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One record per item (id, its correct label under `label_key`, the judge's outcome, and
    `hit_key`: whether the judge chose that label) plus the failure counts of unjudged items."""
    records = []
    for item, label, outcome in zip(items, labels, outcomes, strict=True):
        record = {"item_id": item.item_id, label_key: label, **outcome}
        if "choice" in outcome:
            record[hit_key] = outcome["choice"] == label
        records.append(record)
    failures = {
        "n_failed": sum(hit_key not in r for r in records),
        "failures": dict(Counter(r["failed"] for r in records if "failed" in r)),
    }
    return records, failures


def _messages(system: str, user: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def judge_musical_detail(
    items: Sequence[PairwiseItem],
    *,
    model: str = "gpt-4",
    seed: int = 0,
    base_url: str | None = None,
    concurrency: int = 8,
    policy: Any = None,
    **options: Any,
) -> tuple[MetricResult, list[dict[str, Any]]]:
    """Candidate win rate (Clopper-Pearson) and one record per item (order shown, choice, win).

    `policy` is a `llark_jax.llm.client.RetryPolicy`; `options` go to the Chat Completions call
    (e.g. temperature=0).
    """
    jobs, candidate_labels = [], []
    for item in items:
        candidate_first = _item_rng(seed, item.item_id).random() < 0.5
        a, b = (
            (item.candidate, item.baseline) if candidate_first else (item.baseline, item.candidate)
        )
        candidate_labels.append("A" if candidate_first else "B")
        user = f"Caption A: {a}\n\nCaption B: {b}"
        jobs.append((_messages(MUSICAL_DETAIL_PROMPT, user), ("A", "B")))
    outcomes = _run(jobs, model, base_url, concurrency, seed, policy, options)
    records, failures = _records(items, candidate_labels, outcomes, "candidate_label", "win")
    scored = [r for r in records if "win" in r]
    by_position = {
        label: proportion_result("win", [r["win"] for r in scored if r["candidate_label"] == label])
        for label in ("A", "B")
    }
    details = {
        **failures,
        "win_rate_candidate_shown_first": by_position["A"].value,
        "win_rate_candidate_shown_second": by_position["B"].value,
    }
    result = proportion_result("musical_detail_win_rate", [r["win"] for r in scored], details)
    return result, records


def build_matching_items(
    responses: Sequence[dict[str, str]],
    descriptions: dict[str, str],
    n_options: int = 3,
    seed: int = 0,
) -> list[MatchingItem]:
    """Trials from one model's responses `{clip_id, question, answer}`: distractors are the same
    model's answers to the same question for other clips (paper §6.4). Clips whose question has
    fewer than `n_options` answers, or that have no description, are skipped."""
    by_question: dict[str, list[dict[str, str]]] = {}
    for row in responses:
        by_question.setdefault(row["question"], []).append(row)
    items = []
    for row in responses:
        others = [
            r["answer"] for r in by_question[row["question"]] if r["clip_id"] != row["clip_id"]
        ]
        if row["clip_id"] not in descriptions or len(others) < n_options - 1:
            continue
        rng = _item_rng(seed, f"{row['clip_id']}|{row['question']}")
        items.append(
            MatchingItem(
                item_id=f"{row['clip_id']}|{row['question']}",
                question=row["question"],
                description=descriptions[row["clip_id"]],
                true_response=row["answer"],
                distractors=tuple(rng.sample(others, n_options - 1)),
            )
        )
    return items


def judge_audio_text_matching(
    items: Sequence[MatchingItem],
    *,
    model: str = "gpt-4",
    seed: int = 0,
    base_url: str | None = None,
    concurrency: int = 8,
    policy: Any = None,
    **options: Any,
) -> tuple[MetricResult, list[dict[str, Any]]]:
    """Match rate (Clopper-Pearson) of the true response, and one record per trial."""
    jobs, true_labels = [], []
    for item in items:
        options_text = [item.true_response, *item.distractors]
        order = list(range(len(options_text)))
        _item_rng(seed, item.item_id).shuffle(order)
        labels = tuple(string.ascii_uppercase[: len(order)])
        true_labels.append(labels[order.index(0)])
        answers = "\n\n".join(
            f"Answer {lab}: {options_text[i]}" for lab, i in zip(labels, order, strict=True)
        )
        system = MATCHING_PROMPT.format(n=len(labels), labels=", ".join(labels))
        user = f"Music description: {item.description}\n\nQuestion: {item.question}\n\n{answers}"
        jobs.append((_messages(system, user), labels))
    outcomes = _run(jobs, model, base_url, concurrency, seed, policy, options)
    records, failures = _records(items, true_labels, outcomes, "true_label", "match")
    scored = [r["match"] for r in records if "match" in r]
    details = {
        **failures,
        "chance": 1.0 / (1 + len(items[0].distractors)) if items else float("nan"),
    }
    return proportion_result("audio_text_match_rate", scored, details), records
