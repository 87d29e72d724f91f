"""`python -m data_prep annotate --audio-dir DIR --output annotations.jsonl`: madmom per track.

Each audio file under DIR (recursive; file stem = track id), or each record of ``--records
records.jsonl`` (jsonify output; its ``dataset``, ``split`` and ``metadata`` are carried into the
output), is annotated on its first 360 s (fields: see `data_prep.annotate`). One JSON per track
is cached atomically in ``<output>.cache/`` as soon as it is done, so a crash or kill loses only
the track in flight and a rerun continues; the JSONL is assembled from the cache in input order,
identical to an uninterrupted run. ``--crops OUT/crops.jsonl`` (from the crop stage) instead
writes one record per clip: id = clip id, ``track_id``, ``start_secs``/``end_secs``, beats and
chords (and MusicNet ``metadata.notes``) cut and re-timed to the clip, tempo and key
track-level. The report (``<output>.report.json``) lists every skipped file with its reason.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from data_prep.annotate import DEFAULT_MAX_CROP_S, MAX_ANNOTATION_S, annotate_file, crop_annotations
from data_prep.clips import list_tracks
from data_prep.stages.runner import exit_status, options_tag, run_cached, write_report
from llark_jax.argtypes import positive_float, positive_int
from llark_jax.audio.io import AudioError
from llark_jax.errors import MissingInputError, UserError
from llark_jax.io import read_jsonl, require_fields, write_jsonl_atomic


def initialize_worker() -> None:
    """Load madmom's processors once per worker process."""
    from data_prep.annotate import get_annotator

    get_annotator()


def annotate_track(track: tuple[str, str], *, max_seconds: float) -> dict:
    """Annotate one ``(track_id, path)`` (the runner's work function)."""
    return annotate_file(track[1], max_seconds=max_seconds)


def clip_records(tracks: dict[str, dict], crops: list[dict], max_crop_s: float) -> list[dict]:
    """One cropped record per crop-manifest row whose track has an annotation."""
    return [
        crop_annotations({**tracks[c["track_id"]], "id": c["id"], "track_id": c["track_id"]},
                         c["start_secs"], c["end_secs"], max_crop_s)
        for c in crops
        if c["track_id"] in tracks
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep annotate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--audio-dir", type=Path, help="full (uncropped) tracks; id = file stem")
    source.add_argument("--records", type=Path, help="jsonify output: id + audio_path per line")
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--crops", type=Path, help="crops.jsonl from the crop stage")
    parser.add_argument("--max-seconds", type=positive_float, default=MAX_ANNOTATION_S)
    parser.add_argument("--max-crop-seconds", type=positive_float, default=DEFAULT_MAX_CROP_S)
    parser.add_argument("--workers", type=positive_int, default=1)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.output.is_dir():
        raise UserError(f"--output {args.output}: is a directory (give a .jsonl file path)")
    tracks = list_tracks(args.audio_dir, args.records)
    crops = None
    if args.crops is not None:
        if not args.crops.is_file():
            raise MissingInputError(f"--crops {args.crops}: no such file")
        crops = read_jsonl(args.crops)
        require_fields(crops, ("id", "track_id", "start_secs", "end_secs"), args.crops,
                       "the crops.jsonl of `python -m data_prep crop`")
    work = partial(annotate_track, max_seconds=args.max_seconds)
    cache_dir = args.output.with_name(f"{args.output.name}.cache") / options_tag(work.keywords)
    result = run_cached(tracks, work,
                        key=lambda track: track[0], cache_dir=cache_dir, stage="annotate",
                        workers=args.workers, initializer=initialize_worker,
                        expected_errors=(AudioError,))
    sources = {r["id"]: r for r in read_jsonl(args.records)} if args.records else {}
    carried = ("dataset", "split", "metadata")
    tracks = {
        key: {"id": key, **{k: sources[key][k] for k in carried if k in sources.get(key, {})},
              **annotation}
        for key, annotation in result.results.items()
    }
    if args.crops is None:
        rows = list(tracks.values())
    else:
        rows = clip_records(tracks, crops, args.max_crop_seconds)
        result.extra["clips_without_annotation"] = sorted(
            c["id"] for c in crops if c["track_id"] not in tracks)
    result.extra["records"] = write_jsonl_atomic(args.output, rows, sort_keys=True)
    print(f"annotate: {result.counts} -> {write_report(args.output, result)}")
    return exit_status(result)
