"""A real HTTP server on 127.0.0.1 that speaks the Chat Completions API, with injectable faults.

Usage:
    server = FakeChatServer(reply=lambda request: "[...]", faults=FaultSchedule.random(0.4, seed=0))
    with server:                      # or server.start() / server.stop()
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
        ...
    server.calls                      # one CallRecord per request whose body arrived

`reply(request_json) -> str` makes the assistant text of a healthy response. A fault replaces or
corrupts it: "rate_limit" (429 + Retry-After), "server_error" (500), "hang" (silent for `hang_s`),
"truncated" (the reply cut mid-way, finish_reason "length"), "prose" (reply wrapped in prose and a
code fence), "non_json" (a refusal sentence). Faults come from a FaultSchedule, a function of the
call index and the request, so runs are reproducible.

Two more kinds, never drawn by `FaultSchedule.random` unless asked for, model an endpoint that
echoes the caller's API key (taken from the Authorization header) back in every encoding
`key_echo` makes: "echo_key" appends it to every answer of a healthy reply, "echo_key_error"
answers 400 with it in the error message.
"""

from __future__ import annotations

import base64
import json
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import quote, quote_plus

FAULT_KINDS = ("rate_limit", "server_error", "hang", "truncated", "prose", "non_json")
ECHO_KINDS = ("echo_key", "echo_key_error")


def key_echo(key: str) -> str:
    """`key` raw, URL-encoded (quote, quote_plus, lower-case hex), JSON-escaped (minimal and every
    character as \\uXXXX) and base64 (alone, and after "Bearer " in the URL-safe alphabet)."""
    url = quote(key, safe="")
    head, *escapes = url.split("%")
    forms = [key, url, quote(key), quote_plus(key),
             "%".join([head] + [e[:2].lower() + e[2:] for e in escapes]),
             json.dumps(key)[1:-1], "".join(f"\\u{ord(c):04x}" for c in key),
             base64.b64encode(key.encode()).decode(),
             base64.urlsafe_b64encode(b"Bearer " + key.encode()).decode()]
    return " | ".join(forms)


@dataclass
class CallRecord:
    index: int
    path: str
    request: dict[str, Any]
    fault: str | None
    authorized: bool


class FaultSchedule:
    """Decides the fault (or None) for each call: `fault_for(call_index, request_json)`."""

    def __init__(self, fn: Callable[[int, dict[str, Any]], str | None]):
        self._fn = fn

    def fault_for(self, index: int, request: dict[str, Any]) -> str | None:
        return self._fn(index, request)

    @classmethod
    def none(cls) -> FaultSchedule:
        return cls(lambda index, request: None)

    @classmethod
    def random(
        cls, rate: float, seed: int = 0, kinds: tuple[str, ...] = FAULT_KINDS
    ) -> FaultSchedule:
        """Each call independently faulty with probability `rate`, kind uniform over `kinds`."""
        unknown = set(kinds) - set(FAULT_KINDS) - set(ECHO_KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}")
        rng, lock = random.Random(seed), threading.Lock()

        def pick(index: int, request: dict[str, Any]) -> str | None:
            with lock:
                return rng.choice(kinds) if rng.random() < rate else None

        return cls(pick)

    @classmethod
    def sequence(cls, faults: list[str | None]) -> FaultSchedule:
        """Call i gets faults[i]; calls past the end are healthy."""
        return cls(lambda index, request: faults[index] if index < len(faults) else None)


class FakeChatServer:
    """Threaded Chat Completions server; `base_url` ends in /v1 like OpenAI's."""

    def __init__(
        self,
        reply: Callable[[dict[str, Any]], str],
        faults: FaultSchedule | None = None,
        *,
        retry_after_s: float = 0.05,
        hang_s: float = 5.0,
        delay_s: float = 0.0,
        expected_key: str | None = None,
    ):
        self.reply, self.faults = reply, faults or FaultSchedule.none()
        self.retry_after_s, self.hang_s, self.delay_s = retry_after_s, hang_s, delay_s
        self.expected_key = expected_key
        self.calls: list[CallRecord] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> FakeChatServer:
        handler = type("Handler", (_Handler,), {"owner": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fault_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for call in self.calls:
            key = call.fault or "ok"
            counts[key] = counts.get(key, 0) + 1
        return counts

    def _record(self, path: str, request: dict[str, Any], authorized: bool) -> CallRecord:
        with self._lock:
            index = len(self.calls)
            fault = self.faults.fault_for(index, request)
            call = CallRecord(index, path, request, fault, authorized)
            self.calls.append(call)
            return call


def completion_body(model: str, content: str, finish_reason: str = "stop") -> dict[str, Any]:
    """A Chat Completions response object holding `content`."""
    prompt_tokens = 100
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": max(1, len(content) // 4),
            "total_tokens": prompt_tokens + max(1, len(content) // 4),
        },
    }


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that time out and hang up on a "hang" fault are expected, not errors."""


class _Handler(BaseHTTPRequestHandler):
    owner: FakeChatServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Silent: nothing about requests (or their Authorization header) is logged."""

    def _send_json(self, status: int, body: dict[str, Any], headers: dict[str, str] = {}) -> None:  # noqa: B006
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - stdlib naming
        owner = self.owner
        length = int(self.headers.get("Content-Length", 0))
        body = self.rfile.read(length)
        try:
            request = json.loads(body)
        except json.JSONDecodeError:  # the client hung up mid-body (e.g. its timeout fired)
            self.close_connection = True
            return
        authorized = owner.expected_key is None or (
            self.headers.get("Authorization") == f"Bearer {owner.expected_key}"
        )
        call = owner._record(self.path, request, authorized)
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._send_json(404, {"error": {"message": "not found", "type": "invalid_request"}})
            return
        if not authorized:
            self._send_json(401, {"error": {"message": "bad key", "type": "invalid_api_key"}})
            return
        if owner.delay_s:
            owner._stopping.wait(owner.delay_s)
        model = request.get("model", "fake-model")
        fault = call.fault
        if fault == "rate_limit":
            self._send_json(
                429,
                {"error": {"message": "rate limited", "type": "rate_limit_exceeded"}},
                {"Retry-After": f"{owner.retry_after_s:g}"},
            )
            return
        if fault == "server_error":
            self._send_json(500, {"error": {"message": "internal error", "type": "server_error"}})
            return
        if fault == "echo_key_error":
            key = self.headers.get("Authorization", "").removeprefix("Bearer ")
            self._send_json(400, {"error": {"message": f"invalid request for key {key_echo(key)}",
                                            "type": "invalid_request_error"}})
            return
        if fault == "hang":
            owner._stopping.wait(owner.hang_s)
            self.close_connection = True
            return
        content = owner.reply(request)
        finish_reason = "stop"
        if fault == "truncated":
            content, finish_reason = content[: max(1, int(len(content) * 0.7))], "length"
        elif fault == "prose":
            content = f"Sure! Here is the JSON you asked for:\n```json\n{content}\n```\nEnjoy."
        elif fault == "non_json":
            content = "I'm sorry, but I can't help with that request."
        elif fault == "echo_key":
            key = self.headers.get("Authorization", "").removeprefix("Bearer ")
            pairs = json.loads(content)
            for pair in pairs:
                pair["answer"] += f" (key: {key_echo(key)})"
            content = json.dumps(pairs)
        self._send_json(200, completion_body(model, content, finish_reason))
