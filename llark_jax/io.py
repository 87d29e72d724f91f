"""Small file helpers used across the project: atomic writes (temporary file + rename) and JSONL.

A reader never sees a half-written file: bytes go to a hidden sibling `.<name>.tmp.<pid>`, are
flushed to disk, and the file is renamed over the target with `os.replace` (atomic on one
filesystem). `atomic_output` gives that temporary path to writers that need a path of their own
(numpy, soundfile, MIDI); a failed write leaves the target as it was and no temporary behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from llark_jax.errors import UserError


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest parent of `path` that exists and is not a folder, if any."""
    return next((p for p in path.parents if p.exists() and not p.is_dir()), None)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside `path` (parents created); renamed over `path` when the block
    ends without an exception, removed otherwise."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, expected a file path", str(path))
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise NotADirectoryError(errno.ENOTDIR, "is a file, so it cannot hold the output",
                                 f"{blocker} (in {path})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_output_path(path: str | os.PathLike, flag: str, *, folder: bool) -> None:
    """A `UserError` before any work when `path` cannot become the command's output (`folder`:
    a folder of outputs, else one file): a folder where a file goes, a file where a folder goes,
    or a file on the way to it."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise UserError(f"{flag} {path}: is a {'file' if folder else 'folder'}, expected "
                        f"{'a folder' if folder else 'a file path'}")
    blocker = _file_in_the_way(path)
    if blocker is not None:
        raise UserError(f"{flag} {path}: {blocker} is a file, so it cannot hold the output")


def check_same_run(run_file: str | os.PathLike, settings: dict[str, Any], output: str) -> None:
    """Records what produced an output's answers in `run_file` (JSON); when it already holds
    other settings (another model, step, seed, ...), a resumed run would mix its answers with
    the logged ones, so it is refused: `output` (e.g. "--output answers.jsonl") names the output
    in the `UserError`."""
    run_file = Path(run_file)
    if run_file.is_file():
        before = read_json(run_file)
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            what = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise UserError(f"{output} holds the answers of another run ({what}); pass a new "
                            "output path (or delete it)")
    write_json_atomic(run_file, settings)


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


def read_text_lines(path: str | os.PathLike) -> list[str]:
    """The lines of a UTF-8 text file; any other bytes (an audio file given for a JSONL one) are
    a `UserError` naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return list(f)
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a UTF-8 JSONL file ({err.reason} at byte {err.start})"
                        ) from err


def iter_json_lines(path: str | os.PathLike) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, parsed value or None, the JSON error or None) of every non-empty line of a
    UTF-8 file (`read_text_lines`): strict readers raise on an error, tolerant ones report it."""
    for line_no, line in enumerate(read_text_lines(path), 1):
        if not line.strip():
            continue
        try:
            yield line_no, json.loads(line), None
        except json.JSONDecodeError as err:
            yield line_no, None, err.msg


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every non-empty line of a JSONL file, parsed; a file that is not JSONL of objects (an
    audio file, a JSON array) is a `UserError` naming the file and line."""
    rows = []
    for line_no, row, error in iter_json_lines(path):
        if error is not None:
            raise UserError(f"{path}:{line_no}: not JSONL ({error})")
        if not isinstance(row, dict):
            raise UserError(f"{path}:{line_no}: a JSONL row must be an object, got "
                            f"{type(row).__name__}")
        rows.append(row)
    return rows


def require_fields(rows: Iterable[dict[str, Any]], fields: Iterable[str], path: str | os.PathLike,
                   what: str) -> None:
    """A `UserError` naming `path` when a row lacks one of `fields` (`what`: the kind of file the
    command expects, e.g. "track records from `data_prep jsonify`")."""
    fields = tuple(fields)
    for line_no, row in enumerate(rows, 1):
        missing = [k for k in fields if k not in row]
        if missing:
            raise UserError(f"{path}: row {line_no} has no {', '.join(map(repr, missing))}: "
                            f"expected {what}")


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict[str, Any]], *,
                       sort_keys: bool = False) -> int:
    """One JSON object per line (keys in the rows' order unless `sort_keys`), written atomically;
    returns the number of rows."""
    lines = [json.dumps(row, ensure_ascii=False, sort_keys=sort_keys) for row in rows]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)
