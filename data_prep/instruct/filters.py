"""Drops generated QA pairs whose question or answer shows the instructions were not followed.

The phrase lists are the paper's Table 9. Matching is case-insensitive. The default `word` mode
matches a phrase only between word boundaries, so "pack" does not kill "package" and "violin 1"
does not kill "violin 12"; `substring` mode reproduces the reference's plain substring test.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

QUESTION_PHRASES: tuple[str, ...] = (
    "what is the composer", "who is the composer", "tell me about the composer",
    "name of the composer", "who is the artist", "tell me about the artist",
    "what tags are associated with the artist", "what are the tags associated with the artist",
    "is there any information available about the album", "about the album", "name of the artist",
    "what is the name", "what is the movement", "what is the specific movement",
    "what is the title", "which movement is", "what is the length of this clip", "duration",
    "pack",
)
ANSWER_PHRASES: tuple[str, ...] = (
    "metadata", "is not provided", "based on the provided metadata", "based on the provided beat",
    "based on the provided chord", "based on the provided information",
    "based on the provided annotations", "no specific mood", "there is no mention of",
    "there is no specific mention of any", "As an AI assistant, I am unable to",
    "As an AI assistant, I do not", "it is difficult to determine",
    "it is not possible to determine", "no information is available about the album",
    "cannot determine", "violin 1", "violin 2", "violin 3", "viola 1", "viola 2", "viola 3",
    "pack",
)
MODES = ("word", "substring")


def _compile(phrases: Iterable[str], mode: str) -> list[tuple[str, re.Pattern[str]]]:
    if mode not in MODES:
        raise ValueError(f"filter mode must be one of {MODES}, got {mode!r}")
    compiled = []
    for phrase in phrases:
        body = re.escape(phrase)
        pattern = rf"(?<!\w){body}(?!\w)" if mode == "word" else body
        compiled.append((phrase, re.compile(pattern, re.IGNORECASE)))
    return compiled


@dataclass
class FilterStats:
    """Pairs seen/kept/dropped, and how many pairs each phrase matched ("question: x" keys)."""

    seen: int = 0
    kept: int = 0
    invalid: int = 0
    by_phrase: Counter = field(default_factory=Counter)

    @property
    def dropped(self) -> int:
        return self.seen - self.kept

    def as_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "kept": self.kept,
            "dropped": self.dropped,
            "invalid": self.invalid,
            "dropped_fraction": round(self.dropped / self.seen, 4) if self.seen else 0.0,
            "by_phrase": dict(self.by_phrase.most_common()),
        }


class QAFilter:
    """Applies the question and answer phrase lists in `word` or `substring` mode."""

    def __init__(
        self,
        mode: str = "word",
        question_phrases: Iterable[str] = QUESTION_PHRASES,
        answer_phrases: Iterable[str] = ANSWER_PHRASES,
    ):
        self.mode = mode
        self._question = _compile(question_phrases, mode)
        self._answer = _compile(answer_phrases, mode)
        self.stats = FilterStats()

    def violations(self, pair: dict[str, Any]) -> list[str]:
        """Labels ("question: duration", "answer: metadata", ...) of every phrase the pair hits."""
        hits = [f"question: {p}" for p, rx in self._question if rx.search(pair["question"])]
        return hits + [f"answer: {p}" for p, rx in self._answer if rx.search(pair["answer"])]

    def keep(self, pair: Any) -> bool:
        """True when `pair` is a valid {question, answer} dict without disallowed phrases."""
        self.stats.seen += 1
        valid = (
            isinstance(pair, dict)
            and isinstance(pair.get("question"), str)
            and isinstance(pair.get("answer"), str)
            and pair["question"].strip()
            and pair["answer"].strip()
        )
        if not valid:
            self.stats.invalid += 1
            return False
        hits = self.violations(pair)
        self.stats.by_phrase.update(hits)
        if hits:
            return False
        self.stats.kept += 1
        return True

    def apply(self, pairs: Iterable[Any]) -> list[dict[str, Any]]:
        """The pairs that pass, in order; statistics accumulate in `self.stats`."""
        return [pair for pair in pairs if self.keep(pair)]
