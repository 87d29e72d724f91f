"""`python -m data_prep embed`: outputs, sidecars, failures report, resume, registry dispatch."""

import importlib.util
import json

import numpy as np
import pytest
import soundfile

from data_prep.cli import main as data_prep_main
from data_prep.stages import embed as cli
from llark_jax.audio.encoders.base import EncoderError


def tone(seconds: float, rate: int, freq: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def audio_dir(tmp_path):
    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    soundfile.write(root / "a.wav", tone(2.0, 44100, 440.0), 44100)
    soundfile.write(root / "sub" / "b.flac", np.stack([tone(1.5, 22050, 330.0)] * 2, 1), 22050)
    soundfile.write(root / "silent.wav", np.zeros(44100, np.float32), 44100)
    (root / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav file")
    return root


def test_embed_writes_arrays_sidecars_report_and_resumes(audio_dir, tmp_path, capsys):
    out = tmp_path / "emb"
    argv = ["embed", "--encoder", "mel", "--audio-dir", str(audio_dir), "--output-dir", str(out),
            "--batch-size", "3"]
    assert data_prep_main(argv) == 0  # bad inputs are expected failures, not errors

    a, b = np.load(out / "a.npy"), np.load(out / "b.npy")
    assert a.shape == (20, 160) and b.shape == (15, 160) and a.dtype == np.float32
    meta = json.loads((out / "a.json").read_text())
    assert meta["encoder"] == "mel" and meta["shape"] == [20, 160]
    assert meta["frame_rate_hz"] == 10.0 and meta["sample_rate"] == 44100 and meta["version"]
    report = json.loads((out / "embed.report.json").read_text())
    assert report["counts"]["processed"] == 2 and report["counts"]["skipped"] == 2
    assert {f["item"] for f in report["skipped"]} == {"silent", "broken"}
    assert report["clips_per_s"] > 0 and report["encoder"] == "mel"
    assert "clips/s" in capsys.readouterr().out
    assert not list(out.glob(".*tmp*"))

    mtime = (out / "a.npy").stat().st_mtime_ns
    assert data_prep_main(argv) == 0
    report = json.loads((out / "embed.report.json").read_text())
    assert report["counts"]["cached"] == 2 and report["counts"]["processed"] == 0
    assert (out / "a.npy").stat().st_mtime_ns == mtime


def test_embed_redoes_clip_with_stale_sidecar(audio_dir, tmp_path):
    out = tmp_path / "emb"
    out.mkdir()
    (out / "a.npy").write_bytes(b"partial")
    (out / "a.json").write_text(json.dumps({"encoder": "mel", "version": "old"}))
    cli.main(["--audio-dir", str(audio_dir), "--output-dir", str(out)])
    assert np.load(out / "a.npy").shape == (20, 160)


def test_jukebox_without_weights_is_a_clear_error(audio_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("JUKEBOX_DIR", raising=False)
    with pytest.raises(EncoderError, match="JUKEBOX_DIR"):
        cli.main(["--encoder", "jukebox", "--audio-dir", str(audio_dir),
                  "--output-dir", str(tmp_path / "o")])
    with pytest.raises(EncoderError, match="checkpoint not found"):
        cli.main(["--encoder", "jukebox", "--jukebox-dir", str(tmp_path), "--audio-dir",
                  str(audio_dir), "--output-dir", str(tmp_path / "o")])


def test_jukemirlib_backend_is_guarded(audio_dir, tmp_path):
    if importlib.util.find_spec("jukemirlib") is not None:
        pytest.skip("jukemirlib is installed; its backend needs a GPU and the real weights")
    with pytest.raises(EncoderError, match="jukemirlib package is not importable"):
        cli.main(["--encoder", "jukebox-jukemirlib", "--audio-dir", str(audio_dir),
                  "--output-dir", str(tmp_path / "o")])


def test_encoder_args_reach_the_constructor():
    args = cli.parse_args(["--encoder", "jukebox", "--audio-dir", "a", "--output-dir", "o",
                           "--encoder-arg", "windows_per_forward=2",
                           "--encoder-arg", "mert_dir=/models/mert"])
    kwargs = cli.encoder_kwargs(args)
    assert kwargs["windows_per_forward"] == 2 and kwargs["mert_dir"] == "/models/mert"
    # the code's pooling (240 frames, configs/llark_7b.py) unless --pooling paper
    assert kwargs["layer"] == 36 and kwargs["pooling_mode"] == "reference"
    paper = cli.parse_args(["--encoder", "jukebox", "--audio-dir", "a", "--output-dir", "o",
                            "--pooling", "paper"])
    assert cli.encoder_kwargs(paper)["pooling_mode"] == "paper"
