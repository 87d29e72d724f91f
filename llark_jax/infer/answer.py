"""Questions about audio -> answers: prompt building, audio windowing, resumable record answering.

A prompt is the training conversation (`build_example`) with an empty answer, cut before the
template's assistant suffix, so it ends with the assistant prefix ("### Assistant: " for FastChat
v0). Generation stops on that suffix's token ids (the stop sequence a trained model emits after an
answer, e.g. "\\n### ") or on EOS.

A request holds one or more audio windows (`llark_jax.infer.windows`: which part of a recording
the model hears); the prompt gets one `<audio_start> patches <audio_end>` block per window, back to
back, whose frames are the windows' frames in order.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from llark_jax.data import conversation as conv
from llark_jax.data.records import RecordError, decode_clip, iter_records
from llark_jax.infer.generate import Generator, Prompt, SamplingConfig

log = logging.getLogger("llark_jax.infer")


@dataclasses.dataclass(frozen=True)
class Request:
    """A question about one audio input: frames [S, T, D] (S windows, zero-padded to T) and the
    number of real frames per window."""

    question: str
    audio: np.ndarray
    frames_per_window: tuple[int, ...]


def request_from_frames(question: str, frames_td: np.ndarray) -> Request:
    """One window of frames [T, D] (e.g. a TFRecord embedding)."""
    frames_td = np.asarray(frames_td, np.float32)
    return Request(question, frames_td[None], (frames_td.shape[0],))


def request_from_windows(question: str, windows: Sequence[np.ndarray],
                         min_frames: int = 0) -> Request:
    """Several windows [T_i, D] (consecutive parts of one recording), zero-padded to
    max(T_i, `min_frames`) (the training window: one audio shape for every file)."""
    if not windows:
        raise ValueError("request_from_windows: no audio windows")
    t_max = max(min_frames, *(w.shape[0] for w in windows))
    audio = np.zeros((len(windows), t_max, windows[0].shape[1]), np.float32)
    for s, w in enumerate(windows):
        audio[s, : w.shape[0]] = w
    return Request(question, audio, tuple(int(w.shape[0]) for w in windows))


class Answerer:
    """Answers `Request`s with an LLark model (batched, see `Generator`)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        template: conv.ConversationTemplate,
        sampling: SamplingConfig,
        *,
        batch_size: int = 8,
        length_buckets: Sequence[int] | None = None,
    ):
        self.tokenizer, self.template = tokenizer, template
        self.pool = int(getattr(model, "temporal_pool", 1))
        self.audio_ids = conv.AudioTokenIds(
            model.audio_start_id, model.audio_patch_id, model.audio_end_id
        )
        self.stop = tuple(conv.stop_ids(tokenizer, template))
        eos = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
        sampling = dataclasses.replace(
            sampling,
            eos_ids=tuple(sampling.eos_ids) + eos,
            stop_sequences=tuple(sampling.stop_sequences) + ((self.stop,) if self.stop else ()),
        )
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        kwargs = {} if length_buckets is None else {"length_buckets": length_buckets}
        self.generator = Generator(model, sampling, batch_size=batch_size, pad_id=pad_id, **kwargs)

    def prompt(self, request: Request) -> Prompt:
        """Token ids ending with the assistant prefix, with the frame index of every patch.

        With temporal pooling p (MusiLingo), a window of n frames gets ceil(n / p) patch tokens
        and the window length is padded to a multiple of p."""
        p = self.pool
        audio = request.audio
        if audio.shape[1] % p:
            audio = np.pad(audio, ((0, 0), (0, p - audio.shape[1] % p), (0, 0)))
        patches = [-(-n // p) for n in request.frames_per_window]
        example = conv.build_example(
            self.tokenizer, self.template, request.question, "", patches, audio_first=True,
            audio_token_ids=self.audio_ids,
        )  # fmt: skip
        ids = example["input_ids"]
        if self.stop and tuple(ids[-len(self.stop) :]) == self.stop:
            ids = ids[: -len(self.stop)]
        index = conv.audio_frame_index(
            len(ids), example["audio_patch_starts"], example["audio_frames"], audio.shape[1] // p
        )
        return Prompt(np.asarray(ids, np.int32), audio, index)

    def answer(self, requests: Sequence[Request], keys: Sequence[int] | None = None) -> list[dict]:
        """[{"answer": text, "finish_reason": ...}] per request, in order."""
        generations = self.generator.generate([self.prompt(r) for r in requests], keys)
        return [
            {
                "answer": self.tokenizer.decode(g.token_ids, skip_special_tokens=True).strip(),
                "finish_reason": g.finish_reason,
            }
            for g in generations
        ]


def record_questions(record_dir: str | Path, problems: list[str],
                     feature_fn: Callable[[np.ndarray], np.ndarray] | None = None,
                     ) -> Iterator[dict[str, Any]]:
    """Every (clip, question) of the TFRecord shards in the folder `record_dir`, or matching it
    as a glob (sorted), as dicts with `key`, `clip_id`, `question`, `reference`, `task`, `frames`
    [T, D] (the stored embedding through `feature_fn`, the model's feature pipeline).
    Undecodable records and corrupt shard tails are appended to `problems` and skipped."""
    folder = Path(record_dir)
    found = folder.iterdir() if folder.is_dir() else map(Path, glob.glob(str(record_dir)))
    files = sorted(p for p in found if ".tfrecord" in p.name and p.is_file())
    if not files:
        raise FileNotFoundError(f"no *.tfrecord* shards in {record_dir}")
    for path in files:
        try:
            for payload in iter_records(str(path)):
                try:
                    clip = decode_clip(payload)
                except RecordError as error:
                    problems.append(str(error))
                    continue
                frames = np.asarray(clip.embedding, np.float32)
                if feature_fn is not None:
                    frames = feature_fn(frames)
                for i, qa in enumerate(clip.qa):
                    yield {
                        "key": f"{clip.clip_id}#{i}", "clip_id": clip.clip_id,
                        "question": qa.question, "reference": qa.answer, "task": qa.task,
                        "frames": frames,
                    }  # fmt: skip
        except RecordError as error:
            problems.append(str(error))


def read_done_keys(path: Path) -> set[str]:
    """Keys already answered in a predictions JSONL (a torn last line is ignored)."""
    if not path.exists():
        return set()
    done = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            done.add(json.loads(line)["key"])
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return done


def drop_torn_tail(path: Path) -> None:
    """Truncates a final line without newline (a write interrupted by a kill)."""
    if path.exists() and path.stat().st_size:
        data = path.read_bytes()
        if not data.endswith(b"\n"):
            path.write_bytes(data[: data.rfind(b"\n") + 1])


def answer_records(
    answerer: Answerer, record_dir: str | Path, output: str | Path, *, chunk: int = 64,
    feature_fn: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Answers every question of the shards into `output` JSONL (one row per (clip, question):
    key, clip_id, question, answer, reference, task, finish_reason). Resumable: keys already in
    `output` are skipped; rows are appended and fsync'ed chunk by chunk."""
    from tqdm import tqdm

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(output)
    done, problems = read_done_keys(output), []
    summary = {"answered": 0, "already_done": 0}
    pending: list[dict[str, Any]] = []
    with open(output, "a", encoding="utf-8") as out, tqdm(desc="answer", unit="q") as bar:

        def flush() -> None:
            requests = [request_from_frames(p["question"], p["frames"]) for p in pending]
            keys = [zlib.crc32(p["key"].encode()) for p in pending]
            for item, result in zip(pending, answerer.answer(requests, keys), strict=True):
                row = {k: v for k, v in item.items() if k != "frames"}
                out.write(json.dumps({**row, **result}) + "\n")
            out.flush()
            os.fsync(out.fileno())
            summary["answered"] += len(pending)
            bar.update(len(pending))
            pending.clear()

        for item in record_questions(record_dir, problems, feature_fn):
            if item["key"] in done:
                summary["already_done"] += 1
                continue
            pending.append(item)
            if len(pending) == chunk:
                flush()
        if pending:
            flush()
    for problem in problems:
        log.warning("skipped: %s", problem)
    return {**summary, "skipped_records": problems}
