"""Music Instruct (MI, MusiLingo's dataset, m-a-p/Music-Instruct): MusicCaps clips with GPT-written
question/answer pairs, v1 = short questions (27,540 pairs), v2 = long (32,953 pairs).

Files (as MusiLingo's loader reads them): `music_instruct_short.json` (v1) and
`music_instruct_long.json` (v2) under ``root`` or ``root/MusicInstruct``; each is
``{"QA": [{"ytid", "question", "answer", "is_audioset_eval", ...}, ...]}`` (a bare list is accepted
too). When only the combined `music_instruct.json` exists, its pairs get task `mi`.

One record per MusicCaps clip (id = ytid) holding all of its pairs in ``metadata["qa"]`` as
``{"question", "answer", "task"}`` with task `mi_short` (v1) or `mi_long` (v2), so training and
evaluation pick partitions by task. Split (MusiLingo / the dataset card): clips in AudioSet's
evaluation split (`is_audioset_eval`) -> `test`, others -> `train`. When an item lacks
`is_audioset_eval`, the MusicCaps CSV (`musiccaps-public.csv` under ``root``, ``root/MusicCaps``
or ``options["musiccaps_csv"]``) decides; without either the row is skipped with the reason.
Audio: ``{audio_root}/{ytid}.wav`` like the MusicCaps adapter.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_prep.datasets.base import DatasetFormatError, JsonifyContext, RowSkip, TrackRecord
from data_prep.datasets.captions import read_musiccaps

DATASET = "music-instruct"
PARTS = (("music_instruct_short.json", "mi_short"), ("music_instruct_long.json", "mi_long"))
COMBINED = ("music_instruct.json", "mi")


def find_file(ctx: JsonifyContext, name: str, subdirs: tuple[str, ...]) -> Path | None:
    for folder in (ctx.root, *(ctx.root / s for s in subdirs)):
        if (folder / name).is_file():
            return folder / name
    return None


def musiccaps_eval_ids(ctx: JsonifyContext) -> set[str] | None:
    """ytids in MusicCaps' AudioSet-eval split, from musiccaps-public.csv (None: no CSV found)."""
    option = ctx.options.get("musiccaps_csv")
    path = Path(option) if option else find_file(ctx, "musiccaps-public.csv", ("MusicCaps",))
    if path is None:
        return None
    records = read_musiccaps(JsonifyContext(path.parent, split="test"))
    return {r.id for r in records if isinstance(r, TrackRecord)}


def load_items(path: Path) -> list[dict[str, Any]]:
    """The QA items of one MI file ({"QA": [...]} or a list)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DatasetFormatError(path, f"not readable JSON: {err}") from err
    items = data.get("QA") if isinstance(data, dict) else data
    if not isinstance(items, list):
        raise DatasetFormatError(path, 'expected {"QA": [...]} or a list of QA items')
    return items


def read_records(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    files = [(p, task) for name, task in PARTS
             if (p := find_file(ctx, name, ("MusicInstruct",))) is not None]
    if not files:
        combined = find_file(ctx, COMBINED[0], ("MusicInstruct",))
        if combined is None:
            raise DatasetFormatError(ctx.root, "no music_instruct_{short,long}.json or "
                                               "music_instruct.json (Music Instruct release)")
        files = [(combined, COMBINED[1])]
    eval_ids: set[str] | None = None
    looked_up = False
    clips: dict[str, dict[str, Any]] = {}
    for path, task in files:
        for n, item in enumerate(load_items(path)):
            if not isinstance(item, dict) or not all(
                    isinstance(item.get(k), str) and item[k].strip()
                    for k in ("ytid", "question", "answer")):
                yield RowSkip(f"{path.name}#{n}", "item lacks a ytid, question or answer")
                continue
            is_eval = item.get("is_audioset_eval")
            if not isinstance(is_eval, bool):
                if not looked_up:
                    eval_ids, looked_up = musiccaps_eval_ids(ctx), True
                if eval_ids is None:
                    yield RowSkip(f"{path.name}#{n}", "no is_audioset_eval and no "
                                                      "musiccaps-public.csv to decide the split")
                    continue
                is_eval = item["ytid"] in eval_ids
            clip = clips.setdefault(item["ytid"], {"is_audioset_eval": is_eval, "qa": []})
            clip["qa"].append({"question": item["question"].strip(),
                               "answer": item["answer"].strip(), "task": task})
    for ytid, clip in clips.items():
        split = "test" if clip["is_audioset_eval"] else "train"
        if ctx.wants(split):
            yield TrackRecord(ytid, DATASET, split, ctx.audio(f"{ytid}.wav"),
                              {"ytid": ytid, **clip})
