"""Clip files and track lists for the crop and annotate stages.

The paper's crop rule and clip ids (`choose_crop`, `multicrop_windows`, `clip_id`,
`parse_clip_id`) live in `llark_jax.audio.crop` (the benchmark command crops with them too) and
are re-exported here. Audio loading (mono, 44.1 kHz, typed `AudioError`s) is
`llark_jax.audio.io`, which `infer` and `serve` share.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile as sf

from llark_jax.audio.crop import (  # noqa: F401 - the crop rule lives in llark_jax (benchmarks)
    CropWindow,
    choose_crop,
    clip_id,
    multicrop_windows,
    parse_clip_id,
)
from llark_jax.audio.io import SAMPLE_RATE, require_audio_files
from llark_jax.errors import MissingInputError
from llark_jax.io import atomic_output, read_jsonl, require_fields


def write_wav_atomic(path: str | os.PathLike, audio_n: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write a float32 WAV (like the reference's scipy writer) via tmp file + ``os.replace``."""
    with atomic_output(path) as tmp:
        sf.write(str(tmp), np.asarray(audio_n, np.float32), rate, subtype="FLOAT", format="WAV")


def list_tracks(
    audio_dir: str | os.PathLike | None = None, records: str | os.PathLike | None = None,
    audio_flag: str = "--audio-dir",
) -> list[tuple[str, str]]:
    """``(track_id, audio_path)`` pairs a stage works on: every audio file under ``audio_dir``
    (id = file stem), or the ``id``/``audio_path`` of each line of a jsonify ``records`` JSONL
    (ids as the dataset defines them, e.g. FMA ``"2"`` for ``000/000002.mp3``). A missing or
    empty folder or records file raises `MissingInputError` (`audio_flag` names the folder's
    flag in the message)."""
    if (audio_dir is None) == (records is None):
        raise ValueError("give exactly one of audio_dir and records")
    if audio_dir is not None:
        return [(p.stem, str(p)) for p in require_audio_files(audio_dir, audio_flag)]
    if not Path(records).is_file():
        raise MissingInputError(f"--records {records}: no such file")
    rows = read_jsonl(records)
    if not rows:
        raise MissingInputError(f"--records {records}: no records (empty file)")
    require_fields(rows, ("id", "audio_path"), records,
                   "track records of `python -m data_prep jsonify` ({id, audio_path} per line)")
    return [(str(row["id"]), str(row["audio_path"])) for row in rows]
