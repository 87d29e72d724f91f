"""A miniature `make demo` end to end: 8 synthetic 3 s clips and 3 OOD clips, every stage for
real, a tiny random Llama saved as a Hugging Face directory (the real format), 3 steps of the
production trainer.
Checks the report schema, that every stage ran and left its outputs, that the model directory it
ends with answers through `infer --audio-dir`, and that a rerun reuses every finished stage."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from flax import nnx
from tokenizer_fixtures import make_base_tokenizer

from llark_jax.checkpoints.hf import save_llama
from llark_jax.demo.run import STAGES
from llark_jax.model.llama import Llama, LlamaConfig

MINI = ["--n-clips", "8", "--seconds", "3", "--steps", "3",
        "--config.dataset.eval_fraction=0.5", "--config.optim.warmup_steps=1",
        "--config.eval.max_new_tokens=6", "--config.train.head_positions=128",
        "--config.data.seq_len=256", "--config.data.batch_size=2", "--config.ood.n_clips=3",
        "--config.stages.annotate_clips=6", "--config.model.keep_layers=1"]
METRICS = ("key_mirex", "tempo_acc2", "instruments_f1")
BENCH = Path(__file__).resolve().parents[1] / "bench"


def tiny_hf_lm(path: Path) -> Path:
    """A 2-layer random Llama + the test BPE tokenizer (ChatML template) as an HF directory."""
    tokenizer = make_base_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                         tie_word_embeddings=True, max_position_embeddings=1024)
    save_llama(Llama(config, rngs=nnx.Rngs(0)), path)
    tokenizer.save_pretrained(path)
    return path


def _serve_and_export(model: Path, workdir: Path) -> None:
    """The demo's model directory answers the `openai` client through `serve`, and its export
    loads in transformers with the audio tokens."""
    import base64

    import openai
    import torch
    from serve_helpers import ServerProcess
    from transformers import AutoModelForCausalLM, AutoTokenizer

    clip = sorted((workdir / "clips").glob("*.wav"))[0]
    server = ServerProcess(model)
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                               timeout=300)
        audio = {"data": base64.b64encode(clip.read_bytes()).decode(), "format": "wav"}
        reply = client.chat.completions.create(
            model=client.models.list().data[0].id, max_tokens=4, messages=[{
                "role": "user", "content": [{"type": "input_audio", "input_audio": audio},
                                            {"type": "text", "text": "What is the tempo?"}]}])
        assert reply.choices[0].message.content is not None
    finally:
        assert server.stop() == 0
    hf = workdir / "hf"
    export = subprocess.run([sys.executable, "-m", "llark_jax", "export", "--checkpoint",
                             str(model), "--output", str(hf), "--verify"],
                            capture_output=True, text=True, timeout=600)
    assert export.returncode == 0, export.stderr[-3000:]
    assert "verify: max|diff|" in export.stdout  # torch logits within the fp32 contract
    exported = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    assert exported.config.num_hidden_layers == 1  # model.keep_layers=1 of the 2-layer LM
    tokenizer = AutoTokenizer.from_pretrained(hf)
    assert tokenizer.convert_tokens_to_ids("<audio_patch>") not in (None, tokenizer.unk_token_id)


def _bench_reads(report: dict) -> None:
    """`make bench`'s demo rows (bench/demo_run.py, bench/render.py) read this report."""
    sys.path.insert(0, str(BENCH))
    from demo_run import summary
    from render import render

    result = summary(report)
    assert result["total_s"] == pytest.approx(sum(report["stage_seconds"].values()))
    assert set(result["scores"]) == {"held_out", "ood"}
    text = render({"demo_run": result}, {})
    assert "| Demo: `make demo` from an empty workdir" in text and "## Demo (" in text


