"""TFRecord schema of LLark training data: one `tf.train.Example` per clip
(docs/architecture.md, decision 3).

This module is the ONE place that knows the record layout; the writer (`data_prep/records.py`), the
tfds builder and the input pipeline all go through it. It needs no TensorFlow: records are framed
as TFRecord (length, masked CRC32C, payload, masked CRC32C) and the `tf.train.Example` protobuf is
encoded/decoded from its wire format directly, so files written here are read by `tf.data` and
files written by TensorFlow are read here.

Features of a record (all `bytes_list` of one element, except `embedding_shape`):

  clip_id, dataset, split, encoder    UTF-8 strings
  embedding                           raw little-endian bytes of the [T, D] array
  embedding_shape                     int64_list [T, D]
  embedding_dtype                     "bfloat16" (default) | "float16" | "float32"
  qa                                  JSON list of {"question", "answer", "task"}
  metadata                            JSON object (annotations; ignored by training)
"""

from __future__ import annotations

import dataclasses
import json
import struct
from collections.abc import Iterator
from typing import Any, BinaryIO

import google_crc32c
import ml_dtypes
import numpy as np

EMBEDDING_DTYPES: dict[str, np.dtype] = {
    "bfloat16": np.dtype(ml_dtypes.bfloat16),
    "float16": np.dtype(np.float16),
    "float32": np.dtype(np.float32),
}
STRING_FEATURES = ("clip_id", "dataset", "split", "encoder", "embedding_dtype", "qa", "metadata")
BYTES_FEATURES = (*STRING_FEATURES, "embedding")
INT64_FEATURES = ("embedding_shape",)
SHARD_SUFFIX = ".tfrecord"


class RecordError(ValueError):
    """A record that cannot be decoded into a valid clip (names the clip and the reason)."""


@dataclasses.dataclass(frozen=True)
class QAPair:
    question: str
    answer: str
    task: str


@dataclasses.dataclass(frozen=True)
class ClipRecord:
    """One clip: `embedding` is [T, D] in its stored dtype (frames at the encoder's rate)."""

    clip_id: str
    dataset: str
    split: str
    encoder: str
    embedding: np.ndarray
    qa: tuple[QAPair, ...]
    metadata: dict[str, Any]


def shard_name(split: str, encoder: str, index: int, count: int) -> str:
    """`{split}-{encoder}-NNNNN-of-MMMMM.tfrecord`."""
    return f"{split}-{encoder}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


# ---------------------------------------------------------------- tf.train.Example wire format


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _read_varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise RecordError("truncated varint in tf.train.Example")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: memoryview) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of a protobuf message; LEN values are memoryviews."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            if pos + size > len(buf):
                raise RecordError("truncated field in tf.train.Example")
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = bytes(buf[pos : pos + 4]), pos + 4
        elif wire == 1:
            value, pos = bytes(buf[pos : pos + 8]), pos + 8
        else:
            raise RecordError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def encode_example(features: dict[str, list[bytes] | list[int]]) -> bytes:
    """Serialises a `tf.train.Example` whose features are bytes lists or int64 lists."""
    entries = b""
    for name, values in features.items():
        if values and isinstance(values[0], int):
            packed = b"".join(_varint(v) for v in values)
            feature = _len_field(3, _len_field(1, packed))  # int64_list, packed
        else:
            feature = _len_field(1, b"".join(_len_field(1, v) for v in values))  # bytes_list
        entries += _len_field(1, _len_field(1, name.encode()) + _len_field(2, feature))
    return _len_field(1, entries)


def decode_example(data: bytes) -> dict[str, list[bytes] | list[int] | list[float]]:
    """Parses a serialised `tf.train.Example` into {name: values}."""
    out: dict[str, list] = {}
    for field, _, features in _fields(memoryview(data)):
        if field != 1:
            continue
        for _, _, entry in _fields(features):
            name, values = "", []
            for efield, _, evalue in _fields(entry):
                if efield == 1:
                    name = bytes(evalue).decode()
                elif efield == 2:
                    values = _decode_feature(evalue)
            out[name] = values
    return out


