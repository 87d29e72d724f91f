"""Uniform track records of a dataset's published layout, shared by `data_prep jsonify` and the
benchmark command: a `TrackRecord` per usable track, a `RowSkip` (with the reason) per unusable
row, and `DatasetFormatError` (a user mistake naming the file) when a file is missing or malformed.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

from llark_jax.errors import UserError


class DatasetFormatError(UserError):
    """A dataset file is missing or not in the expected format; names the file and the problem."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class TrackRecord:
    """One track (or clip) of a dataset as `jsonify` writes it: id, split, where its audio is, and
    the dataset's own labels (`metadata`); the unit crop and annotate work on. Not the training
    record (`llark_jax.data.records.ClipRecord`: one clip's embedding and QA pairs)."""

    id: str
    dataset: str
    split: str
    audio_path: str
    metadata: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RowSkip:
    """A source row that produced no record, with the reason."""

    item: str
    reason: str
