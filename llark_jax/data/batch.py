"""The batch contract: the arrays every producer emits and the train step consumes.

B rows of L tokens, S audio slots per row of T_a frames of D features:

  name               shape            dtype             content
  input_ids          [B, L]           int32             token ids, 0 at padding
  labels             [B, L]           int32             -100 where not supervised (unshifted)
  positions          [B, L]           int32             0, 1, ... restarting at every example
  segment_ids        [B, L]           int32             1..k for the k examples of a row, 0 pad
  audio              [B, S, T_a, D]   float32|bfloat16  audio-token features
  audio_mask         [B, S, T_a]      bool              True at real frames
  audio_frame_index  [B, L]           int32             s * T_a + t at the t-th `<audio_patch>`
                                                        of slot s (ignored elsewhere)

The leading (batch) axis is split over the mesh's ("data", "fsdp") axes; every other axis is
whole on each device. Producers: `llark_jax.data.packing.Packer` (TFRecords) and
`llark_jax.train.synthetic` (tests, benchmarks); consumers: `llark_jax.train.step`, the loop's
shardings (`llark_jax.train.loop`), the planner (`llark_jax.train.plan`) and `bench/`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_dtypes
import numpy as np

IGNORE_INDEX = -100  # labels not supervised (llark_jax.model.loss uses the same value)
AUDIO_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16)}
# name -> (axis names, dtype; None = the audio dtype, fill value)
FIELDS: dict[str, tuple[tuple[str, ...], Any, Any]] = {
    "input_ids": (("batch", "length"), np.int32, 0),
    "labels": (("batch", "length"), np.int32, IGNORE_INDEX),
    "positions": (("batch", "length"), np.int32, 0),
    "segment_ids": (("batch", "length"), np.int32, 0),
    "audio": (("batch", "slots", "frames", "features"), None, 0),
    "audio_mask": (("batch", "slots", "frames"), np.bool_, False),
    "audio_frame_index": (("batch", "length"), np.int32, 0),
}
NDIMS = {name: len(axes) for name, (axes, _, _) in FIELDS.items()}


@dataclasses.dataclass(frozen=True)
class BatchShape:
    """The sizes of one batch: B, L, S, T_a, D and the audio dtype name."""

    batch_size: int
    seq_len: int
    audio_segments: int
    audio_frames: int
    audio_dim: int
    audio_dtype: str = "float32"

    @classmethod
    def from_config(cls, config: Any, batch_size: int | None = None) -> BatchShape:
        """The global batch of a training config (`data.*`, `model.audio_dim`)."""
        d = config.data
        return cls(batch_size=d.batch_size if batch_size is None else batch_size,
                   seq_len=d.seq_len, audio_segments=d.audio_segments,
                   audio_frames=d.audio_frames, audio_dim=config.model.audio_dim)

    def sizes(self, length: int | None = None) -> dict[str, int]:
        return {"batch": self.batch_size, "length": self.seq_len if length is None else length,
                "slots": self.audio_segments, "frames": self.audio_frames,
                "features": self.audio_dim}

    def specs(self, length: int | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
        """name -> (shape, dtype) of every array."""
        sizes = self.sizes(length)
        audio = AUDIO_DTYPES[self.audio_dtype]
        return {name: (tuple(sizes[a] for a in axes), np.dtype(audio if dt is None else dt))
                for name, (axes, dt, _) in FIELDS.items()}

    def empty(self, length: int | None = None) -> dict[str, np.ndarray]:
        """A batch of padding: every array at its fill value (ids 0, labels -100, no audio)."""
        return {name: np.full(shape, FIELDS[name][2], dtype)
                for name, (shape, dtype) in self.specs(length).items()}
