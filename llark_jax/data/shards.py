"""Random access to the clip records of TFRecord shards, local or remote (`gs://` and other
`PROTOCOL://` paths through fsspec; no TensorFlow).

`ShardSource` scans the frame headers of every shard once, so each record is addressable by its
number (shard, byte offset); a record that cannot be used raises `BadRecordError` naming where it
is. A shard whose framing breaks keeps the records before the break (`framing_errors`); shards
with no readable record at all raise `NoUsableDataError`. The training stream over these records
is `llark_jax.data.pipeline.Pipeline`.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from llark_jax.data.records import ClipRecord, RecordError, decode_clip, read_payload, scan_frames
from llark_jax.errors import UserError

log = logging.getLogger(__name__)


class BadRecordError(RecordError):
    """A record that cannot be used, with where it is: `"{shard} @ byte {offset}: {reason}"`."""

    def __init__(self, shard: str, offset: int, reason: str):
        self.shard, self.offset, self.reason = shard, offset, reason
        super().__init__(f"{shard} @ byte {offset}: {reason}")

    def as_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "offset": self.offset, "reason": self.reason}


class NoUsableDataError(UserError, ValueError):
    """The shards hold no usable example; the message names them and what was wrong."""


class ShardSource:
    """Random access to every record of the shards (offsets from the frame headers)."""

    def __init__(self, patterns: Sequence[str]):
        self.files = sorted({p for pat in patterns for p in (_glob(pat) or [pat])})
        if not self.files:
            raise FileNotFoundError(f"no TFRecord shards match {list(patterns)}")
        self.locations: list[tuple[int, int, int]] = []
        self.framing_errors: list[BadRecordError] = []
        for i, path in enumerate(self.files):
            with _open(path) as f:
                offsets, bad = scan_frames(f)
            self.locations += [(i, off, n) for off, n in offsets]
            if bad:
                error = BadRecordError(path, bad[0], f"{bad[1]} (the rest of the shard cannot "
                                                     "be read)")
                log.warning("bad shard: %s: %s at byte %d (%d records before it are used)",
                            path, bad[1], bad[0], len(offsets))
                self.framing_errors.append(error)
        self._handles: dict[int, Any] = {}
        if not self.locations:
            problems = "; ".join(str(e) for e in self.framing_errors[:4]) or "every shard is empty"
            raise NoUsableDataError(f"no readable record in {describe_shards(self.files)}: "
                                    f"{problems}")

    def where(self, record: int) -> tuple[str, int]:
        """(shard path, byte offset of the record's frame)."""
        file_index, offset, _ = self.locations[record]
        return self.files[file_index], offset - 12

    def fingerprint(self) -> list:
        counts = Counter(i for i, _, _ in self.locations)
        return [[os.path.basename(p), counts[i]] for i, p in enumerate(self.files)]

    def read(self, record: int) -> ClipRecord:
        """The clip of record number `record`; `BadRecordError` (shard, offset, why) if unusable."""
        file_index, offset, length = self.locations[record]
        if file_index not in self._handles:
            self._handles[file_index] = _open(self.files[file_index])
        path = self.files[file_index]
        try:
            payload = read_payload(self._handles[file_index], offset, length, path)
        except RecordError as err:
            raise BadRecordError(path, offset - 12, "corrupt record (payload CRC mismatch or "
                                                    "short read)") from err
        try:
            return decode_clip(payload)
        except RecordError as err:
            raise BadRecordError(path, offset - 12, str(err)) from err

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()

    def task_counts(self) -> dict[str, int]:
        """Epoch totals per task of these shards, from the `*-index.json` files beside them (the
        per-shard counts of the shards read, so `train-*` does not count the eval split's)."""
        counts: Counter = Counter()
        chosen = set(self.files)
        for directory in sorted({os.path.dirname(p) for p in self.files}):
            for index in sorted(_glob(os.path.join(directory, "*-index.json"))):
                with _open(index) as f:
                    shards = json.load(f)["shards"]
                for shard in shards:
                    if os.path.join(directory, shard["file"]) in chosen:
                        counts.update(shard["tasks"])
        if not counts:
            raise FileNotFoundError("task_weights need task counts: no *-index.json beside shards")
        return dict(counts)


def readable_clips(patterns: Sequence[str]) -> Iterator[ClipRecord]:
    """Every readable record of the shards, in file order (unreadable records are skipped; the
    training pipeline counts them)."""
    source = ShardSource(patterns)
    try:
        for record in range(len(source.locations)):
            try:
                clip = source.read(record)
            except RecordError:
                continue
            yield clip
    finally:
        source.close()


def describe_shards(files: Sequence[str], limit: int = 6) -> str:
    """"N shard(s) (a, b, ... and M more)": the shards named in an error message."""
    more = f" and {len(files) - limit} more" if len(files) > limit else ""
    return f"{len(files)} shard(s) ({', '.join(files[:limit])}{more})"


def _open(path: str) -> Any:
    """Local files with `open`; `gs://` and other remote paths (`PROTOCOL://...`) through fsspec
    (gcsfs for `gs://`; no TensorFlow). Random access: the reader seeks to record offsets."""
    if "://" not in path:
        return open(path, "rb")
    import fsspec

    return fsspec.open(path, "rb").open()


def _glob(pattern: str) -> list[str]:
    """Paths matching `pattern`, remote ones with their `PROTOCOL://` prefix kept."""
    if "://" not in pattern:
        return glob.glob(pattern)
    import fsspec

    fs, _, paths = fsspec.core.get_fs_token_paths(pattern)
    if not fsspec.core.has_magic(pattern):  # a plain path: itself if it exists
        return [pattern] if fs.exists(paths[0]) else []
    return [fs.unstrip_protocol(p) for p in paths]