def _bench_distortions(workdir: Path, out: Path) -> None:
    """`bench/demo_distortions.py` asks the demo's model about its clips written as users' files
    (every distortion of `USER_FILE_DISTORTIONS`), and `make bench` renders the result."""
    from data_prep.demo_augment import USER_FILE_DISTORTIONS

    sys.path.insert(0, str(BENCH))
    from render import render

    run = subprocess.run([sys.executable, str(BENCH / "demo_distortions.py"), "--workdir",
                          str(workdir), "--n-clips", "1", "--max-new-tokens", "4", "--json",
                          str(out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["n_clips"] == 1 and list(result["variants"]) == ["as_is", *USER_FILE_DISTORTIONS]
    for row in result["variants"].values():
        assert all(0.0 <= value <= 1.0 for value in row.values())
    assert result["variants"]["as_is"]["key_same"] == 1.0  # the file itself agrees with itself
    assert "### Demo answers through users' files" in render({"demo_distortions": result}, {})


def _demo(workdir: Path, lm: Path, user: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llark_jax", "demo", "--workdir", str(workdir),
                           *MINI, "--config.model.source=hf", f"--config.model.path={lm}",
                           "--ood-dir", str(user)], capture_output=True, text=True, timeout=800)


def user_folder(path: Path) -> Path:
    """The user's own labelled files: two OGGs at 32 kHz (one in a subfolder), a 62 s WAV (the
    piece repeated: heard from 30 s on, as `infer` hears it) and a silent WAV (left out)."""
    from data_prep.demo_augment import through_rate
    from data_prep.demo_dataset import compose_clip, render, soundfont_path

    labels = []
    for i, name in enumerate(("a.ogg", "sub/b.ogg", "long.wav")):
        midi, truth = compose_clip(f"u{i}", "user", 77 + i, 4.0)
        audio = through_rate(render(midi, 4.0, soundfont_path()), 44100, 32000)
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        if name == "long.wav":
            sf.write(path / name, np.tile(audio, 16)[: 62 * 44100], 44100)
        else:
            sf.write(path / name, audio, 44100, format="OGG", subtype="VORBIS")
        labels.append({"file": name, "key": truth.key, "tempo": truth.tempo,
                       "instruments": truth.instruments})
    sf.write(path / "silent.wav", np.zeros(44100 * 4), 44100)
    labels.append({**labels[0], "file": "silent.wav"})
    (path / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in labels))
    return path


@pytest.mark.slow
def test_mini_demo_runs_every_stage_and_reports(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    lm = tiny_hf_lm(tmp_path / "lm")
    user = user_folder(tmp_path / "user")
    first = _demo(workdir, lm, user)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    report = json.loads((workdir / "report.json").read_text())
    assert report["n_eval"] == 2  # clips 3 and 4 of seed 0 at eval_fraction 0.5
    assert report["ood"]["n_eval"] == 3 and report["user"]["n_eval"] == 3
    ood_stage = json.loads((workdir / "stages" / "ood.json").read_text())
    assert (ood_stage["user_clips"], ood_stage["user_left_out"]) == (3, ["silent"])
    for section in (report, report["ood"], report["user"]):
        for name in METRICS:
            row = section[name]
            for condition in ("audio", "shuffled", "constant"):
                assert 0.0 <= row[condition] <= 1.0
                low, high = row[f"{condition}_ci95"]
                assert 0.0 <= low <= row[condition] <= high <= 1.0
    assert set(report["constant_answers"]) == {"key", "tempo", "instruments"}
    assert set(report["stage_seconds"]) == set(report["stage_cpu_seconds"]) == set(STAGES)
    assert all(seconds >= 0 for seconds in report["stage_seconds"].values())
    assert report["stage_cpu_seconds"]["train"] > 0
    assert len(report["examples"]) == 2 and len(report["ood_examples"]) == 3
    _bench_reads(report)

    for stage in STAGES:
        assert (workdir / "stages" / f"{stage}.json").is_file(), stage
    assert len(list((workdir / "data" / "audio").glob("*.wav"))) == 8
    assert len(list((workdir / "clips").glob("*.wav"))) == 8
    annotations = (workdir / "work" / "annotations.jsonl").read_text().splitlines()
    madmom = ["downbeats_madmom" in json.loads(line) for line in annotations]
    assert len(annotations) == 8 and madmom == [True] * 6 + [False] * 2  # annotate_clips = 6
    assert len(list((workdir / "embeddings" / "mir").glob("*.npy"))) == 8
    assert len(list((workdir / "ood" / "data" / "audio").glob("*.mp3"))) == 3
    assert list((workdir / "records").glob("train-*.tfrecord"))
    assert list((workdir / "records").glob("eval-*.tfrecord"))
    assert len((workdir / "train" / "metrics.jsonl").read_text().splitlines()) == 3
    index = json.loads(next((workdir / "records").glob("train-*-index.json")).read_text())
    assert set(index["tasks"]) == {"key", "tempo", "instruments"}  # data.task_weights' names
    answers = json.loads((workdir / "eval" / "answers.json").read_text())["sets"]
    assert set(answers) == {"in_distribution", "ood", "user"}
    assert answers["user"]["clip_ids"] == [  # one clip each, by the crop rule infer uses
        "a-start0.000-end3.000", "b-start0.000-end3.000", "long-start30.000-end33.000"]
    for entry in answers.values():
        assert all(a != b for a, b in zip(entry["clip_ids"], entry["partner_ids"], strict=True))
    markdown = (workdir / "report.md").read_text()
    assert "| clip | question |" in markdown and "grounding.png" in markdown
    assert "grounding_ood.png" in markdown and "best constant answer" in markdown
    assert (workdir / "grounding.png").stat().st_size > 0
    assert "key_mirex" in first.stdout and "out of distribution" in first.stdout  # the table
    assert "CPU s" in first.stdout

    # the model directory the demo ends with answers a folder of clips through `infer`
    model = workdir / "model"
    assert (model / "llark.json").is_file() and (model / "tokenizer").is_dir()
    assert "python -m llark_jax serve --checkpoint" in first.stdout
    answers = tmp_path / "answers.jsonl"
    infer = subprocess.run([sys.executable, "-m", "llark_jax", "infer", "--checkpoint",
                            str(model), "--audio-dir", str(workdir / "clips"), "--question",
                            "What is the key of this song?", "--max-new-tokens", "4",
                            "--output", str(answers)], capture_output=True, text=True,
                           timeout=600)
    assert infer.returncode == 0, infer.stderr[-3000:]
    rows = [json.loads(line) for line in answers.read_text().splitlines()]
    assert len(rows) == 8 and all(r["windows"] == 1 for r in rows)

    _serve_and_export(model, workdir)
    _bench_distortions(workdir, tmp_path / "distortions.json")

    second = _demo(workdir, lm, user)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout.count("reused") == len(STAGES) - 1  # everything but the report
    assert json.loads((workdir / "report.json").read_text())["key_mirex"] == report["key_mirex"]
