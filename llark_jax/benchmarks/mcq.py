"""Multiple-choice benchmarks (MuChoMusic, MMAU music): two ways of reading the model's choice.

Prompt: the question, then the options lettered ``(A) ...``, one per line, then "Answer with the
letter of the correct option." (`mcq_prompt`).

* `generate`: greedy generation, then `parse_choice`: a letter ("(B)", "B.", "B", "Answer: B",
  "option C"), else the one option whose text the answer contains (the longest when one
  contains the others); anything else is unparsed, counted and scored wrong.
* `loglik`: no generation and no parsing: each option's text is scored as the answer
  (`llark_jax.infer.score.Scorer`, mean log-probability per token, one forward pass per batch of
  options) and the highest wins.

Systems: `model` (the question's audio), `model-no-audio` (the prompt without an audio block:
the audio-free ablation these benchmarks recommend, exposing questions answerable from text
alone), `model-shuffled` (another question's audio), and `random` (a seeded uniform pick; the
expected chance accuracy, mean 1/options, is reported beside it). Accuracy has Clopper-Pearson
intervals, overall and per question category.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llark_jax.benchmarks.clips import Clip
from llark_jax.benchmarks.runner import (
    NO_AUDIO,
    SHUFFLED,
    AnswerLog,
    ClipFeatures,
    row_key,
    shuffled_partners,
)
from llark_jax.eval.intervals import proportion_result
from llark_jax.eval.parse import strip_completion

LETTERS = "ABCDEFGHIJ"
METHODS = ("generate", "loglik")


def mcq_prompt(question: str, options: Sequence[str]) -> str:
    lines = [question, "Options:"]
    lines += [f"({LETTERS[i]}) {option}" for i, option in enumerate(options)]
    return "\n".join([*lines, "Answer with the letter of the correct option."])


def _normalise(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def parse_choice(answer: str, options: Sequence[str]) -> int | None:
    """The option an answer chose (module docstring), or None."""
    text = strip_completion(answer).strip()
    letters = LETTERS[: len(options)]
    patterns = (rf"\(([{letters}])\)", rf"^\s*([{letters}])\s*(?:[).:,]|$)",
                rf"\b(?:[Aa]nswer|[Oo]ption|[Cc]hoice)(?:\s+is)?\s*:?\s*\(?([{letters}])\b")
    for pattern in patterns:
        match = re.search(pattern, text)
        if match:
            return letters.index(match.group(1))
    said = _normalise(text)
    found = [i for i, option in enumerate(options) if _normalise(option) and
             _normalise(option) in said]
    if len(found) > 1:
        longest = max(found, key=lambda i: len(_normalise(options[i])))
        if all(_normalise(options[i]) in _normalise(options[longest]) for i in found):
            return longest
        return None
    return found[0] if found else None


def _text_prompt(answerer: Any, text: str) -> Any:
    """The prompt of `text` without an audio block."""
    from llark_jax.infer.answer import Request
    from llark_jax.infer.generate import Prompt

    empty = Request(text, np.zeros((0, 1, 1), np.float32), ())
    return Prompt(answerer.prompt(empty).input_ids)


def _generate(answerer: Any, prompts: Sequence[Any], keys: Sequence[int]) -> list[dict]:
    """Greedy answers in order; prompts with and without audio are generated apart (a batch
    is one or the other)."""
    results: list[dict] = [{}] * len(prompts)
    for with_audio in (True, False):
        picked = [i for i, p in enumerate(prompts) if (p.audio is not None) == with_audio]
        if not picked:
            continue
        generations = answerer.generator.generate([prompts[i] for i in picked],
                                                  [keys[i] for i in picked])
        for i, g in zip(picked, generations, strict=True):
            text = answerer.tokenizer.decode(g.token_ids, skip_special_tokens=True).strip()
            results[i] = {"answer": text, "finish_reason": g.finish_reason}
    return results


def answer_questions(answerer: Any, scorer: Any, loaded: Any, clips: Sequence[Clip],
                     log: AnswerLog, *, systems: Sequence[str], chunk: int = 16, seed: int = 0,
                     progress: Callable[[int], None] | None = None) -> None:
    """Adds every missing (system, method, question) row; `clip.label` is the `Question`."""
    features = ClipFeatures(loaded, clips)
    order, partner = shuffled_partners([c.clip_id for c in clips], seed)
    systems = [s for s in systems if s != SHUFFLED or partner]
    todo = [i for i in order if any(log.get(row_key(s, clips[i].clip_id, m)) is None
                                    for s in systems for m in METHODS)]
    for start in range(0, len(todo), chunk):
        features.clear()
        rows, generate, score = [], [], []
        for i in todo[start : start + chunk]:
            clip, question = clips[i], clips[i].label
            for system in systems:
                source = {SHUFFLED: partner.get(i), NO_AUDIO: None}.get(system, i)
                base = {"system": system, "question_id": clip.clip_id,
                        "audio_of": None if source is None else clips[source].clip_id}
                pending = [m for m in METHODS if log.get(row_key(system, clip.clip_id, m)) is None]
                if not pending:
                    continue
                text = mcq_prompt(question.question, question.options)
                if system == NO_AUDIO:
                    prompt = _text_prompt(answerer, text)
                else:
                    request = features.request(text, source)
                    prompt = request if isinstance(request, str) else answerer.prompt(request)
                for method in pending:
                    row = {"key": row_key(system, clip.clip_id, method), "method": method, **base}
                    if isinstance(prompt, str):
                        rows.append({**row, "choice": None, "error": prompt})
                    elif method == "generate":
                        generate.append((row, prompt, question))
                    else:
                        score.append((row, prompt, question))
        keys = [zlib.crc32(row["key"].encode()) for row, _, _ in generate]
        results = _generate(answerer, [p for _, p, _ in generate], keys) if generate else []
        for (row, _, question), result in zip(generate, results, strict=True):
            rows.append({**row, **result, "choice": parse_choice(result["answer"],
                                                                 question.options)})
        pairs = [(prompt, answerer.tokenizer.encode(option, add_special_tokens=False))
                 for _, prompt, question in score for option in question.options]
        scores = scorer.score([p for p, _ in pairs], [c for _, c in pairs]) if pairs else []
        k = 0
        for row, _, question in score:
            means = [s.mean_logprob for s in scores[k : k + len(question.options)]]
            k += len(question.options)
            rows.append({**row, "mean_logprobs": means, "choice": int(np.argmax(means))})
        log.append(rows)
        if progress is not None:
            progress(len(todo[start : start + chunk]))


def add_random_choices(log: AnswerLog, clips: Sequence[Clip], seed: int) -> None:
    """The `random` system: a seeded uniform pick per question."""
    rng = np.random.default_rng(seed)
    picks = [int(rng.integers(0, len(c.label.options))) for c in clips]
    log.append([{"key": row_key("random", c.clip_id, "pick"), "system": "random",
                 "method": "pick", "question_id": c.clip_id, "choice": pick}
                for c, pick in zip(clips, picks, strict=True)
                if log.get(row_key("random", c.clip_id, "pick")) is None])


def accuracy(clips: Sequence[Clip], log: AnswerLog, system: str, method: str) -> dict[str, Any]:
    """{"accuracy": MetricResult (+ n_unparsed), "by_category": {category: MetricResult}}."""
    rows = [log.get(row_key(system, c.clip_id, method)) or {} for c in clips]
    hits = [row.get("choice") == c.label.answer for c, row in zip(clips, rows, strict=True)]
    unparsed = sum(row.get("choice") is None for row in rows)
    categories = sorted({cat for c in clips for cat in c.label.categories})
    by_category = {
        cat: proportion_result(f"accuracy[{cat}]", [h for c, h in zip(clips, hits, strict=True)
                                                    if cat in c.label.categories])
        for cat in categories}
    return {"accuracy": proportion_result("accuracy", hits, {"n_unparsed": unparsed}),
            "by_category": by_category}


def chance_accuracy(clips: Sequence[Clip]) -> float:
    """Expected accuracy of a uniform guess: mean 1 / number of options."""
    return float(np.mean([1.0 / len(c.label.options) for c in clips])) if clips else float("nan")
