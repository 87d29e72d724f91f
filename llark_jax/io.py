"""Small file helpers used across the project: atomic writes (temporary file + rename) and JSONL.

A reader never sees a half-written file: bytes go to a hidden sibling `.<name>.tmp.<pid>`, are
flushed to disk, and the file is renamed over the target with `os.replace` (atomic on one
filesystem). `atomic_output` gives that temporary path to writers that need a path of their own
(numpy, soundfile, MIDI); a failed write leaves the target as it was and no temporary behind.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` (parents created); renamed over `path` when the block
    ends without an exception, removed otherwise."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes `data` to `path` atomically (flushed to disk before the rename); returns the path."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes `text` (UTF-8) to `path` atomically (parents created); returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = 2) -> Path:
    """`data` as JSON (sorted keys), written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, sort_keys=True,
                                              ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every non-empty line of a JSONL file, parsed."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict[str, Any]], *,
                       sort_keys: bool = False) -> int:
    """One JSON object per line (keys in the rows' order unless `sort_keys`), written atomically;
    returns the number of rows."""
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=sort_keys) for row in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
