"""Serving fault suite: each reported fault of `python -m llark_jax serve` reproduced against a
real server process on 127.0.0.1, asserting the fixed behaviour (docs/serving.md, "Faults").

The model is the tiny random LLark of `serve_helpers` with EOS and the stop sequence made
unreachable (`make_model_dir(endless=True)`), so a greedy answer always runs to `max_tokens`:
answer lengths are exact and a long generation is available on demand. Every wait awaits an
event (a response, a log line, a /healthz field), bounded by a timeout; no test sleeps for a
fixed time. One server (keyless, loopback, `--max-queue 1`) serves the module; the bind-warning
test starts its own.
"""

from __future__ import annotations

import base64
import concurrent.futures
import http.client
import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import numpy as np
import pytest
import soundfile as sf
from serve_helpers import MODEL_NAME, REPO, ServerProcess, make_model_dir

MAX_TOKENS_LIMIT = 4096  # an endless stream of this length runs for seconds: time to act on it
QUEUE = 1  # --max-queue: one waiting request fills the queue


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("faults") / "model", endless=True)


@pytest.fixture(scope="module")
def server(model_dir):
    process = ServerProcess(
        model_dir, "--batch-size", "8", "--batch-wait-ms", "20", "--max-queue", str(QUEUE),
        "--max-audio-seconds", "5", "--max-tokens-limit", str(MAX_TOKENS_LIMIT),
        "--default-max-tokens", "8",
    )  # fmt: skip
    yield process
    process.stop()


