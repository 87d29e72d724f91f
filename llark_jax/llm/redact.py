"""Removing a secret (the OpenAI API key) from text in every encoding a client can meet it in.

An endpoint may echo the key back: in an error message, inside a reply, URL-encoded in an echoed
URL, JSON-escaped inside a JSON string, through Python's `repr` of an error body, or base64
(an echoed `Authorization` header). `Redactor(secret)` replaces all of these with `[REDACTED]`:

- one pattern matches the key character by character, each character raw or escaped: `%XX`
  (either hex case, and `%25XX` double-encoded), `+` for a space (quote_plus), `\\uXXXX` (either
  case, one or two backslashes), and the backslash escapes of JSON and `repr` (up to two levels,
  e.g. `repr` of a JSON string). Every mixture of these is covered, e.g. a JSON encoder that
  escapes only `"` and `/`, or `\\u`-escapes every character;
- base64 in both alphabets at each of the three byte alignments (the key's full 3-byte groups,
  with and without the last one, so it is found inside a longer encoded text such as
  `Bearer <key>`).

Secrets shorter than 8 characters are only replaced verbatim (a per-character pattern of a tiny
string would match ordinary text).
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Callable
from typing import Any

PLACEHOLDER = "[REDACTED]"
MIN_PATTERN_LENGTH = 8
_ESCAPED = {'"': '"', "\\": "\\\\", "/": "/", "'": "'", "\n": "n", "\r": "r", "\t": "t",
            "\b": "b", "\f": "f"}


def _hex_ci(value: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in value)


def _char_pattern(char: str) -> str:
    alternatives = [re.escape(char)]
    for piece in char.encode("utf-8"):  # percent-encoding, once or twice
        alternatives.append(f"%(?:25)?{_hex_ci(f'{piece:02X}')}")
    if len(char.encode("utf-8")) > 1:
        alternatives.append("".join(f"%(?:25)?{_hex_ci(f'{b:02X}')}" for b in char.encode()))
    if char == " ":
        alternatives.append(r"\+")
    code = ord(char)
    units = [code] if code < 0x10000 else [0xD800 + ((code - 0x10000) >> 10),
                                           0xDC00 + ((code - 0x10000) & 0x3FF)]
    alternatives.append("".join(rf"\\{{1,2}}u{_hex_ci(f'{u:04x}')}" for u in units))
    if char in _ESCAPED:  # JSON / repr backslash escapes, one or two levels deep
        escape = re.escape(_ESCAPED[char]) if char != "\\" else ""
        alternatives.append(rf"\\{{1,4}}{escape}" if char == "\\" else rf"\\{{1,3}}{escape}")
    return "(?:" + "|".join(alternatives) + ")"


def _base64_forms(secret: bytes) -> list[str]:
    """The base64 text of the secret's complete 3-byte groups, at each alignment."""
    forms = []
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for offset in range(3):
            text = encode(b"\0" * offset + secret).decode()
            first, last = (1 if offset else 0), (offset + len(secret)) // 3
            # also without the last group, which a cut-off echo may lack
            whole, shorter = text[4 * first : 4 * last], text[4 * first : 4 * last - 4]
            forms += [inner for inner in (whole, shorter) if len(inner) >= 12]
    return forms


class Redactor:
    """Callable: `redactor(text)` is `text` without the secret in any encoding (see module)."""

    def __init__(self, secret: str | None, placeholder: str = PLACEHOLDER):
        self.secret, self.placeholder = secret or "", placeholder
        self._pattern: re.Pattern[str] | None = None
        if len(self.secret) >= MIN_PATTERN_LENGTH:
            per_char = "".join(_char_pattern(c) for c in self.secret)
            encoded = sorted(set(_base64_forms(self.secret.encode())), key=len, reverse=True)
            self._pattern = re.compile("|".join([per_char, *map(re.escape, encoded)]))

    @classmethod
    def from_env(cls, name: str = "OPENAI_API_KEY") -> Redactor:
        return cls(os.environ.get(name))

    def __call__(self, text: str) -> str:
        if not self.secret or not isinstance(text, str):
            return text
        if self._pattern is None:
            return text.replace(self.secret, self.placeholder)
        return self._pattern.sub(self.placeholder, text)

    def json(self, value: Any) -> Any:
        """`value` (JSON-like: dicts, lists, strings, numbers) with every string redacted,
        dictionary keys included."""
        return _walk(value, self)


def _walk(value: Any, redact: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {_walk(k, redact): _walk(v, redact) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_walk(v, redact) for v in value)
    return value
