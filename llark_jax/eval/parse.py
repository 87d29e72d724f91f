"""Turn free-text model answers into keys and tempi.

Key rule (`parse_key`): the earliest key mention in the text wins, where a mention is one of
  1. tonic + mode: "A minor", "F# major", "F sharp minor", "E-flat major", "D♭ maj", "Bbm", "C#min";
  2. mode + "key of" + tonic: "minor key of A", "major tonality of D flat";
  3. a bare upper-case tonic in a key context, read as major: "the key of C.", "in G, with ...".
Accidentals may be symbols (# b ♯ ♭), words (sharp, flat) or hyphenated ("C-sharp"). Enharmonic
spellings (Cb, E#, A#, Gb) map to one canonical name per pitch class. The article "a" is not a tonic
in "a minor key" / "in a minor tonality" (an `a` followed by a noun such as key/scale/feel).
Returns None when nothing matches (scored 0 and counted by the metric).

Tempo rule (`parse_tempo`): every number (digits, or English number words such as "one hundred and
twenty") and every range ("118-122", "between 118 and 122", midpoint used) is a candidate; time
signatures ("4/4") are not. A candidate followed by a BPM unit ("bpm", "beats per minute") beats one
preceded in the same sentence by a tempo word (tempo, bpm, speed, pace, metronome), which beats one
without context; a context-free candidate is only accepted within 20-400 BPM. Ties go to the
earliest.
"""

from __future__ import annotations

import re
import unicodedata

PITCH_NAMES = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
KEY_NAMES = tuple(f"{p} {m}" for m in ("major", "minor") for p in PITCH_NAMES)
_NATURAL_PC = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_ACCIDENTAL_SHIFT = {"#": 1, "sharp": 1, "b": -1, "flat": -1}
_MODE = {"major": "major", "maj": "major", "minor": "minor", "min": "minor", "m": "minor"}

_ACC = r"(?:\s?-?\s?(?P<acc>#|b|sharp|flat)(?![a-z]))?"
_ACC_TIGHT = r"(?P<acc>#|b)?"  # short forms: "Bbm", "C#min"
_TONIC_MODE = re.compile(
    r"(?<![\w#])(?P<note>[a-g])" + _ACC + r"\s?-?\s?(?P<mode>major|minor|maj|min)\b", re.I
)
_SHORT = re.compile(r"(?<![\w#])(?P<note>[A-G])" + _ACC_TIGHT + r"(?P<mode>m|min|maj)(?![\w#])")
_MODE_KEY_OF = re.compile(
    r"\b(?P<mode>major|minor)\s+(?:key|tonality|scale|mode)\s+(?:of|on|in|centered on|based on)\s+"
    r"(?P<note>[a-g])" + _ACC + r"(?![\w#])",
    re.I,
)
_BARE_TONIC = re.compile(
    r"(?:\bkey\b[^.;!?]{0,30}?|\bin\s+)(?P<note>[A-G])"
    + _ACC.replace("(?![a-z])", "(?![A-Za-z])")
    + r"(?=\s*(?:[.,;:!?)]|$)|\s+(?:and|with|but|throughout|which|for)\b)"
)
# Nouns after "a minor"/"a major" that show the "a" is an article ("in a minor key").
_ARTICLE_NOUN = re.compile(
    r"\s*(key|keys|tonality|scale|mode|feel|chord|chords|progression|sound|quality|vibe|third|"
    r"sixth|seventh|tune|song|piece|melody|harmony|role|part|way|change)\b",
    re.I,
)
_FOLLOWING_WORD = re.compile(r"\s+([a-z]+)")
_LINKING_WORDS = {
    "and",
    "or",
    "but",
    "with",
    "at",
    "throughout",
    "which",
    "that",
    "to",
    "in",
    "for",
}


def normalize_text(text: str) -> str:
    """NFKC, Unicode sharps/flats to '#'/'b', typographic dashes to '-'."""
    text = unicodedata.normalize("NFKC", text)
    for src, dst in (("♯", "#"), ("♭", "b"), ("♮", ""), ("–", "-"), ("—", "-"), ("‐", "-")):
        text = text.replace(src, dst)
    return text


def strip_completion(text: str) -> str:
    """Removes the template's stop separator and surrounding whitespace ("... minor.\\n###")."""
    return text.split("###", 1)[0].strip()