def wait_until(predicate, timeout_s: float = 60.0, what: str = "condition"):
    """Polls `predicate` (an event: a /healthz field, a log line) until truthy; fails after
    `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def request(server, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, timeout_s: float = 120.0) -> tuple[int, dict]:
    """(status, parsed JSON body or {}) of one HTTP request with exactly these headers."""
    url = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=timeout_s)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, {}


def health(server, timeout_s: float = 30.0) -> dict:
    status, body = request(server, "GET", "/healthz", timeout_s=timeout_s)
    assert status == 200
    return body


def chat_body(content="What is the key of this song?", **extra) -> dict:
    return {"model": MODEL_NAME, "messages": [{"role": "user", "content": content}], **extra}


def post_chat(server, body, content_type: str = "application/json",
              timeout_s: float = 120.0) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(server, "POST", "/v1/chat/completions", data,
                   {"Content-Type": content_type} if content_type else {}, timeout_s)


def audio_part(data: bytes) -> dict:
    return {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(data).decode(), "format": "flac"}}


def log_text(server) -> str:
    return server.log_path.read_text()


class OpenStream:
    """A streamed chat request on a raw socket: read its first content chunk, then `close()`
    without reading the rest (a client that goes away mid-stream)."""

    def __init__(self, server, max_tokens: int = MAX_TOKENS_LIMIT):
        url = urllib.parse.urlsplit(server.url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        body = json.dumps(chat_body("Describe the music.", max_tokens=max_tokens, stream=True))
        self.conn.request("POST", "/v1/chat/completions", body=body,
                          headers={"Content-Type": "application/json"})
        self.response = self.conn.getresponse()
        assert self.response.status == 200

    def first_content(self) -> str:
        while True:
            line = self.response.fp.readline().decode()
            assert line, "the stream ended before any content"
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    return delta["content"]

    def close(self) -> None:
        if self.conn.sock is not None:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.response.close()
        self.conn.close()


def test_one_request_runs_as_one_row_not_batch_size_copies(server):
    """Fault: one long request was padded to `--batch-size` copies (7.1 GB and 25-34 s for a
    35 KB prompt at batch size 8 vs 0.9 GB and 2.8 s at 1). Now a batch holds the smallest of
    1, 2, 4, 8 rows that fits what is queued."""
    before = health(server)
    long_prompt = "Describe the harmony, rhythm and timbre of this song in detail. " * 100
    status, reply = post_chat(server, chat_body(long_prompt, max_tokens=8))
    assert status == 200, reply
    assert reply["usage"]["prompt_tokens"] > 1000 and reply["usage"]["completion_tokens"] == 8
    after = health(server)
    assert after["rows"] - before["rows"] == 1
    assert after["computed_rows"] - before["computed_rows"] == 1  # not --batch-size (8) rows


def test_max_tokens_and_sampling_settings_share_compiled_programs(server):
    """Fault: every new `max_tokens` compiled a new program (2.5-4.4 s each, never freed) and the
    stream path recompiled for each temperature/top-p. Now `max_tokens` falls into a fixed set of
    step buckets (each answer still has exactly the requested length) and sampling settings are
    traced values."""

    def ask(max_tokens: int, stream: bool = False, **sampling) -> int:
        body = chat_body(max_tokens=max_tokens, stream=stream, **sampling)
        if not stream:
            status, reply = post_chat(server, body)
            assert status == 200, reply
            assert reply["choices"][0]["finish_reason"] == "length"
            return reply["usage"]["completion_tokens"]
        body["stream_options"] = {"include_usage": True}
        url = urllib.parse.urlsplit(server.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        conn.request("POST", "/v1/chat/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        events = conn.getresponse().read().decode().split("\n\n")
        conn.close()
        usage = [json.loads(e[6:]) for e in events if e.startswith("data: {")][-1]["usage"]
        return usage["completion_tokens"]

    # warm-up: the programs of the 16-step bucket, greedy and sampled, batch and stream
    assert ask(5) == 5 and ask(5, stream=True, temperature=0.5, top_p=0.9, seed=1) == 5
    before = health(server)["compiles"]
    for max_tokens in (6, 7, 9, 12, 16):
        assert ask(max_tokens) == max_tokens
        assert ask(max_tokens, temperature=0.8, top_p=0.7, seed=max_tokens) == max_tokens
    for temperature, top_p in ((0.7, 0.5), (1.3, 0.95), (0.0, 1.0), (2.0, 0.1)):
        assert ask(11, stream=True, temperature=temperature, top_p=top_p, seed=3) == 11
    assert health(server)["compiles"] == before  # 9 token limits, 6 sampling settings: 0 compiles


def test_huge_prompt_is_refused_by_size_before_tokenizing(server):
    """Fault: a 15 MB prompt was tokenized on the event loop before any size check, freezing every
    route (/healthz included) for 13.8 s. Now its UTF-8 size is checked first (400) and prompts
    are tokenized on the tokenizer thread; /healthz answers throughout."""
    result: dict = {}

    def send_huge() -> None:
        result["reply"] = post_chat(server, chat_body("la " * 5_000_000))  # 15 MB of text

    sender = threading.Thread(target=send_huge)
    sender.start()
    answered = 0
    while sender.is_alive() or not answered:
        health(server, timeout_s=5)  # raises if the event loop is blocked for 5 s
        answered += 1
    sender.join()
    status, reply = result["reply"]
    assert status == 400, reply
    assert reply["error"]["code"] == "context_length_exceeded"
    assert "bytes of text" in reply["error"]["message"]
    # under the byte limit but over the largest length bucket: tokenized, then refused
    status, reply = post_chat(server, chat_body("do re mi fa sol la ti " * 2000))
    assert status == 400 and reply["error"]["code"] == "context_length_exceeded"
    assert "tokens" in reply["error"]["message"]


def test_client_disconnect_mid_stream_cancels_generation(server):
    """Fault: a client that disconnected mid-stream left the worker decoding to the end and
    logged an ERROR traceback per disconnect. Now the decode stops (`cancelled` in /healthz) and
    one INFO line is logged."""
    before = health(server)
    lines_before = log_text(server).count("client disconnected from stream")
    stream = OpenStream(server)
    assert stream.first_content()
    stream.close()
    wait_until(lambda: (h := health(server))["cancelled"] > before["cancelled"]
               and h["in_flight"] == 0, what="the stream's decode to be cancelled")
    text = wait_until(lambda: (t := log_text(server)).count(
        "client disconnected from stream") > lines_before and t, what="the INFO line")
    line = [x for x in text.splitlines() if "client disconnected from stream" in x][-1]
    assert " INFO " in line
    tokens = int(re.search(r"after (\d+) tokens", line).group(1))
    assert tokens < MAX_TOKENS_LIMIT
    assert "Traceback" not in text and " ERROR " not in text
    status, reply = post_chat(server, chat_body(max_tokens=4))  # the worker is free again
    assert status == 200 and reply["usage"]["completion_tokens"] == 4


def test_decoded_audio_size_is_bounded_from_the_header(server):
    """Fault: decoded size was unbounded (a 114 KB FLAC, 384 kHz x 8 channels x 30 s, decoded to
    367 MB of float32). Now frames x channels from the header are checked against
    `--max-audio-seconds` of mono at the highest accepted rate before any sample is read."""
    buffer = io.BytesIO()  # 1 s (under the 5 s limit) of 384 kHz x 8 channels: a 3 KB FLAC
    sf.write(buffer, np.ones((384_000, 8), np.int16), 384_000, format="FLAC")
    flac = buffer.getvalue()
    assert len(flac) < 10_000
    status, reply = post_chat(server, chat_body([{"type": "text", "text": "Key?"},
                                                 audio_part(flac)]))
    assert status == 413, reply
    assert reply["error"]["code"] == "audio_too_large"
    assert "3072000 samples" in reply["error"]["message"]
    boundary = "faultsuiteboundary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data"
            f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"wide.flac\"\r\nContent-Type: audio/flac\r\n\r\n").encode()
    form += flac + f"\r\n--{boundary}--\r\n".encode()
    status, reply = request(server, "POST", "/v1/files", form,
                            {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert status == 413 and reply["error"]["code"] == "audio_too_large"


def test_full_queue_answers_503_before_decoding_audio(server):
    """Fault: audio was decoded before the queue-full check. Now a full queue is a 503 before the
    audio is even looked at (a clip that would fail decoding gets 503, not 422)."""
    stream = OpenStream(server)  # occupies the worker for seconds
    try:
        assert stream.first_content()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            queued = pool.submit(post_chat, server, chat_body(max_tokens=3))
            wait_until(lambda: health(server)["queued"] >= QUEUE, what="a full queue")
            not_audio = b"<html>this is not audio</html>" * 20
            status, reply = post_chat(server, chat_body([{"type": "text", "text": "Key?"},
                                                         audio_part(not_audio)]))
            assert status == 503, reply
            assert reply["error"]["code"] == "overloaded"
            stream.close()  # frees the worker: the queued request runs
            status, reply = queued.result(120)
            assert status == 200 and reply["usage"]["completion_tokens"] == 3
    finally:
        stream.close()


def test_malformed_requests_get_4xx_and_text_plain_json_is_refused(server):
    """Fault: `charset=bogus`, 100k-deep JSON and a lone surrogate answered 500; `max_tokens: 0`
    became 256 and `true` became 1; a `text/plain` body was accepted as JSON (a cross-site page
    can post one to a local keyless server without a preflight). Now each is a 4xx."""
    ok = json.dumps(chat_body(max_tokens=2)).encode()
    deep = b"[" * 100_000 + b"]" * 100_000
    cases = [
        ("charset=bogus", ok, "application/json; charset=bogus", 400),
        ("charset=latin-1", ok, "application/json; charset=latin-1", 415),
        ("100k-deep array", deep, "application/json", 400),
        ("deep messages", json.dumps(chat_body(json.loads("[" * 200 + "]" * 200))).encode(),
         "application/json", 400),
        ("lone surrogate", b'{"model": "llark-tiny", "messages": [{"role": "user", '
                           b'"content": "key? \\ud800"}]}', "application/json", 400),
        ("not UTF-8", ok.replace(b"key", b"k\xffy"), "application/json", 400),
        ("max_tokens 0", json.dumps(chat_body(max_tokens=0)).encode(), "application/json", 400),
        ("max_tokens true", json.dumps(chat_body(max_tokens=True)).encode(),
         "application/json", 400),
        ("max_tokens 2.5", json.dumps(chat_body(max_tokens=2.5)).encode(),
         "application/json", 400),
        ("max_completion_tokens 0", json.dumps(chat_body(max_completion_tokens=0)).encode(),
         "application/json", 400),
        ("stream 'yes'", json.dumps(chat_body(stream="yes")).encode(), "application/json", 400),
        ("text not a string", json.dumps(chat_body([{"type": "text", "text": {"a": 1}}])).encode(),
         "application/json", 400),
        ("huge integer", b'{"model": "llark-tiny", "seed": ' + b"9" * 5000 + b"}",
         "application/json", 400),
        ("text/plain", ok, "text/plain", 415),
        ("text/plain utf-8", ok, "text/plain; charset=utf-8", 415),
        ("form", ok, "application/x-www-form-urlencoded", 415),
        ("no content type", ok, None, 415),
    ]
    for name, body, content_type, expected in cases:
        status, reply = post_chat(server, body, content_type)
        assert status == expected, (name, status, reply)
        assert set(reply["error"]) == {"message", "type", "param", "code"}, name
    status, reply = post_chat(server, ok)  # the same body as JSON is served
    assert status == 200 and reply["usage"]["completion_tokens"] == 2
    assert "Traceback" not in log_text(server)


def test_non_loopback_bind_without_key_logs_a_warning(model_dir, server):
    """Fault: binding a non-loopback host without a key gave no warning. The host here is
    192.0.2.1 (TEST-NET-1, never assigned to a machine): the warning comes before the bind, which
    then fails, so nothing listens beyond loopback."""
    log_path = model_dir.parent / "bind-warning.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llark_jax", "serve", "--checkpoint", str(model_dir),
             "--host", "192.0.2.1", "--port", "0"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
    try:
        wait_until(lambda: "not a loopback address" in log_path.read_text()
                   or process.poll() is not None, timeout_s=120, what="the warning or an exit")
        text = log_path.read_text()
        warning = [x for x in text.splitlines() if "not a loopback address" in x]
        assert warning and " WARNING " in warning[0] and "--api-key-env" in warning[0], text[-2000:]
    finally:
        process.kill()
        process.wait(30)
    assert "not a loopback address" not in log_text(server)  # 127.0.0.1: no warning
