"""`python -m llark_jax serve` on 127.0.0.1 (a real server process with a tiny random LLark),
driven by the official `openai` client and by the chat page in headless Chromium: answers equal
direct `Generator` output, concurrent requests are batched and all answered, bad audio gets the
documented 4xx and the server keeps serving, bearer auth, graceful shutdown on SIGTERM. The
browser test saves a screenshot to test-artifacts/serve_page.png. One server serves the whole
module (its start dominates the run time)."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest
import soundfile as sf
from serve_helpers import (
    FEATURE_POOL,
    MODEL_NAME,
    REPO,
    Chromium,
    ServerProcess,
    clip,
    make_model_dir,
    wav_bytes,
)

from llark_jax.checkpoints.model_dir import load_model
from llark_jax.data import conversation as conv
from llark_jax.data.features import mean_pool_frames
from llark_jax.infer.generate import Generator, Prompt, SamplingConfig

API_KEY = "test-key-123"
MAX_TOKENS = 10
QUESTION = "What is the key of this song?"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def server(model_dir):
    process = ServerProcess(
        model_dir, "--api-key-env", "LLARK_TEST_KEY", "--max-audio-seconds", "5",
        "--max-audio-mb", "0.5", "--max-request-mb", "1", "--batch-size", "8",
        "--batch-wait-ms", "200", "--default-max-tokens", str(MAX_TOKENS),
        env={"LLARK_TEST_KEY": API_KEY},
    )  # fmt: skip
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=API_KEY, max_retries=0,
                         timeout=300)


def audio_message(data: bytes, question: str = QUESTION) -> list[dict]:
    part = {"type": "input_audio",
            "input_audio": {"data": base64.b64encode(data).decode(), "format": "wav"}}
    return [{"role": "user", "content": [{"type": "text", "text": question}, part]}]


def direct_answer(model_dir, wav: bytes, question: str) -> str:
    """The answer computed without the server: encoder -> build_example -> Generator."""
    from llark_jax.audio.encoders import get_encoder

    served = load_model(model_dir)
    assert (served.features.encoder, served.features.pool) == ("mel", FEATURE_POOL)
    assert not served.features.standardized
    waveform, rate = sf.read(io.BytesIO(wav), dtype="float32")
    assert rate == 44100
    features = mean_pool_frames(get_encoder("mel").encode_batch([waveform])[0], FEATURE_POOL)
    tok, template = served.tokenizer, served.template
    stop = conv.stop_ids(tok, template)
    ids = conv.build_example(tok, template, question, "", len(features), True)["input_ids"]
    ids = ids[: len(ids) - len(stop)]
    config = SamplingConfig(max_new_tokens=MAX_TOKENS, eos_ids=(tok.eos_token_id,),
                            stop_sequences=(tuple(stop),))
    generation = Generator(served.model, config, batch_size=1).generate([Prompt(ids, features)])[0]
    return tok.decode(generation.token_ids, skip_special_tokens=True)


def health(server) -> dict:
    with urllib.request.urlopen(server.url + "/healthz", timeout=30) as response:
        return json.loads(response.read())


def test_models_health_and_auth(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL_NAME]
    assert health(server)["status"] == "ok"  # no key needed outside /v1/
    for key in ("wrong", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        request = urllib.request.Request(server.url + "/v1/models", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=30)
        assert err.value.code == 401
        assert json.loads(err.value.read())["error"]["code"] == "invalid_api_key"


def test_answers_equal_direct_generate(model_dir, client):
    wav = wav_bytes(clip())
    messages = audio_message(wav)
    reply = client.chat.completions.create(model=MODEL_NAME, messages=messages,
                                           max_tokens=MAX_TOKENS)
    answer = reply.choices[0].message.content
    assert answer == direct_answer(model_dir, wav, QUESTION)
    assert answer and reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens <= MAX_TOKENS

    stream = client.chat.completions.create(model=MODEL_NAME, messages=messages,
                                            max_tokens=MAX_TOKENS, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([d for d in deltas if d]) >= 2  # streamed in pieces
    assert "".join(deltas) == answer
    assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens

    with open(model_dir.parent / "clip.wav", "wb") as f:  # same clip via POST /v1/files
        f.write(wav)
    uploaded = client.files.create(file=open(model_dir.parent / "clip.wav", "rb"),
                                   purpose="user_data")
    by_file = [{"role": "user", "content": [{"type": "text", "text": QUESTION},
                                            {"type": "file", "file": {"file_id": uploaded.id}}]}]
    reply = client.chat.completions.create(model=MODEL_NAME, messages=by_file,
                                           max_tokens=MAX_TOKENS)
    assert reply.choices[0].message.content == answer


def test_a_clip_longer_than_a_training_window_is_answered_by_its_crop(client):
    """6 s of audio with 2 s training windows: the server hears [0, 2) s (`infer`'s default
    span), so the answer equals the one about a file of just those samples; the clip is longer
    than --max-audio-seconds (5), which binds only the audio heard."""
    audio = clip(6.0, rate=16000)

    def ask(data: bytes) -> str:
        reply = client.chat.completions.create(model=MODEL_NAME, messages=audio_message(data),
                                               max_tokens=MAX_TOKENS)
        return reply.choices[0].message.content

    first_window = ask(wav_bytes(audio[: 2 * 16000], rate=16000))
    assert first_window and ask(wav_bytes(audio, rate=16000)) == first_window


def test_concurrent_requests_are_batched_and_all_answered(server, client):
    base = client.chat.completions.create(model=MODEL_NAME, messages=audio_message(
        wav_bytes(clip())), max_tokens=MAX_TOKENS).choices[0].message.content
    other = audio_message(wav_bytes(clip(2.0, midi=64)), "Which instruments play here?")
    before = health(server)

    def ask(i: int) -> str:
        messages = audio_message(wav_bytes(clip())) if i % 2 == 0 else other
        reply = client.chat.completions.create(model=MODEL_NAME, messages=messages,
                                               max_tokens=MAX_TOKENS)
        return reply.choices[0].message.content

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    after = health(server)
    assert all(answers)
    assert all(a == base for a in answers[::2])  # batch composition does not change answers
    assert len(set(answers[1::2])) == 1
    rows, batches = after["rows"] - before["rows"], after["batches"] - before["batches"]
    assert rows == 16 and batches < 16, (rows, batches)


def truncated_wav() -> bytes:
    data = wav_bytes(clip(2.0))
    return data[: len(data) // 2]  # header declares twice the samples present


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("oversized", wav_bytes(np.random.default_rng(0).uniform(-1, 1, 300_000)), 413,
         "audio_too_large"),
        ("truncated", truncated_wav(), 422, "invalid_audio"),
        ("not audio", b"<html>this is not audio</html>" * 20, 422, "invalid_audio"),
        ("zero length", b"", 422, "invalid_audio"),
        ("silent", wav_bytes(np.zeros(44100, np.float32)), 422, "invalid_audio"),
    ],
)
def test_bad_audio_gets_4xx_and_server_keeps_serving(server, client, name, data, status, code):
    with pytest.raises(openai.APIStatusError) as err:
        client.chat.completions.create(model=MODEL_NAME, messages=audio_message(data),
                                       max_tokens=MAX_TOKENS)
    assert err.value.status_code == status, (name, err.value.message)
    assert err.value.body["code"] == code and "/tmp" not in err.value.body["message"]
    with pytest.raises(openai.APIStatusError) as err:  # the upload route validates the same way
        client.files.create(file=("upload.wav", data), purpose="user_data")
    assert err.value.status_code == status
    assert health(server)["status"] == "ok"


def test_bad_requests_get_4xx(client):
    huge = {"type": "input_audio", "input_audio": {"data": "A" * 1_200_000, "format": "wav"}}
    cases = [
        ([{"role": "user", "content": [huge]}], {}, 413),  # body over --max-request-mb
        ([{"role": "user", "content": [{"type": "input_audio",
                                        "input_audio": {"data": "%%%", "format": "wav"}}]}],
         {}, 422),
        ([{"role": "assistant", "content": "hi"}], {}, 400),
        ([{"role": "user", "content": "hi"}], {"max_tokens": 10**6}, 400),
        ([{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-nope"}}]}],
         {}, 404),
    ]
    for messages, extra, status in cases:
        with pytest.raises(openai.APIStatusError) as err:
            client.chat.completions.create(model=MODEL_NAME, messages=messages, **extra)
        assert err.value.status_code == status, (messages, err.value.message)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user",
                                                                  "content": "hi"}])
    text_only = client.chat.completions.create(model=MODEL_NAME, max_tokens=4, messages=[
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])
    assert text_only.choices[0].message.content is not None


@pytest.mark.slow
def test_page_upload_ask_answer_screenshot(server, client, tmp_path):
    """Headless Chromium: enter the key, upload a clip, see the waveform, ask, read the answer."""
    question = "What is the tempo of this song?"
    clip_path = tmp_path / "test-clip.wav"
    clip_path.write_bytes(wav_bytes(clip(2.0, midi=60)))
    browser = Chromium(tmp_path / "chromium-profile")
    try:
        page = browser.page()
        page.call("Page.navigate", url=server.url + "/")
        page.wait_for("document.readyState === 'complete'")
        page.js(f"(k => {{ k.value = {json.dumps(API_KEY)}; "
                "k.dispatchEvent(new Event('change')); })(document.getElementById('api-key'))")
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

        page.js(f"document.getElementById('question').value = {json.dumps(question)};"
                "document.getElementById('send').click()")
        answer = page.wait_for("(m => m ? m.textContent : '')"
                               "(document.querySelector('.msg.assistant[data-done]'))")
        artifacts = REPO / "test-artifacts"
        artifacts.mkdir(exist_ok=True)
        shot = page.call("Page.captureScreenshot", format="png")["data"]
        (artifacts / "serve_page.png").write_bytes(base64.b64decode(shot))

        # record from Chromium's fake microphone: the page converts it to WAV and uploads it
        page.js("document.getElementById('record').click()")
        page.wait_for("document.getElementById('record').textContent === 'Stop'")
        time.sleep(1.5)
        page.js("document.getElementById('record').click()")
        status = page.wait_for("(s => s.includes('recording.wav') && !s.includes('checking') ? s"
                               " : '')(document.getElementById('clip-status').textContent)")
        assert "ready" in status, status
    finally:
        browser.close()
    uploaded = client.files.create(file=clip_path.open("rb"), purpose="user_data")
    reply = client.chat.completions.create(model=MODEL_NAME, messages=[
        {"role": "user", "content": [{"type": "text", "text": question},
                                     {"type": "file", "file": {"file_id": uploaded.id}}]}])
    assert answer.strip() and answer == reply.choices[0].message.content


def test_sigterm_finishes_in_flight_request_then_exits(server, client):
    result: dict = {}

    def ask() -> None:  # a new max_tokens bucket (128) compiles first: seconds in flight
        reply = client.chat.completions.create(model=MODEL_NAME, max_tokens=MAX_TOKENS + 100,
                                               messages=audio_message(wav_bytes(clip())))
        result["answer"] = reply.choices[0].message.content

    thread = threading.Thread(target=ask)
    thread.start()
    deadline = time.monotonic() + 60
    while health(server)["in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.stop() == 0
    thread.join(60)
    assert result.get("answer")
