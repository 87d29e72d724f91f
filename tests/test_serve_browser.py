"""The chat page in headless Chromium (Debian's `chromium`, driven over the DevTools protocol):
load the page, upload a clip, see its waveform, ask a question, the streamed answer appears and
equals the API's answer for the same clip and question. A screenshot is saved to
test-artifacts/serve_page.png. The set-up installs `chromium` with apt-get when it is missing."""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time

import openai
import pytest
import websocket
from serve_helpers import MODEL_NAME, REPO, ServerProcess, clip, make_model_dir, wav_bytes

QUESTION = "What is the tempo of this song?"
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--remote-debugging-port=0", "--window-size=1100,900")


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


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    binary = chromium_binary()
    profile = tmp_path_factory.mktemp("chromium-profile")
    process = subprocess.Popen([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                "about:blank"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not port_file.exists() or not port_file.read_text().strip():
        assert time.monotonic() < deadline and process.poll() is None, "chromium did not start"
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    yield port
    process.terminate()
    process.wait(30)


def page_target(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as response:
        targets = json.loads(response.read())
    return next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")


@pytest.mark.slow
def test_page_upload_ask_answer_screenshot(tmp_path, chromium):
    model_dir = make_model_dir(tmp_path / "model")
    server = ServerProcess(model_dir, "--max-audio-seconds", "5", "--default-max-tokens", "10")
    try:
        clip_path = tmp_path / "test-clip.wav"
        clip_path.write_bytes(wav_bytes(clip(2.0, midi=60)))
        page = DevTools(page_target(chromium))
        page.call("Page.enable")
        page.call("Page.navigate", url=server.url + "/")
        page.wait_for(f"document.getElementById('model-name').textContent === '{MODEL_NAME}'")

        root = page.call("DOM.getDocument")["root"]["nodeId"]
        node = page.call("DOM.querySelector", nodeId=root, selector="#audio-file")["nodeId"]
        page.call("DOM.setFileInputFiles", files=[str(clip_path)], nodeId=node)
        status = page.wait_for("(s => s.includes('ready') || s.includes('rejected') ? s : '')"
                               "(document.getElementById('clip-status').textContent)")
        assert "ready" in status, status
        painted = page.js("(() => { const c = document.getElementById('waveform'); const d = "
                          "c.getContext('2d').getImageData(0, 0, c.width, c.height).data; "
                          "let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; "
                          "return n; })()")
        assert painted > 1000  # the waveform was drawn

        page.js(f"document.getElementById('question').value = {json.dumps(QUESTION)};"
                "document.getElementById('send').click()")
        answer = page.wait_for("(m => m ? m.textContent : '')"
                               "(document.querySelector('.msg.assistant[data-done]'))")
        artifacts = REPO / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        shot = page.call("Page.captureScreenshot", format="png")["data"]
        (artifacts / "serve_page.png").write_bytes(base64.b64decode(shot))

        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)
        uploaded = client.files.create(file=clip_path.open("rb"), purpose="user_data")
        reply = client.chat.completions.create(model=MODEL_NAME, messages=[
            {"role": "user", "content": [{"type": "text", "text": QUESTION},
                                         {"type": "file", "file": {"file_id": uploaded.id}}]}])
        assert answer == reply.choices[0].message.content
        assert answer.strip()
    finally:
        assert server.stop() == 0
