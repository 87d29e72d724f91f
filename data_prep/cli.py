"""`python -m data_prep STAGE ...`: dispatch to the module that owns each offline stage."""

from __future__ import annotations

import sys

from llark_jax.cli import dispatch

STAGES: dict[str, tuple[str, str]] = {
    "crop": ("data_prep.stages.crop", "crop audio files by the paper's rule"),
    "annotate": ("data_prep.stages.annotate", "madmom tempo/key/chords/beats per track"),
    "jsonify": ("data_prep.stages.jsonify", "dataset files -> uniform clip records (JSONL)"),
    "instruct": ("data_prep.instruct.cli", "clip metadata -> question/answer pairs"),
    "embed": ("data_prep.encoders.cli", "audio -> [T, D] embeddings (jukebox, mel, ...)"),
    "write": ("data_prep.records", "metadata + QA + embeddings -> TFRecord shards"),
    "demo-data": ("data_prep.demo_dataset", "synthesise the demo dataset from composed MIDI"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("data_prep", STAGES, sys.argv[1:] if argv is None else argv)
