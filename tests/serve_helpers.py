"""Serving test fixtures: a tiny random LLark model directory, test clips, a real server process,
and headless Chromium driven over the DevTools protocol (`Chromium`, `DevTools`).

The model is a 2-layer float32 Llama over the test BPE tokenizer (`tokenizer_fixtures`) with a
projector from the 160-wide `mel` features, saved with `new_model_dir` (manifest + tokenizer + the
trainer's Orbax layout). The server is `python -m llark_jax serve` in a subprocess on
127.0.0.1 with a free port; `stop()` sends SIGTERM and returns the exit status. Chromium is
Debian's `chromium` package, installed with apt-get when missing (`chromium_binary`).
"""

from __future__ import annotations

import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import soundfile as sf
import websocket
from flax import nnx
from tokenizer_fixtures import make_llark_tokenizer

from llark_jax.checkpoints.model_dir import new_model_dir
from llark_jax.data.conversation import AudioTokenIds
from llark_jax.data.features import FeatureSpec
from llark_jax.model.llama import Llama, LlamaConfig
from llark_jax.model.llark import LLark

REPO = Path(__file__).resolve().parents[1]
MODEL_NAME = "llark-tiny"
MEL_DIM = 160
SR = 44100


SYSTEM_PROMPT = "You are a music expert."
FEATURE_POOL = 5  # mel frames (10 Hz) averaged per audio token


def tiny_model(seed: int = 0) -> tuple[LLark, object]:
    """(tiny LLark with peaked random logits, so greedy answers have no near-ties; tokenizer);
    the same seed gives the same weights."""
    tokenizer = make_llark_tokenizer()
    ids = AudioTokenIds.from_tokenizer(tokenizer)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, initializer_range=0.3,
    )  # fmt: skip
    model = LLark(Llama(config, rngs=nnx.Rngs(seed)), MEL_DIM, audio_patch_id=ids.patch,
                  audio_start_id=ids.start, audio_end_id=ids.end, rngs=nnx.Rngs(seed + 1))
    return model, tokenizer


def make_model_dir(directory: Path, seed: int = 0, endless: bool = False) -> Path:
    """A servable model directory of `tiny_model(seed)`: mel features pooled by 5, FastChat v0
    with `SYSTEM_PROMPT`, named `MODEL_NAME`. `endless`: the LM-head columns of EOS and of the
    stop sequence's first token are zeroed, so their logit is always 0 while the peaked random
    logits put another token above it: a greedy answer always runs to `max_tokens`."""
    model, tokenizer = tiny_model(seed)
    if endless:
        from llark_jax.data.conversation import get_template, stop_ids

        stop = stop_ids(tokenizer, get_template("fastchat_v0"))
        head = model.llama.lm_head
        head[...] = head[...].at[:, [tokenizer.eos_token_id, stop[0]]].set(0.0)
    return new_model_dir(directory, model, tokenizer,
                         FeatureSpec(encoder="mel", pool=FEATURE_POOL), model_name=MODEL_NAME,
                         template="fastchat_v0", system_prompt=SYSTEM_PROMPT)


def clip(seconds: float = 1.5, midi: int = 57, rate: int = SR) -> np.ndarray:
    """A decaying harmonic tone (mono float32)."""
    t = np.arange(int(seconds * rate)) / rate
    hz = 440.0 * 2 ** ((midi - 69) / 12)
    tone = sum(np.sin(2 * np.pi * hz * k * t) / k for k in range(1, 6))
    return (0.3 * tone * np.exp(-t)).astype(np.float32)


def wav_bytes(audio: np.ndarray, rate: int = SR, fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, audio, rate, format=fmt, subtype="PCM_16" if fmt == "WAV" else None)
    return buffer.getvalue()


class ServerProcess:
    """`python -m llark_jax serve` on 127.0.0.1:<free port>."""

    def __init__(self, model_dir: Path, *extra: str, env: dict | None = None,
                 timeout_s: float = 120.0):
        command = [sys.executable, "-m", "llark_jax", "serve", "--checkpoint", str(model_dir),
                   "--host", "127.0.0.1", "--port", "0", *extra]
        self.log_path = model_dir.parent / f"server-{os.getpid()}-{time.time_ns()}.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE,
                                        stderr=self._log, text=True,
                                        env={**os.environ, **(env or {})})
        deadline = time.monotonic() + timeout_s
        line = ""
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("serving ") or not line and self.process.poll() is not None:
                break
        if not line.startswith("serving "):
            self.process.kill()
            raise RuntimeError(f"server did not start: {self.log_path.read_text()[-3000:]}")
        self.url = line.split()[1]

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM (graceful shutdown) -> exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            status = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            status = self.process.wait()
        self._log.close()
        return status


CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--remote-debugging-port=0", "--window-size=1100,900",
                  "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


def chromium_binary() -> str:
    """The system chromium, installed with apt-get when missing (needs root)."""
    found = shutil.which("chromium")
    if found is None:
        subprocess.run(["apt-get", "update"], check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "chromium"], check=True, capture_output=True,
                       timeout=900)
        found = shutil.which("chromium")
    assert found, "chromium could not be installed"
    return found


class DevTools:
    """A minimal Chrome DevTools protocol client for one page target."""

    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.ids = itertools.count(1)

    def call(self, method: str, **params) -> dict:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout_s: float = 120.0):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"never true: {expression}")


class Chromium:
    """Headless Chromium with a fresh profile; `port` is its DevTools port."""

    def __init__(self, profile: Path):
        self.process = subprocess.Popen(
            [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if time.monotonic() > deadline or self.process.poll() is not None:
                self.process.kill()
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])

    def page(self) -> DevTools:
        """A DevTools session on the browser's first page."""
        url = f"http://127.0.0.1:{self.port}/json/list"
        with urllib.request.urlopen(url, timeout=30) as response:
            targets = json.loads(response.read())
        return DevTools(next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"))

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(30)
