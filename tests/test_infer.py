"""Answering questions: prompts, multi-window audio, resumable records, the infer CLI on a real
Orbax checkpoint of the tiny config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from flax import nnx

from llark_jax.checkpoints.tokens import extend_tokenizer
from llark_jax.data import conversation as conv
from llark_jax.data.records import ClipRecord, QAPair, encode_clip, frame_record
from llark_jax.demo_lm import tiny_tokenizer
from llark_jax.infer.answer import (
    Answerer,
    answer_records,
    request_from_windows,
    split_waveform,
)
from llark_jax.infer.generate import SamplingConfig

AUDIO_DIM = 160  # the mel encoder's width, so --audio works on the same checkpoint
BUCKETS = (64, 128, 256)


def llark_tokenizer():
    tokenizer = tiny_tokenizer()  # no pad token: [PAD] is added first
    extend_tokenizer(tokenizer)
    return tokenizer


def tiny_config(tokenizer):
    from configs.tiny import get_config

    config = get_config()
    ids = conv.AudioTokenIds.from_tokenizer(tokenizer)
    config.model.llama.vocab_size = len(tokenizer)
    config.model.llama.vocab_multiple = 8
    config.model.audio_dim = AUDIO_DIM
    config.model.audio_start_id, config.model.audio_patch_id = ids.start, ids.patch
    config.model.audio_end_id = ids.end
    config.data.audio_frames = 10
    return config


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real Orbax checkpoint (step 1) of a fresh tiny LLark + the matching tokenizer dir."""
    from llark_jax.config import config_to_json
    from llark_jax.train.checkpoint import TrainCheckpointer
    from llark_jax.train.loop import TrainSetup

    root = tmp_path_factory.mktemp("infer")
    tokenizer = llark_tokenizer()
    tokenizer.save_pretrained(root / "tokenizer")
    config = tiny_config(tokenizer)
    setup = TrainSetup(config)
    checkpointer = TrainCheckpointer(root / "work" / "checkpoints", keep=2, async_save=False)
    checkpointer.save(1, setup.fresh_state(), {"position": 0}, config_to_json(config))
    checkpointer.close()
    return root


def tiny_answerer(max_new_tokens=6):
    from llark_jax.model.llama import Llama, LlamaConfig
    from llark_jax.model.llark import LLark

    tokenizer = llark_tokenizer()
    ids = conv.AudioTokenIds.from_tokenizer(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                      vocab_multiple=8)  # fmt: skip
    model = LLark(Llama(cfg, rngs=nnx.Rngs(0)), AUDIO_DIM, audio_patch_id=ids.patch,
                  audio_start_id=ids.start, audio_end_id=ids.end, rngs=nnx.Rngs(1))  # fmt: skip
    return Answerer(model, tokenizer, conv.FASTCHAT_V0, SamplingConfig(max_new_tokens),
                    batch_size=2, length_buckets=BUCKETS)  # fmt: skip


def test_split_waveform():
    windows = split_waveform(np.arange(250), 100)
    assert [len(w) for w in windows] == [100, 100, 50]
    assert [len(w) for w in split_waveform(np.arange(205), 100)] == [100, 100]  # 5 < 10% dropped


def test_multi_window_prompt_layout():
    answerer = tiny_answerer()
    rng = np.random.default_rng(0)
    windows = [rng.normal(size=(n, AUDIO_DIM)).astype(np.float32) for n in (4, 4, 3)]
    request = request_from_windows("What is the key?", windows)
    assert request.audio.shape == (3, 4, AUDIO_DIM) and request.frames_per_window == (4, 4, 3)
    prompt = answerer.prompt(request)
    ids, tok = list(prompt.input_ids), answerer.tokenizer
    assert ids.count(answerer.audio_ids.start) == 3 and ids.count(answerer.audio_ids.patch) == 11
    prefix = tok.encode(conv.FASTCHAT_V0.assistant_prefix, add_special_tokens=False)
    assert ids[-len(prefix) :] == prefix  # the prompt ends with "### Assistant: "
    patch_index = prompt.audio_frame_index[np.asarray(ids) == answerer.audio_ids.patch]
    assert list(patch_index) == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10]  # s * T + t, window order


