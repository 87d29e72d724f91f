"""The paper path in miniature: every production command on tiny weights in the real formats.

`test_paper_path_end_to_end` (slow) runs, as subprocesses where a user would:

1. a tiny random Jukebox in the official checkpoint layout (`jukebox_fixtures`) and two 2 s
   synthesised WAV clips (`audio_fixtures`);
2. `python -m data_prep embed --encoder jukebox --jukebox-dir J` with the DEFAULT pooling (the
   reference code's 34-token windows: a 2 s clip gives floor(floor(88200 / 128) / 34) = 20 frames;
   a full clip gives the 240 `configs/llark_7b.py` trains on). The tiny model needs `--layer 3`
   and its hparams overrides (`--encoder-arg`), nothing else;
3. metadata + QA JSONL -> `python -m data_prep write`;
4. `python -m llark_jax train --config configs/llark_7b.py` scaled down only by `--config.*`
   overrides: a tiny HF Llama directory (`save_llama` + the test BPE tokenizer) as `model.path`,
   vocabulary and audio token ids from the tokenizer (`vocab_size=0`, ids -1), float32,
   `model.audio_dim` = the tiny Jukebox width 16, `data.audio_frames` = 20, 2 steps; remat and
   scan stay on as in the paper config; `data.encoder_args` records the tiny Jukebox so `infer`
   rebuilds the same encoder;
5. `python -m llark_jax export` -> the exported directory loaded in torch (its own
   `modeling_llark.py`, which builds the LM with `AutoModelForCausalLM`): logits on one training
   example with audio equal the Flax model's (`load_model(W)`) within the fp32 contract
   max|diff| <= 1e-4 * max(1, max|logit|) (tests/test_export.py);
6. `python -m llark_jax infer --checkpoint W --audio clip.wav --question ...` answers.

`test_train_rejects_records_with_more_frames_than_the_config` (fast): records of 30 frames with
`data.audio_frames=20` make `python -m llark_jax train` exit 2 with one `error:` line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from audio_fixtures import SR, chord_progression, drum_pattern, write_wav
from records_helpers import make_shards
from tokenizer_fixtures import make_base_tokenizer

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIG = REPO / "configs" / "llark_7b.py"
CLIP_SECONDS = 2
HOP, N_CTX, WINDOW = 128, 8192, 34  # Jukebox's top level; the reference's 34-token pooling window
FRAMES = min(CLIP_SECONDS * SR // HOP, N_CTX) // WINDOW  # = 20 under the default pooling
FP32_REL_TOL = 1e-4
QUESTION = "What is the tempo of this song?"


def _env() -> dict[str, str]:
    """The user's environment: one CPU device (not the 8 fake devices of tests/conftest.py)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    began = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=timeout)
    print(f"python -m {args[0]} {args[1]}: {time.perf_counter() - began:.1f} s")
    return done


def _start(*args: str) -> tuple[subprocess.Popen, float]:
    """A command started in the background (it overlaps the next steps on a 2-core machine)."""
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE), time.perf_counter()


def _finish(started: tuple[subprocess.Popen, float], timeout: float = 600
            ) -> subprocess.CompletedProcess:
    process, began = started
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        process.kill()
    print(f"python -m {process.args[2]} {process.args[3]} (background): "
          f"{time.perf_counter() - began:.1f} s")
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def _ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, (done.args, done.stdout[-3000:], done.stderr[-3000:])
    return done


def tiny_hf_llama(path: Path) -> Path:
    """A 2-layer random Llama + the test BPE tokenizer (no LLark tokens) as an HF directory."""
    from flax import nnx

    from llark_jax.checkpoints.hf import save_llama
    from llark_jax.model.llama import Llama, LlamaConfig

    tokenizer = make_base_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                         initializer_range=0.08)
    save_llama(Llama(config, rngs=nnx.Rngs(0)), path)
    tokenizer.save_pretrained(path)
    return path


