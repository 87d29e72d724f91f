"""Demo evaluation: the paper's three prompts on held-out clips, with own and shuffled audio.

Every eval clip is asked KEY_PROMPT, TEMPO_PROMPT and INSTRUMENTS_PROMPT twice with the same
model: once with its own audio, once with the audio of another eval clip (a seeded derangement,
so no clip keeps its own audio). Answers are scored against the synthesis ground truth with the
project's metrics (`llark_jax.eval.metrics`): key MIREX, tempo Acc1/Acc2, instrument F1, each with
its 95% interval. The gap between the two conditions is what the audio contributes. The second
floor is the best constant answer (`constant_answers`, chosen on the training labels): a model
that has learnt only the label prior scores about that.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from llark_jax.data.conversation import IGNORE_INDEX, ConversationTemplate, build_example
from llark_jax.data.records import ClipRecord, decode_clip, iter_records
from llark_jax.errors import UserError
from llark_jax.eval.intervals import MetricResult
from llark_jax.eval.metrics import instrument_f1, key_mirex, tempo_accuracy, tempo_hits
from llark_jax.eval.prompts import INSTRUMENTS_PROMPT, KEY_PROMPT, TEMPO_PROMPT
from llark_jax.infer.generate import Generator, Prompt, SamplingConfig

PROMPTS = {"key": KEY_PROMPT, "tempo": TEMPO_PROMPT, "instruments": INSTRUMENTS_PROMPT}
CONDITIONS = ("audio", "shuffled")
CONSTANT_TEMPO_GRID_BPM = np.arange(40.0, 240.01, 0.5)


def read_clips(files: Sequence[str]) -> list[ClipRecord]:
    """Every clip of the given TFRecord shards, sorted by clip id."""
    clips = [decode_clip(payload) for path in files for payload in iter_records(path)]
    return sorted(clips, key=lambda c: c.clip_id)


def derangement(n: int, seed: int) -> np.ndarray:
    """partner[i] != i for every i (n >= 2): a seeded shuffle, each clip takes the next one's."""
    if n < 2:
        raise ValueError(f"the shuffled-audio control needs at least 2 eval clips, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    partner = np.empty(n, np.int64)
    partner[order] = np.roll(order, -1)
    return partner


def prompt_ids(tokenizer: Any, template: ConversationTemplate, question: str,
               n_frames: int) -> np.ndarray:
    """Token ids of the conversation up to where the assistant's answer starts (audio first)."""
    example = build_example(tokenizer, template, question, "?", n_frames, audio_first=True)
    first_answer = int(np.argmax(example["labels"] != IGNORE_INDEX))
    return example["input_ids"][:first_answer]


def generate_answers(model: Any, tokenizer: Any, template: ConversationTemplate,
                     audio: Sequence[np.ndarray], partner: np.ndarray, *, batch_size: int,
                     max_new_tokens: int) -> dict[str, dict[str, list[str]]]:
    """answers[condition][task] = one decoded answer per clip (greedy, stops at EOS); `audio`
    holds each clip's audio-token features [T, D] (the model's feature pipeline applied)."""
    generator = Generator(model, SamplingConfig(max_new_tokens=max_new_tokens,
                                                eos_ids=(tokenizer.eos_token_id,)),
                          batch_size=batch_size, pad_id=tokenizer.eos_token_id)
    prompts, keys = [], []
    for condition in CONDITIONS:
        for task, question in PROMPTS.items():
            for i in range(len(audio)):
                frames = audio[partner[i]] if condition == "shuffled" else audio[i]
                ids = prompt_ids(tokenizer, template, question, len(frames))
                prompts.append(Prompt(ids, np.asarray(frames, np.float32)))
                keys.append((condition, task))
    generations = []
    chunk = 4 * batch_size  # progress granularity; outputs do not depend on batch composition
    with tqdm(total=len(prompts), desc="eval", unit="answer") as bar:
        for start in range(0, len(prompts), chunk):
            generations += generator.generate(prompts[start : start + chunk],
                                              keys=range(start, min(start + chunk, len(prompts))))
            bar.update(min(chunk, len(prompts) - start))
    answers: dict[str, dict[str, list[str]]] = {c: {t: [] for t in PROMPTS} for c in CONDITIONS}
    for (condition, task), generation in zip(keys, generations, strict=True):
        text = tokenizer.decode(generation.token_ids, skip_special_tokens=True).strip()
        answers[condition][task].append(text)
    return answers


def score(answers: dict[str, list[str]], truth: Sequence[dict[str, Any]],
          vocabulary: Sequence[str]) -> dict[str, MetricResult]:
    """Key MIREX, tempo Acc1/Acc2 and instrument F1 of one condition's answers against the
    per-clip truth (`key`, `tempo`, `instruments`)."""
    results = {"key_mirex": key_mirex(answers["key"], [t["key"] for t in truth])}
    results.update(tempo_accuracy(answers["tempo"], [float(t["tempo"]) for t in truth]))
    f1 = instrument_f1(answers["instruments"], [t["instruments"] for t in truth],
                       vocabulary=vocabulary)
    results["instruments_f1"] = f1["instruments_micro_f1"]
    results["instruments_clip_f1"] = f1["instruments_clip_f1"]
    return results


def constant_answers(train_truth: Sequence[dict[str, Any]]) -> dict[str, str]:
    """The best constant answer per task, chosen on the training labels (`key`, `tempo`,
    `instruments`): the most frequent key; the tempo of a 0.5 BPM grid over 40-240 BPM that
    maximises Acc2; the instrument set built greedily to maximise micro F1 (start empty, add the
    instrument that raises F1 most while one does)."""
    key = Counter(t["key"] for t in train_truth).most_common(1)[0][0]
    tempi = [float(t["tempo"]) for t in train_truth]
    hits = [sum(tempo_hits(float(bpm), t)[1] for t in tempi) for bpm in CONSTANT_TEMPO_GRID_BPM]
    tempo = float(CONSTANT_TEMPO_GRID_BPM[int(np.argmax(hits))])
    labels = [set(t["instruments"]) for t in train_truth]

    def micro_f1(said: set[str]) -> float:
        tp = sum(len(said & truth) for truth in labels)
        wrong = sum(len(said - truth) + len(truth - said) for truth in labels)
        return 2 * tp / max(2 * tp + wrong, 1)

    chosen: set[str] = set()
    candidates = set().union(*labels)
    while candidates - chosen:
        best = max(sorted(candidates - chosen), key=lambda name: micro_f1(chosen | {name}))
        if micro_f1(chosen | {best}) <= micro_f1(chosen):
            break
        chosen.add(best)
    return {"key": f"The key is {key}.", "tempo": f"The tempo is about {tempo:g} BPM.",
            "instruments": ", ".join(sorted(chosen))}


USER_LABELS = "labels.jsonl"


def read_user_labels(folder: Path) -> list[dict[str, Any]]:
    """`folder/labels.jsonl`, one line per audio file: {"file": path relative to the folder,
    "key": "A minor", "tempo": 120 (BPM), "instruments": ["piano", "drums"]} -> truth rows with
    `clip_id` = the file's stem (what `data_prep embed` names its output). Raises `UserError`
    for a missing file, a missing field or a repeated stem."""
    path = folder / USER_LABELS
    if not path.is_file():
        raise UserError(f"--ood-dir {folder}: no {USER_LABELS} (one JSON line per file: "
                        '{"file": "a.mp3", "key": "A minor", "tempo": 120, "instruments": [...]})')
    rows, stems = [], set()
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in ("file", "key", "tempo", "instruments") if k not in row]
        if missing or not (folder / str(row.get("file", ""))).is_file():
            raise UserError(f"{path}:{number}: needs file (existing), key, tempo, instruments; "
                            f"missing {missing or [row['file']]}")
        stem = Path(row["file"]).stem
        if stem in stems:
            raise UserError(f"{path}:{number}: two files named {stem!r} (stems must differ)")
        stems.add(stem)
        rows.append({"clip_id": stem, "key": row["key"], "tempo": float(row["tempo"]),
                     "instruments": list(row["instruments"])})
    return rows
