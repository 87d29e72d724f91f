"""System prompts per (task family, dataset), the metadata sent with them, and model defaults.

Prompt files live in `prompts/{task}-{dataset}.txt`; a line `@include NAME` is replaced by the text
of `prompts/NAME.txt`, so shared parts (persona, madmom glossary, rules, output format) exist once.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

PROMPT_DIR = Path(__file__).parent / "prompts"
TASKS = ("mir", "reasoning", "captioning")
REASONING_TRACK_CAP = 25_000  # paper G.1.1: reasoning data is a random 25k-track subsample

# Never sent to the model: identifiers, file locations, crop windows, and the fields the prompts
# forbid asking about (title/artist/album). MusicNet's composer/composition stay: its prompts use
# them.
EXCLUDED_FIELDS = frozenset(
    {
        "id", "uri", "clip_id", "example_id", "track_id", "track.id", "ytid", "video_id",
        "path", "audio", "audio_path", "audio_file", "wav_path", "mp3_path", "file", "filename",
        "start_secs", "end_secs", "crop_start", "crop_end", "segmentStart", "segmentEnd", "chunk",
        "split", "dataset", "url", "original_url", "title", "artist", "album", "track.title",
        "artist.name", "album.title", "caption", "text",
    }
)

# Paper G.1.1: GPT-4 for reasoning; GPT-3.5-turbo otherwise, its 16k variant where metadata is long.
LONG_METADATA_DATASETS = frozenset({"magnatagatune", "musicnet"})
SHORT_CONTEXT_MODEL, LONG_CONTEXT_MODEL = "gpt-3.5-turbo", "gpt-3.5-turbo-16k"
SHORT_CONTEXT_TOKENS = 4096
RESPONSE_TOKEN_RESERVE = 1500


class PromptNotFoundError(FileNotFoundError):
    """No prompt file exists for the requested (task, dataset)."""


def available_prompts() -> list[tuple[str, str]]:
    """All (task, dataset) pairs that have a prompt file."""
    pairs = []
    for path in sorted(PROMPT_DIR.glob("*.txt")):
        if path.name.startswith("_"):
            continue
        task, _, dataset = path.stem.partition("-")
        pairs.append((task, dataset))
    return pairs


def _resolve(text: str, depth: int = 0) -> str:
    if depth > 4:
        raise ValueError("prompt @include nesting deeper than 4")
    lines = []
    for line in text.splitlines():
        if line.startswith("@include "):
            part = PROMPT_DIR / f"{line.split(maxsplit=1)[1].strip()}.txt"
            lines.append(_resolve(part.read_text(encoding="utf-8"), depth + 1).rstrip("\n"))
        else:
            lines.append(line)
    return "\n".join(lines)


def load_prompt(task: str, dataset: str) -> str:
    """The full system prompt for `task` on `dataset`, includes resolved."""
    path = PROMPT_DIR / f"{task}-{dataset}.txt"
    if not path.is_file():
        known = ", ".join(f"{t}/{d}" for t, d in available_prompts())
        raise PromptNotFoundError(f"no prompt for task={task!r} dataset={dataset!r}; have: {known}")
    return _resolve(path.read_text(encoding="utf-8")).strip() + "\n"


def text_hash(text: str) -> str:
    """Short stable hash of a prompt (part of every result key, so prompt edits redo the work)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def sanitize_metadata(record: dict[str, Any]) -> dict[str, Any]:
    """The record minus ids, paths, crop times and forbidden fields (and empty values)."""
    return {
        k: v
        for k, v in record.items()
        if k not in EXCLUDED_FIELDS and not k.endswith("_path") and v is not None and v != ""
    }


def build_messages(system_prompt: str, record: dict[str, Any]) -> list[dict[str, str]]:
    """Chat messages: the system prompt, then the sanitized record as a one-element JSON list."""
    user = json.dumps([sanitize_metadata(record)], ensure_ascii=False, default=str)
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def estimate_tokens(messages: list[dict[str, str]]) -> int:
    """Rough token count (4 characters per token), enough to pick a context size."""
    return sum(len(m["content"]) for m in messages) // 4 + 8 * len(messages)


def choose_model(task: str, dataset: str, prompt_tokens: int, override: str | None = None) -> str:
    """The paper's model choice, or `override`; the 16k model for long metadata or prompts."""
    if override:
        return override
    if task == "reasoning":
        return "gpt-4"
    too_long = prompt_tokens + RESPONSE_TOKEN_RESERVE > SHORT_CONTEXT_TOKENS
    if dataset in LONG_METADATA_DATASETS or too_long:
        return LONG_CONTEXT_MODEL
    return SHORT_CONTEXT_MODEL
