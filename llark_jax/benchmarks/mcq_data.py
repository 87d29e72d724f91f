"""Multiple-choice music QA in two published formats -> `Question`s.

* MuChoMusic (`muchomusic`): a JSON list of items with ``question``, ``correct_answer``, the
  distractors (``distractor_1_answer`` .. ``distractor_3_answer``, or a ``distractors`` list), the
  audio (``audio_path`` relative to the data folder, or an id in ``audio_id`` /
  ``dataset_identifier`` found as ``audio/{id}.{wav,mp3,flac,...}``) and the categories
  (``music_knowledge``, ``music_reasoning``: lists or their string form). The options are
  shuffled per question, seeded by its id, so the correct answer's letter is not always A and
  reruns ask the same prompt.
* MMAU (`mmau`): a JSON list of items with ``id``, ``audio_id`` (path relative to the data
  folder), ``question``, ``choices``, ``answer`` (the correct choice's text) and ``category`` /
  ``sub-category``; only the music part is read (items whose ``category`` is "music", when the
  field is present). Choices keep their published order.

A malformed file or item raises `DatasetFormatError` naming the file (and the item).
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llark_jax.audio.io import AUDIO_EXTENSIONS
from llark_jax.benchmarks.tracks import DatasetFormatError


@dataclass(frozen=True)
class Question:
    """One multiple-choice question: options in presentation order, `answer` indexes them."""

    id: str
    audio_path: str
    question: str
    options: tuple[str, ...]
    answer: int
    categories: tuple[str, ...]


def _as_list(value: Any) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        value = ast.literal_eval(value) if value.strip().startswith("[") else [value]
    return [str(v) for v in value]


def _load_items(path: Path) -> list[dict]:
    try:
        items = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetFormatError(path, f"unreadable: {err}") from err
    except json.JSONDecodeError as err:
        raise DatasetFormatError(path, f"invalid JSON: {err.msg} at line {err.lineno}") from err
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise DatasetFormatError(path, "expected a JSON list of question objects")
    return items


def _audio_for(root: Path, audio_id: str) -> str:
    """``audio/{id}.<ext>`` under `root` (the first extension found; ``.wav`` when none is)."""
    for ext in AUDIO_EXTENSIONS:
        candidate = root / "audio" / f"{audio_id}{ext}"
        if candidate.exists():
            return str(candidate)
    return str(root / "audio" / f"{audio_id}.wav")


def _shuffled(question_id: str, options: list[str], seed: int) -> tuple[tuple[str, ...], int]:
    """Options in a seeded order and the position of the first (correct) one."""
    digest = hashlib.sha256(f"{seed}:{question_id}".encode()).digest()
    order = list(range(len(options)))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    return tuple(options[i] for i in order), order.index(0)


def read_muchomusic(path: Path, seed: int = 0) -> list[Question]:
    path = Path(path)
    root = path.parent
    questions = []
    for i, item in enumerate(_load_items(path)):
        try:
            qid = str(item.get("id", item.get("dataset_identifier", i)))
            distractors = (_as_list(item["distractors"]) if "distractors" in item else
                           [str(item[f"distractor_{k}_answer"]) for k in (1, 2, 3)
                            if item.get(f"distractor_{k}_answer") not in (None, "")])
            if not distractors:
                raise KeyError("distractors")
            options, answer = _shuffled(qid, [str(item["correct_answer"]), *distractors], seed)
            if "audio_path" in item:
                audio = str(root / item["audio_path"])
            else:
                audio = _audio_for(root, str(item.get("audio_id", item["dataset_identifier"]))
                                   .removesuffix(".json"))
            categories = (_as_list(item.get("music_knowledge"))
                          + _as_list(item.get("music_reasoning")))
            questions.append(Question(qid, audio, str(item["question"]), options, answer,
                                      tuple(categories)))
        except (KeyError, ValueError, SyntaxError, TypeError) as err:
            raise DatasetFormatError(path, f"item {i}: missing or malformed field {err}") from err
    return questions


def read_mmau(path: Path) -> list[Question]:
    path = Path(path)
    questions = []
    for i, item in enumerate(_load_items(path)):
        if str(item.get("category", "music")).lower() != "music":
            continue
        try:
            options = tuple(str(c) for c in item["choices"])
            answer = options.index(str(item["answer"]))
            category = item.get("sub-category") or item.get("task") or "music"
            questions.append(Question(str(item.get("id", i)), str(path.parent / item["audio_id"]),
                                      str(item["question"]), options, answer, (str(category),)))
        except (KeyError, ValueError, TypeError) as err:
            raise DatasetFormatError(path, f"item {i}: missing or malformed field {err}") from err
    return questions
