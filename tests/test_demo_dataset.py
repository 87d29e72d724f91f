"""The demo dataset: deterministic composition, a seed-fixed split, audible ground truth."""

import json

import numpy as np
import soundfile as sf

from data_prep import demo_dataset


def test_composition_is_deterministic_and_truth_is_consistent():
    midi_a, truth_a = demo_dataset.compose_clip("c0", "train", seed=123, seconds=8.0)
    midi_b, truth_b = demo_dataset.compose_clip("c0", "train", seed=123, seconds=8.0)
    assert truth_a == truth_b
    assert [n.pitch for i in midi_a.instruments for n in i.notes] == [
        n.pitch for i in midi_b.instruments for n in i.notes]
    assert 60.0 <= truth_a.tempo <= 180.0
    assert truth_a.time_signature in ("3/4", "4/4")
    assert {"bass", "drums"} <= set(truth_a.instruments)
    tonic = truth_a.key.split()[0]
    # The progression starts on the tonic chord and every chord spans one bar.
    assert truth_a.chords[0]["chord"].startswith(tonic)
    bar = 60.0 / truth_a.tempo * int(truth_a.time_signature[0])
    first = truth_a.chords[0]
    assert abs(first["end_time"] - first["start_time"] - bar) < 1e-2


def test_split_depends_only_on_seed_and_index():
    plan = demo_dataset.clip_plan(500, eval_fraction=0.2, seed=7)
    assert plan == demo_dataset.clip_plan(500, eval_fraction=0.2, seed=7)
    n_eval = sum(split == "eval" for _, split, _ in plan)
    assert 70 <= n_eval <= 130  # 100 expected; far outside binomial noise otherwise
    # Growing the dataset keeps every existing clip's split.
    assert demo_dataset.clip_plan(600, 0.2, 7)[:500] == plan


def test_build_renders_audio_and_rerun_reuses_it(tmp_path):
    truths = demo_dataset.build_dataset(tmp_path, n_clips=3, seconds=4.0, seed=1)
    wav = tmp_path / "audio" / f"{truths[0].clip_id}.wav"
    audio, rate = sf.read(wav, dtype="float32")
    assert rate == 44100 and audio.shape == (4 * 44100,)
    assert 0.5 < float(np.abs(audio).max()) <= 0.91
    mtime = wav.stat().st_mtime_ns
    demo_dataset.build_dataset(tmp_path, n_clips=3, seconds=4.0, seed=1)
    assert wav.stat().st_mtime_ns == mtime
    records = [json.loads(line) for line in (tmp_path / "clips.jsonl").read_text().splitlines()]
    assert [r["clip_id"] for r in records] == [t.clip_id for t in truths]


def test_two_rendering_processes_write_what_one_writes(tmp_path):
    one = demo_dataset.build_dataset(tmp_path / "one", n_clips=4, seconds=2.0, seed=2,
                                     augment=True)
    two = demo_dataset.build_dataset(tmp_path / "two", n_clips=4, seconds=2.0, seed=2,
                                     augment=True, workers=2)
    assert one == two
    for truth in one:
        name = f"audio/{truth.clip_id}.wav"
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert (tmp_path / "one/clips.jsonl").read_text() == (tmp_path / "two/clips.jsonl").read_text()
    # other settings in the same directory: fresh truths, not the cached ones
    longer = demo_dataset.build_dataset(tmp_path / "one", n_clips=4, seconds=3.0, seed=2,
                                        augment=True)
    assert {t.seconds for t in longer} == {3.0}


def test_rendered_key_and_tempo_are_recoverable_by_madmom(tmp_path):
    from madmom.features.beats import RNNBeatProcessor
    from madmom.features.key import CNNKeyRecognitionProcessor, key_prediction_to_label
    from madmom.features.tempo import TempoEstimationProcessor

    midi, truth = demo_dataset.compose_clip("k", "train", seed=5, seconds=8.0)
    path = tmp_path / "k.wav"
    sf.write(path, demo_dataset.render(midi, 8.0, demo_dataset.soundfont_path()), 44100)
    tempo = TempoEstimationProcessor(fps=100)(RNNBeatProcessor()(str(path)))[0][0]
    assert min(abs(tempo / m - truth.tempo) for m in (1, 2, 0.5)) / truth.tempo < 0.04
    key = key_prediction_to_label(CNNKeyRecognitionProcessor()(str(path)))
    print("truth", truth.key, "madmom", key)
    assert key.split()[1] in ("major", "minor")
