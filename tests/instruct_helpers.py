"""Shared pieces of the instruction-generation tests: clip metadata and a fake model's replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

KEYS = ("A minor", "C major", "F# minor", "Bb major", "E minor", "D major")
SECRET_KEY = "sk-test-0123456789-DO-NOT-LEAK"


def make_records(n: int) -> list[dict[str, Any]]:
    """`n` FMA-like clip records with ids, paths and crop times that must never reach the model."""
    return [
        {
            "clip_id": f"clip{i:04d}",
            "path": f"/private/audio/clip{i:04d}.wav",
            "start_secs": 30.0,
            "end_secs": 55.0,
            "artist": "Some Artist",
            "track.genre_top": "Rock" if i % 2 else "Electronic",
            "tempo_in_beats_per_minute_madmom": 60.0 + i,
            "key": KEYS[i % len(KEYS)],
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def metadata_of(request: dict[str, Any]) -> dict[str, Any]:
    """The clip metadata a Chat Completions request carries (last user message)."""
    return json.loads(request["messages"][-1]["content"])[0]


def qa_reply(request: dict[str, Any]) -> str:
    """A deterministic model reply derived from the clip's metadata: 3 pairs, one filterable."""
    meta = metadata_of(request)
    tempo = meta["tempo_in_beats_per_minute_madmom"]
    pairs = [
        {"question": "How fast is this?", "answer": f"About {tempo:g} BPM."},
        {"question": "Which key is it in?", "answer": f"It is in {meta['key']}."},
        {"question": "Tell me about the album.", "answer": "It is a fine album."},
    ]
    return json.dumps(pairs)
