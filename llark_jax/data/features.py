"""The feature pipeline between stored encoder frames and the projector, saved with every model.

    encoder frames [T, D] (what the records store, what `infer`/`serve` compute from audio)
      -> rounded to the records' storage dtype      (bfloat16 records: what training saw)
      -> mean over groups of `pool` frames          [ceil(T / pool), D]
      -> (x - mean_d) / std_d when standardised     (statistics of the training records)
      -> clipped to [-clip, clip] when `clip` is set (a file unlike any training clip cannot
         push a column further out than training values reach)
      -> one `<audio_patch>` token per row

The projector is affine, so averaging `pool` frames before it equals averaging `pool` projected
frames after it; pooling here keeps every row one audio token for the packer. Standardising puts
columns of very different scales (log-mel, chroma, onset strength) on one scale, so one projector
learning rate suits all.

`FeatureSpec` is the whole recipe (encoder name and constructor arguments, pool, statistics). The
trainer builds it from `config.data` (statistics from the training shards, once, saved in the
workdir's manifest), and `llark_jax.checkpoints.model_dir` stores it beside the weights, so
inference applies exactly the transform training used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

import ml_dtypes
import numpy as np

STD_FLOOR = 1e-6  # added to every standard deviation (constant columns stay finite)
STORAGE_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


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


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
    """Encoder frames -> audio-token features (module docstring).

    Attributes:
      encoder: registry name of the encoder that made the frames (`mel`, `jukebox`, `mert`).
      encoder_args: its constructor arguments (e.g. MERT's `frame_rate`, `layers`).
      pool: encoder frames averaged per audio token (1 = none).
      mean, std: per-dimension statistics [D] float64, or None (not standardised).
      storage_dtype: the dtype the training records stored the frames in; frames computed from
        audio are rounded to it first, so inference sees the values training saw.
      clip: standardised values are clipped to [-clip, clip] (None: not clipped; needs `mean`).
    """

    encoder: str = "mel"
    encoder_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    pool: int = 1
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    storage_dtype: str = "float32"
    clip: float | None = None

    def __post_init__(self) -> None:
        if self.pool < 1:
            raise ValueError(f"feature pool must be >= 1, got {self.pool}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("standardisation needs both mean and std")
        if self.clip is not None and (self.mean is None or self.clip <= 0):
            raise ValueError(f"feature clip needs standardised features and a bound > 0, got "
                             f"{self.clip}")

    @property
    def standardized(self) -> bool:
        return self.mean is not None

    def tokens_for(self, frames: int) -> int:
        """Audio tokens of a clip of `frames` encoder frames."""
        return -(-frames // self.pool)

    def apply(self, frames_td: np.ndarray) -> np.ndarray:
        """Encoder frames [T, D] -> audio-token features [ceil(T / pool), D] float32."""
        x_td = np.asarray(frames_td)
        if self.storage_dtype != "float32":
            x_td = x_td.astype(STORAGE_DTYPES[self.storage_dtype])
        x_td = x_td.astype(np.float32)
        if self.pool > 1:
            x_td = mean_pool_frames(x_td, self.pool)
        if self.mean is not None:
            if x_td.shape[1] != self.mean.shape[0]:
                raise ValueError(f"the {self.encoder} encoder gives {x_td.shape[1]} columns, the "
                                 f"model was trained on {self.mean.shape[0]} (another version "
                                 f"of the encoder): retrain it, e.g. rerun `make demo`")
            x_td = ((x_td - self.mean) / self.std).astype(np.float32)
        if self.clip is not None:
            x_td = np.clip(x_td, -self.clip, self.clip)
        return x_td

    def to_json(self) -> dict[str, Any]:
        return {"encoder": self.encoder, "encoder_args": dict(self.encoder_args),
                "pool": self.pool,
                "mean": None if self.mean is None else self.mean.tolist(),
                "std": None if self.std is None else self.std.tolist(),
                "storage_dtype": self.storage_dtype, "clip": self.clip}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FeatureSpec:
        def array(key: str) -> np.ndarray | None:
            return None if data.get(key) is None else np.asarray(data[key], np.float64)

        return cls(encoder=data.get("encoder", "mel"),
                   encoder_args=dict(data.get("encoder_args") or {}),
                   pool=int(data.get("pool", 1)), mean=array("mean"), std=array("std"),
                   storage_dtype=data.get("storage_dtype", "float32"),
                   clip=None if data.get("clip") is None else float(data["clip"]))


def fit_standardization(frames: Iterable[np.ndarray], pool: int) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], std [D] + `STD_FLOOR`) over every pooled frame of every clip, in float64."""
    pooled = [mean_pool_frames(np.asarray(f, np.float32), pool) for f in frames]
    if not pooled:
        raise ValueError("no training clip to take feature statistics from")
    stacked_nd = np.concatenate(pooled).astype(np.float64)
    return stacked_nd.mean(axis=0), stacked_nd.std(axis=0) + STD_FLOOR


def spec_from_config(data_cfg: Any, clips: Iterable[np.ndarray] | None = None,
                     storage_dtype: str = "float32") -> FeatureSpec:
    """The `FeatureSpec` of `config.data`; statistics from `clips` when `data.standardize`, the
    clip bound from `data.feature_clip` (absent or 0: none)."""
    args = data_cfg.get("encoder_args") or {}
    args = args.to_dict() if hasattr(args, "to_dict") else dict(args)
    pool = int(data_cfg.get("feature_pool", 1))
    mean = std = None
    if data_cfg.get("standardize", False):
        if clips is None:
            raise ValueError("data.standardize needs the training clips for its statistics")
        mean, std = fit_standardization(clips, pool)
    clip = float(data_cfg.get("feature_clip", 0.0) or 0.0) or None
    return FeatureSpec(encoder=data_cfg.get("encoder", "mel"), encoder_args=args, pool=pool,
                       mean=mean, std=std, storage_dtype=storage_dtype,
                       clip=clip if mean is not None else None)
