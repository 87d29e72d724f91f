"""Uniform track records and the helpers every dataset adapter shares.

An adapter module exposes ``read_records(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]``
reading the dataset's real distributed files under ``ctx.root``. A `RowSkip` is a row that cannot
become a record (reason given; the stage reports it); a missing or malformed *file* raises
`DatasetFormatError`, which stops the stage with a message naming the file.
"""

from __future__ import annotations

import ast
import csv
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from llark_jax.benchmarks.tracks import (  # noqa: F401 - shared with the benchmark readers
    DatasetFormatError,
    RowSkip,
    TrackRecord,
)


@dataclass
class JsonifyContext:
    """Where a dataset lives and what to read. ``split=None`` reads every split.

    ``audio_root`` is the directory audio paths are resolved against (default: ``root``);
    ``work_dir`` holds generated artefacts such as MTG-Jamendo's seeded test split.
    """

    root: Path
    split: str | None = None
    audio_root: Path | None = None
    work_dir: Path | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.audio_root = Path(self.audio_root) if self.audio_root else self.root
        self.work_dir = Path(self.work_dir) if self.work_dir else self.root

    def wants(self, split: str) -> bool:
        return self.split in (None, "all", split)

    def audio(self, *parts: str) -> str:
        return str(Path(self.audio_root, *parts))


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise DatasetFormatError(path, "required dataset file not found")
    return path


def read_table(path: Path, delimiter: str = ",", required: tuple[str, ...] = ()) -> list[dict]:
    """Rows of a CSV/TSV file with a header as dicts; checks ``required`` columns exist."""
    with open(require_file(path), newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetFormatError(path, f"missing columns {missing}; header {reader.fieldnames}")
        return list(reader)


def parse_python_list(text: str) -> list:
    """Parse a Python-literal list stored in a CSV cell (``"['rock', 'pop']"``); ``""`` -> []."""
    if not text or not text.strip():
        return []
    value = ast.literal_eval(text)
    if not isinstance(value, list):
        raise ValueError(f"expected a list literal, got {text[:60]!r}")
    return value


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("br", "p", "div", "li"):
            self.parts.append("\n")


def html_to_text(html: str) -> str:
    """Visible text of an HTML fragment (entities decoded, block tags -> newlines, trimmed)."""
    if not html:
        return ""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)
