"""Answering questions: prompts, multi-window audio, resumable records, and the infer CLI on a
real training workdir: a tiny HF Llama trained 2 steps on TFRecords made from synthesized WAVs by
the offline path (`data_prep embed --encoder mel`, `data_prep write`) with pooled, standardised
features. The join test checks that the features `infer` computes from a file are exactly the
features training fed the model for that clip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from flax import nnx
from tokenizer_fixtures import make_llark_tokenizer

from llark_jax.data import conversation as conv
from llark_jax.data.records import ClipRecord, QAPair, encode_clip, frame_record
from llark_jax.errors import UserError
from llark_jax.infer.answer import Answerer, answer_records, request_from_windows
from llark_jax.infer.generate import SamplingConfig
from llark_jax.infer.windows import split_waveform

AUDIO_DIM = 160  # the mel encoder's width, so --audio works on the same checkpoint
BUCKETS = (64, 128, 256)


def llark_tokenizer():
    return make_llark_tokenizer()  # the base has no pad token: [PAD] is added first


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


def test_span_crop_hears_one_training_window_by_the_paper_rule():
    from types import SimpleNamespace

    import ml_collections

    from llark_jax.data.features import FeatureSpec
    from llark_jax.infer.windows import Windowing

    loaded = SimpleNamespace(features=FeatureSpec("mel", pool=5),  # 10 Hz frames: 4 x 5 = 2 s
                             config=ml_collections.ConfigDict({"data": {"audio_frames": 4}}))
    windowing = Windowing.for_model(loaded)
    assert windowing.window_seconds == 2.0

    def heard(duration_s: float, span: str) -> tuple[float, float]:
        window = windowing.span(duration_s, span)
        return window.start_s, window.end_s

    assert heard(240.0, "crop") == (30.0, 32.0)  # longer than 60 s: from 30 s on
    assert heard(60.0, "crop") == (0.0, 2.0)  # up to 60 s: from the start
    assert heard(1.5, "crop") == (0.0, 1.5)
    assert heard(240.0, "all") == (0.0, 240.0)
    with pytest.raises(ValueError, match="expected one of crop, all"):
        windowing.span(10.0, "middle")


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


def test_requests_of_different_audio_lengths_share_a_batch():
    """Files (and records) differ in length: a batch pads their frames to the longest and
    rewrites each prompt's frame index, so every answer equals the answer asked alone (and the
    audio padded to the training window changes nothing)."""
    answerer = tiny_answerer(max_new_tokens=8)
    rng = np.random.default_rng(3)
    windows = [[rng.normal(size=(n, AUDIO_DIM)).astype(np.float32) for n in lengths]
               for lengths in ((4,), (7,), (5, 3))]
    requests = [request_from_windows("What is the key?", w) for w in windows]
    alone = [answerer.answer([r])[0] for r in requests]
    assert answerer.answer(requests) == alone  # batch_size 2: mixed lengths in each batch
    padded = [request_from_windows("What is the key?", w, min_frames=7) for w in windows]
    assert padded[2].audio.shape == (2, 7, AUDIO_DIM)
    assert answerer.answer(padded) == alone


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



# ------------------------------------------------------------------ the infer CLI on a trained run

SR = 44100
CLIP_SECONDS = 2.0  # 20 mel frames = 10 audio tokens at feature_pool 2 = one training window
QUESTION = "What is the key of this song?"


def tone(seconds: float, midi: int, seed: int) -> np.ndarray:
    """A decaying harmonic tone with a little noise (mono float32 at 44.1 kHz)."""
    t = np.arange(int(seconds * SR)) / SR
    hz = 440.0 * 2 ** ((midi - 69) / 12)
    x = sum(np.sin(2 * np.pi * hz * k * t) / k for k in range(1, 6)) * np.exp(-t)
    x = x + 0.02 * np.random.default_rng(seed).standard_normal(len(t))
    return (0.3 * x).astype(np.float32)


def write_wav(path, seconds: float, midi: int, seed: int = 0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, tone(seconds, midi, seed), SR, subtype="PCM_16")
    return path


def hf_llama_dir(path):
    """A tiny random Llama saved as an HF directory with the test BPE tokenizer (no pad)."""
    from tokenizer_fixtures import make_base_tokenizer

    from llark_jax.checkpoints.hf import save_llama
    from llark_jax.model.llama import Llama, LlamaConfig

    tokenizer = make_base_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    save_llama(Llama(cfg, rngs=nnx.Rngs(0)), path)
    tokenizer.save_pretrained(path)
    return path


def join_config(hf_path, records):
    from configs.tiny import get_config

    config = get_config()
    m, d = config.model, config.data
    m.source, m.path, m.audio_dim = "hf", str(hf_path), AUDIO_DIM
    m.audio_start_id = m.audio_patch_id = m.audio_end_id = -1  # from the tokenizer
    d.source, d.path, d.encoder = "tfrecord", str(records / "train-*.tfrecord"), "mel"
    d.feature_pool, d.standardize, d.audio_frames = 2, True, 10
    d.batch_size, d.seq_len = 8, 128  # 8 rows: one per test device (conftest)
    config.train.steps = config.train.checkpoint_every = 2
    config.train.async_checkpoint = False
    config.optim.warmup_steps = 1
    config.metrics.tensorboard = False
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A training workdir (2 steps) on records built from WAVs by the offline commands."""
    from data_prep.stages.embed import main as embed_main
    from data_prep.stages.write import main as write_main
    from llark_jax.train.loop import train

    root = tmp_path_factory.mktemp("join")
    clips = root / "clips"
    for i, midi in enumerate((57, 60, 64)):
        write_wav(clips / f"clip{i}.wav", CLIP_SECONDS, midi, seed=i)
    assert embed_main(["--encoder", "mel", "--audio-dir", str(clips),
                       "--output-dir", str(root / "emb")]) == 0
    with open(root / "annotations.jsonl", "w") as ann, open(root / "qa.jsonl", "w") as qa:
        for i in range(3):
            ann.write(json.dumps({"clip_id": f"clip{i}", "dataset": "test"}) + "\n")
            qa.write(json.dumps({"clip_id": f"clip{i}", "qa": [
                {"question": QUESTION, "answer": "A minor", "task": "key"}]}) + "\n")
    records = root / "records"
    assert write_main(["--annotations", str(root / "annotations.jsonl"), "--qa",
                       str(root / "qa.jsonl"), "--embeddings", str(root / "emb"),
                       "--output-dir", str(records), "--split", "train",
                       "--embedding-dtype", "float32"]) == 0  # as the demo writes them
    config = join_config(hf_llama_dir(root / "hf"), records)
    assert train(config, root / "work") == 0
    return root


