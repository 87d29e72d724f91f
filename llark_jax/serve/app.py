"""The aiohttp application: OpenAI-compatible routes, the web page, limits, auth and errors.

Routes (details and error codes in docs/serving.md):
    GET  /                      the chat page (static/index.html, app.js, app.css; no CDN)
    GET  /healthz               {"status": "ok", "model", "in_flight", "queued", "batches", "rows"}
    GET  /v1/models             the served model
    POST /v1/files              multipart upload of one clip (decoded and encoded on upload)
    GET  /v1/files/{id}         DELETE /v1/files/{id}
    POST /v1/chat/completions   OpenAI chat completions, `stream` via server-sent events

Every error is OpenAI-shaped JSON `{"error": {"message", "type", "param", "code"}}`; unexpected
exceptions become 500 with a generic message (details only in the server log). JSON bodies must
be `Content-Type: application/json` (UTF-8): anything else is 415, so a cross-site page cannot
post a "simple" `text/plain` request to a keyless local server.

A chat request is checked cheapest first: body size (aiohttp), content type and charset, JSON
(parsed off the event loop), fields and the UTF-8 size of its text (`max_text_bytes`, before any
tokenizing), model name, queue capacity (503 before any audio is decoded), audio (header bounds,
then decoding and encoding, off the event loop), then the prompt is tokenized on the tokenizer
thread and queued. A client that disconnects while waiting or streaming is noticed within
`DISCONNECT_POLL_S` or at the next write: its queued request is dropped, its streamed decode is
cancelled, and one INFO line is logged.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import contextlib
import dataclasses
import functools
import hmac
import json
import logging
import resource
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import numpy as np
from aiohttp import web

from llark_jax.infer.generate import PromptTooLong, RowSettings, bucket_length
from llark_jax.serve.audio_input import AudioFeaturizer, AudioInputError, decode_base64_audio
from llark_jax.serve.batcher import BatcherClosed, MicroBatcher, QueueFull
from llark_jax.serve.chat_request import (
    ChatRequest,
    RequestError,
    parse_chat_request,
    parse_json_body,
)
from llark_jax.serve.engine import Engine, TextStream, compile_stats

log = logging.getLogger("llark_jax.serve")
STATIC_DIR = Path(__file__).parent / "static"
FINISH = {"eos": "stop", "stop": "stop", "length": "length"}
DISCONNECT_POLL_S = 0.25  # how often a waiting handler checks that its client is still there


class ClientGone(Exception):
    """The client closed its connection before its answer was complete."""


@dataclasses.dataclass(frozen=True)
class ServerLimits:
    """Request bounds (bytes, tokens, seconds)."""

    max_request_bytes: int = 16 * 2**20
    max_clips: int = 4
    max_files: int = 64
    default_max_tokens: int = 256
    max_tokens_limit: int = 1024
    request_timeout_s: float = 120.0
    max_text_bytes: int = 64 * 1024  # UTF-8 text of all messages, checked before tokenizing


@dataclasses.dataclass
class ServerState:
    engine: Engine
    featurizer: AudioFeaturizer
    batcher: MicroBatcher
    limits: ServerLimits
    api_key: str | None
    in_flight: int = 0  # chat requests being handled
    files: OrderedDict = dataclasses.field(default_factory=OrderedDict)
    disconnects: int = 0  # chat requests whose client left before the answer was complete
    # tokenizing runs here, one prompt at a time (bounded by max_text_bytes; off the event loop)
    tokenizer_thread: concurrent.futures.ThreadPoolExecutor = dataclasses.field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="llark-tokenize"))


STATE = web.AppKey("state", ServerState)


def error_response(status: int, message: str, code: str, param: str | None = None):
    kind = "invalid_request_error" if status < 500 else "server_error"
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return web.json_response(body, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except RequestError as err:
        return error_response(err.status, err.message, err.code, err.param)
    except AudioInputError as err:
        return error_response(err.status, err.message, err.code)
    except web.HTTPRequestEntityTooLarge:
        limit = request.app[STATE].limits.max_request_bytes
        return error_response(413, f"request body exceeds the limit of {limit} bytes",
                              "request_too_large")
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return error_response(err.status, err.reason, err.reason.lower().replace(" ", "_"))
    except Exception:  # noqa: BLE001 - a client never sees a traceback
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal server error", "internal_error")


@web.middleware
async def auth_middleware(request: web.Request, handler):
    key = request.app[STATE].api_key
    if key and request.path.startswith("/v1/"):
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
            return error_response(401, "missing or wrong bearer token", "invalid_api_key")
    return await handler(request)


def _check_json_content_type(request: web.Request) -> None:
    """`application/json`, UTF-8 (or no charset) only: 415 for other media types and charsets,
    400 for a charset that does not exist."""
    if request.content_type != "application/json":
        raise RequestError(415, "unsupported_media_type", "the body must be JSON sent as "
                           f"'Content-Type: application/json', not {request.content_type!r}")
    charset = request.charset
    if charset is None:
        return
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        raise RequestError(400, "invalid_request_error",
                           f"unknown charset {charset[:40]!r} in Content-Type") from None
    if name != "utf-8":
        raise RequestError(415, "unsupported_media_type",
                           f"JSON must be UTF-8; charset {charset[:40]!r} is not supported")


async def _json_body(request: web.Request):
    """The parsed JSON body (413 over the size limit, 415/400 as in `_check_json_content_type`
    and `parse_json_body`); parsing runs off the event loop."""
    _check_json_content_type(request)
    raw = await request.read()
    return await asyncio.get_running_loop().run_in_executor(None, parse_json_body, raw)


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _wait_for_client(request: web.Request, task: asyncio.Future, deadline: float):
    """Waits for `task` until the loop time `deadline`, checking every DISCONNECT_POLL_S that the
    client is still connected: TimeoutError / ClientGone (the task is cancelled then)."""
    loop = asyncio.get_running_loop()
    while True:
        remaining = deadline - loop.time()
        done, _ = await asyncio.wait({task}, timeout=max(0, min(remaining, DISCONNECT_POLL_S)))
        if done:
            return task.result()
        if _client_gone(request):
            task.cancel()
            raise ClientGone
        if remaining <= DISCONNECT_POLL_S:
            task.cancel()
            raise TimeoutError


async def _windows(state: ServerState, data: bytes) -> list[np.ndarray]:
    return await asyncio.get_running_loop().run_in_executor(None, state.featurizer.windows, data)


async def _audio_blocks(state: ServerState, chat: ChatRequest) -> list[np.ndarray]:
    """The audio blocks [T, D] of a request: every window heard of each clip, in order."""
    blocks = []
    for ref in chat.audio:
        if ref.file_id is not None:
            if ref.file_id not in state.files:
                raise RequestError(404, "file_not_found", f"no uploaded file {ref.file_id!r}")
            blocks.extend(state.files[ref.file_id]["windows"])
        else:
            data = decode_base64_audio(ref.data, state.featurizer.limits)
            blocks.extend(await _windows(state, data))
    return blocks


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    state.in_flight += 1
    try:
        return await _chat_completions(request, state)
    finally:
        state.in_flight -= 1


async def _chat_completions(request: web.Request, state: ServerState) -> web.StreamResponse:
    limits = state.limits
    chat = parse_chat_request(
        await _json_body(request), default_max_tokens=limits.default_max_tokens,
        max_tokens_limit=limits.max_tokens_limit, max_clips=limits.max_clips,
        max_text_bytes=limits.max_text_bytes)
    name = state.engine.served.model_name
    if chat.model != name:
        raise RequestError(404, "model_not_found", f"model {chat.model!r} is not served; "
                                                   f"this server serves {name!r}", "model")
    with _service_errors(limits):
        state.batcher.check_capacity()  # a full queue answers 503 before any audio is decoded
    blocks = await _audio_blocks(state, chat)
    sampling = RowSettings(chat.max_tokens, chat.temperature, chat.top_p, chat.seed)
    build = functools.partial(state.engine.build_prompt, chat.exchanges, blocks, sampling,
                              chat.system_prompt)
    try:
        prompt = await asyncio.get_running_loop().run_in_executor(state.tokenizer_thread, build)
        bucket_length(len(prompt.prompt.input_ids), state.engine.length_buckets)
    except PromptTooLong as err:
        raise RequestError(400, "context_length_exceeded", str(err), "messages") from None
    except ValueError as err:
        raise RequestError(400, "invalid_request_error", str(err)) from None
    common = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": name}
    if chat.stream:
        return await _stream(request, state, prompt, common, chat.include_usage)
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(state.batcher.submit(prompt))
    try:
        with _service_errors(limits):
            generation = await _wait_for_client(request, task,
                                                loop.time() + limits.request_timeout_s)
    except ClientGone:
        state.disconnects += 1
        log.info("client disconnected before its answer: %s dropped", common["id"])
        return web.Response(status=499)  # nobody reads it
    message = {"role": "assistant", "content": state.engine.decode(generation.token_ids)}
    return web.json_response({
        **common, "object": "chat.completion", "usage": _usage(prompt, generation),
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": FINISH[generation.finish_reason]}]})


def _usage(prompt, generation) -> dict:
    n_prompt, n_out = len(prompt.prompt.input_ids), len(generation.token_ids)
    return {"prompt_tokens": n_prompt, "completion_tokens": n_out,
            "total_tokens": n_prompt + n_out}


@contextlib.contextmanager
def _service_errors(limits: ServerLimits):
    """Timeouts, shutdown and a full queue as HTTP errors."""
    try:
        yield
    except TimeoutError:
        message = f"no answer within {limits.request_timeout_s:g} s"
        raise RequestError(504, "timeout", message) from None
    except BatcherClosed as err:
        raise RequestError(503, "shutting_down", str(err)) from None
    except QueueFull as err:
        raise RequestError(503, "overloaded", str(err)) from None


async def _stream(request, state: ServerState, prompt, common: dict, include_usage: bool):
    """Server-sent events as tokens are decoded: role chunk, text chunks, finish chunk, optional
    usage chunk, [DONE]. Errors before the first token are ordinary HTTP errors. When the client
    disconnects (noticed while waiting, or as a failed write) the decode is cancelled and one
    INFO line is logged."""
    loop = asyncio.get_running_loop()
    tokens: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()
    prompt = dataclasses.replace(
        prompt, cancel=cancel,
        on_token=lambda t: loop.call_soon_threadsafe(tokens.put_nowait, t))
    task = asyncio.ensure_future(state.batcher.submit(prompt))
    deadline = loop.time() + state.limits.request_timeout_s
    sent = 0

    async def next_token() -> int | None:
        """The next released token, None once generation has finished."""
        if not tokens.empty():
            return tokens.get_nowait()
        getter = asyncio.ensure_future(tokens.get())
        try:
            while True:
                remaining = deadline - loop.time()
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED,
                                             timeout=max(0, min(remaining, DISCONNECT_POLL_S)))
                if getter in done:
                    return getter.result()
                if task in done:
                    task.result()  # raises the generation's error
                    return tokens.get_nowait() if not tokens.empty() else None
                if _client_gone(request):
                    raise ClientGone
                if remaining <= DISCONNECT_POLL_S:
                    raise TimeoutError
        finally:
            getter.cancel()

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})

    async def send(delta: dict, finish_reason: str | None = None) -> None:
        chunk = {**common, "object": "chat.completion.chunk",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason,
                              "logprobs": None}]}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

    try:
        with _service_errors(state.limits):
            first = await next_token()
        await response.prepare(request)
        await send({"role": "assistant", "content": ""})
        text = TextStream(state.engine)
        token = first
        try:
            while token is not None:
                sent += 1
                if delta := text.push(token):
                    await send({"content": delta})
                token = await next_token()
        except TimeoutError:  # the response has started: end it with a finish reason
            await send({}, "length")
        else:
            generation = task.result()
            if rest := text.finish(generation.token_ids):
                await send({"content": rest})
            await send({}, FINISH[generation.finish_reason])
            if include_usage:
                chunk = {**common, "object": "chat.completion.chunk", "choices": [],
                         "usage": _usage(prompt, generation)}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
    except (ClientGone, ConnectionResetError):  # aiohttp's ClientConnectionResetError included
        state.disconnects += 1
        log.info("client disconnected from stream %s after %d tokens: generation cancelled",
                 common["id"], sent)
    finally:
        if not task.done():  # disconnect, timeout, shutdown: stop the work for nobody
            cancel.set()  # a running decode stops before its next step
            task.cancel()  # a queued request is dropped
    return response if response.prepared else web.Response(status=499)


def _file_object(file_id: str, entry: dict) -> dict:
    return {"id": file_id, "object": "file", "bytes": entry["bytes"],
            "created_at": entry["created_at"], "filename": entry["filename"],
            "purpose": entry["purpose"], "status": "processed",
            "audio_tokens": sum(int(w.shape[0]) for w in entry["windows"])}


async def upload_file(request: web.Request) -> web.Response:
    """Multipart `file` (+ `purpose`): decoded, encoded and kept in memory (oldest evicted)."""
    state = request.app[STATE]
    if not request.content_type.startswith("multipart/"):
        raise RequestError(400, "invalid_request_error", "POST /v1/files takes multipart/form-data")
    form = await request.post()
    upload = form.get("file")
    if upload is None or not hasattr(upload, "file"):
        raise RequestError(400, "invalid_request_error", "multipart field 'file' is missing",
                           "file")
    data = upload.file.read(state.featurizer.limits.max_audio_bytes + 1)
    windows = await _windows(state, data)
    file_id = f"file-{uuid.uuid4().hex}"
    state.files[file_id] = {"windows": windows, "bytes": len(data),
                            "created_at": int(time.time()), "purpose": str(form.get("purpose", "")),
                            "filename": Path(str(upload.filename or "audio")).name[:200]}
    while len(state.files) > state.limits.max_files:
        state.files.popitem(last=False)
    return web.json_response(_file_object(file_id, state.files[file_id]))


def _known_file(request: web.Request) -> tuple[ServerState, str]:
    state, file_id = request.app[STATE], request.match_info["file_id"]
    if file_id not in state.files:
        raise RequestError(404, "file_not_found", f"no uploaded file {file_id!r}")
    return state, file_id


async def get_file(request: web.Request) -> web.Response:
    state, file_id = _known_file(request)
    return web.json_response(_file_object(file_id, state.files[file_id]))


async def delete_file(request: web.Request) -> web.Response:
    state, file_id = _known_file(request)
    del state.files[file_id]
    return web.json_response({"id": file_id, "object": "file", "deleted": True})


async def list_models(request: web.Request) -> web.Response:
    served = request.app[STATE].engine.served
    model = {"id": served.model_name, "object": "model", "created": 0, "owned_by": "llark-jax"}
    return web.json_response({"object": "list", "data": [model]})


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


async def healthz(request: web.Request) -> web.Response:
    """Status and counters: requests in flight and queued, batches and rows run (`rows`: requests;
    `computed_rows`: rows the accelerator ran, padding included), streamed decodes cancelled by a
    disconnect, client disconnects, XLA compilations, resident and peak memory."""
    state = request.app[STATE]
    engine = state.engine
    return web.json_response({
        "status": "ok", "model": engine.served.model_name, "in_flight": state.in_flight,
        "queued": state.batcher.pending, "batches": state.batcher.batches_run,
        "rows": state.batcher.rows_run, "computed_rows": engine.rows_computed,
        "cancelled": engine.cancelled, "disconnects": state.disconnects, **compile_stats(),
        "rss_mb": round(_rss_mb(), 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def _shutdown(app: web.Application) -> None:
    """Graceful shutdown: handlers in flight, queued and running batches finish (bounded by the
    request timeout) before the worker stops; the listening socket is already closed."""
    state = app[STATE]
    deadline = time.monotonic() + state.limits.request_timeout_s
    while state.in_flight and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    await asyncio.get_running_loop().run_in_executor(None, state.batcher.close,
                                                     state.limits.request_timeout_s)
    state.featurizer.close()
    state.tokenizer_thread.shutdown(wait=False)
    log.info("shut down after %d batches (%d rows)", state.batcher.batches_run,
             state.batcher.rows_run)


def make_app(state: ServerState) -> web.Application:
    app = web.Application(client_max_size=state.limits.max_request_bytes,
                          middlewares=[errors_middleware, auth_middleware])
    app[STATE] = state
    app.router.add_get("/", index)
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/models", list_models)
    app.router.add_post("/v1/files", upload_file)
    app.router.add_get("/v1/files/{file_id}", get_file)
    app.router.add_delete("/v1/files/{file_id}", delete_file)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.on_shutdown.append(_shutdown)
    return app
