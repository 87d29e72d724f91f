"""`python -m data_prep STAGE ...` (installed: `llark-prep STAGE ...`): dispatch to the module
that owns each offline stage; user mistakes end with one `error:` line and status 2
(`llark_jax.cli.dispatch`)."""

from __future__ import annotations

import sys

from llark_jax.cli import dispatch, program_name

STAGES: dict[str, tuple[str, str]] = {
    "crop": ("data_prep.stages.crop", "crop audio files by the paper's rule"),
    "annotate": ("data_prep.stages.annotate", "madmom tempo/key/chords/beats per track"),
    "jsonify": ("data_prep.stages.jsonify", "dataset files -> uniform track records (JSONL)"),
    "merge": ("data_prep.stages.merge", "annotations + dataset labels -> clip metadata (JSONL)"),
    "instruct": ("data_prep.stages.instruct", "clip metadata -> question/answer pairs"),
    "embed": ("data_prep.stages.embed", "audio -> [T, D] embeddings (jukebox, mel, ...)"),
    "write": ("data_prep.stages.write", "metadata + QA + embeddings -> TFRecord shards"),
    "demo-data": ("data_prep.stages.demo_data", "synthesise the demo dataset from composed MIDI"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch(program_name("python -m data_prep"), STAGES,
                    sys.argv[1:] if argv is None else argv)
