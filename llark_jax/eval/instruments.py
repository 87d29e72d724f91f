"""Instrument label normalisation and negation-aware mention extraction.

Fixes the reference notebooks' matching (spec §9.4, §11.11): matching is case-insensitive and on
word boundaries (plural "s"/"es" allowed), so "bass" does not match "bassoon"; longer names win, so
"bass drum" is a drum and not a bass; a mention is dropped when a negation cue ("no", "not",
"without", "lacks", "absence of", "n't", "neither/nor") precedes it in the same clause, or a
negating predicate ("is absent", "are not present", "missing") follows it in the same clause.
Clauses are split on sentence punctuation and on contrastive words ("but", "however", "while",
"although", "whereas"), so "no drums, but a bass" keeps the bass.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# canonical label -> extra surface forms. Canonical labels are lower-case; a label not listed here
# is its own only surface form.
DEFAULT_ALIASES: dict[str, tuple[str, ...]] = {
    "drums": (
        "drum",
        "drum kit",
        "drum set",
        "drumkit",
        "kick drum",
        "bass drum",
        "snare",
        "snare drum",
        "hi-hat",
        "hihat",
        "hi hat",
        "cymbal",
        "toms",
        "drum machine",
        "percussion",
        "drumming",
        "drummer",
    ),
    "vocals": (
        "vocal",
        "voice",
        "voices",
        "singer",
        "singers",
        "singing",
        "vocalist",
        "vocalists",
        "lead vocals",
        "backing vocals",
        "choir",
        "rap",
        "rapping",
        "sung",
    ),
    "bass": ("bass guitar", "electric bass", "bassline", "bass line", "synth bass", "bass synth"),
    "double bass": ("contrabass", "upright bass", "string bass"),
    "guitar": (
        "acoustic guitar",
        "electric guitar",
        "guitars",
        "guitarist",
        "lap steel guitar",
        "classical guitar",
        "steel guitar",
    ),
    "piano": ("grand piano", "electric piano", "pianist", "upright piano", "rhodes"),
    "synthesizer": ("synth", "synths", "synthesiser", "synthesizers", "synth pad", "synth lead"),
    "violin": ("violins", "violinist"),
    "fiddle": (),
    "viola": ("violas",),
    "cello": ("cellos", "violoncello", "cellist"),
    "flute": ("flutes", "flutist"),
    "clarinet": ("clarinets",),
    "oboe": ("oboes",),
    "bassoon": ("bassoons",),
    "french horn": ("horn", "horns", "french horns"),
    "trumpet": ("trumpets",),
    "trombone": ("trombones",),
    "tuba": (),
    "saxophone": ("sax", "saxophones", "alto sax", "tenor sax", "saxophonist"),
    "harp": ("harps",),
    "organ": ("hammond organ", "pipe organ"),
    "harpsichord": (),
    "banjo": (),
    "mandolin": (),
    "accordion": (),
    "harmonica": (),
}

_NEGATION_BEFORE = re.compile(
    r"\b(?:no|not|without|lacks?|lacking|lack of|absence of|absent|free of|neither|nor|none|"
    r"never|zero)\b|n't\b",
    re.I,
)
_NOT_ONLY = re.compile(r"\bnot\s+only\b", re.I)
# words after a negation cue that end its scope: "no vocals, only piano", "no drums except a snare"
_SCOPE_RESET = re.compile(
    r"\b(?:only|just|except|apart from|other than|save for|aside from)\b", re.I
)
_NEGATION_AFTER = re.compile(
    r"^\s*(?:(?:is|are|was|were|(?:seems?|appears?)(?:\s+to\s+be)?)\s+(?:not|absent|missing|nowhere)\b"
    r"|(?:is|are|was|were|do|does|did)n't\b|(?:do|does|did)\s+not\b|(?:absent|missing)\b"
    r"|:\s*(?:none|no|absent)\b)",
    re.I,
)
_CLAUSE_SPLIT = re.compile(
    r"[.;!?\n]+|\b(?:but|however|while|although|though|whereas|yet|instead)\b", re.I
)


def normalize_label(label: str, aliases: Mapping[str, Iterable[str]] = DEFAULT_ALIASES) -> str:
    """Lower-case, digits and punctuation removed ("Violin1" -> "violin"), aliases to canonical."""
    clean = re.sub(r"[\d_]+", " ", label.lower())
    clean = re.sub(r"\s+", " ", re.sub(r"[^\w\s-]", " ", clean)).strip()
    for canonical, forms in aliases.items():
        if clean == canonical or clean in forms:
            return canonical
    return clean


class InstrumentMatcher:
    """Finds the canonical instruments of `vocabulary` positively mentioned in a text."""

    def __init__(
        self,
        vocabulary: Iterable[str],
        aliases: Mapping[str, Iterable[str]] = DEFAULT_ALIASES,
    ) -> None:
        self.vocabulary = sorted({normalize_label(v, aliases) for v in vocabulary})
        surface: dict[str, str] = {}
        # every known name consumes its span (so "bass drum" never reads as "bass"); only
        # vocabulary members count as mentions.
        for canonical in sorted({*aliases, *self.vocabulary}):
            for form in (canonical, *aliases.get(canonical, ())):
                surface.setdefault(form, canonical)
        forms = sorted(surface, key=len, reverse=True)
        self._surface = surface
        self._pattern = re.compile(
            r"\b("
            + "|".join(re.escape(f).replace(r"\ ", r"[\s-]+") for f in forms)
            + r")(?:e?s)?\b",
            re.I,
        )

    def _canonical(self, mention: str) -> str:
        mention = re.sub(r"[\s-]+", " ", mention.lower())
        for form in (mention, mention[:-1], mention[:-2]):
            if form in self._surface:
                return self._surface[form]
        return mention

    @staticmethod
    def _negated_before(before: str) -> bool:
        """True when the last negation cue of `before` is still in scope at its end."""
        before = _NOT_ONLY.sub(" ", before)
        cues = list(_NEGATION_BEFORE.finditer(before))
        return bool(cues) and not _SCOPE_RESET.search(before, cues[-1].end())

    def mentions(self, text: str) -> set[str]:
        """Canonical vocabulary instruments that `text` mentions without negation."""
        found: set[str] = set()
        for clause in _CLAUSE_SPLIT.split(text):
            for match in self._pattern.finditer(clause):
                if self._negated_before(clause[: match.start()]):
                    continue
                if _NEGATION_AFTER.match(clause[match.end() :]):
                    continue
                canonical = self._canonical(match.group(0))
                if canonical in self.vocabulary:
                    found.add(canonical)
        return found
