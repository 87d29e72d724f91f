"""Demo feature preparation: mean over groups of frames, then per-dimension standardisation.

The projector is affine, so averaging k frames before it equals LLark's `temporal_pool=k`
(MusiLingo's compression) after it; doing it on the stored features keeps every frame one
`<audio_patch>` token for the input pipeline, which knows nothing about pooling. A 10 s `mel`
clip (100 frames at 10 Hz) pooled by 10 becomes 10 tokens at 1 Hz.

The `mel` columns have very different scales (log-mel / 10 around -1, chroma in [0, 1], onset
strengths, log-RMS); each is standardised with the mean and standard deviation of the training
clips' frames (eval clips use the training statistics), so one projector learning rate suits all.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def mean_pool_frames(frames_td: np.ndarray, group: int) -> np.ndarray:
    """[T, D] -> [ceil(T / group), D] float32; the last group averages the frames it has."""
    if group < 1:
        raise ValueError(f"group must be >= 1, got {group}")
    t, d = frames_td.shape
    n = -(-t // group)
    padded_td = np.zeros((n * group, d), np.float64)
    padded_td[:t] = frames_td
    counts_n = np.minimum(group, t - group * np.arange(n))
    return (padded_td.reshape(n, group, d).sum(axis=1) / counts_n[:, None]).astype(np.float32)


def prepare_features(source: Path, target: Path, group: int, train_ids: set[str]) -> dict:
    """Pools every `<clip_id>.npy` of `source` by `group` frames and standardises it with the
    statistics of the clips in `train_ids`; writes `target/<clip_id>.npy` + `.json` sidecars
    (atomically) and `target/feature_stats.npz`. Returns counts."""
    target.mkdir(parents=True, exist_ok=True)
    pooled = {p.stem: mean_pool_frames(np.load(p), group) for p in sorted(source.glob("*.npy"))}
    train_frames = [v for k, v in pooled.items() if k in train_ids]
    if not train_frames:
        raise ValueError(f"no training clip among the {len(pooled)} embeddings in {source}")
    stacked_nd = np.concatenate(train_frames).astype(np.float64)
    mean_d, std_d = stacked_nd.mean(axis=0), stacked_nd.std(axis=0) + 1e-6
    np.savez(target / "feature_stats.npz", mean=mean_d, std=std_d)
    for clip_id, frames_td in pooled.items():
        sidecar = source / f"{clip_id}.json"
        meta = json.loads(sidecar.read_text()) if sidecar.exists() else {}
        meta.update(shape=list(frames_td.shape), temporal_pool=group, standardised=True,
                    frame_rate_hz=meta.get("frame_rate_hz", 10.0) / group)
        tmp = target / f"{clip_id}.tmp.npy"
        np.save(tmp, ((frames_td - mean_d) / std_d).astype(np.float32))
        os.replace(tmp, target / f"{clip_id}.npy")
        (target / f"{clip_id}.json.tmp").write_text(json.dumps(meta))
        os.replace(target / f"{clip_id}.json.tmp", target / f"{clip_id}.json")
    return {"clips": len(pooled), "train_clips": len(train_frames), "group": group}
