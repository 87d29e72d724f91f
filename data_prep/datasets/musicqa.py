"""MusicQA (Mu-LLaMA; MusiLingo Table 1): LLM-written question/answer pairs about music clips.

Files (the release's layout): ``{Pretrain,Finetune,Eval}MusicQA.json`` under ``root`` or
``root/MusicQA``, each a list of ``{"audio_name": "012542.wav", "conversation": [{"from":
"human", "value": question}, {"from": "gpt", "value": answer}]}``; audio in
``{audio_root}/audios/{audio_name}`` (``MusicQA/audios`` in the release, tried first when present).

Splits: Finetune (MagnaTagATune-derived) -> `train`, Eval (MTG-Jamendo-derived) -> `test`; both are
what MusiLingo trains and evaluates on. Pretrain (MusicCaps + MagnaTagATune) -> `pretrain`, read
only when asked for (``--split pretrain``): it holds MusicCaps evaluation-split audio, i.e. the
test clips of Music Instruct and MusicCaps captioning (MusiLingo §4.2's leakage note), so those
clips are dropped (RowSkip with the reason) using ``musiccaps-public.csv`` (under ``root``,
``root/MusicCaps`` or ``options["musiccaps_csv"]``), which is then required. An audio file is a
MusicCaps clip when its stem, or the stem's last 11 characters, is a ytid.

One record per audio file (id = file stem) with all of its pairs in ``metadata["qa"]``
(``{"question", "answer", "task": "musicqa"}``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_prep.datasets.base import DatasetFormatError, JsonifyContext, RowSkip, TrackRecord
from data_prep.datasets.music_instruct import find_file, musiccaps_eval_ids

DATASET = "musicqa"
TASK = "musicqa"
PARTITIONS = (("Finetune", "train"), ("Eval", "test"), ("Pretrain", "pretrain"))


def _pair(item: Any) -> tuple[str, str, str] | None:
    """(audio_name, question, answer) of a well-formed item, else None."""
    if not isinstance(item, dict) or not isinstance(item.get("audio_name"), str):
        return None
    turns = item.get("conversation")
    if not isinstance(turns, list) or len(turns) < 2:
        return None
    (human, gpt) = turns[:2]
    if not (isinstance(human, dict) and isinstance(gpt, dict) and human.get("from") == "human"
            and gpt.get("from") == "gpt"):
        return None
    question, answer = str(human.get("value", "")).strip(), str(gpt.get("value", "")).strip()
    return (item["audio_name"], question, answer) if question and answer else None


def _audio_dir(ctx: JsonifyContext) -> Path:
    nested = Path(ctx.audio("MusicQA", "audios"))
    return nested if nested.is_dir() else Path(ctx.audio("audios"))


def read_records(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    wanted = [(name, split) for name, split in PARTITIONS
              if (ctx.split == "pretrain" if split == "pretrain" else ctx.wants(split))]
    eval_ids: set[str] = set()
    if any(split == "pretrain" for _, split in wanted):
        found = musiccaps_eval_ids(ctx)
        if found is None:
            raise DatasetFormatError(ctx.root, "the Pretrain partition holds MusicCaps eval "
                                               "audio; musiccaps-public.csv is needed to drop it")
        eval_ids = found
    audio_dir = _audio_dir(ctx)
    for name, split in wanted:
        path = find_file(ctx, f"{name}MusicQA.json", ("MusicQA",))
        if path is None:
            raise DatasetFormatError(ctx.root / f"{name}MusicQA.json", "MusicQA file not found")
        try:
            items = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DatasetFormatError(path, f"not readable JSON: {err}") from err
        if not isinstance(items, list):
            raise DatasetFormatError(path, "expected a list of {audio_name, conversation}")
        clips: dict[str, list[dict[str, str]]] = {}
        for n, item in enumerate(items):
            pair = _pair(item)
            if pair is None:
                yield RowSkip(f"{path.name}#{n}", "not an {audio_name, human/gpt conversation}")
                continue
            clips.setdefault(pair[0], []).append(
                {"question": pair[1], "answer": pair[2], "task": TASK})
        for audio_name, qa in clips.items():
            stem = Path(audio_name).stem
            if stem in eval_ids or stem[-11:] in eval_ids:
                yield RowSkip(stem, "MusicCaps evaluation-split audio (MusiLingo §4.2 leakage)")
                continue
            yield TrackRecord(stem, DATASET, split, str(audio_dir / audio_name),
                             {"audio_name": audio_name, "partition": name, "qa": qa})