def test_answer_records_is_resumable(tmp_path):
    answerer = tiny_answerer()
    rng = np.random.default_rng(1)
    clips = [
        ClipRecord(f"clip{i}", "demo", "test", "mel",
                   rng.normal(size=(5, AUDIO_DIM)).astype(np.float32),
                   (QAPair("What is the tempo?", "120 BPM", "mir"),
                    QAPair("What is the key?", "A minor", "mir")), {})
        for i in range(3)
    ]  # fmt: skip
    shard = tmp_path / "records" / "test-mel-00000-of-00001.tfrecord"
    shard.parent.mkdir()
    shard.write_bytes(b"".join(frame_record(encode_clip(c)) for c in clips))
    output = tmp_path / "preds.jsonl"
    first = answer_records(answerer, shard.parent, output, chunk=4)
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert first["answered"] == 6 and len(rows) == 6
    assert {r["key"] for r in rows} == {f"clip{i}#{j}" for i in range(3) for j in range(2)}
    assert all(
        set(r) >= {"clip_id", "question", "answer", "reference", "finish_reason"} for r in rows
    )
    # a kill mid-write leaves a torn line: it is dropped and that question answered again
    output.write_text("\n".join(output.read_text().splitlines()[:4]) + '\n{"key": "clip2#')
    second = answer_records(answerer, shard.parent, output, chunk=4)
    assert second["answered"] == 2 and second["already_done"] == 4
    again = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["answer"] for r in again] == [r["answer"] for r in rows]  # greedy: identical


def test_infer_cli_records_and_audio(checkpoint, tmp_path, capsys):
    from llark_jax.infer.cli import main

    rng = np.random.default_rng(2)
    frames = rng.normal(size=(10, AUDIO_DIM)).astype(np.float32)
    clip = ClipRecord("c0", "demo", "test", "mel", frames,
                      (QAPair("What genre is this?", "rock", "mir"),), {})  # fmt: skip
    records = tmp_path / "records"
    records.mkdir()
    (records / "test-mel-00000-of-00001.tfrecord").write_bytes(frame_record(encode_clip(clip)))
    common = ["--checkpoint", str(checkpoint / "work"),
              "--tokenizer", str(checkpoint / "tokenizer"),
              "--max-new-tokens", "4", "--batch-size", "1"]  # fmt: skip
    assert main([*common, "--records", str(records), "--output", str(tmp_path / "p.jsonl")]) == 0
    assert json.loads((tmp_path / "p.jsonl").read_text())["clip_id"] == "c0"
    # 2.5 s of audio with 1 s windows (10 mel frames at 10 Hz) -> 3 windows
    t = np.arange(int(2.5 * 44100)) / 44100
    sf.write(tmp_path / "song.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 44100)
    capsys.readouterr()
    assert main([*common, "--audio", str(tmp_path / "song.wav"), "--question", "Key?"]) == 0
    info = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    assert info["windows"] == 3 and info["step"] == 1


def test_load_checkpoint_restores_only_the_model(checkpoint):
    """The params-only restore gives the same weights as restoring the whole train state."""
    import jax

    from llark_jax.infer.cli import load_checkpoint
    from llark_jax.train.checkpoint import TrainCheckpointer
    from llark_jax.train.loop import TrainSetup

    model, config, step = load_checkpoint(checkpoint / "work")
    checkpointer = TrainCheckpointer(checkpoint / "work" / "checkpoints", keep=2, async_save=False)
    setup = TrainSetup(config)
    _, full, _ = checkpointer.restore_latest(setup.abstract_state_with_shardings())
    abstract = setup.abstract_state_with_shardings()
    partial = checkpointer.restore_subtrees(step, {"params": abstract["params"]})
    checkpointer.close()
    assert set(partial) == {"params"}
    ours = jax.tree.leaves(nnx.state(model, nnx.Param))
    saved = jax.tree.leaves(full["params"])
    assert len(ours) == len(saved) == len(jax.tree.leaves(partial["params"])) > 0
    for a, b in zip(ours, saved, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
