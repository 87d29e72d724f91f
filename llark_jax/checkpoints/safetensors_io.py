"""Minimal safetensors reader/writer on numpy (bfloat16 through ml_dtypes), tensor by tensor.

Reading memory-maps the file, so one tensor at a time is materialised. Writing computes the header
from shapes first and then streams each tensor's bytes, written to a temporary file and renamed.
Format: 8-byte little-endian header length, JSON header {name: {dtype, shape, data_offsets}} plus
optional "__metadata__", then the raw little-endian tensor bytes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Callable, Iterator, Sequence

import ml_dtypes
import numpy as np

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}


class SafetensorsError(ValueError):
    """A malformed or unsupported safetensors file."""


def read_header(path: str | os.PathLike) -> tuple[dict, int]:
    """(header dict without "__metadata__", byte offset where tensor data starts)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise SafetensorsError(f"{path}: too short for a safetensors file")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise SafetensorsError(f"{path}: bad safetensors header: {e}") from e
    header.pop("__metadata__", None)
    return header, 8 + n


def iter_tensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (name, read-only memory-mapped array) for every tensor in the file."""
    header, start = read_header(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for name, info in header.items():
        if info["dtype"] not in _DTYPES:
            raise SafetensorsError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        begin, end = info["data_offsets"]
        flat = data[start + begin : start + end].view(_DTYPES[info["dtype"]])
        yield name, flat.reshape(info["shape"])


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    """A tensor to write: its name, shape, dtype and a function producing its value."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fetch: Callable[[], np.ndarray]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


def write_safetensors(
    path: str | os.PathLike, entries: Sequence[TensorEntry], metadata: dict[str, str] | None = None
) -> None:
    """Writes `entries` to `path` atomically, fetching one tensor at a time."""
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for e in entries:
        dtype = np.dtype(e.dtype)
        if dtype not in _NAMES:
            raise SafetensorsError(f"tensor {e.name}: unsupported dtype {dtype}")
        header[e.name] = {"dtype": _NAMES[dtype], "shape": list(e.shape),
                          "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for e in entries:
            value = np.ascontiguousarray(e.fetch(), dtype=e.dtype)
            if value.shape != tuple(e.shape):
                raise SafetensorsError(f"tensor {e.name}: shape {value.shape} != {e.shape}")
            f.write(value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
    os.replace(tmp, path)
