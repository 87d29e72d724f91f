"""Conversation templates (as data) and segment-wise token ids with an explicit label mask.

An example is assembled from segments that are tokenized one by one, never from a rendered string
that is searched afterwards (spec §2.3-2.4):

    [BOS] system header | user prefix | audio block(s) / question | user suffix
          | assistant prefix | answer | assistant suffix (+ final suffix after the last turn)

The audio block of one clip is `<audio_start>` + n x `<audio_patch>` + `<audio_end>` (only the n
patches when `template.audio_marker_tokens` is False); all blocks of a turn sit between the plain
texts `template.audio_open` / `template.audio_close` and go before the question (`audio_first`,
which `template.audio_first` fixes when set) or after it, joined by `template.audio_separator`.
`template.max_answer_tokens` caps every answer (tokens beyond it are dropped before the suffix).

MusiLingo's templates (its released code): `MUSILINGO` (stage 2) is
`<s>###Human: <Audio>[audio]</Audio> {question} ###Assistant: {answer}###` with the loss on the
answer and `###` (answers capped at 160 tokens); `MUSILINGO_CAPTION` (stage 1) is
`<s>[audio]{caption}\n` with the loss on the caption and `\n` (captions capped at 32 tokens).
Neither has a system prompt or audio marker tokens, and the audio always comes first.

Labels use the unshifted Hugging Face convention: `labels[t] = input_ids[t]` where position t is
supervised, `IGNORE_INDEX` (-100) elsewhere; the loss shifts by one.

Supervision (FastChat-v0, the LLark default) follows the reference: the whole assistant turn is
supervised, including its `### Assistant: ` header and the trailing `\\n### `; the system header,
the human turn and all audio positions are not. The reference's "+2" quirk (the `###` that opens
each human turn stays supervised because of a BOS/`###` length coincidence, spec §2.3) is NOT
reproduced by `FASTCHAT_V0`; the variant `FASTCHAT_V0_REFERENCE_MASK` reproduces it
(`supervised_user_lead`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from llark_jax.data.batch import IGNORE_INDEX

AUDIO_PATCH_TOKEN = "<audio_patch>"
AUDIO_START_TOKEN = "<audio_start>"
AUDIO_END_TOKEN = "<audio_end>"

REFERENCE_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


class ExampleTooLong(ValueError):
    """The prompt (all turns before the last answer, audio blocks included) exceeds `max_len`.

    The pipeline drops such an example and counts it; audio blocks are never cut.
    """

    def __init__(self, prompt_len: int, max_len: int):
        super().__init__(
            f"prompt of {prompt_len} tokens (audio included) + 1 answer token does not fit "
            f"max_len={max_len}"
        )
        self.prompt_len = prompt_len
        self.max_len = max_len


class TemplateError(ValueError):
    """A tokenizer chat template cannot be expressed as a `ConversationTemplate`."""


@dataclasses.dataclass(frozen=True)
class ConversationTemplate:
    """A chat format as data. Strings may contain `{bos}` / `{eos}` (the tokenizer's tokens).

    user turn      = supervised_user_lead + (first_user_prefix or user_prefix) + content
                     + user_suffix
    assistant turn = assistant_prefix + answer + assistant_suffix (+ final_suffix after the last)
    """

    name: str
    system_prompt: str
    system_format: str  # contains "{system}"; unsupervised
    user_prefix: str
    user_suffix: str
    assistant_prefix: str
    assistant_suffix: str
    final_suffix: str = ""
    first_user_prefix: str | None = None
    audio_separator: str = "\n"
    add_bos: bool = False
    supervise_assistant_prefix: bool = False
    supervised_user_lead: str = ""
    audio_open: str = ""  # plain text before the audio block(s), e.g. MusiLingo's "<Audio>"
    audio_close: str = ""  # plain text after them, e.g. "</Audio>"
    audio_marker_tokens: bool = True  # <audio_start>/<audio_end> around each clip's patches
    audio_first: bool | None = None  # fixed audio position (None: the caller's audio_first)
    max_answer_tokens: int | None = None  # cap on each answer's tokens (None: no cap)


FASTCHAT_V0 = ConversationTemplate(
    name="fastchat_v0",
    system_prompt=REFERENCE_SYSTEM_PROMPT,
    system_format="{system}\n\n",
    user_prefix="### Human: ",
    user_suffix="\n",
    assistant_prefix="### Assistant: ",
    assistant_suffix="\n",
    final_suffix="### ",
    add_bos=True,
    supervise_assistant_prefix=True,
)

FASTCHAT_V0_REFERENCE_MASK = dataclasses.replace(
    FASTCHAT_V0,
    name="fastchat_v0_reference_mask",
    user_prefix=" Human: ",
    supervised_user_lead="###",
)

LLAMA2_INST = ConversationTemplate(
    name="llama2_inst",
    system_prompt=REFERENCE_SYSTEM_PROMPT,
    system_format="[INST] <<SYS>>\n{system}\n<</SYS>>\n\n",
    first_user_prefix="",
    user_prefix="{bos}[INST] ",
    user_suffix=" [/INST]",
    assistant_prefix=" ",
    assistant_suffix=" {eos}",
    add_bos=True,
)

MUSILINGO = ConversationTemplate(
    name="musilingo",
    system_prompt="",
    system_format="",
    user_prefix="###Human: ",
    user_suffix=" ",
    assistant_prefix="###Assistant: ",
    assistant_suffix="###",
    audio_separator=" ",
    add_bos=True,
    audio_open="<Audio>",
    audio_close="</Audio>",
    audio_marker_tokens=False,
    audio_first=True,
    max_answer_tokens=160,
)

MUSILINGO_CAPTION = ConversationTemplate(
    name="musilingo_caption",
    system_prompt="",
    system_format="",
    user_prefix="",
    user_suffix="",
    assistant_prefix="",
    assistant_suffix="\n",
    audio_separator="",
    add_bos=True,
    audio_marker_tokens=False,
    audio_first=True,
    max_answer_tokens=32,
)

_TEMPLATES = {t.name: t for t in (FASTCHAT_V0, FASTCHAT_V0_REFERENCE_MASK, LLAMA2_INST,
                                  MUSILINGO, MUSILINGO_CAPTION)}
TOKENIZER_TEMPLATE_NAME = "tokenizer"


def template_from_tokenizer(
    tokenizer: Any, system_prompt: str | None = None
) -> ConversationTemplate:
    """Derive a template from the tokenizer's own Jinja chat template (e.g. SmolLM2's ChatML).

    The chat template is rendered once with sentinel contents; the literal text between sentinels
    gives the prefixes/suffixes. The turn terminator is the text after the last assistant message
    (e.g. `<|im_end|>\\n`); it is supervised as the assistant suffix.
    """
    marks = ["\x01SYS\x01", "\x01U1\x01", "\x01A1\x01", "\x01U2\x01", "\x01A2\x01"]
    roles = ["system", "user", "assistant", "user", "assistant"]
    rendered = tokenizer.apply_chat_template(
        [{"role": r, "content": m} for r, m in zip(roles, marks, strict=True)], tokenize=False
    )
    cut = [rendered.find(m) for m in marks]
    if min(cut) < 0 or cut != sorted(cut):
        raise TemplateError(f"chat template of {type(tokenizer).__name__} drops or reorders turns")
    between = [rendered[cut[i] + len(marks[i]) : cut[i + 1]] for i in range(4)]
    turn_end = rendered[cut[4] + len(marks[4]) :]
    if not all(b.startswith(turn_end) for b in between) or between[0] != between[2]:
        raise TemplateError(f"chat template turns do not end with a common terminator {turn_end!r}")
    return ConversationTemplate(
        name=TOKENIZER_TEMPLATE_NAME,
        system_prompt=REFERENCE_SYSTEM_PROMPT if system_prompt is None else system_prompt,
        system_format=rendered[: cut[0]] + "{system}" + turn_end,
        user_prefix=between[0][len(turn_end) :],
        user_suffix=turn_end,
        assistant_prefix=between[1][len(turn_end) :],
        assistant_suffix=turn_end,
    )


def get_template(name: str, tokenizer: Any = None) -> ConversationTemplate:
    """Look up a template by name; `"tokenizer"` derives one from `tokenizer.chat_template`."""
    if name == TOKENIZER_TEMPLATE_NAME:
        if tokenizer is None:
            raise TemplateError("template 'tokenizer' needs the tokenizer")
        return template_from_tokenizer(tokenizer)
    if name not in _TEMPLATES:
        raise KeyError(f"unknown conversation template {name!r}; known: {sorted(_TEMPLATES)} + "
                       f"{TOKENIZER_TEMPLATE_NAME!r}")
    return _TEMPLATES[name]


@dataclasses.dataclass(frozen=True)
class AudioTokenIds:
    start: int
    patch: int
    end: int

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> AudioTokenIds:
        names = [AUDIO_START_TOKEN, AUDIO_PATCH_TOKEN, AUDIO_END_TOKEN]
        ids = tokenizer.convert_tokens_to_ids(names)
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise KeyError("tokenizer lacks the LLark audio tokens; extend it first")
        return cls(*ids)


def audio_first_for(seed: int, example_key: str) -> bool:
    """Seeded, order-independent coin (p=0.5): does the audio go before the question?"""
    digest = hashlib.sha256(f"{seed}\x00{example_key}".encode()).digest()
    return digest[0] < 128


def _fmt(text: str, tokenizer: Any) -> str:
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token or ""
    return text.replace("{bos}", bos).replace("{eos}", eos)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(_fmt(text, tokenizer), add_special_tokens=False)) if text else []


def stop_ids(tokenizer: Any, template: ConversationTemplate) -> list[int]:
    """Id sequence that ends every final assistant turn (generation stops when it is produced)."""
    return _encode(tokenizer, template.assistant_suffix + template.final_suffix)


class _Builder:
    """Accumulates (ids, supervised) segments and audio-block positions."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.supervised: list[bool] = []
        self.patch_starts: list[int] = []

    def add(self, ids: Sequence[int], supervised: bool) -> None:
        self.ids.extend(ids)
        self.supervised.extend([supervised] * len(ids))

    def add_audio(self, token_ids: AudioTokenIds, n_frames: int, markers: bool = True) -> None:
        if markers:
            self.add([token_ids.start], False)
        self.patch_starts.append(len(self.ids))
        self.add([token_ids.patch] * n_frames + ([token_ids.end] if markers else []), False)

    def add_audio_blocks(self, tokenizer: Any, template: ConversationTemplate,
                         token_ids: AudioTokenIds, frames: Sequence[int]) -> None:
        """`template.audio_open` + one block per segment + `template.audio_close`, unsupervised."""
        self.add(_encode(tokenizer, template.audio_open), False)
        for n in frames:
            self.add_audio(token_ids, n, template.audio_marker_tokens)
        self.add(_encode(tokenizer, template.audio_close), False)


