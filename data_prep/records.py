"""The TFRecord writer: clip metadata + QA pairs + embeddings -> shards, index and report.

`write_records` joins its three inputs by clip id and writes `{split}-{encoder}-NNNNN-of-MMMMM`
shards atomically (the record schema lives in `llark_jax.data.records`); the input formats, the
index and the report are described in `data_prep.stages.write` (`python -m data_prep write`),
the stage that calls it.
"""

from __future__ import annotations

import collections
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from llark_jax.data.records import (
    EMBEDDING_DTYPES,
    ClipRecord,
    QAPair,
    encode_clip,
    frame_record,
    iter_records,
    shard_name,
)
from llark_jax.errors import UserError
from llark_jax.io import atomic_write_bytes


def _clip_key(row: dict[str, Any]) -> str | None:
    key = row.get("clip_id", row.get("id"))
    return str(key) if key is not None else None


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any] | None]]:
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    row = None
                yield line_no, row if isinstance(row, dict) else None


def load_annotations(path: Path, split: str, problems: list[dict]) -> dict[str, dict[str, Any]]:
    """clip id -> annotation row, for the rows of `split` (or with no split)."""
    clips: dict[str, dict[str, Any]] = {}
    for line_no, row in _read_jsonl(path):
        key = _clip_key(row) if row is not None else None
        if key is None:
            problems.append({"clip_id": None, "kind": "bad annotation row",
                             "where": f"{path}:{line_no}"})
        elif row.get("split", split) == split:
            clips[key] = row
    return clips


def _other_splits(path: Path) -> str:
    """", the annotations' clips are of split(s) test: 4 (pass --split)" when rows name splits."""
    splits = collections.Counter(row.get("split") for _, row in _read_jsonl(path)
                                 if isinstance(row, dict) and row.get("split") is not None)
    if not splits:
        return ""
    counts = ", ".join(f"{name}: {n}" for name, n in sorted(splits.items()))
    return f"; the annotations' clips are of split(s) {counts} (pass --split)"


def _row_pairs(row: dict[str, Any]) -> tuple[Any, bool]:
    """(the row's list of pair dicts, whether an empty question is allowed).

    A jsonify record (`python -m data_prep jsonify`) carries its pairs in `metadata.qa`; the
    adapters write them on purpose, including LP-MusicCaps' caption pairs with question "".
    """
    if "qa" in row or "response" in row:
        return row.get("qa", row.get("response")), False
    metadata = row.get("metadata")
    if isinstance(metadata, dict) and "qa" in metadata:
        return metadata["qa"], True
    return [row], False


def load_qa(paths: list[Path], problems: list[dict]) -> dict[str, list[QAPair]]:
    """clip id -> QA pairs in file order; malformed pairs are reported and dropped.

    Pairs come from a row's `qa` or `response` list, a jsonify record's `metadata.qa` (where the
    question may be empty, e.g. stage-1 captions), or the row itself (`question`, `answer`).
    """
    pairs: dict[str, list[QAPair]] = collections.defaultdict(list)
    for path, line_no, row in ((p, n, r) for p in paths for n, r in _read_jsonl(p)):
        key = _clip_key(row) if row is not None else None
        items, empty_question_ok = _row_pairs(row) if key is not None else (None, False)
        if not isinstance(items, list):
            problems.append({"clip_id": key, "kind": "bad QA row", "where": f"{path}:{line_no}"})
            continue
        for item in items:
            if isinstance(item, dict) and all(
                isinstance(item.get(k), str) and (item[k].strip() or (
                    k == "question" and empty_question_ok)) for k in ("question", "answer")
            ):
                task = str(item.get("task", row.get("task", "unknown")))
                pairs[key].append(QAPair(item["question"], item["answer"], task))
            else:
                problems.append({"clip_id": key, "kind": "bad QA pair",
                                 "where": f"{path}:{line_no}"})
    return pairs


def load_embedding(directory: Path, clip_id: str) -> np.ndarray:
    """`<clip_id>.npy` as float32 [T, D] (a leading axis of 1 is dropped)."""
    array = np.load(directory / f"{clip_id}.npy", allow_pickle=False)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2 or 0 in array.shape or not np.isfinite(array).all():
        raise ValueError(f"embedding must be finite [T, D], got shape {array.shape}")
    return array.astype(np.float32)


def _previous_shards(index_path: Path) -> dict[str, dict[str, Any]]:
    if not index_path.is_file():
        return {}
    return {s["file"]: s for s in json.loads(index_path.read_text())["shards"]}


