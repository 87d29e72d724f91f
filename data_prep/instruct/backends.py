"""Where QA pairs come from: the OpenAI API, the offline templates, or captions a dataset ships.

Each backend `plan`s a clip (the model and prompt hash that key its result, known before any
request) and `generate`s {"qa": [{question, answer, task}], ...} for it, raising on failure.
"""

from __future__ import annotations

import json
from typing import Any

from data_prep.instruct.captions import (
    LONG_CAPTION_PROMPTS,
    SHORT_CAPTION_PROMPTS,
    caption_to_qa,
    provided_caption,
)
from data_prep.instruct.offline import OFFLINE_MODEL, generate_offline_qa
from data_prep.instruct.parsing import parse_caption_reply, parse_qa_reply
from data_prep.instruct.prompts import (
    build_messages,
    choose_model,
    estimate_tokens,
    load_prompt,
    text_hash,
)
from llark_jax.llm.client import ChatClient


class NoUsablePairsError(ValueError):
    """The record yields no QA pair for this task (e.g. no supported metadata fields)."""


class OpenAIBackend:
    """Chat Completions with the (task, dataset) prompt; captions become one QA pair each."""

    name = "openai"

    def __init__(
        self, task: str, dataset: str, client: ChatClient, model: str | None, seed: int, **options
    ):
        self.task, self.dataset, self.client = task, dataset, client
        self.model_override, self.seed, self.options = model, seed, options
        self.system_prompt = load_prompt(task, dataset)
        self.prompt_hash = text_hash(self.system_prompt)

    def plan(self, clip_id: str, record: dict[str, Any]) -> tuple[str, str]:
        messages = build_messages(self.system_prompt, record)
        tokens = estimate_tokens(messages)
        return choose_model(self.task, self.dataset, tokens, self.model_override), self.prompt_hash

    async def generate(self, clip_id: str, record: dict[str, Any], model: str) -> dict[str, Any]:
        messages = build_messages(self.system_prompt, record)
        parse = parse_caption_reply if self.task == "captioning" else parse_qa_reply
        result = await self.client.request(messages, model=model, parse=parse, **self.options)
        out = {
            "attempts": result.attempts,
            "usage": result.usage,
            "retried": result.retried,
            "finish_reason": result.finish_reason,
        }
        if self.task == "captioning":
            caption = result.value["caption"]
            qa = [caption_to_qa(caption, clip_id, self.dataset, self.seed)]
            return {**out, "qa": qa, "caption": caption}
        qa = [{**pair, "task": self.task} for pair in result.value["qa"]]
        return {**out, "qa": qa, "repaired": result.value["repaired"],
                "dropped": result.value["dropped"]}

    async def close(self) -> None:
        await self.client.close()


class OfflineBackend:
    """Deterministic templates (no API): MIR pairs, and a short caption for `captioning`."""

    name = "offline"

    def __init__(self, task: str, seed: int):
        if task not in ("mir", "captioning"):
            raise ValueError(f"the offline backend makes mir and captioning pairs, not {task!r}")
        self.task, self.seed = task, seed
        self.prompt_hash = text_hash(f"{OFFLINE_MODEL}:{task}:{seed}")

    def plan(self, clip_id: str, record: dict[str, Any]) -> tuple[str, str]:
        return OFFLINE_MODEL, self.prompt_hash

    async def generate(self, clip_id: str, record: dict[str, Any], model: str) -> dict[str, Any]:
        pairs = generate_offline_qa(record, self.seed)
        if self.task == "captioning":
            pairs = [p for p in pairs if p["task"] == "captioning"]
        if not pairs:
            raise NoUsablePairsError("no tempo/key/metre/chords/instruments/genre/mood fields")
        return {"qa": pairs, "attempts": 1}

    async def close(self) -> None:
        return None


class ProvidedCaptionBackend:
    """MusicCaps / YT8M-MusicTextClips: the shipped caption as one QA pair (no model involved)."""

    name = "provided"

    def __init__(self, dataset: str, seed: int):
        self.dataset, self.seed = dataset, seed
        prompts = json.dumps([SHORT_CAPTION_PROMPTS, LONG_CAPTION_PROMPTS])
        self.prompt_hash = text_hash(f"provided:{seed}:{prompts}")

    def plan(self, clip_id: str, record: dict[str, Any]) -> tuple[str, str]:
        return "provided", self.prompt_hash

    async def generate(self, clip_id: str, record: dict[str, Any], model: str) -> dict[str, Any]:
        caption = provided_caption(record, self.dataset)
        return {"qa": [caption_to_qa(caption, clip_id, self.dataset, self.seed)], "attempts": 1}

    async def close(self) -> None:
        return None
