"""argparse types for numeric flags: a value out of range is argparse's one-line
`PROG: error: argument --flag: ...`, before anything is loaded, not a traceback later."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _bounded(cast: Callable[[str], float], test: Callable[[float], bool],
             what: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value

    parse.__name__ = what  # argparse names the type in some messages
    return parse


positive_int = _bounded(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _bounded(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _bounded(float, lambda v: v > 0, "a number > 0")
non_negative_float = _bounded(float, lambda v: v >= 0, "a number >= 0")
unit_fraction = _bounded(float, lambda v: 0 < v <= 1, "a number in (0, 1]")
port = _bounded(int, lambda v: 0 <= v <= 65535, "a port in 0..65535")
probability = _bounded(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")
