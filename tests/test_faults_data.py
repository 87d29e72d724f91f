"""Fault suite, data half: real files for the faults of the robustness issue.

- a truncated MP3 (encoded by libsndfile, then cut) is rejected with `TruncatedAudioError` by
  the probe, the loader, `crop` and `annotate` (`serve` shares the loader) instead of being
  recorded with the duration its header promises;
- `infer --audio` checks every file before loading the model and answers a bad one (truncated,
  1 sample, undecodable) with one `error:` line, no traceback;
- an endpoint that echoes the API key back (raw, URL-encoded, JSON-escaped, base64, inside
  replies and error messages) leaves it in no file the instruct stage writes.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote, quote_plus

import numpy as np
import pytest
import soundfile as sf
from fake_openai_server import FakeChatServer, FaultSchedule
from instruct_helpers import make_records, qa_reply, write_jsonl

from llark_jax.audio.io import TruncatedAudioError, audio_duration, load_audio, probe_audio

ROOT = Path(__file__).resolve().parents[1]
SR = 44100


def _tone(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 440 * t) * (1 + 0.2 * np.sin(2 * np.pi * 3 * t))
            ).astype(np.float32)


def write_mp3(path: Path, seconds: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), _tone(seconds), SR, format="MP3", subtype="MPEG_LAYER_III")
    return path


def truncated_mp3(path: Path, seconds: float = 6.0, keep: float = 0.475) -> Path:
    """A 6 s MP3 cut to 47.5% of its bytes: its (Xing) header still says 6 s."""
    full = write_mp3(path.with_suffix(".full.mp3"), seconds).read_bytes()
    path.with_suffix(".full.mp3").unlink()
    path.write_bytes(full[: int(len(full) * keep)])
    return path


def test_truncated_mp3_is_rejected_by_probe_duration_and_loader(tmp_path):
    good = write_mp3(tmp_path / "good.mp3", 6.0)
    assert audio_duration(good) == pytest.approx(6.0, abs=1e-3)
    assert load_audio(good).size == 6 * SR
    cut = truncated_mp3(tmp_path / "cut.mp3")
    assert sf.info(str(cut)).frames == 6 * SR  # what the header claims
    for call in (probe_audio, audio_duration, lambda p: load_audio(p, 0.0, 1.0), load_audio):
        with pytest.raises(TruncatedAudioError, match=r"cut\.mp3: .*decoded.* of .*6\.000 s"):
            call(cut)


def test_crop_and_annotate_skip_the_truncated_mp3(tmp_path, monkeypatch):
    from data_prep import annotate
    from data_prep.stages import crop as crop_stage

    songs = tmp_path / "songs"
    write_mp3(songs / "whole.mp3", 6.0)
    truncated_mp3(songs / "cut.mp3")
    assert crop_stage.main(["--input-dir", str(songs), "--output-dir", str(tmp_path / "crops"),
                            "--crop-seconds", "5"]) == 0
    report = json.loads((tmp_path / "crops" / "crops.jsonl.report.json").read_text())
    assert [(s["item"], s["error"]) for s in report["skipped"]] == [("cut",
                                                                      "TruncatedAudioError")]
    assert "cut.mp3: decoded 2." in report["skipped"][0]["reason"]
    clips = [json.loads(line) for line in (tmp_path / "crops" / "crops.jsonl").open()]
    assert [c["track_id"] for c in clips] == ["whole"]

    analysed = []
    monkeypatch.setattr(annotate, "get_annotator", lambda: analysed.append)
    with pytest.raises(TruncatedAudioError):
        annotate.annotate_file(songs / "cut.mp3")
    assert analysed == []  # never analysed as if it were 6 s


# ------------------------------------------------------------------ infer checks audio first


@pytest.fixture(scope="module")
def no_model_workdir(tmp_path_factory) -> Path:
    """A workdir with a manifest and tokenizer but no checkpoint: loading the model fails with
    "no checkpoints/", so an audio error proves the audio was checked first."""
    from tokenizer_fixtures import make_llark_tokenizer

    from configs.tiny import get_config
    from llark_jax.checkpoints.model_dir import write_manifest
    from llark_jax.data.conversation import AudioTokenIds
    from llark_jax.data.features import FeatureSpec

    tokenizer = make_llark_tokenizer()
    ids = AudioTokenIds.from_tokenizer(tokenizer)
    config = get_config()
    config.model.audio_start_id, config.model.audio_patch_id = ids.start, ids.patch
    config.model.audio_end_id = ids.end
    root = tmp_path_factory.mktemp("infer_audio")
    write_manifest(root / "work", config, FeatureSpec(), tokenizer)
    truncated_mp3(root / "cut.mp3")
    sf.write(str(root / "one_sample.wav"), np.array([0.5], np.float32), SR)
    (root / "noise.wav").write_bytes(np.random.default_rng(0).bytes(3000))
    return root


BAD_AUDIO = {"cut.mp3": "cut short", "one_sample.wav": "too short",
             "noise.wav": "cannot decode"}


@pytest.mark.parametrize("name", sorted(BAD_AUDIO))
def test_infer_rejects_bad_audio_before_loading_the_model(no_model_workdir, name, capsys,
                                                          monkeypatch):
    from llark_jax.checkpoints import model_dir
    from llark_jax.infer.cli import main

    def load_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the audio was checked")

    monkeypatch.setattr(model_dir, "load_model", load_model)
    capsys.readouterr()
    argv = ["--checkpoint", str(no_model_workdir / "work"), "--audio",
            str(no_model_workdir / name), "--question", "What key?"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert name in lines[0] and BAD_AUDIO[name] in lines[0], lines[0]
    assert out == ""


def test_infer_audio_dir_of_only_bad_files_fails_before_the_model(no_model_workdir, tmp_path,
                                                                  capsys):
    from llark_jax.infer.cli import main

    folder = tmp_path / "bad"
    folder.mkdir()
    for name in BAD_AUDIO:
        (folder / name).write_bytes((no_model_workdir / name).read_bytes())
    capsys.readouterr()
    assert main(["--checkpoint", str(no_model_workdir / "work"), "--audio-dir", str(folder),
                 "--question", "What key?"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no usable audio file" in lines[0], lines
    assert all(name in lines[0] for name in BAD_AUDIO), lines[0]


def test_infer_bad_audio_in_a_subprocess_prints_no_traceback(no_model_workdir):
    result = subprocess.run(
        [sys.executable, "-m", "llark_jax", "infer", "--checkpoint",
         str(no_model_workdir / "work"), "--audio", str(no_model_workdir / "noise.wav"),
         "--question", "What key?"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "noise.wav" in lines[0], (
        result.stderr)


# ------------------------------------------------------------------ API key redaction

# ASCII (it travels in an HTTP header) with the characters each encoding rewrites.
ECHOED_KEY = 'sk-test+/Key="0123"\\DO-NOT-LEAK~$'


def leaked_forms(key: str) -> dict[str, str]:
    """The key as a client can meet it (written here independently of the redactor)."""
    url = quote(key, safe="")
    head, *escapes = url.split("%")
    forms = {
        "raw": key,
        "url": url,
        "url_lower_hex": "%".join([head] + [e[:2].lower() + e[2:] for e in escapes]),
        "url_keep_slash": quote(key),
        "url_plus": quote_plus(key),
        "json": json.dumps(key)[1:-1],
        "python_repr": repr(key)[1:-1],
        "repr_of_json": repr(json.dumps(key)[1:-1])[1:-1],
        "json_every_char": "".join(f"\\u{ord(c):04x}" for c in key),
    }
    for offset in range(3):  # base64 of the key at any position of a longer text
        for alphabet, encode in (("std", base64.b64encode), ("url", base64.urlsafe_b64encode)):
            text = encode(b"\0" * offset + key.encode()).decode()
            forms[f"base64_{alphabet}_{offset}"] = text[4 if offset else 0 : -4]
    return forms


def test_a_key_echoed_in_any_encoding_is_in_no_file_the_instruct_stage_writes(tmp_path,
                                                                              monkeypatch):
    from data_prep.stages.instruct import main as instruct_main

    monkeypatch.setenv("OPENAI_API_KEY", ECHOED_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    (tmp_path / "in").mkdir()
    metadata = write_jsonl(tmp_path / "in" / "clips.jsonl", make_records(6))
    # call 0..2: replies whose answers echo the key; 3..5: 400 errors whose message echoes it
    schedule = FaultSchedule.sequence(["echo_key"] * 3 + ["echo_key_error"] * 3)
    output = tmp_path / "out" / "qa.jsonl"
    with FakeChatServer(qa_reply, schedule, expected_key=ECHOED_KEY) as server:
        code = instruct_main(["--metadata", str(metadata), "--task", "mir", "--dataset", "fma",
                              "--output", str(output), "--base-url", server.base_url,
                              "--concurrency", "1", "--max-attempts", "1"])
        assert [c.fault for c in server.calls] == ["echo_key"] * 3 + ["echo_key_error"] * 3
    assert code == 1  # three clips failed (non-retryable 400), reported
    written = {p.name: p.read_text() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert set(written) == {"qa.jsonl", "qa.jsonl.responses.jsonl", "qa.jsonl.report.json"}
    for name, text in written.items():
        for form_name, form in leaked_forms(ECHOED_KEY).items():
            assert form not in text, f"{form_name} form of the key in {name}"
    assert "[REDACTED]" in written["qa.jsonl"] and "[REDACTED]" in written[
        "qa.jsonl.responses.jsonl"]
