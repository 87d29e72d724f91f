"""Lenient JSON extraction from model replies, and the schemas the replies must satisfy.

Model replies wrap JSON in prose or code fences, or stop mid-list when they run out of tokens.
`parse_lenient_json` finds the first JSON value in the text, ignores what follows it, and repairs a
truncated list by keeping its complete elements. Failures raise `ReplyParseError` (no JSON) or
`ReplySchemaError` (wrong shape), which the chat client (`llark_jax.llm.client`) retries.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from llark_jax.llm.errors import ReplyParseError, ReplySchemaError

_DECODER = json.JSONDecoder()
_CLOSERS = {"[": "]", "{": "}"}


def _complete_prefix_of_list(text: str) -> str | None:
    """For a truncated top-level list, the prefix through its last complete element, closed."""
    stack: list[str] = []
    in_string = escaped = False
    last_complete = None
    for i, ch in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "[{":
            stack.append(ch)
        elif ch in "]}":
            if not stack or _CLOSERS[stack.pop()] != ch:
                return None
            if len(stack) == 1:
                last_complete = i
            if not stack:
                return None  # the list was complete: not a truncation
    if last_complete is None:
        return None
    return text[: last_complete + 1] + "]"


def iter_json_values(text: str, max_candidates: int = 64) -> Iterator[tuple[Any, bool]]:
    """Yields (value, repaired) for each JSON list/object found in `text`, left to right.

    `repaired` is True when a truncated list was cut back to its complete elements.
    """
    pos = 0
    for _ in range(max_candidates):
        starts = [i for i in (text.find("[", pos), text.find("{", pos)) if i >= 0]
        if not starts:
            return
        start = min(starts)
        candidate = text[start:]
        try:
            value, length = _DECODER.raw_decode(candidate)
            yield value, False
            pos = start + length
            continue
        except json.JSONDecodeError:
            pass
        repaired = _complete_prefix_of_list(candidate) if candidate[0] == "[" else None
        if repaired is not None:
            try:
                yield json.loads(repaired), True
            except json.JSONDecodeError:
                pass
        pos = start + 1


def parse_lenient_json(text: str) -> tuple[Any, bool]:
    """(value, repaired) for the first JSON list/object in `text`; raises ReplyParseError."""
    for value, repaired in iter_json_values(text):
        return value, repaired
    raise ReplyParseError(f"no JSON list or object in reply: {text[:80]!r}")


def validate_qa_list(value: Any) -> tuple[list[dict[str, str]], int]:
    """Returns (pairs, n_dropped): the {question, answer} string pairs of a parsed reply.

    Accepts a list of pairs, a single pair, or an object with one list-valued key holding the pairs.
    Elements without a non-empty string question and answer are dropped and counted.
    Raises ReplySchemaError when no valid pair remains.
    """
    if isinstance(value, dict):
        if "question" in value and "answer" in value:
            value = [value]
        else:
            lists = [v for v in value.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise ReplySchemaError(f"object reply without a single QA list: keys {list(value)}")
            value = lists[0]
    if not isinstance(value, list):
        raise ReplySchemaError(f"reply is a {type(value).__name__}, not a list of QA pairs")
    pairs = []
    for item in value:
        if not isinstance(item, dict):
            continue
        question, answer = item.get("question"), item.get("answer")
        if isinstance(question, str) and isinstance(answer, str):
            if not (question.strip() and answer.strip()):
                continue
            pairs.append({"question": question.strip(), "answer": answer.strip()})
    if not pairs:
        raise ReplySchemaError(f"no valid question/answer pair among {len(value)} elements")
    return pairs, len(value) - len(pairs)


def parse_qa_reply(text: str) -> dict[str, Any]:
    """A MIR/reasoning reply -> {"qa": [...], "dropped": n, "repaired": bool}.

    The first JSON value in the reply that holds valid pairs wins (so a stray "[1]" before the
    payload is skipped). Raises ReplyParseError (no JSON) or ReplySchemaError (no valid pairs).
    """
    schema_error = None
    for value, repaired in iter_json_values(text):
        try:
            pairs, dropped = validate_qa_list(value)
        except ReplySchemaError as error:
            schema_error = schema_error or error
            continue
        return {"qa": pairs, "dropped": dropped, "repaired": repaired}
    if schema_error is not None:
        raise schema_error
    raise ReplyParseError(f"no JSON list or object in reply: {text[:80]!r}")


def parse_caption_reply(text: str, min_words: int = 5) -> dict[str, Any]:
    """Validates a captioning reply (plain prose) -> {"caption": text}."""
    caption = text.strip()
    if len(caption.split()) < min_words:
        raise ReplySchemaError(f"caption too short ({len(caption.split())} words)")
    return {"caption": caption}