def build_example(
    tokenizer: Any,
    template: ConversationTemplate,
    question: str,
    answer: str,
    n_audio_frames: int | Sequence[int],
    audio_first: bool,
    *,
    audio_token_ids: AudioTokenIds | None = None,
    max_len: int | None = None,
    turns: Sequence[tuple[str, str]] | None = None,
) -> dict[str, Any]:
    """Token ids and labels of one (possibly multi-turn) conversation about one or more clips.

    Args:
      question, answer: first exchange; the audio block(s) go into this human turn.
      n_audio_frames: frames per audio segment (int = one segment; a sequence = several segments,
        placed back to back).
      audio_first: audio block(s) before the question (else after), see `audio_first_for`;
        ignored when `template.audio_first` fixes the position.
      turns: follow-up (question, answer) exchanges without audio.
      max_len: right-truncate the last answer to fit; raise `ExampleTooLong` when the prompt
        (everything before the last answer, all audio included) + 1 answer token does not fit.

    Returns dict with `input_ids` [L] int32, `labels` [L] int32 (IGNORE_INDEX = -100, unshifted),
    `n_audio_segments`, `audio_frames` (frames per segment), `audio_patch_starts` (position of the
    first `<audio_patch>` of each segment), `truncated` (answer tokens dropped by `max_len`) and
    `answer_capped` (answer tokens dropped by `template.max_answer_tokens`).
    """
    frames = [n_audio_frames] if isinstance(n_audio_frames, int) else list(n_audio_frames)
    if any(n < 0 for n in frames):
        raise ValueError(f"n_audio_frames must be >= 0, got {frames}")
    tok_ids = audio_token_ids or AudioTokenIds.from_tokenizer(tokenizer)
    if template.audio_first is not None:
        audio_first = template.audio_first
    exchanges = [(question, answer), *(turns or [])]
    b = _Builder()
    capped = 0
    if template.add_bos and tokenizer.bos_token_id is not None:
        b.add([tokenizer.bos_token_id], False)
    b.add(_encode(tokenizer, template.system_format.replace("{system}", template.system_prompt)),
          False)
    for turn, (q, a) in enumerate(exchanges):
        b.add(_encode(tokenizer, template.supervised_user_lead), True)
        first = turn == 0 and template.first_user_prefix is not None
        b.add(_encode(tokenizer, template.first_user_prefix if first else template.user_prefix),
              False)
        if turn == 0 and audio_first:
            b.add_audio_blocks(tokenizer, template, tok_ids, frames)
            q = template.audio_separator + q
        if turn == 0 and not audio_first:
            b.add(_encode(tokenizer, q + template.audio_separator), False)
            b.add_audio_blocks(tokenizer, template, tok_ids, frames)
            b.add(_encode(tokenizer, template.user_suffix), False)
        else:
            b.add(_encode(tokenizer, q + template.user_suffix), False)
        b.add(_encode(tokenizer, template.assistant_prefix), template.supervise_assistant_prefix)
        prompt_len = len(b.ids)
        last = turn == len(exchanges) - 1
        answer_ids = _encode(tokenizer, a)
        if template.max_answer_tokens is not None:
            capped += max(0, len(answer_ids) - template.max_answer_tokens)
            answer_ids = answer_ids[: template.max_answer_tokens]
        b.add(answer_ids, True)
        suffix = template.assistant_suffix + (template.final_suffix if last else "")
        b.add(_encode(tokenizer, suffix), True)
    truncated = 0
    if max_len is not None and len(b.ids) > max_len:
        if prompt_len + 1 > max_len:
            raise ExampleTooLong(prompt_len, max_len)
        truncated = len(b.ids) - max_len
        del b.ids[max_len:], b.supervised[max_len:]
    input_ids = np.asarray(b.ids, np.int32)
    labels = np.where(np.asarray(b.supervised, bool), input_ids, IGNORE_INDEX).astype(np.int32)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "n_audio_segments": len(frames),
        "audio_frames": frames,
        "audio_patch_starts": list(b.patch_starts),
        "truncated": truncated,
        "answer_capped": capped,
    }


def audio_frame_index(
    length: int,
    patch_starts: Sequence[int],
    audio_frames: Sequence[int],
    frames_per_segment: int,
    *,
    offset: int = 0,
    first_segment: int = 0,
) -> np.ndarray:
    """[length] int32 flat frame index s*T_a + t at `<audio_patch>` positions, 0 elsewhere.

    `offset` shifts the example's positions (packing); `first_segment` is the example's first slot
    in the row's audio[S, T_a, D] (packing several examples into one row).
    """
    index = np.zeros(length, np.int32)
    for k, (start, n) in enumerate(zip(patch_starts, audio_frames, strict=True)):
        if n > frames_per_segment:
            raise ValueError(f"segment of {n} frames exceeds T_a={frames_per_segment}")
        seg = first_segment + k
        index[offset + start : offset + start + n] = seg * frames_per_segment + np.arange(n)
    return index
