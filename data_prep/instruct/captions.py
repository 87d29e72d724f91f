"""Captions -> one QA pair each, the question drawn (seeded) from short or long caption prompts.

MusicCaps and YT8M-MusicTextClips captions are used as provided (short prompts); MusicNet captions
are generated from MIDI notes and are long (long prompts).
"""

from __future__ import annotations

import random
from typing import Any

SHORT_CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe this clip in a sentence or two.",
    "Give a brief description of the music you hear.",
    "Summarize this piece of music briefly.",
    "What does this clip sound like? Keep it short.",
    "Write a short caption for this audio.",
    "In a few words, how would you describe this music?",
    "Briefly, what is going on in this recording?",
    "Give me a quick overview of this track.",
    "Caption this music clip.",
    "How would you sum up this excerpt for a friend?",
    "Describe the sound of this clip concisely.",
    "What kind of music is this? Answer briefly.",
    "Provide a short summary of the audio.",
    "Tell me, in short, what you hear.",
    "Write a one-line description of this song.",
    "Give a compact description of the music in this clip.",
)
LONG_CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the contents of this clip in detail.",
    "Give a detailed musical description of what you hear.",
    "Walk me through this excerpt, describing each instrument and what it plays.",
    "Describe this music as a music expert would, in depth.",
    "What happens in this recording from beginning to end? Be thorough.",
    "Write a rich description of this piece, covering melody, harmony and texture.",
    "Explain in detail how this excerpt is put together musically.",
    "Provide an in-depth description of the audio.",
    "Describe the arrangement, themes and harmonic movement of this clip in detail.",
    "Give a thorough account of the music in this excerpt.",
    "Describe this passage carefully, including the order in which the instruments play.",
    "Tell me everything you notice about this music.",
)
PROVIDED_CAPTION_FIELDS = {"musiccaps": "caption", "yt8m-musictextclips": "text"}
LONG_CAPTION_DATASETS = frozenset({"musicnet", "demo"})


def caption_prompts(dataset: str) -> tuple[str, ...]:
    """Long prompts for datasets with detailed (generated) captions, short ones otherwise."""
    return LONG_CAPTION_PROMPTS if dataset in LONG_CAPTION_DATASETS else SHORT_CAPTION_PROMPTS


def caption_to_qa(caption: str, clip_id: str, dataset: str, seed: int) -> dict[str, str]:
    """One {question, answer, task} pair; the question depends only on (seed, clip_id, dataset)."""
    rng = random.Random(f"{seed}:{dataset}:{clip_id}")
    question = rng.choice(caption_prompts(dataset))
    return {"question": question, "answer": caption.strip(), "task": "captioning"}


def provided_caption(record: dict[str, Any], dataset: str) -> str:
    """The caption a captioning dataset ships with; raises KeyError naming the missing field."""
    field_name = PROVIDED_CAPTION_FIELDS[dataset]
    caption = record.get(field_name)
    if not isinstance(caption, str) or not caption.strip():
        raise KeyError(f"{dataset} record has no caption in field {field_name!r}")
    return caption