def write_records(annotations: Path, qa: list[Path], embeddings: Path, output_dir: Path, split: str,
                  shard_size: int = 256, encoder: str | None = None,
                  embedding_dtype: str = "bfloat16", dataset: str = "unknown") -> dict[str, Any]:
    """Writes the shards, index and report; returns the index dict (see module docstring)."""
    problems: list[dict] = []
    clips = load_annotations(annotations, split, problems)
    pairs = load_qa(qa, problems)
    ready: list[tuple[str, dict[str, Any], list[QAPair]]] = []
    for clip_id in sorted(clips):
        if not pairs.get(clip_id):
            problems.append({"clip_id": clip_id, "kind": "no QA pairs"})
        elif not (embeddings / f"{clip_id}.npy").is_file():
            problems.append({"clip_id": clip_id, "kind": "no embedding file"})
        else:
            ready.append((clip_id, clips[clip_id], pairs[clip_id]))
    for clip_id in sorted(set(pairs) - set(clips)):
        problems.append({"clip_id": clip_id, "kind": "QA for a clip not in the annotations"})
    if not ready:  # nothing for training to read: a user mistake, not an empty shard
        reasons = collections.Counter(p["kind"] for p in problems)
        why = "; ".join(f"{kind}: {n}" for kind, n in reasons.most_common()) or "no clips"
        if not clips:
            why += _other_splits(annotations)
        raise UserError(f"no {split!r} record to write from {annotations} ({len(clips)} clips of "
                        f"that split), --qa and --embeddings {embeddings}: {why}")

    output_dir.mkdir(parents=True, exist_ok=True)
    if encoder is None:  # the first sidecar names the encoder of the whole run
        encoder = next((e for c in ready if (e := _sidecar_encoder(embeddings, c[0]))), "unknown")
    index_path = output_dir / f"{split}-{encoder}-index.json"
    previous = _previous_shards(index_path)
    n_shards = max(1, -(-len(ready) // shard_size))
    shards = []
    for i in tqdm(range(n_shards), desc="shards", unit="shard"):
        chunk = ready[i * shard_size : (i + 1) * shard_size]
        name = shard_name(split, encoder, i, n_shards)
        inputs = hashlib.sha1(json.dumps([[c[0], c[1], [p.__dict__ for p in c[2]]] for c in chunk],
                                         sort_keys=True).encode()).hexdigest()
        old = previous.get(name)
        if old and old["inputs"] == inputs and (output_dir / name).is_file() and sum(
                1 for _ in iter_records(str(output_dir / name))) == old["records"]:
            shards.append(old)
            continue
        shard = _write_shard(output_dir / name, chunk, embeddings, split, encoder,
                             EMBEDDING_DTYPES[embedding_dtype], dataset)
        shards.append({"file": name, "inputs": inputs, **shard})
    for shard in shards:
        problems.extend(shard["not_written"])
    datasets: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    tasks: collections.Counter = collections.Counter()
    for shard in shards:
        for ds, counts in shard["datasets"].items():
            datasets[ds].update(counts)
        tasks.update(shard["tasks"])
    index = {
        "split": split, "encoder": encoder, "embedding_dtype": embedding_dtype,
        "records": sum(s["records"] for s in shards), "qa_pairs": sum(tasks.values()),
        "datasets": {k: dict(datasets[k]) for k in sorted(datasets)},
        "tasks": dict(sorted(tasks.items())), "not_written": len(problems), "shards": shards,
    }
    atomic_write_bytes(index_path, json.dumps(index, indent=1).encode())
    reasons = collections.Counter(p["kind"] for p in problems)
    report = {"written": index["records"], "not_written": problems, "reasons": dict(reasons)}
    report_path = output_dir / f"{split}-{encoder}-report.json"
    atomic_write_bytes(report_path, json.dumps(report, indent=1).encode())
    return index


def _sidecar_encoder(directory: Path, clip_id: str) -> str | None:
    sidecar = directory / f"{clip_id}.json"
    return json.loads(sidecar.read_text()).get("encoder") if sidecar.is_file() else None


def _write_shard(path: Path, chunk: list[tuple[str, dict[str, Any], list[QAPair]]],
                 embeddings: Path, split: str, encoder: str, dtype: np.dtype,
                 dataset: str) -> dict[str, Any]:
    """Encodes one shard's clips and writes it atomically; returns its index entry."""
    frames, problems, clip_ids = [], [], []
    datasets: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    tasks: collections.Counter = collections.Counter()
    for clip_id, row, clip_pairs in chunk:
        try:
            array = load_embedding(embeddings, clip_id)
            clip_encoder = _sidecar_encoder(embeddings, clip_id)
        except (OSError, ValueError) as err:
            problems.append({"clip_id": clip_id, "kind": "bad embedding", "detail": str(err)})
            continue
        if clip_encoder not in (None, encoder):
            problems.append({"clip_id": clip_id, "kind": "encoder mismatch",
                             "detail": f"{clip_encoder} != {encoder}"})
            continue
        ds = str(row.get("dataset", dataset))
        record = ClipRecord(clip_id, ds, split, encoder, array.astype(dtype), tuple(clip_pairs),
                            row)
        frames.append(frame_record(encode_clip(record)))
        clip_ids.append(clip_id)
        datasets[ds].update({"clips": 1, "qa_pairs": len(clip_pairs)})
        tasks.update(p.task for p in clip_pairs)
    atomic_write_bytes(path, b"".join(frames))
    return {"records": len(frames), "qa_pairs": sum(tasks.values()), "clip_ids": clip_ids,
            "datasets": {k: dict(v) for k, v in datasets.items()}, "tasks": dict(tasks),
            "not_written": problems}