def paper_overrides(lm: Path, records: Path, frames: int, audio_dim: int,
                    encoder_args: dict | None = None) -> list[str]:
    """configs/llark_7b.py scaled down to the tiny models (the only changes to the recipe)."""
    flags = [
        f"--config.model.path={lm}", "--config.model.vocab_size=0",
        "--config.model.audio_patch_id=-1", "--config.model.audio_start_id=-1",
        "--config.model.audio_end_id=-1", f"--config.model.audio_dim={audio_dim}",
        "--config.model.param_dtype=float32", "--config.model.dtype=float32",
        f"--config.data.path={records}/train-*.tfrecord", "--config.data.batch_size=2",
        "--config.data.seq_len=128", f"--config.data.audio_frames={frames}",
        "--config.train.steps=2", "--config.train.checkpoint_every=2",
        "--config.mesh.fsdp=1", "--config.metrics.tensorboard=False",
    ]
    if encoder_args:
        flags.append(f"--config.data.encoder_args={encoder_args!r}")
    return flags


def _write_clips(directory: Path) -> dict[str, Path]:
    directory.mkdir()
    clips = {"groove": drum_pattern(120, CLIP_SECONDS),
             "chords": chord_progression([("C", "maj"), ("A", "min")], CLIP_SECONDS / 2)}
    return {name: write_wav(directory / f"{name}.wav", audio[: CLIP_SECONDS * SR])
            for name, audio in clips.items()}


def _write_annotations(root: Path, clip_ids: list[str]) -> tuple[Path, Path]:
    annotations, qa = root / "annotations.jsonl", root / "qa.jsonl"
    annotations.write_text("".join(json.dumps({"clip_id": c, "dataset": "mini", "split": "train"})
                                   + "\n" for c in clip_ids))
    pairs = {"groove": [(QUESTION, "The tempo is 120 BPM.", "tempo")],
             "chords": [("Which key is this piece in?", "It is in C major.", "key"),
                        ("Describe the instruments you hear.", "A piano and a bass.", "caption")]}
    qa.write_text("".join(json.dumps({"clip_id": c, "qa": [
        {"question": q, "answer": a, "task": t} for q, a, t in pairs[c]]}) + "\n"
        for c in clip_ids))
    return annotations, qa


