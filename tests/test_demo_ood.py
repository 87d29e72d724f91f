"""The demo's OOD set (numpy synthesiser, 22.05 kHz MP3), its training distortions, the
best-constant floor and the report's two-floor grounding rule."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf

from data_prep import demo_augment, demo_dataset, demo_ood
from llark_jax.audio.io import load_audio
from llark_jax.demo.eval import constant_answers
from llark_jax.demo.report import compare, evaluation_section, summary_table
from llark_jax.eval.intervals import MetricResult
from llark_jax.eval.metrics import tempo_hits


def test_ood_set_is_mp3_at_22050_with_truth_and_reused(tmp_path):
    truths = demo_ood.build_ood_dataset(tmp_path, n_clips=2, seconds=3.0, seed=0)
    path = tmp_path / "audio" / f"{truths[0].clip_id}.mp3"
    info = sf.info(path)
    assert info.format == "MP3" and info.samplerate == 22050
    audio = load_audio(path)  # the product's loader: mono at 44.1 kHz
    assert abs(audio.shape[0] / 44100 - 3.0) < 0.1 and np.abs(audio).max() > 0.3
    records = [json.loads(line) for line in (tmp_path / "clips.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records] == ["ood", "ood"]
    assert records[0]["distortions"] == {"synth": "numpy", "source_rate": 22050, "codec": "mp3"}
    assert {"bass", "drums"} <= set(records[0]["instruments"])
    mtime = path.stat().st_mtime_ns
    assert demo_ood.build_ood_dataset(tmp_path, n_clips=2, seconds=3.0, seed=0) == truths
    assert path.stat().st_mtime_ns == mtime
    # another seed composes other music
    assert demo_ood.build_ood_dataset(tmp_path / "b", 2, 3.0, seed=1)[0].key != truths[0].key \
        or demo_ood.build_ood_dataset(tmp_path / "b", 2, 3.0, seed=1)[0].tempo != truths[0].tempo


@pytest.mark.parametrize("name", [*sorted(demo_dataset.PITCHED_INSTRUMENTS), "bass"])
def test_every_instrument_has_an_audible_numpy_voice(name):
    t = np.arange(int(0.3 * demo_ood.OOD_RATE)) / demo_ood.OOD_RATE
    wave = demo_ood._voice(name, 220.0, t, np.random.default_rng(0))
    assert wave.shape == t.shape and np.isfinite(wave).all()
    assert np.sqrt(np.mean(wave**2)) > 0.01


def test_training_distortions_are_seeded_and_recorded(tmp_path):
    first = demo_dataset.build_dataset(tmp_path / "a", n_clips=6, seconds=2.0, seed=3,
                                       augment=True)
    again = demo_dataset.build_dataset(tmp_path / "b", n_clips=6, seconds=2.0, seed=3,
                                       augment=True)
    assert [t.distortions for t in first] == [t.distortions for t in again]
    assert all("gain_db" in t.distortions for t in first)
    assert len({json.dumps(t.distortions, sort_keys=True) for t in first}) == 6
    wav = f"audio/{first[0].clip_id}.wav"
    audio_a, audio_b = (sf.read(tmp_path / d / wav)[0] for d in ("a", "b"))
    np.testing.assert_array_equal(audio_a, audio_b)
    plain = demo_dataset.build_dataset(tmp_path / "c", n_clips=6, seconds=2.0, seed=3)
    assert all(t.distortions == {} for t in plain)
    assert not np.array_equal(audio_a, sf.read(tmp_path / "c" / wav)[0])


def test_distortions_keep_length_and_change_the_signal():
    rng = np.random.default_rng(0)
    x_n = (0.3 * np.sin(2 * np.pi * 440 * np.arange(22050) / 22050)
           + 0.05 * rng.standard_normal(22050)).astype(np.float32)
    applied = {"reverb_rt60_s": 0.5, "reverb_wet": 0.3, "lowpass_hz": 5000, "source_rate": 16000,
               "noise_snr_db": 20.0, "gain_db": -10.0, "codec": "ogg"}
    y_n = demo_augment.apply_distortions(x_n, 22050, applied, seed=1)
    assert y_n.shape == x_n.shape and y_n.dtype == np.float32
    assert abs(np.abs(y_n).max() - 10 ** (-10 / 20)) < 0.1  # peak set by gain_db
    spectrum = np.abs(np.fft.rfft(demo_augment.lowpass(x_n, 22050, 2000)))
    assert spectrum[5000:].max() < 1e-2 * spectrum.max()  # nothing left above the cut-off


def test_constant_answers_are_the_best_constants():
    truth = [{"key": "A minor", "tempo": 120.0, "instruments": ["bass", "drums", "piano"]},
             {"key": "A minor", "tempo": 60.0, "instruments": ["bass", "drums", "flute"]},
             {"key": "C major", "tempo": 90.0, "instruments": ["bass", "drums", "piano"]},
             {"key": "D major", "tempo": 241.0, "instruments": ["bass", "drums", "organ"]}]
    answers = constant_answers(truth)
    assert answers["key"] == "The key is A minor."
    bpm = float(answers["tempo"].split()[-2])
    assert sum(tempo_hits(bpm, t["tempo"])[1] for t in truth) == 3  # 120, 60 and 241 (x2)
    assert answers["instruments"] == "bass, drums, piano"  # adding piano raises micro F1


def result(value: float, low: float, high: float) -> MetricResult:
    return MetricResult(name="m", value=value, n=50, ci95=(low, high), interval="test")


def test_grounded_needs_both_floors_beaten_with_disjoint_intervals():
    own, shuffled = result(0.6, 0.5, 0.7), result(0.1, 0.05, 0.2)
    assert compare(own, shuffled)["grounded"]
    assert compare(own, shuffled, result(0.3, 0.2, 0.4))["grounded"]
    assert not compare(own, shuffled, result(0.45, 0.35, 0.55))["grounded"]  # overlaps
    assert not compare(own, shuffled, result(0.65, 0.55, 0.75))["grounded"]


def test_summary_table_shows_both_evaluations_floors_and_cpu_seconds():
    metrics = ("key_mirex", "tempo_acc2", "instruments_f1", "tempo_acc1", "instruments_clip_f1")
    scores = {c: {m: result(v, v - 0.1, v + 0.1) for m in metrics}
              for c, v in (("audio", 0.6), ("shuffled", 0.2), ("constant", 0.3))}
    report = {**evaluation_section(scores, 50), "ood": evaluation_section(scores, 40),
              "stage_seconds": {"synth": 10.0, "train": 300.0},
              "stage_cpu_seconds": {"synth": 9.0, "train": 550.0}}
    table = summary_table(report)
    assert "n = 50" in table and "n = 40" in table and "out of distribution" in table
    assert table.count("constant answer") == 2 and table.count("shuffled audio") == 2
    assert "train" in table and "550" in table and "total" in table
