"""Fault-tolerant Chat Completions requests: messages -> parsed reply, with bounded retries.

`ChatClient.request(messages, parse=...)` is the reusable core (instruction generation and the GPT
judge both use it). Every failure mode is retried up to `max_attempts` in total: 429 (waiting at
least the server's `Retry-After`), 5xx, timeouts, connection errors, and replies that fail `parse`
(e.g. non-JSON). Backoff is exponential with jitter. Non-retryable errors (401, 400, ...) fail at
once.
The API key is read from `OPENAI_API_KEY` only and never appears in errors, logs or results:
error messages go through `llark_jax.llm.redact.Redactor`, which removes it raw, URL-encoded,
JSON-escaped and base64 (an endpoint may echo it back in any of these).
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from llark_jax.llm.errors import ReplyParseError, ReplySchemaError
from llark_jax.llm.redact import Redactor

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"


class MissingApiKeyError(RuntimeError):
    """OPENAI_API_KEY is not set."""


class RequestFailedError(RuntimeError):
    """All attempts failed; `reason` is a short category ("rate_limit", "timeout", "parse", ...)."""

    def __init__(self, reason: str, message: str, attempts: int, usage: dict[str, int],
                 retried: dict[str, int]):
        super().__init__(f"{reason} after {attempts} attempt(s): {message}")
        self.reason, self.message, self.attempts, self.usage = reason, message, attempts, usage
        self.retried = retried


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded attempts with exponential backoff and full jitter; times in seconds."""

    max_attempts: int = 6
    timeout_s: float = 120.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    retry_after_max_s: float = 120.0

    def backoff_s(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based): U(0.5, 1) * capped 2^n."""
        cap = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        return cap * (0.5 + 0.5 * rng.random())


@dataclass
class ChatResult:
    """A successful request: parsed value, raw text, attempts, token usage, retried failures."""

    value: Any
    text: str
    finish_reason: str | None
    attempts: int
    usage: dict[str, int] = field(default_factory=dict)
    retried: dict[str, int] = field(default_factory=dict)


def _retry_after_s(error: openai.APIStatusError) -> float | None:
    headers = error.response.headers
    if "retry-after-ms" in headers:
        try:
            return float(headers["retry-after-ms"]) / 1000.0
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value)
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def _classify(error: Exception) -> tuple[str, bool, float | None]:
    """(reason, retryable, retry_after_s) for an exception raised by one attempt."""
    if isinstance(error, asyncio.TimeoutError | openai.APITimeoutError):
        return "timeout", True, None
    if isinstance(error, openai.RateLimitError):
        return "rate_limit", True, _retry_after_s(error)
    if isinstance(error, openai.APIStatusError):
        status = error.status_code
        retryable = status >= 500 or status in (408, 409)
        return f"http_{status}", retryable, _retry_after_s(error) if retryable else None
    if isinstance(error, openai.APIConnectionError):
        return "connection", True, None
    if isinstance(error, ReplyParseError):
        return "parse", True, None
    if isinstance(error, ReplySchemaError):
        return "schema", True, None
    return type(error).__name__, False, None


def _checked_parse(parse: Callable[[str], Any], text: str) -> Any:
    """`parse(text)`; any error it raises counts as a retryable parse/schema failure."""
    try:
        return parse(text)
    except (ReplyParseError, ReplySchemaError):
        raise
    except Exception as error:  # noqa: BLE001 - a caller's parser may raise anything
        raise ReplyParseError(f"{type(error).__name__}: {error}") from error


def _add_usage(total: dict[str, int], usage: Any) -> None:
    if usage is None:
        return
    for name in ("prompt_tokens", "completion_tokens"):
        total[name] = total.get(name, 0) + int(getattr(usage, name, 0) or 0)


class ChatClient:
    """Async Chat Completions client with bounded concurrency and bounded, jittered retries."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        policy: RetryPolicy | None = None,
        concurrency: int = 8,
        seed: int = 0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        api_key = os.environ.get(API_KEY_ENV)
        if not api_key:
            raise MissingApiKeyError(f"set {API_KEY_ENV} to use the OpenAI backend")
        self._api_key = api_key
        self._redactor = Redactor(api_key)
        self.policy = policy or RetryPolicy()
        self._openai = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url or os.environ.get(BASE_URL_ENV) or None,
            max_retries=0,  # retries are ours, so they are bounded, jittered and counted
            timeout=self.policy.timeout_s,
        )
        self._semaphore = asyncio.Semaphore(concurrency)
        self._rng = random.Random(seed)
        self._sleep = sleep

    def redact(self, text: str) -> str:
        """`text` with the API key removed in every encoding (`Redactor`)."""
        return self._redactor(text)

    async def _attempt(self, model: str, messages: list[dict[str, str]], options: dict[str, Any]):
        async with self._semaphore:
            return await asyncio.wait_for(
                self._openai.chat.completions.create(model=model, messages=messages, **options),
                timeout=self.policy.timeout_s,
            )

    async def request(
        self,
        messages: list[dict[str, str]],
        *,
        model: str,
        parse: Callable[[str], Any] = str,
        **options: Any,
    ) -> ChatResult:
        """Sends `messages` until `parse(reply_text)` succeeds; raises RequestFailedError.

        Whatever `parse` raises is a retryable "parse" failure ("schema" for ReplySchemaError).

        `options` go to `chat.completions.create` (temperature, max_tokens, ...).
        """
        usage: dict[str, int] = {}
        retried: dict[str, int] = {}
        for attempt in range(1, self.policy.max_attempts + 1):
            try:
                response = await self._attempt(model, messages, options)
                _add_usage(usage, response.usage)
                choice = response.choices[0]
                text = self.redact(choice.message.content or "")  # an echoed key stops here
                value = _checked_parse(parse, text)
                return ChatResult(value, text, choice.finish_reason, attempt, usage, retried)
            except Exception as error:  # noqa: BLE001 - every failure is classified below
                reason, retryable, retry_after = _classify(error)
                message = self.redact(str(error) or type(error).__name__)[:300]
                if not retryable or attempt == self.policy.max_attempts:
                    raise RequestFailedError(reason, message, attempt, usage, retried) from None
                retried[reason] = retried.get(reason, 0) + 1
                delay = self.policy.backoff_s(attempt, self._rng)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self.policy.retry_after_max_s))
                await self._sleep(delay)
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self._openai.close()


def request_once(
    messages: list[dict[str, str]],
    *,
    model: str,
    parse: Callable[[str], Any] = str,
    base_url: str | None = None,
    policy: RetryPolicy | None = None,
    **options: Any,
) -> ChatResult:
    """Synchronous one-off `ChatClient.request` (scripts, or the judge outside an event loop)."""

    async def run() -> ChatResult:
        client = ChatClient(base_url=base_url, policy=policy, concurrency=1)
        try:
            return await client.request(messages, model=model, parse=parse, **options)
        finally:
            await client.close()

    return asyncio.run(run())