def key_name(note: str, accidental: str | None, mode: str) -> str:
    """Canonical "Tonic mode" string (one spelling per pitch class) accepted by mir_eval.key."""
    shift = _ACCIDENTAL_SHIFT[accidental.lower()] if accidental else 0
    pitch_class = (_NATURAL_PC[note.lower()] + shift) % 12
    return f"{PITCH_NAMES[pitch_class]} {_MODE[mode.lower()]}"


def _is_article(text: str, match: re.Match) -> bool:
    """True when the matched note is the English article "a" ("a minor key", "a major hit")."""
    if match.group("note").lower() != "a" or match.group("acc"):
        return False
    rest = text[match.end() :]
    if _ARTICLE_NOUN.match(rest):
        return True
    if match.group("note") == "a":  # lower-case: only accepted before punctuation/linking words
        word = _FOLLOWING_WORD.match(rest)
        return bool(word) and word.group(1).lower() not in _LINKING_WORDS
    return False


def parse_key(text: str) -> str | None:
    """Parses the first key mentioned in `text` (see module docstring); None when there is none."""
    text = normalize_text(text)
    candidates: list[tuple[int, int, str]] = []  # (start, priority, key)
    for priority, pattern in enumerate((_TONIC_MODE, _MODE_KEY_OF, _SHORT, _BARE_TONIC)):
        for match in pattern.finditer(text):
            if pattern is not _BARE_TONIC and _is_article(text, match):
                continue
            mode = match.groupdict().get("mode") or "major"
            candidates.append(
                (match.start("note"), priority, key_name(match["note"], match["acc"], mode))
            )
    return min(candidates)[2] if candidates else None


_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}  # fmt: skip
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70,
    "eighty": 80, "ninety": 90,
}  # fmt: skip
_NUMBER_WORD = r"(?:" + "|".join([*_UNITS, *_TENS, "hundred"]) + r")"
_NUMBER_WORDS = re.compile(rf"\b{_NUMBER_WORD}(?:(?:\s+and\s+|[\s-]+){_NUMBER_WORD})*\b", re.I)


def _words_to_int(words: str) -> int:
    total = 0
    for word in re.split(r"[\s-]+", words.lower()):
        if word == "and":
            continue
        if word == "hundred":
            total = max(total, 1) * 100
        else:
            total += _UNITS.get(word, 0) + _TENS.get(word, 0)
    return total


def _replace_number_words(text: str) -> str:
    return _NUMBER_WORDS.sub(lambda m: str(_words_to_int(m.group(0))), text)


_NUM = r"\d+(?:\.\d+)?"
_CANDIDATE = re.compile(
    rf"(?<![\d./])(?:between\s+(?P<lo1>{_NUM})\s+and\s+(?P<hi1>{_NUM})"
    rf"|(?P<lo2>{_NUM})\s*(?:-|to)\s*(?P<hi2>{_NUM})|(?P<one>{_NUM}))(?![\d/]|\.\d)",
    re.I,
)
_UNIT_AFTER = re.compile(
    r"\s*(?:\(\s*)?(?:bpm|b\.p\.m\.?|beats?[\s-]+(?:per|a|/)[\s-]*min(?:ute)?|beats/min"
    r"|quarter[\s-]notes?\s+per\s+minute)\b",
    re.I,
)
_TEMPO_WORD_BEFORE = re.compile(
    r"\b(?:tempo|bpm|beats per minute|speed|pace|metronome|clocks? in|tempo marking)\b[^.!?\d]*$",
    re.I,
)


def parse_tempo(text: str) -> float | None:
    """Parses the tempo in BPM tied to a tempo context (see module docstring); None if none."""
    text = _replace_number_words(normalize_text(text))
    best: tuple[int, int, float] | None = None  # (-score, start, value)
    for match in _CANDIDATE.finditer(text):
        lo, hi = match["lo1"] or match["lo2"], match["hi1"] or match["hi2"]
        value = (float(lo) + float(hi)) / 2 if lo else float(match["one"])
        after = text[match.end() :]
        if re.match(r"[A-Za-z]", after) and not _UNIT_AFTER.match(after):
            continue  # "3rd", "2x", "1990s"
        if _UNIT_AFTER.match(after):
            score = 2
        elif _TEMPO_WORD_BEFORE.search(text[max(0, match.start() - 60) : match.start()]):
            score = 1
        elif 20.0 <= value <= 400.0:
            score = 0
        else:
            continue
        candidate = (-score, match.start(), value)
        best = candidate if best is None or candidate < best else best
    return best[2] if best else None
