"""madmom annotation on synthesised clips with known truth, and the reference's crop rules."""

from __future__ import annotations

import pytest
from audio_fixtures import chord_progression, drum_pattern

from data_prep.annotate import annotate_audio, chord_label, crop_annotations, get_annotator

KEY_LABELS_SEEN = {"C major", "A minor"}


@pytest.fixture(scope="module")
def annotator():
    return get_annotator()  # processors load once for the module (and the process)


@pytest.mark.parametrize("bpm", [90, 128, 150])
def test_tempo_and_beats_of_drum_patterns(annotator, bpm):
    record = annotator(drum_pattern(bpm, 10.0))
    tempo = record["tempo_in_beats_per_minute_madmom"]
    assert isinstance(tempo, float) and abs(tempo - bpm) <= 0.02 * bpm, tempo
    beats = record["downbeats_madmom"]
    assert all(set(b) == {"time", "beat_number"} for b in beats)
    intervals = [b2["time"] - b1["time"] for b1, b2 in zip(beats, beats[1:], strict=False)]
    assert len(beats) >= 10 * bpm / 60 - 3
    assert max(abs(i - 60 / bpm) for i in intervals) < 0.05
    assert [b["beat_number"] for b in beats[:8]] in ([1, 2, 3, 4, 1, 2, 3, 4],
                                                     [2, 3, 4, 1, 2, 3, 4, 1],
                                                     [3, 4, 1, 2, 3, 4, 1, 2],
                                                     [4, 1, 2, 3, 4, 1, 2, 3])


def test_three_four_pattern_has_bar_positions_one_to_three(annotator):
    beats = annotator(drum_pattern(120, 10.0, beats_per_bar=3))["downbeats_madmom"]
    numbers = [b["beat_number"] for b in beats]
    assert set(numbers) == {1, 2, 3}
    first_downbeat = numbers.index(1)
    assert numbers[first_downbeat: first_downbeat + 9] == [1, 2, 3] * 3


@pytest.mark.parametrize(
    "progression, key, labels",
    [
        ([("C", "maj"), ("F", "maj"), ("G", "maj"), ("C", "maj")], "C major",
         ["Cmajor", "Fmajor", "Gmajor", "Cmajor"]),
        ([("A", "min"), ("D", "min"), ("E", "maj"), ("A", "min")], "A minor",
         ["Aminor", "Dminor", "Emajor", "Aminor"]),
    ],
)
def test_key_and_chords_of_progressions(annotator, progression, key, labels):
    record = annotate_audio(chord_progression(progression, 2.0))
    assert record["key"] == key
    chords = record["chords"]
    assert [c["chord"] for c in chords] == labels
    for chord, expected_start in zip(chords, [0.0, 2.0, 4.0, 6.0], strict=True):
        assert abs(chord["start_time"] - expected_start) <= 0.2
        assert set(chord) == {"start_time", "end_time", "chord"}


def test_chord_label_rewrite():
    assert chord_label("A#:maj") == "A#major"
    assert chord_label("C#:min") == "C#minor"
    assert chord_label("N") == "no chord"


def test_crop_annotations_follows_the_reference_rules():
    record = {
        "id": "t",
        "tempo_in_beats_per_minute_madmom": 120.0,
        "key": "C major",
        "downbeats_madmom": [{"time": t / 2, "beat_number": i % 4 + 1} for i, t in
                             enumerate(range(0, 140))],
        "chords": [{"start_time": 0.0, "end_time": 31.3, "chord": "Cmajor"},
                   {"start_time": 31.3, "end_time": 54.0, "chord": "Gmajor"},
                   {"start_time": 54.0, "end_time": 70.0, "chord": "no chord"}],
        "notes": '{"Violin": [{"start": 29.5, "end": 30.5, "pitch": "A5"},'
                 ' {"start": 70.0, "end": 71.0, "pitch": "B5"}], "Cello": []}',
    }
    clip = crop_annotations(record, 30.0, 60.0)  # window clamped to 25 s: [30, 55]
    assert (clip["start_secs"], clip["end_secs"]) == (30.0, 55.0)
    assert clip["tempo_in_beats_per_minute_madmom"] == 120.0 and clip["key"] == "C major"
    times = [b["time"] for b in clip["downbeats_madmom"]]
    assert times[0] == 0.0 and times[-1] == 25.0 and len(times) == 51
    assert clip["downbeats_madmom"][0]["beat_number"] == 60 % 4 + 1
    assert clip["chords"] == [{"start_time": 0.0, "end_time": 1.3, "chord": "Cmajor"},
                              {"start_time": 1.3, "end_time": 24.0, "chord": "Gmajor"},
                              {"start_time": 24.0, "end_time": 25.0, "chord": "no chord"}]
    assert clip["notes"] == {"Violin": [{"start": 0.0, "end": 0.5, "pitch": "A5"}]}
    assert record["chords"][0]["end_time"] == 31.3  # input untouched