def read_clips(records):
    from llark_jax.data.records import decode_clip, iter_records

    return {c.clip_id: c for path in sorted(records.glob("*.tfrecord"))
            for c in map(decode_clip, iter_records(str(path)))}


@pytest.mark.slow
def test_infer_features_equal_the_training_features(trained):
    """THE JOIN: `Windowing.file_windows` of a WAV == the feature spec applied to the record ==
    what the training pipeline puts into `batch["audio"]` for it; the saved statistics are those
    of the training records."""
    from llark_jax.checkpoints.model_dir import load_model
    from llark_jax.data.features import fit_standardization
    from llark_jax.infer.windows import Windowing
    from llark_jax.train.inputs import tfrecord_batches

    loaded = load_model(trained / "work")
    spec = loaded.features
    assert (spec.encoder, spec.pool, spec.standardized, loaded.step) == ("mel", 2, True, 2)
    clips = read_clips(trained / "records")
    assert sorted(clips) == ["clip0", "clip1", "clip2"]
    mean, std = fit_standardization([c.embedding for c in clips.values()], 2)
    np.testing.assert_array_equal(spec.mean, mean)
    np.testing.assert_array_equal(spec.std, std)

    computed = {}
    for clip_id, clip in clips.items():
        windows = Windowing.for_model(loaded).file_windows(trained / "clips" / f"{clip_id}.wav")
        assert len(windows) == 1 and windows[0].shape == (10, AUDIO_DIM)
        stored = spec.apply(clip.embedding)
        np.testing.assert_array_equal(windows[0], stored)
        assert np.abs(stored).max() > 0.5  # standardised, not all zeros
        computed[clip_id] = windows[0]

    pipeline = tfrecord_batches(loaded.config, loaded.tokenizer, spec)
    try:
        seen = set()
        for _ in range(3):
            batch = next(pipeline)
            for r, row in enumerate(pipeline.last_examples):
                for slot, meta in enumerate(row):
                    features = computed[meta["clip_id"]]
                    n = len(features)
                    assert batch["audio_mask"][r, slot].sum() == n
                    np.testing.assert_array_equal(batch["audio"][r, slot, :n], features)
                    seen.add(meta["clip_id"])
    finally:
        pipeline.close()
    assert seen == set(clips)


