"""OpenAI chat-completions request bodies -> turns, audio references and sampling settings.

Accepted (everything else in the body is ignored unless listed as rejected):
- `messages`: `system`/`developer` (text: replaces the template's system prompt), `user` and
  `assistant` turns; consecutive user messages are joined with a newline; the last turn must be
  a user turn. A user `content` is a string or a list of parts:
    `{"type": "text", "text": ...}`,
    `{"type": "input_audio", "input_audio": {"data": BASE64, "format": "wav"}}` (OpenAI's shape;
      `format` is informational, content is identified by decoding),
    `{"type": "file", "file": {"file_id": "file-..."}}` (a clip uploaded with `POST /v1/files`).
- `max_completion_tokens` or `max_tokens` (default: the server's `--default-max-tokens`),
  `temperature` (default 0 = greedy, the paper's setting), `top_p`, `seed`, `stream`,
  `stream_options.include_usage`, `n` (must be 1).
- Rejected with 400: `stop` (the template's stop sequence is used), `tools`, `n` > 1, a
  `max_tokens` that is not a positive integer (0, `true`, 1.5), a non-boolean `stream`, text that
  is not a string, and more than `max_text_bytes` of UTF-8 text in all messages together (checked
  before tokenizing: `context_length_exceeded`).

`parse_json_body` turns the raw bytes into JSON (strict UTF-8; lone surrogates, nesting deeper
than `MAX_JSON_DEPTH` and anything `json.loads` refuses, deep recursion included, are 400s).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

MAX_JSON_DEPTH = 64


class RequestError(Exception):
    """A request that cannot be served: HTTP status, OpenAI error code, message, offending param."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


@dataclasses.dataclass(frozen=True)
class AudioRef:
    """One clip of a request: base64 data or an uploaded file id."""

    data: str | None = None
    file_id: str | None = None


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    model: str
    exchanges: list[tuple[str, str]]  # (question, answer); the last answer is ""
    system_prompt: str | None
    audio: list[AudioRef]
    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    stream: bool
    include_usage: bool


def _bad(message: str, param: str | None = None) -> RequestError:
    return RequestError(400, "invalid_request_error", message, param)


def _invalid_json(reason: str) -> RequestError:
    return RequestError(400, "invalid_json", f"the body is not valid JSON: {reason}")


