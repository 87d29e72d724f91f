"""Every system's answer for every clip, in one resumable per-clip log (OUT/answers.jsonl).

A row is ``{key, system, clip_id, question, answer, ...}`` with ``key = "{system}|{clip_id}"``
(MCQ rows add the method). Rows are appended and fsync'ed chunk by chunk; a rerun reads the log
(a torn last line from a kill is dropped) and computes only the missing rows, so a killed run
resumes and a finished one rescored costs no model call. A row with ``error`` records a clip
that could not be answered (its reason is listed in the report's skipped clips).

The model answers through `infer`'s path: `llark_jax.infer.windows.Windowing` (the model's
encoder and feature pipeline on the clip's crop, cut into training windows) and
`llark_jax.infer.answer.Answerer`. `model-shuffled` asks the same question with another clip's
audio: clips are taken in a seeded random order and each gets the next one's audio (a
derangement, fixed by the seed whatever was already answered), so consecutive clips share one
chunk and their features are computed once.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llark_jax.benchmarks.clips import Clip
from llark_jax.infer.answer import drop_torn_tail

MODEL, SHUFFLED, NO_AUDIO = "model", "model-shuffled", "model-no-audio"


def row_key(system: str, item: str, method: str | None = None) -> str:
    return f"{system}|{method}|{item}" if method else f"{system}|{item}"


class AnswerLog:
    """The per-clip answers JSONL: rows by key, appended durably."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        drop_torn_tail(self.path)
        self.rows: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    row = json.loads(line)
                    self.rows[row["key"]] = row
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue
        self.reused = len(self.rows)

    def get(self, key: str) -> dict[str, Any] | None:
        return self.rows.get(key)

    def append(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                self.rows[row["key"]] = row
            f.flush()
            os.fsync(f.fileno())


def seeded_order(n: int, seed: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(seed).permutation(n)]


def shuffled_partners(items: Sequence[str], seed: int) -> tuple[list[int], dict[int, int]]:
    """(the seeded processing order, {index: index of the item whose audio it gets}); no
    partners for fewer than two items."""
    order = seeded_order(len(items), seed)
    if len(items) < 2:
        return order, {}
    return order, {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}


class ClipFeatures:
    """Audio-token windows of clips through `infer`'s path (`Windowing.file_windows` on the crop),
    cached until `clear` (one chunk); a clip whose audio fails gives the reason instead."""

    def __init__(self, loaded: Any, clips: Sequence[Clip]):
        from llark_jax.infer.windows import Windowing

        self.clips = clips
        self.windowing = Windowing.for_model(loaded)
        self.cache: dict[tuple[str, float, float], list | str] = {}

    def clear(self) -> None:
        self.cache = {}

    def __call__(self, i: int) -> list | str:
        """Clip i's windows (clips of one audio crop, e.g. questions on one track, share them)."""
        from llark_jax.audio.io import AudioError

        clip = self.clips[i]
        key = (clip.audio_path, clip.window.start_s, clip.window.end_s)
        if key not in self.cache:
            try:
                self.cache[key] = self.windowing.file_windows(Path(clip.audio_path), *key[1:])
            except (AudioError, ValueError, RuntimeError) as err:
                self.cache[key] = f"audio features failed: {err}"
        return self.cache[key]

    def request(self, question: str, i: int) -> Any:
        """A `Request` of `question` about clip i's audio, or the reason there is none."""
        from llark_jax.infer.answer import request_from_windows

        windows = self(i)
        if isinstance(windows, str):
            return windows
        return request_from_windows(question, windows, self.windowing.window_tokens)


def answer_clips(answerer: Any, loaded: Any, clips: Sequence[Clip], question: str,
                 log: AnswerLog, *, chunk: int = 32, shuffled: bool = True, seed: int = 0,
                 progress: Callable[[int], None] | None = None) -> None:
    """Adds the `model` (and `model-shuffled`) rows of every clip missing from `log`."""
    features = ClipFeatures(loaded, clips)
    order, partner = shuffled_partners([c.clip_id for c in clips], seed)
    systems = [MODEL] + ([SHUFFLED] if shuffled and partner else [])
    todo = [i for i in order if any(log.get(row_key(s, clips[i].clip_id)) is None
                                    for s in systems)]
    for start in range(0, len(todo), chunk):
        features.clear()
        requests, meta, rows = [], [], []
        for i in todo[start : start + chunk]:
            clip = clips[i]
            for system in systems:
                key = row_key(system, clip.clip_id)
                if log.get(key) is not None:
                    continue
                source = partner[i] if system == SHUFFLED else i
                row = {"key": key, "system": system, "clip_id": clip.clip_id,
                       "track_id": clip.track_id, "question": question,
                       "audio_of": clips[source].clip_id}
                request = features.request(question, source)
                if isinstance(request, str):
                    rows.append({**row, "answer": "", "error": request})
                    continue
                requests.append(request)
                meta.append({**row, "windows": len(request.frames_per_window)})
        keys = [zlib.crc32(m["key"].encode()) for m in meta]
        for row, result in zip(meta, answerer.answer(requests, keys) if requests else [],
                               strict=True):
            rows.append({**row, **result})
        log.append(rows)
        if progress is not None:
            progress(len(todo[start : start + chunk]))


def add_text_answers(log: AnswerLog, system: str, clips: Sequence[Clip],
                     answers: Sequence[str], question: str) -> None:
    """Logs a baseline's answers (rows already logged are kept: a rerun reuses them)."""
    log.append([{"key": row_key(system, c.clip_id), "system": system, "clip_id": c.clip_id,
                 "track_id": c.track_id, "question": question, "answer": a}
                for c, a in zip(clips, answers, strict=True)
                if log.get(row_key(system, c.clip_id)) is None])


def add_madmom_answers(log: AnswerLog, task: str, clips: Sequence[Clip], question: str,
                       progress: Callable[[int], None] | None = None) -> None:
    """Logs the madmom annotator's key or tempo per clip (computed once per track)."""
    from llark_jax.audio.io import AudioError
    from llark_jax.benchmarks.baselines import madmom_answer

    per_track: dict[str, dict[str, str]] = {}
    for clip in clips:
        key = row_key("madmom", clip.clip_id)
        if log.get(key) is not None:
            continue
        if clip.track_id not in per_track:
            try:
                per_track[clip.track_id] = {"answer": madmom_answer(task, clip.audio_path)}
            except AudioError as err:
                per_track[clip.track_id] = {"answer": "", "error": f"madmom: {err}"}
        log.append([{"key": key, "system": "madmom", "clip_id": clip.clip_id,
                     "track_id": clip.track_id, "question": question,
                     **per_track[clip.track_id]}])
        if progress is not None:
            progress(1)


def system_answers(log: AnswerLog, system: str, clips: Sequence[Clip]) -> list[str]:
    """`system`'s answers in clip order ("" where it has none: scored as unparsed)."""
    return [str((log.get(row_key(system, c.clip_id)) or {}).get("answer", "")) for c in clips]


def unanswered(log: AnswerLog, clips: Sequence[Clip], method: str | None = None
               ) -> dict[str, str]:
    """{clip_id: reason} of clips the model could not be asked about (audio features failed)."""
    out = {}
    for clip in clips:
        row = log.get(row_key(MODEL, clip.clip_id, method))
        if row is None or "error" in row:
            out[clip.clip_id] = (row or {}).get("error", "not answered")
    return out