def _decode_feature(buf: memoryview) -> list:
    values: list = []
    for kind, _, payload in _fields(buf):
        for field, wire, value in _fields(payload):
            if field != 1:
                continue
            if kind == 1:
                values.append(bytes(value))
            elif kind == 2:
                raw = bytes(value) if wire == 2 else value
                values.extend(np.frombuffer(raw, "<f4").tolist())
            elif kind == 3 and wire == 0:
                values.append(value - (1 << 64) if value >= 1 << 63 else value)
            elif kind == 3:
                pos, view = 0, value
                while pos < len(view):
                    v, pos = _read_varint(view, pos)
                    values.append(v - (1 << 64) if v >= 1 << 63 else v)
    return values


# ---------------------------------------------------------------- clip <-> Example


def encode_clip(clip: ClipRecord) -> bytes:
    """Serialises a clip; its embedding is stored in its own dtype (one of EMBEDDING_DTYPES)."""
    dtype_name = next((k for k, v in EMBEDDING_DTYPES.items() if v == clip.embedding.dtype), None)
    if dtype_name is None or clip.embedding.ndim != 2:
        raise RecordError(
            f"clip {clip.clip_id}: embedding must be 2-D in {list(EMBEDDING_DTYPES)}, "
            f"got {clip.embedding.dtype} {clip.embedding.shape}"
        )
    qa = [dataclasses.asdict(p) for p in clip.qa]
    strings = {
        "clip_id": clip.clip_id,
        "dataset": clip.dataset,
        "split": clip.split,
        "encoder": clip.encoder,
        "embedding_dtype": dtype_name,
        "qa": json.dumps(qa, ensure_ascii=False),
        "metadata": json.dumps(clip.metadata, ensure_ascii=False, sort_keys=True),
    }
    features: dict[str, list] = {k: [v.encode()] for k, v in strings.items()}
    features["embedding"] = [np.ascontiguousarray(clip.embedding).tobytes()]  # little-endian hosts
    features["embedding_shape"] = [int(n) for n in clip.embedding.shape]
    return encode_example(features)


def _string(features: dict, name: str, clip_id: str) -> str:
    values = features.get(name)
    if not values or len(values) != 1 or not isinstance(values[0], bytes):
        raise RecordError(f"clip {clip_id}: feature {name!r} missing or not one bytes value")
    try:
        return values[0].decode()
    except UnicodeDecodeError as err:
        raise RecordError(f"clip {clip_id}: feature {name!r} is not UTF-8") from err


def parse_qa(text: str, clip_id: str) -> tuple[QAPair, ...]:
    """Validates the `qa` JSON: a non-empty list of {question, answer, task?} with string fields."""
    try:
        items = json.loads(text)
    except json.JSONDecodeError as err:
        raise RecordError(f"clip {clip_id}: qa is not valid JSON ({err})") from err
    if not isinstance(items, list) or not items:
        raise RecordError(f"clip {clip_id}: qa must be a non-empty JSON list")
    pairs = []
    for item in items:
        if not isinstance(item, dict) or not all(
            isinstance(item.get(k), str) for k in ("question", "answer")
        ):
            raise RecordError(f"clip {clip_id}: qa item without string question/answer: {item!r}")
        pairs.append(QAPair(item["question"], item["answer"], str(item.get("task", "unknown"))))
    return tuple(pairs)


