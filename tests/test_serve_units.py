"""Serving pieces in-process (no server): request parsing (JSON bytes, fields, limits), prompt
building, stream text pieces, stream cancellation, micro-batching (grouping, batch size,
cancellation, draining on close, the capacity check), bucket sets and the loopback check."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import numpy as np
import pytest
from serve_helpers import FEATURE_POOL, MODEL_NAME, SYSTEM_PROMPT, make_model_dir, tiny_model

from llark_jax.checkpoints.model_dir import load_model
from llark_jax.data import conversation as conv
from llark_jax.infer.generate import RowSettings
from llark_jax.serve.batcher import BatcherClosed, MicroBatcher, QueueFull
from llark_jax.serve.chat_request import (
    MAX_JSON_DEPTH,
    RequestError,
    parse_chat_request,
    parse_json_body,
)
from llark_jax.serve.cli import is_loopback
from llark_jax.serve.engine import Engine, TextStream, power_buckets

LIMITS = dict(default_max_tokens=16, max_tokens_limit=64, max_clips=2)


def audio_part(data: str = "UklGRg==") -> dict:
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def test_parse_multi_turn_with_system_audio_and_file():
    chat = parse_chat_request({
        "model": "m", "temperature": 0.5, "top_p": 0.9, "seed": 7, "max_tokens": 9,
        "stream": True, "stream_options": {"include_usage": True},
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Key?"}, audio_part()]},
            {"role": "assistant", "content": "A minor."},
            {"role": "user", "content": "Tempo?"},
            {"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]},
        ]}, **LIMITS)  # fmt: skip
    assert chat.exchanges == [("Key?", "A minor."), ("Tempo?", "")]
    assert chat.system_prompt == "Be brief." and chat.stream and chat.include_usage
    assert [(a.data, a.file_id) for a in chat.audio] == [("UklGRg==", None), (None, "file-1")]
    assert (chat.max_tokens, chat.temperature, chat.top_p, chat.seed) == (9, 0.5, 0.9, 7)
    default = parse_chat_request({"messages": [{"role": "user", "content": "hi"}]}, **LIMITS)
    assert (default.max_tokens, default.temperature, default.seed) == (16, 0.0, 0)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
         "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": [audio_part(), audio_part(), audio_part()]}]},
         "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": "a"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "a"}], "stop": ["x"]}, "stop"),
        ({"messages": [{"role": "user", "content": "a"}], "max_tokens": 65}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "a"}], "temperature": 3}, "temperature"),
        ({"messages": [{"role": "user", "content": "a"}], "seed": "1"}, "seed"),
        ({"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "a"}], "max_tokens": True}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "a"}], "max_tokens": 2.0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0,
          "max_tokens": 5}, "max_completion_tokens"),
        ({"messages": [{"role": "user", "content": "a"}], "n": True}, "n"),
        ({"messages": [{"role": "user", "content": "a"}], "stream": 1}, "stream"),
        ({"messages": [{"role": "user", "content": "a"}], "model": 7}, "model"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]},
         "messages[0].content[0]"),
    ],
)
def test_parse_rejects_with_400_naming_the_field(body, param):
    with pytest.raises(RequestError) as err:
        parse_chat_request(body, **LIMITS)
    assert err.value.status == 400 and err.value.param == param


def test_parse_max_tokens_precedence_and_text_byte_limit():
    body = {"messages": [{"role": "user", "content": "caf\u00e9"}], "max_tokens": 5}
    assert parse_chat_request(body, **LIMITS).max_tokens == 5
    assert parse_chat_request({**body, "max_completion_tokens": 7}, **LIMITS).max_tokens == 7
    assert parse_chat_request({**body, "max_tokens": None}, **LIMITS).max_tokens == 16
    assert parse_chat_request(body, **LIMITS, max_text_bytes=5).exchanges  # 5 UTF-8 bytes
    with pytest.raises(RequestError) as err:
        parse_chat_request(body, **LIMITS, max_text_bytes=4)
    assert (err.value.status, err.value.code) == (400, "context_length_exceeded")


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{", "Expecting"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper"),
        (b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1), "nested deeper"),
        (b'{"a": "\\ud800"}', "lone surrogate"),
        (b'{"\\udfff": 1}', "lone surrogate"),
        (b'{"a": "\xff"}', "not UTF-8"),
        (b'{"a": ' + b"1" * 5000 + b"}", "digits"),
    ],
)
def test_parse_json_body_refuses_with_400(raw, reason):
    with pytest.raises(RequestError) as err:
        parse_json_body(raw)
    assert err.value.status == 400 and err.value.code == "invalid_json"
    assert reason in err.value.message


def test_parse_json_body_accepts_pairs_and_depth_limit():
    assert parse_json_body('{"t": "\\ud83c\\udfb5 \u266f"}'.encode()) == {"t": "\U0001f3b5 \u266f"}
    nested = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert parse_json_body(nested) is not None


def test_buckets_and_loopback():
    assert power_buckets(8) == (1, 2, 4, 8) and power_buckets(6) == (1, 2, 4, 6)
    assert power_buckets(1024, 16) == (16, 32, 64, 128, 256, 512, 1024)
    assert power_buckets(10, 16) == (10,)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "::", "", "192.168.1.5", "example.org"):
        assert not is_loopback(host), host


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    served = load_model(make_model_dir(tmp_path_factory.mktemp("units") / "model"))
    return Engine(served, batch_size=2, block_tokens=6)


def test_featurizer_hears_the_span_infer_hears_and_decodes_only_that(engine, tmp_path):
    """A 100 s upload with 2 s training windows: `crop` decodes and encodes [30, 32) s only (the
    features `infer` computes for that part of the file), whatever the file's length; `all`
    hears the whole file and so meets `max_audio_seconds` (422 audio_too_long)."""
    import soundfile as sf

    from llark_jax.infer.windows import Windowing
    from llark_jax.serve.audio_input import AudioFeaturizer, AudioInputError, AudioLimits

    rate = 8000
    t = np.arange(100 * rate) / rate
    wav = tmp_path / "long.wav"
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + t / 100)).astype(np.float32), rate)
    windowing = Windowing.for_model(engine.served)
    assert windowing.window_seconds == 2.0
    limits = AudioLimits(max_audio_seconds=5.0)
    crop, whole = AudioFeaturizer(windowing, limits), AudioFeaturizer(windowing, limits, "all")
    try:
        assert crop.waveform(wav.read_bytes()).shape == (2 * windowing.encoder.sample_rate,)
        [heard] = crop.windows(wav.read_bytes())
        [from_infer] = windowing.file_windows(wav, 30.0, 32.0)
        np.testing.assert_array_equal(heard, from_infer)
        with pytest.raises(AudioInputError) as err:
            whole.windows(wav.read_bytes())
        assert (err.value.status, err.value.code) == (422, "audio_too_long")
        assert "100.0 s" in err.value.message
    finally:
        crop.close()
        whole.close()


def test_prompt_places_every_clip_and_ends_with_assistant_prefix(engine):
    rng = np.random.default_rng(0)
    clips = [rng.normal(size=(4, 160)).astype(np.float32),
             rng.normal(size=(6, 160)).astype(np.float32)]
    chat = engine.build_prompt([("Key?", "A minor."), ("Tempo?", "")], clips, RowSettings(8))
    prompt, tok = chat.prompt, engine.served.tokenizer
    ids = prompt.input_ids.tolist()
    prefix = tok.encode(engine.served.template.assistant_prefix, add_special_tokens=False)
    assert ids[-len(prefix):] == prefix and ids.count(engine.audio_ids.patch) == 10
    assert prompt.audio.shape == (2, 6, 160)  # clips zero-padded to the longest allowed clip
    patches = np.flatnonzero(prompt.input_ids == engine.audio_ids.patch)
    assert prompt.audio_frame_index[patches].tolist() == [0, 1, 2, 3, 6, 7, 8, 9, 10, 11]
    assert "Tempo?" in tok.decode(ids) and "A minor." in tok.decode(ids)
    # sampling settings and token limits are per row: only the audio shape splits batches
    assert chat.batch_key == ("batch", (2, 6, 160))
    other = engine.build_prompt([("Key?", "")], clips, RowSettings(30, temperature=0.7, seed=3))
    assert other.batch_key == chat.batch_key
    text_only = engine.build_prompt([("Hello", "")], [], RowSettings(8))
    assert text_only.prompt.audio is None and text_only.batch_key == ("batch", None)


def test_text_stream_pieces_join_to_the_decoded_answer(engine):
    tok = engine.served.tokenizer
    rng = np.random.default_rng(1)
    accented = tok.encode("Tempo: 120 BPM, C\u266f minor \u2014 calm", add_special_tokens=False)
    for ids in [rng.integers(0, len(tok), n).tolist() for n in (1, 5, 40)] + [accented]:
        stream = TextStream(engine)
        pieces = [stream.push(i) for i in ids]
        assert "".join(pieces) + stream.finish(ids) == engine.decode(ids)
        assert "\ufffd" not in "".join(pieces) or "\ufffd" in engine.decode(ids)
    assert sum(bool(p) for p in map(TextStream(engine).push, accented)) > 3
    assert conv.stop_ids(tok, engine.served.template) == list(engine.stop)


def test_stream_decoder_equals_generator_and_holds_back_stop_tokens(engine):
    """Token-by-token decoding gives the batched Generator's answer (greedy and sampled); the
    tokens of a stop sequence are never released."""
    rng = np.random.default_rng(2)
    clips = [rng.normal(size=(5, 160)).astype(np.float32)]
    for sampling in (RowSettings(12), RowSettings(12, temperature=0.9, top_p=0.8, seed=5)):
        chat = engine.build_prompt([("What is the key?", "")], clips, sampling)
        [batched] = engine.generate([chat])
        released: list[int] = []
        streamed = engine.stream_decoder.decode(chat.prompt, engine.sampling_config(sampling),
                                                released.append)
        assert streamed == batched and released == batched.token_ids
    free = engine.generate([chat])[0].token_ids
    stop = tuple(free[3:5])  # pretend two generated tokens are the template's stop sequence
    config = dataclasses.replace(engine.sampling_config(sampling), stop_sequences=(stop,))
    released = []
    out = engine.stream_decoder.decode(chat.prompt, config, released.append)
    first = next(i for i in range(len(free) - 1) if tuple(free[i : i + 2]) == stop)
    assert out.finish_reason == "stop" and out.token_ids == free[:first] == released


def test_stream_decoder_stops_when_cancelled(engine):
    """A set cancel event (the client left) ends the decode before the next step."""
    chat = engine.build_prompt([("What is the key?", "")], [], RowSettings(12))
    cancel = threading.Event()
    released: list[int] = []

    def on_token(token: int) -> None:
        released.append(token)
        if len(released) == 2:
            cancel.set()

    config = dataclasses.replace(engine.sampling_config(RowSettings(12)), stop_sequences=())
    out = engine.stream_decoder.decode(chat.prompt, config, on_token, cancel)
    full = engine.stream_decoder.decode(chat.prompt, config, lambda _: None)
    assert out.finish_reason == "cancelled" and len(full.token_ids) > 3
    assert out.token_ids == full.token_ids[: len(out.token_ids)] and len(out.token_ids) == 2


def test_micro_batcher_groups_by_key_and_respects_batch_size():
    calls: list[list] = []
    release = threading.Event()

    def run_batch(items):
        release.wait(10)
        calls.append(list(items))
        return [f"{key}:{i}" for key, i in items]

    batcher = MicroBatcher(run_batch, key=lambda item: item[0], max_batch=3, max_wait_s=0.3)

    async def main():
        tasks = [asyncio.create_task(batcher.submit((key, i)))
                 for i, key in enumerate("aabaaab")]
        await asyncio.sleep(0.1)
        release.set()
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    assert results == [f"{k}:{i}" for i, k in enumerate("aabaaab")]
    # windows of <= 3 queued requests, split by key: [a0 a1 | b2], [a3 a4 a5], [b6]
    assert [[i for _, i in c] for c in calls] == [[0, 1], [2], [3, 4, 5], [6]]
    assert batcher.rows_run == 7 and batcher.batches_run == 4
    batcher.close(10)


def test_micro_batcher_drops_cancelled_work_and_drains_on_close():
    seen: list = []
    gate = threading.Event()

    def run_batch(items):
        gate.wait(10)
        seen.extend(items)
        return list(items)

    batcher = MicroBatcher(run_batch, key=lambda item: 0, max_batch=1, max_wait_s=0.0)

    async def main():
        first = asyncio.create_task(batcher.submit("first"))  # occupies the worker
        await asyncio.sleep(0.1)
        gone = asyncio.create_task(batcher.submit("cancelled"))
        kept = asyncio.create_task(batcher.submit("kept"))
        await asyncio.sleep(0.05)
        gone.cancel()
        await asyncio.sleep(0.05)
        closer = threading.Thread(target=batcher.close, args=(10,))
        closer.start()  # close while work is queued: it must still finish
        time.sleep(0.05)
        gate.set()
        with pytest.raises(BatcherClosed):
            await batcher.submit("late")
        out = await asyncio.gather(first, kept)
        closer.join(10)
        return out

    assert asyncio.run(main()) == ["first", "kept"]
    assert seen == ["first", "kept"]


def test_micro_batcher_capacity_check():
    gate, started = threading.Event(), threading.Event()

    def run_batch(items):
        started.set()
        gate.wait(10)
        return list(items)

    batcher = MicroBatcher(run_batch, key=lambda item: 0, max_batch=1, max_wait_s=0.0,
                           max_queue=1)

    async def main():
        loop = asyncio.get_running_loop()
        running = asyncio.create_task(batcher.submit("running"))
        assert await loop.run_in_executor(None, started.wait, 10)  # the worker runs it
        batcher.check_capacity()  # nothing waits yet
        queued = asyncio.create_task(batcher.submit("queued"))
        await asyncio.sleep(0)  # let the task queue its item
        assert batcher.pending == 1
        with pytest.raises(QueueFull):
            batcher.check_capacity()
        gate.set()
        return await asyncio.gather(running, queued)

    assert asyncio.run(main()) == ["running", "queued"]
    batcher.close(10)
    with pytest.raises(BatcherClosed):
        batcher.check_capacity()


def _params(model) -> list[np.ndarray]:
    import jax
    from flax import nnx

    return [np.asarray(a) for a in jax.tree.leaves(nnx.state(model, nnx.Param))]


@pytest.mark.slow
def test_model_dir_round_trip_and_training_workdir(tmp_path):
    """`new_model_dir` -> `load_model` keeps every parameter and the serving settings (template,
    system prompt, feature pipeline, name); `save_model_dir` of a loaded model loads the same;
    serve's flags override the name and system prompt; bad paths are `ModelDirError`s naming
    the missing part. A training workdir (written by `train`) loads through the same loader,
    with a tokenizer passed when it was trained without one."""
    import json

    import jax
    from tokenizer_fixtures import make_base_tokenizer

    from configs.tiny import get_config
    from llark_jax.checkpoints.model_dir import ModelDirError, save_model_dir
    from llark_jax.checkpoints.tokens import extend_tokenizer
    from llark_jax.serve.cli import build_state, parse_args
    from llark_jax.train.checkpoint import TrainCheckpointer
    from llark_jax.train.loop import TrainSetup, train

    model, tokenizer = tiny_model(seed=3)
    model_dir = make_model_dir(tmp_path / "model", seed=3)
    served = load_model(model_dir)
    assert len(_params(served.model)) == len(_params(model)) > 0
    for a, b in zip(_params(served.model), _params(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (served.model_name, served.step, served.template.name) == (MODEL_NAME, 0,
                                                                       "fastchat_v0")
    assert served.template.system_prompt == SYSTEM_PROMPT
    assert (served.features.encoder, served.features.pool) == ("mel", FEATURE_POOL)
    assert not served.features.standardized
    manifest = json.loads((model_dir / "llark.json").read_text())
    assert manifest["features"]["pool"] == FEATURE_POOL and manifest["model_name"] == MODEL_NAME
    again = load_model(save_model_dir(served, tmp_path / "copy"))
    for a, b in zip(_params(again.model), _params(model), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (again.model_name, again.features, again.template) == (
        served.model_name, served.features, served.template)

    state = build_state(parse_args(["--checkpoint", str(model_dir), "--model-name", "renamed",
                                    "--system-prompt", "Be brief."]))
    try:
        assert state.engine.served.model_name == "renamed"
        assert state.engine.served.template.system_prompt == "Be brief."
        assert state.featurizer.windowing.features == served.features
    finally:
        state.batcher.close(10)
        state.featurizer.close()

    with pytest.raises(ModelDirError, match="no llark.json"):
        load_model(tmp_path)
    with pytest.raises(ModelDirError, match="no such directory"):
        load_model(tmp_path / "absent")
    with pytest.raises(ModelDirError, match="no checkpoint at step 7"):
        load_model(model_dir, step=7)
    shifted = make_base_tokenizer()
    shifted.add_tokens(["<extra>"])  # every LLark token one id later than the model's
    extend_tokenizer(shifted)
    with pytest.raises(ModelDirError, match="audio token ids"):
        load_model(model_dir, tokenizer=shifted)

    ids = conv.AudioTokenIds.from_tokenizer(tokenizer)
    config = get_config()
    config.model.llama.vocab_size = len(tokenizer)
    config.model.audio_dim = 160
    config.model.audio_start_id, config.model.audio_patch_id = ids.start, ids.patch
    config.model.audio_end_id = ids.end
    config.train.steps = config.train.checkpoint_every = 2
    config.optim.warmup_steps = 1
    config.train.async_checkpoint = False
    config.metrics.tensorboard = False
    assert train(config, tmp_path / "work") == 0
    with pytest.raises(ModelDirError, match="no tokenizer/"):
        load_model(tmp_path / "work")  # trained on synthetic batches: no tokenizer saved
    workdir = load_model(tmp_path / "work", tokenizer=served.tokenizer)
    assert workdir.step == 2 and workdir.template.name == "fastchat_v0"
    assert workdir.features.pool == 1 and workdir.features.encoder == "mel"
    # the params-only restore equals restoring the whole train state (optimizer included)
    checkpointer = TrainCheckpointer(tmp_path / "work" / "checkpoints", keep=2,
                                     async_save=False)
    setup = TrainSetup(workdir.config)
    step, full, _ = checkpointer.restore_latest(setup.abstract_state_with_shardings())
    checkpointer.close()
    assert step == 2
    ours = _params(workdir.model)
    saved = [np.asarray(a) for a in jax.tree.leaves(full["params"])]
    assert len(ours) == len(saved) > 0
    for a, b in zip(ours, saved, strict=True):
        np.testing.assert_array_equal(a, b)
    chat = Engine(workdir, batch_size=1, block_tokens=4).build_prompt(
        [("Key?", "")], [np.ones((3, 160), np.float32)], RowSettings(4))
    assert list(chat.prompt.input_ids).count(ids.patch) == 3
