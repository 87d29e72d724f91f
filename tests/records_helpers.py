"""Real writer inputs (JSONL + .npy files) and TFRecord shards for the records/pipeline tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizer_fixtures import make_llark_tokenizer

from data_prep.records import write_records
from llark_jax.data.conversation import AudioTokenIds, get_template
from llark_jax.data.packing import PackingConfig
from llark_jax.data.pipeline import Pipeline, PipelineConfig, make_tokenize_fn

WORDS = "the song has a slow groove with bright drums warm strings and a soft vocal melody".split()
QUESTIONS = ("What is the tempo of this song?", "Which key is this piece in?",
             "Describe the instruments you hear.", "What genre is this?")


def answer_text(rng: np.random.Generator, long: bool) -> str:
    n = int(rng.integers(60, 160)) if long else int(rng.integers(2, 12))
    return " ".join(rng.choice(WORDS, n))


def make_inputs(root: Path, n_clips: int, *, frames: tuple[int, int] = (20, 40), dim: int = 8,
                qa_per_clip: tuple[int, int] = (1, 4), long_fraction: float = 0.3,
                seed: int = 0) -> dict[str, list[tuple[str, str, str]]]:
    """annotations.jsonl, qa.jsonl and embeddings/<clip>.npy (+ .json) under `root`.

    Returns the QA pairs written per clip id: [(question, answer, task)].
    """
    rng = np.random.default_rng(seed)
    (root / "embeddings").mkdir(parents=True, exist_ok=True)
    qa: dict[str, list[tuple[str, str, str]]] = {}
    with open(root / "annotations.jsonl", "w") as ann, open(root / "qa.jsonl", "w") as qaf:
        for i in range(n_clips):
            clip_id = f"clip.{i:04d}-start0.000"
            dataset = ("fma", "musiccaps")[i % 2]
            ann.write(json.dumps({"clip_id": clip_id, "dataset": dataset, "tempo": 90 + i}) + "\n")
            pairs = []
            for _ in range(int(rng.integers(qa_per_clip[0], qa_per_clip[1] + 1))):
                long = bool(rng.random() < long_fraction)
                pairs.append((str(rng.choice(QUESTIONS)), answer_text(rng, long),
                              "reasoning" if long else "mir"))
            qa[clip_id] = pairs
            qaf.write(json.dumps({"clip_id": clip_id, "qa": [
                {"question": q, "answer": a, "task": t} for q, a, t in pairs]}) + "\n")
            n_frames = int(rng.integers(frames[0], frames[1] + 1))
            np.save(root / "embeddings" / f"{clip_id}.npy",
                    rng.standard_normal((n_frames, dim)).astype(np.float32))
            (root / "embeddings" / f"{clip_id}.json").write_text(json.dumps({"encoder": "mel"}))
    return qa


def make_shards(root: Path, n_clips: int, shard_size: int = 8, **kwargs) -> tuple[Path, dict]:
    """Writer inputs + shards in `root/records`; returns (records dir, QA per clip)."""
    qa = make_inputs(root, n_clips, **kwargs)
    out = root / "records"
    write_records(root / "annotations.jsonl", [root / "qa.jsonl"], root / "embeddings", out,
                  "train", shard_size=shard_size)
    return out, qa


def make_pipeline(records: Path, *, batch_size: int = 4, seq_len: int = 512, max_segments: int = 4,
                  max_frames: int = 40, dim: int = 8, seed: int = 0, process_index: int = 0,
                  process_count: int = 1, **config) -> Pipeline:
    """A pipeline over `records` with the real test BPE tokenizer and the FastChat-v0 template."""
    tokenizer = make_llark_tokenizer()
    tokenize = make_tokenize_fn(tokenizer, get_template("fastchat_v0"),
                                AudioTokenIds.from_tokenizer(tokenizer), seq_len)
    packing = PackingConfig(batch_size, seq_len, max_segments, max_frames, dim,
                            **{k: config.pop(k) for k in list(config) if k in (
                                "audio_dtype", "mode", "bucket_lengths", "max_wait")})
    cfg = PipelineConfig(files=(str(records / "*.tfrecord"),), packing=packing, seed=seed,
                         **config)
    return Pipeline(cfg, tokenize, process_index=process_index, process_count=process_count)
