"""The package as a user gets it: a wheel built from the sources, installed with its core
dependencies only (no extra) into a fresh virtual environment, used from a folder outside the
checkout through the console scripts.

Checks: the wheel carries the configs (found by name) and the serving page; the core install has
no torch and no TensorFlow; `llark-jax --help`, a tiny training run, `serve` start-up on a model
directory (page and API answer), the `mel` embed stage; commands that need an extra say which
one in a single `error:` line. Dependencies resolve against `requirements.txt` as constraints,
so the environment has the tested versions. Time: about 2 minutes on 2 cores, 1 of them pip.
"""

from __future__ import annotations

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
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("llark_jax", "data_prep", "configs", "pyproject.toml", "setup.py", "README.md")
NOT_IN_CORE = ("torch", "tensorflow", "tensorflow_datasets", "xmanager", "madmom", "jukebox_infer")

pytestmark = pytest.mark.slow


def _run(command: list[str], cwd: Path, timeout: float = 600, env: dict | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"{command} -> {result.returncode}\n{result.stdout[-3000:]}\n"
                             f"{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def core(tmp_path_factory) -> dict:
    """{"bin": venv bin dir, "cwd": a folder outside the checkout, "wheel": path, timings}."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    for name in SOURCES:  # what a release is built from (no .venv, runs, tests)
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    began = time.perf_counter()
    _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
          "-w", str(root / "dist"), "-q"], cwd=root)
    wheel = next((root / "dist").glob("llark_jax-*.whl"))
    built = time.perf_counter()
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root)
    _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
          str(wheel), "-c", str(REPO / "requirements.txt")], cwd=root, timeout=1200)
    installed = time.perf_counter()
    work = root / "work"
    work.mkdir()
    timings = {"build_s": built - began, "install_s": installed - built}
    print(f"wheel test: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")
    return {"bin": venv / "bin", "cwd": work, "wheel": wheel, "root": root, **timings}


def test_wheel_carries_configs_and_the_serving_page(core):
    import zipfile

    names = set(zipfile.ZipFile(core["wheel"]).namelist())
    for config in (REPO / "configs").glob("*.py"):
        assert f"llark_jax/configs/{config.name}" in names
    for page in ("index.html", "app.js", "app.css"):
        assert f"llark_jax/serve/static/{page}" in names
    assert "data_prep/instruct/prompts/mir-demo.txt" in names
    metadata = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(core["wheel"]).read(metadata).decode()
    assert "llark-jax = llark_jax.cli:main" in scripts
    assert "llark-prep = data_prep.cli:main" in scripts


def test_core_install_has_no_torch_or_tensorflow(core):
    probe = ("import importlib.util as u, json; "
             f"print(json.dumps([m for m in {NOT_IN_CORE!r} if u.find_spec(m)]))")
    found = _run([str(core["bin"] / "python"), "-c", probe], cwd=core["cwd"]).stdout
    assert json.loads(found) == []
    where = _run([str(core["bin"] / "python"), "-c", "import llark_jax; print(llark_jax.__file__)"],
                 cwd=core["cwd"]).stdout
    assert "site-packages" in where and str(REPO) not in where


def test_console_scripts_and_configs_by_name(core):
    out = _run([str(core["bin"] / "llark-jax"), "--help"], cwd=core["cwd"]).stdout
    assert all(cmd in out for cmd in ("train", "infer", "eval", "serve", "export", "plan"))
    assert out.startswith("usage: llark-jax")
    out = _run([str(core["bin"] / "llark-prep"), "--help"], cwd=core["cwd"]).stdout
    assert all(stage in out for stage in ("crop", "annotate", "embed", "write"))
    probe = ("from llark_jax.config import load_config, resolve_config; "
             "print(resolve_config('musilingo:instruct')[0]); "
             "print(load_config('llark_7b').model.vocab_size, load_config('demo').model.source)")
    out = _run([str(core["bin"] / "python"), "-c", probe], cwd=core["cwd"]).stdout.split()
    assert "site-packages/llark_jax/configs/musilingo.py" in out[0]
    assert out[1:] == ["32004", "gguf"]


def test_tiny_training_runs_from_outside_the_checkout(core):
    workdir = core["cwd"] / "tiny"
    _run([str(core["bin"] / "llark-jax"), "train", "--config", "tiny", "--workdir", str(workdir),
          "--config.train.steps=3", "--config.optim.warmup_steps=1",
          "--config.train.checkpoint_every=3"],
         cwd=core["cwd"], env={"LLARK_JAX_COMPILATION_CACHE": "off"})
    summary = json.loads((workdir / "train_summary.json").read_text())
    assert summary["steps"] == 3
    assert (workdir / "llark.json").is_file()


def test_serve_starts_on_a_model_directory(core):
    from serve_helpers import MODEL_NAME, make_model_dir

    model = make_model_dir(core["root"] / "model")
    log = open(core["root"] / "serve.log", "w")
    process = subprocess.Popen(
        [str(core["bin"] / "llark-jax"), "serve", "--checkpoint", str(model), "--host",
         "127.0.0.1", "--port", "0"], cwd=core["cwd"], stdout=subprocess.PIPE, stderr=log,
        text=True, env={**os.environ, "LLARK_JAX_COMPILATION_CACHE": "off"})
    try:
        deadline, line = time.monotonic() + 180, ""
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if line.startswith("serving ") or (not line and process.poll() is not None):
                break
        assert line.startswith("serving "), (core["root"] / "serve.log").read_text()[-3000:]
        url = line.split()[1]
        page = urllib.request.urlopen(url + "/", timeout=30).read().decode()
        assert "<html" in page.lower()
        assert urllib.request.urlopen(url + "/static/app.js", timeout=30).status == 200
        models = json.load(urllib.request.urlopen(url + "/v1/models", timeout=30))
        assert [m["id"] for m in models["data"]] == [MODEL_NAME]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            status = process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            status = process.wait()
        log.close()
    assert status == 0


def test_mel_embedding_works_and_extras_are_named_when_missing(core):
    audio = core["cwd"] / "audio"
    audio.mkdir()
    t = np.arange(44100) / 44100
    sf.write(audio / "a.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 44100)
    _run([str(core["bin"] / "llark-prep"), "embed", "--audio-dir", str(audio), "--output-dir",
          str(core["cwd"] / "emb")], cwd=core["cwd"])
    assert (core["cwd"] / "emb" / "a.npy").is_file() or list((core["cwd"] / "emb").glob("a*"))
    for command in (["llark-prep", "annotate", "--audio-dir", str(audio), "--output",
                     str(core["cwd"] / "ann.jsonl")],
                    ["llark-jax", "demo", "--workdir", str(core["cwd"] / "demo")]):
        result = _run([str(core["bin"] / command[0]), *command[1:]], cwd=core["cwd"],
                      check=False)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and 'pip install "llark-jax[prep]"' in last, last
