"""Key and tempo parsers on >= 100 phrasings each (hand-written tricky cases + template grids)."""

import itertools

import pytest

from llark_jax.eval.parse import KEY_NAMES, key_name, parse_key, parse_tempo, strip_completion

KEY_TEMPLATES = [
    "The key of this song is {}.",
    "This song is in {}.",
    "{}",
    "It's in the key of {}.",
    "Key: {}",
    "The song appears to be in {}, with a melancholic feel.",
    "I think it's {}",
    "The tonality is {} throughout.",
    " The key of this song is {}.\n###",
]
KEY_SPELLINGS = [
    ("F# minor", "F# minor"),
    ("F♯ minor", "F# minor"),
    ("F sharp minor", "F# minor"),
    ("F-sharp minor", "F# minor"),
    ("f# min", "F# minor"),
    ("F#m", "F# minor"),
    ("Bb major", "Bb major"),
    ("B♭ major", "Bb major"),
    ("B flat major", "Bb major"),
    ("B-flat major", "Bb major"),
    ("A# major", "Bb major"),
    ("Bbmaj", "Bb major"),
]
KEY_CASES = [
    (t.format(spelling), expected)
    for t, (spelling, expected) in itertools.product(KEY_TEMPLATES, KEY_SPELLINGS)
] + [
    ("A flat major", "Ab major"),
    ("a flat minor", "Ab minor"),
    ("The song is in the minor key of A.", "A minor"),
    ("It is written in the major key of D flat.", "Db major"),
    ("minor tonality of E", "E minor"),
    ("The song is in a minor key.", None),
    ("A minor key gives this track a sad feel.", None),
    ("It's a major hit from the eighties.", None),
    ("The song is in a minor.", "A minor"),
    ("The key is A", "A major"),
    ("key of C.", "C major"),
    ("This song is in G, with a bright feel", "G major"),
    ("A song in D minor", "D minor"),
    ("Cb major", "B major"),
    ("E# minor", "F minor"),
    ("Fb major", "E major"),
    ("B# minor", "C minor"),
    ("Gb major", "F# major"),
    ("D♭ major", "Db major"),
    ("E-flat-major", "Eb major"),
    ("Key: Ebmin", "Eb minor"),
    ("C major/A minor", "C major"),
    ("The key is A minor, the relative minor of C major.", "A minor"),
    ("I cannot determine the key of this song.", None),
    ("There is no clear tonal center.", None),
    ("", None),
    ("The song is in E MINOR.", "E minor"),
    ("It sounds like G Major to me.", "G major"),
    ("The piece is in c minor.", "C minor"),
    ("The key of this song is D major, and the tempo is 120 BPM.", "D major"),
    ("Am", "A minor"),
    ("The chords suggest Dm.", "D minor"),
    ("In the key of F# major (G♭ major).", "F# major"),
    ("it's in b minor", "B minor"),
    ("Likely G sharp minor.", "Ab minor"),
    ("Key = C# Major", "Db major"),
]


@pytest.mark.parametrize(("text", "expected"), KEY_CASES)
def test_parse_key(text, expected):
    assert parse_key(text) == expected


def test_key_cases_count_and_canonical_names():
    assert len(KEY_CASES) >= 100
    assert len(set(KEY_NAMES)) == 24
    assert key_name("c", "#", "maj") == key_name("D", "flat", "major") == "Db major"


TEMPO_TEMPLATES = [
    "The tempo is {} BPM.",
    "{} bpm",
    "It has a tempo of around {} beats per minute.",
    "Tempo: {}",
    "This track moves at roughly {} BPM in 4/4 time.",
    "In 3/4 time, at {} beats per minute.",
    "The song, released in 1987, has a tempo of {}.",
    "approximately {}BPM",
    "{} BPM (beats per minute)",
    "The BPM is {}.",
    "With 4 instruments playing at {} bpm",
    "Moderate pace, about {} beats a minute.",
    "The tempo of this song is {}.\n###",
    "I'd estimate the speed at {}.",
    "Its 2 guitars drive a groove of {} b.p.m.",
]
TEMPO_VALUES = ["120", "92.5", "174", "60", "140", "88"]
TEMPO_CASES = [
    (t.format(v), float(v)) for t, v in itertools.product(TEMPO_TEMPLATES, TEMPO_VALUES)
] + [
    ("one hundred and twenty beats per minute", 120.0),
    ("The tempo is ninety-five BPM.", 95.0),
    ("about seventy two bpm", 72.0),
    ("between 118 and 122 BPM", 120.0),
    ("60-70 BPM", 65.0),
    ("120 to 130 bpm", 125.0),
    ("The tempo is 128.", 128.0),
    ("It's a fast song, 3 minutes long, 150 BPM", 150.0),
    ("There are 2 verses and the tempo is 100 BPM", 100.0),
    ("The song is in 6/8 at 90 beats per minute.", 90.0),
    ("Recorded in 1999. Tempo 85.", 85.0),
    ("128bpm", 128.0),
    ("No tempo information.", None),
    ("The song is slow.", None),
    ("The key is C major.", None),
    ("It is in 4/4 time.", None),
    ("3 instruments at 140", 140.0),
    ("The 1990s style beat runs at 100 BPM", 100.0),
    ("The tempo is 2x faster than the intro at 80 BPM", 80.0),
    ("The 3rd section is at 132 BPM", 132.0),
]


@pytest.mark.parametrize(("text", "expected"), TEMPO_CASES)
def test_parse_tempo(text, expected):
    assert parse_tempo(text) == expected


def test_tempo_cases_count():
    assert len(TEMPO_CASES) >= 100


def test_strip_completion():
    assert strip_completion(" The key of this song is F minor.\n###") == (
        "The key of this song is F minor."
    )
    assert strip_completion("no separator ") == "no separator"