def decode_clip(data: bytes) -> ClipRecord:
    """Parses and validates one serialised record; raises `RecordError` naming what is wrong."""
    features = decode_example(data)
    clip_id = _string(features, "clip_id", "<unknown>")
    dtype_name = _string(features, "embedding_dtype", clip_id)
    if dtype_name not in EMBEDDING_DTYPES:
        raise RecordError(f"clip {clip_id}: embedding_dtype {dtype_name!r} not supported")
    shape = features.get("embedding_shape") or []
    raw = (features.get("embedding") or [b""])[0]
    dtype = EMBEDDING_DTYPES[dtype_name]
    if len(shape) != 2 or min(shape) <= 0 or shape[0] * shape[1] * dtype.itemsize != len(raw):
        raise RecordError(
            f"clip {clip_id}: embedding_shape {shape} does not match {len(raw)} bytes of "
            f"{dtype_name}"
        )
    embedding = np.frombuffer(raw, dtype).reshape(shape)
    finite = np.isfinite(embedding)
    if not finite.all():  # the writer refuses these; a reader must not trust every writer
        raise RecordError(f"clip {clip_id}: embedding holds {int(finite.size - finite.sum())} "
                          f"non-finite values (NaN/inf)")
    try:
        metadata = json.loads(_string(features, "metadata", clip_id))
    except json.JSONDecodeError as err:
        raise RecordError(f"clip {clip_id}: metadata is not valid JSON ({err})") from err
    return ClipRecord(
        clip_id=clip_id,
        dataset=_string(features, "dataset", clip_id),
        split=_string(features, "split", clip_id),
        encoder=_string(features, "encoder", clip_id),
        embedding=embedding,
        qa=parse_qa(_string(features, "qa", clip_id), clip_id),
        metadata=metadata,
    )


# ---------------------------------------------------------------- TFRecord framing


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord frame: u64 length, masked CRC of it, payload, masked CRC of the payload."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", _masked_crc(header)) + data
            + struct.pack("<I", _masked_crc(data)))


def scan_frames(f: BinaryIO) -> tuple[list[tuple[int, int]], tuple[int, str] | None]:
    """(payload offset, payload length) of every record in an open TFRecord file (headers only),
    and `(byte offset, problem)` of the first corrupt or truncated header (None when the whole
    file is well framed); the records after it cannot be located."""
    out, pos = [], 0
    f.seek(0, 2)
    end = f.tell()
    while pos < end:
        f.seek(pos)
        header = f.read(12)
        if len(header) < 12:
            return out, (pos, "truncated record header")
        (length,) = struct.unpack("<Q", header[:8])
        if struct.unpack("<I", header[8:])[0] != _masked_crc(header[:8]):
            return out, (pos, "corrupt length")
        if pos + 16 + length > end:
            return out, (pos, "truncated record")
        out.append((pos + 12, length))
        pos += 16 + length
    return out, None


def scan_offsets(f: BinaryIO, name: str) -> tuple[list[tuple[int, int]], str | None]:
    """`scan_frames` with the problem as text: `"{name}: {problem} at byte {offset}"`."""
    out, bad = scan_frames(f)
    return out, (f"{name}: {bad[1]} at byte {bad[0]}" if bad else None)


def read_payload(f: BinaryIO, offset: int, length: int, name: str) -> bytes:
    """Reads and CRC-checks the payload of one record found by `scan_offsets`."""
    f.seek(offset)
    data = f.read(length + 4)
    if len(data) != length + 4 or struct.unpack("<I", data[length:])[0] != _masked_crc(
        data[:length]
    ):
        raise RecordError(f"{name}: corrupt record payload at byte {offset}")
    return data[:length]


def iter_records(path: str) -> Iterator[bytes]:
    """Every payload of a TFRecord file, in order; raises `RecordError` at a corrupt frame."""
    with open(path, "rb") as f:
        offsets, error = scan_offsets(f, path)
        for offset, length in offsets:
            yield read_payload(f, offset, length, path)
        if error:
            raise RecordError(error)


def tf_feature_spec() -> dict:
    """`tf.io.parse_single_example` spec for the schema (imports TensorFlow lazily)."""
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in BYTES_FEATURES}
    spec["embedding_shape"] = tf.io.FixedLenFeature([2], tf.int64)
    return spec