def parse_json_body(raw: bytes) -> Any:
    """The decoded JSON of a UTF-8 request body (raises a 400 `RequestError` otherwise)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise _invalid_json(f"not UTF-8 ({err.reason} at byte {err.start})") from None
    try:
        body = json.loads(text)
    except RecursionError:
        raise _invalid_json(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as err:  # JSONDecodeError, integers over Python's digit limit
        raise _invalid_json(str(err)) from None
    _check_tree(body)
    return body


def _check_tree(body: Any) -> None:
    """Nesting depth <= MAX_JSON_DEPTH and no lone surrogate (`"\\ud800"`) in any string."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise _invalid_json(f"nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(value, dict):
                for key, item in value.items():
                    _check_string(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            _check_string(value)


def _check_string(text: str) -> None:
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise _invalid_json(f"a string holds a lone surrogate (U+{ord(text[err.start]):04X}), "
                            "which is not Unicode text") from None


def _parts(content: Any, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad(f"{where}.content must be a string or a list of parts", where)
    for i, part in enumerate(content):
        if not isinstance(part, dict) or "type" not in part:
            raise _bad(f"{where}.content[{i}] must be an object with a 'type'", where)
    return content


def _user_content(content: Any, where: str, audio: list[AudioRef]) -> str:
    texts = []
    for i, part in enumerate(_parts(content, where)):
        kind, at = part["type"], f"{where}.content[{i}]"
        if kind == "text":
            texts.append(_text(part, at))
        elif kind == "input_audio":
            body = part.get("input_audio")
            if not isinstance(body, dict) or not isinstance(body.get("data"), str):
                raise _bad(f"{at}.input_audio.data must be a base64 string", at)
            audio.append(AudioRef(data=body["data"]))
        elif kind == "file":
            body = part.get("file")
            if not isinstance(body, dict) or not isinstance(body.get("file_id"), str):
                raise _bad(f"{at}.file.file_id must be a string (upload with POST /v1/files)", at)
            audio.append(AudioRef(file_id=body["file_id"]))
        else:
            raise _bad(f"{at}: unsupported content part type {kind!r}", at)
    return "\n".join(t for t in texts if t)


def _text(part: dict, where: str) -> str:
    text = part.get("text", "")
    if not isinstance(text, str):
        raise _bad(f"{where}.text must be a string", where)
    return text


def _text_only(content: Any, where: str) -> str:
    parts = _parts(content, where)
    if any(p["type"] != "text" for p in parts):
        raise _bad(f"{where}: only text parts are allowed in this role", where)
    return "\n".join(_text(p, f"{where}.content[{i}]") for i, p in enumerate(parts))


def _max_tokens(body: dict, default: int, limit: int) -> int:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
            raise _bad(f"{name} must be an integer in [1, {limit}], got {value!r}", name)
        return value
    return default


def _join(texts: list[str]) -> str:
    return "\n".join(t for t in texts if t)


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        raise _bad(f"{name} must be a number in [{low}, {high}], got {value!r}", name)
    return float(value)


def parse_chat_request(
    body: Any, *, default_max_tokens: int, max_tokens_limit: int, max_clips: int,
    max_text_bytes: int | None = None,
) -> ChatRequest:
    """Validates a decoded JSON body (raises `RequestError` naming the offending field)."""
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    for name in ("stop", "tools", "functions", "audio"):
        if body.get(name):
            raise _bad(f"{name!r} is not supported by this server", name)
    n = body.get("n", 1)
    if n is not None and (isinstance(n, bool) or n != 1):
        raise _bad("only n=1 is supported", "n")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty list", "messages")
    system, audio, exchanges = None, [], []
    question: list[str] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role") if isinstance(message, dict) else None
        if role in ("system", "developer"):
            system = _text_only(message.get("content", ""), where)
        elif role == "user":
            question.append(_user_content(message.get("content", ""), where, audio))
        elif role == "assistant":
            if not question:
                raise _bad(f"{where}: an assistant turn must follow a user turn", where)
            exchanges.append((_join(question), _text_only(message.get("content") or "",
                                                                where)))
            question = []
        else:
            raise _bad(f"{where}.role must be system, developer, user or assistant", where)
    if not question:
        raise _bad("the last message must be a user message", "messages")
    exchanges.append((_join(question), ""))
    if len(audio) > max_clips:
        raise _bad(f"{len(audio)} audio clips; at most {max_clips} per request", "messages")
    if max_text_bytes is not None:
        texts = [system or "", *(t for turn in exchanges for t in turn)]
        size = sum(len(t.encode("utf-8")) for t in texts)
        if size > max_text_bytes:
            raise RequestError(400, "context_length_exceeded", f"the messages hold {size} bytes "
                               f"of text; the limit is {max_text_bytes} bytes (a prompt this "
                               "long exceeds the context window)", "messages")
    max_tokens = _max_tokens(body, default_max_tokens, max_tokens_limit)
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _bad("seed must be an integer", "seed")
    options = body.get("stream_options") or {}
    model = body.get("model", "")
    if not isinstance(model, str):
        raise _bad("model must be a string", "model")
    return ChatRequest(
        model=model, exchanges=exchanges, system_prompt=system, audio=audio,
        max_tokens=max_tokens, temperature=_number(body, "temperature", 0.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-9, 1.0), seed=int(seed or 0) % 2**31,
        stream=bool(stream),
        include_usage=bool(isinstance(options, dict) and options.get("include_usage")),
    )  # fmt: skip