@pytest.mark.slow
def test_load_model_restores_only_the_trained_params(trained):
    """The params-only restore gives the weights of the whole train state's restore."""
    import jax

    from llark_jax.checkpoints.model_dir import load_model
    from llark_jax.train.checkpoint import TrainCheckpointer
    from llark_jax.train.loop import TrainSetup

    loaded = load_model(trained / "work")
    checkpointer = TrainCheckpointer(trained / "work" / "checkpoints", keep=2, async_save=False)
    try:
        step, full, _ = checkpointer.restore_latest(
            TrainSetup(loaded.config).abstract_state_with_shardings())
    finally:
        checkpointer.close()
    assert step == loaded.step == 2
    ours = jax.tree.leaves(nnx.state(loaded.model, nnx.Param))
    saved = jax.tree.leaves(full["params"])
    assert len(ours) == len(saved) > 0
    for a, b in zip(ours, saved, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


COMMON = ["--max-new-tokens", "4", "--batch-size", "2"]


@pytest.mark.slow
def test_infer_cli_records_and_multi_window_audio(trained, tmp_path, capsys):
    from llark_jax.infer.cli import main

    work = str(trained / "work")
    preds = tmp_path / "p.jsonl"
    assert main(["--checkpoint", work, *COMMON, "--records", str(trained / "records"),
                 "--output", str(preds)]) == 0
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert sorted(r["clip_id"] for r in rows) == ["clip0", "clip1", "clip2"]
    assert all(r["question"] == QUESTION and r["reference"] == "A minor" for r in rows)
    by_glob = tmp_path / "glob.jsonl"  # a glob of shards (e.g. one split) answers the same
    assert main(["--checkpoint", work, *COMMON, "--records", str(trained / "records" / "train-*"),
                 "--output", str(by_glob)]) == 0
    assert [json.loads(line) for line in by_glob.read_text().splitlines()] == rows
    # 2 s windows (10 audio tokens of 2 mel frames): a 5 s file is 3 windows, a 65 s one 33
    song = write_wav(tmp_path / "song.wav", 5.0, 62)
    long_song = write_wav(tmp_path / "long.wav", 65.0, 62)

    def ask(path: Path, *span: str) -> dict:
        capsys.readouterr()
        assert main(["--checkpoint", work, *COMMON, "--audio", str(path), "--question", "Key?",
                     *span]) == 0
        out, err = capsys.readouterr()
        [row] = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        summary = json.loads(err[err.index("{"):])
        assert summary["step"] == 2 and summary["answered"] == 1
        assert set(row) == {"audio", "clip_id", "question", "answer", "finish_reason", "span",
                            "start_s", "end_s", "windows"}
        assert (row["audio"], row["clip_id"], row["question"]) == (str(path), path.stem, "Key?")
        return row

    def heard(row: dict) -> tuple:
        return row["span"], row["start_s"], row["end_s"], row["windows"]

    assert heard(ask(song)) == ("crop", 0.0, 2.0, 1)  # the default: one training window
    assert heard(ask(song, "--span", "all")) == ("all", 0.0, 5.0, 3)
    cropped = ask(long_song)
    assert heard(cropped) == ("crop", 30.0, 32.0, 1)  # > 60 s: from 30 s on
    part = tmp_path / "part.wav"  # the same samples as a file of their own
    sf.write(part, tone(65.0, 62, 0)[30 * SR : 32 * SR], SR, subtype="PCM_16")
    assert ask(part)["answer"] == cropped["answer"]


@pytest.mark.slow
def test_infer_audio_dir_is_resumable_and_skips_unreadable_files(trained, tmp_path, capsys):
    from llark_jax.infer.cli import main

    folder = tmp_path / "songs"
    wavs = [write_wav(folder / f"s{i}.wav", 1.0 + 0.5 * i, 55 + 3 * i, seed=10 + i)
            for i in range(3)]
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(64))
    (folder / "notes.txt").write_text("not audio")
    output = tmp_path / "answers.jsonl"
    args = ["--checkpoint", str(trained / "work"), *COMMON, "--audio-dir", str(folder),
            "--question", QUESTION, "--output", str(output)]

    def run() -> dict:
        capsys.readouterr()
        assert main(args) == 0
        err = capsys.readouterr().err
        return json.loads(err[err.index("{"):])

    first = run()
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert sorted(r["audio"] for r in rows) == [str(w) for w in wavs]
    for r in rows:
        assert set(r) == {"audio", "clip_id", "question", "answer", "finish_reason", "span",
                          "start_s", "end_s", "windows"}
        assert (r["clip_id"], r["question"], r["windows"]) == (Path(r["audio"]).stem, QUESTION, 1)
    assert (first["answered"], first["already_done"]) == (3, 0)
    assert [s["audio"] for s in first["skipped"]] == [str(folder / "broken.wav")]

    again = run()  # resumable: nothing new to answer
    assert (again["answered"], again["already_done"]) == (0, 3)
    assert output.read_text().count("\n") == 3

    lines = output.read_text().splitlines()  # a kill mid-write leaves a torn last line
    output.write_text("\n".join(lines[:2]) + "\n" + lines[2][: len(lines[2]) // 2])
    torn = run()
    assert (torn["answered"], torn["already_done"]) == (1, 2)
    redone = [json.loads(line) for line in output.read_text().splitlines()]
    assert redone == rows  # greedy: the re-answered row is identical

    run_file = tmp_path / "answers.jsonl.run.json"  # what made the rows, kept beside them
    assert json.loads(run_file.read_text()) == {
        "model": str((trained / "work").resolve()), "step": 2, "max_new_tokens": 4,
        "temperature": 0.0, "top_p": 1.0, "seed": 0}
    with pytest.raises(UserError, match=r"holds the answers of another run \(max_new_tokens "
                                         r"4 -> 8\)"):
        main([*args, "--max-new-tokens", "8"])  # would mix two settings' answers in one file
    assert [json.loads(line) for line in output.read_text().splitlines()] == rows
    output.unlink()  # a deleted answers file takes its record with it
    assert main([*args, "--max-new-tokens", "8"]) == 0
    assert json.loads(run_file.read_text())["max_new_tokens"] == 8


# ------------------------------------------------------------------ user mistakes


@pytest.fixture(scope="module")
def manifest_only(tmp_path_factory):
    """A workdir whose run wrote its manifest and tokenizer but no checkpoint yet."""
    from tokenizer_fixtures import make_llark_tokenizer

    from configs.tiny import get_config
    from llark_jax.checkpoints.model_dir import write_manifest
    from llark_jax.data.features import FeatureSpec

    tokenizer = make_llark_tokenizer()
    ids = conv.AudioTokenIds.from_tokenizer(tokenizer)
    config = get_config()
    config.model.audio_start_id, config.model.audio_patch_id = ids.start, ids.patch
    config.model.audio_end_id = ids.end
    root = tmp_path_factory.mktemp("mistakes")
    write_manifest(root / "work", config, FeatureSpec(), tokenizer)
    write_wav(root / "a.wav", 1.0, 60)
    (root / "empty").mkdir()
    return root


def mistakes(root):
    wav = str(root / "a.wav")
    return {
        "missing checkpoint": (["--checkpoint", str(root / "absent"), "--audio", wav,
                                "--question", "Q"], "no such directory"),
        "not a workdir": (["--checkpoint", str(root / "empty"), "--audio", wav,
                           "--question", "Q"], "no llark.json"),
        "no checkpoint yet": (["--checkpoint", str(root / "work"), "--audio", wav,
                               "--question", "Q"], "no checkpoints/"),
        "missing audio": (["--checkpoint", str(root / "work"), "--audio", str(root / "b.wav"),
                           "--question", "Q"], "no such file"),
        "empty audio dir": (["--checkpoint", str(root / "work"), "--audio-dir",
                             str(root / "empty"), "--question", "Q"], "no audio files"),
        "no question": (["--checkpoint", str(root / "work"), "--audio", wav], "--question"),
        "records without output": (["--checkpoint", str(root / "work"), "--records",
                                    str(root / "empty")], "--output"),
    }


@pytest.mark.parametrize("case", ["missing checkpoint", "not a workdir", "no checkpoint yet",
                                  "missing audio", "empty audio dir", "no question",
                                  "records without output"])
def test_infer_mistakes_exit_2_with_one_error_line(manifest_only, case, capsys):
    from llark_jax.infer.cli import main

    argv, message = mistakes(manifest_only)[case]
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err
    assert out == ""


@pytest.mark.parametrize("case", ["no checkpoint yet", "missing audio"])
def test_infer_mistake_in_a_subprocess_prints_no_traceback(manifest_only, case):
    import subprocess
    import sys

    argv, message = mistakes(manifest_only)[case]
    result = subprocess.run([sys.executable, "-m", "llark_jax", "infer", *argv],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True,
                            text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
        result.stderr)
