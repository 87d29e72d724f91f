"""Evaluation datasets: GiantSteps key and tempo, GTZAN, MedleyDB (all records get split "test").

The readers of the published layouts live in `llark_jax.benchmarks` (`giantsteps`, `gtzan`,
`medleydb`: the benchmark command reads the same files); this module adapts them to `jsonify`.
"""

from __future__ import annotations

from collections.abc import Iterator

from data_prep.datasets.base import JsonifyContext, RowSkip, TrackRecord
from llark_jax.benchmarks import giantsteps, gtzan, medleydb


def read_giantsteps_key(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    if ctx.wants("test"):
        yield from giantsteps.read_key(ctx.root, ctx.audio_root)


def read_giantsteps_tempo(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    if ctx.wants("test"):
        yield from giantsteps.read_tempo(ctx.root, ctx.audio_root)


def read_gtzan(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    if ctx.wants("test"):
        yield from gtzan.read_gtzan(ctx.root)


def read_medleydb(ctx: JsonifyContext) -> Iterator[TrackRecord | RowSkip]:
    if ctx.wants("test"):
        yield from medleydb.read_medleydb(ctx.root, ctx.audio_root)