def _load_modeling(directory: Path):
    spec = importlib.util.spec_from_file_location("modeling_llark_paper_path",
                                                  directory / "modeling_llark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compare_logits(workdir: Path, exported: Path, embedding_td: np.ndarray) -> None:
    """Flax (`load_model(workdir)`) vs the exported torch module on one example with audio."""
    import jax.numpy as jnp
    import torch
    import transformers

    from llark_jax.checkpoints.model_dir import load_model
    from llark_jax.data import conversation as conv

    loaded = load_model(workdir)
    assert loaded.step == 2
    tokenizer = loaded.tokenizer
    example = conv.build_example(tokenizer, loaded.template, QUESTION, "The tempo is 120 BPM.",
                                 FRAMES, True,
                                 audio_token_ids=conv.AudioTokenIds.from_tokenizer(tokenizer))
    ids = np.asarray(example["input_ids"], np.int64)[None]
    audio = loaded.features.apply(embedding_td)[None].astype(np.float32)  # [1, T_a, D]
    assert audio.shape == (1, FRAMES, 16)
    flax = np.asarray(loaded.model(jnp.asarray(ids, jnp.int32), jnp.asarray(audio)))
    flax = flax[..., : loaded.model.llama.config.vocab_size]

    torch_model = _load_modeling(exported).LlarkForCausalLM.from_pretrained(exported)
    assert isinstance(torch_model.lm, transformers.LlamaForCausalLM)
    with torch.no_grad():
        ours = torch_model(torch.from_numpy(ids), torch.from_numpy(audio)).numpy()
    diff, scale = float(np.abs(ours - flax).max()), float(np.abs(flax).max())
    print(f"paper path fp32 export: max|diff| {diff:.2e}, max|logit| {scale:.2f}")
    assert diff <= FP32_REL_TOL * max(1.0, scale), (diff, scale)
    # Control: the audio reaches the logits (the comparison is not text-only by accident).
    with torch.no_grad():
        silent = torch_model(torch.from_numpy(ids), torch.zeros_like(torch.from_numpy(audio)))
    assert float(np.abs(silent.numpy() - ours).max()) > 10 * diff


@pytest.mark.slow
def test_paper_path_end_to_end(tmp_path: Path) -> None:
    from jukebox_fixtures import TINY_LAYER, TINY_PRIOR, TINY_VQVAE, write_tiny_jukebox

    jukebox = tmp_path / "jukebox"
    jukebox.mkdir()
    write_tiny_jukebox(str(jukebox))
    clips = _write_clips(tmp_path / "clips")
    tiny_args = {"jukebox_dir": str(jukebox), "layer": TINY_LAYER, "device": "cpu",
                 "vqvae_overrides": TINY_VQVAE, "prior_overrides": TINY_PRIOR}

    # embed: the default pooling must give the frame grid the paper config trains on
    emb = tmp_path / "emb"
    embed = _start("data_prep", "embed", "--encoder", "jukebox", "--jukebox-dir", str(jukebox),
                   "--audio-dir", str(tmp_path / "clips"), "--output-dir", str(emb),
                   "--layer", str(TINY_LAYER), "--device", "cpu",
                   "--encoder-arg", f"vqvae_overrides={json.dumps(TINY_VQVAE)}",
                   "--encoder-arg", f"prior_overrides={json.dumps(TINY_PRIOR)}")
    try:
        lm = tiny_hf_llama(tmp_path / "lm")  # meanwhile: the LM directory train starts from
    except BaseException:
        embed[0].kill()
        raise
    _ok(_finish(embed))
    for name in clips:
        sidecar = json.loads((emb / f"{name}.json").read_text())
        assert sidecar["shape"] == [FRAMES, 16], sidecar
        assert sidecar["version"].endswith("-reference-float32")
        assert sidecar["frame_rate_hz"] == pytest.approx(SR / HOP / WINDOW)

    # write: metadata + QA + embeddings -> TFRecord shards
    annotations, qa = _write_annotations(tmp_path, sorted(clips))
    records = tmp_path / "records"
    _ok(_run("data_prep", "write", "--annotations", str(annotations), "--qa", str(qa),
             "--embeddings", str(emb), "--output-dir", str(records)))
    index = json.loads((records / "train-jukebox-index.json").read_text())
    assert (index["records"], index["qa_pairs"], index["not_written"]) == (2, 3, 0)

    # train: the paper config, scaled down by overrides only
    workdir = tmp_path / "run"
    _ok(_run("llark_jax", "train", "--config", str(PAPER_CONFIG), "--workdir", str(workdir),
             *paper_overrides(lm, records, FRAMES, 16, tiny_args)))
    summary = json.loads((workdir / "train_summary.json").read_text())
    counters = summary["input_counters"]
    assert summary["steps"] == 2 and counters.get("examples", 0) >= 4, summary  # 2 x batch 2
    dropped = ("too_many_frames", "too_long", "wrong_embed_dim", "bad_records")
    assert not any(counters.get(k) for k in dropped), summary  # every example trains
    losses = [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").open()]
    assert len(losses) == 2 and all(np.isfinite(losses))

    # infer (in the background): the saved feature spec rebuilds the tiny Jukebox, default pooling
    infer = _start("llark_jax", "infer", "--checkpoint", str(workdir), "--audio",
                   str(clips["groove"]), "--question", QUESTION, "--max-new-tokens", "6")

    # export -> torch logits equal the Flax model's
    exported = tmp_path / "export"
    try:
        _ok(_run("llark_jax", "export", "--checkpoint", str(workdir), "--output", str(exported)))
        _compare_logits(workdir, exported, np.load(emb / "groove.npy"))
    except BaseException:
        infer[0].kill()
        raise
    infer = _ok(_finish(infer))
    rows = [json.loads(line) for line in infer.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and isinstance(rows[0]["answer"], str), infer.stdout
    assert rows[0]["windows"] == 1 and rows[0]["clip_id"] == "groove"


def test_train_rejects_records_with_more_frames_than_the_config(tmp_path: Path) -> None:
    records, _ = make_shards(tmp_path, n_clips=2, frames=(30, 30), dim=16)
    lm = tiny_hf_llama(tmp_path / "lm")
    done = _run("llark_jax", "train", "--config", str(PAPER_CONFIG), "--workdir",
                str(tmp_path / "run"), *paper_overrides(lm, records, 20, 16))
    assert done.returncode == 2, (done.stdout[-2000:], done.stderr[-2000:])
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "30 frames" in lines[0] and "data.audio_frames = 20" in lines[0], lines[0]
