"""`python -m data_prep crop --input-dir IN --output-dir OUT`: crop tracks by the paper's rule.

Every audio file under IN (recursive; its file stem is the track id), or every record of
``--records records.jsonl`` (jsonify output: its ``id`` and ``audio_path``), becomes one clip
(or, with ``--multicrop``, every full window) written as ``OUT/{id}-start{S:.3f}-end{E:.3f}.wav``
(float32, mono, 44.1 kHz). ``OUT/crops.jsonl`` lists the clips ({id, track_id, source, path,
start_secs, end_secs}); ``OUT/crops.jsonl.report.json`` has the counts and every skipped file
with its reason. Reruns skip finished tracks (cache in ``OUT/.cache/crop-<hash of the crop
options>``, so changed options never reuse stale clips).
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

from data_prep.clips import choose_crop, clip_id, list_tracks, multicrop_windows, write_wav_atomic
from data_prep.stages.runner import exit_status, options_tag, run_cached, write_report
from llark_jax.argtypes import positive_float, positive_int, probability
from llark_jax.audio.io import AudioError, TooShortAudioError, audio_duration, load_audio
from llark_jax.io import write_jsonl_atomic

MANIFEST = "crops.jsonl"


def crop_track(
    track: tuple[str, str],
    *,
    output_dir: str,
    crop_s: float,
    p_middle: float,
    multicrop: bool,
    min_clip_s: float,
    seed: int,
) -> dict:
    """Crop one ``(track_id, path)``; returns ``{"clips": [manifest rows]}``.

    Raises `AudioError` subclasses for bad input.
    """
    track_id, source = track
    duration_s = audio_duration(source)
    if multicrop:
        windows = multicrop_windows(duration_s, crop_s)
    else:
        windows = [choose_crop(track_id, duration_s, crop_s=crop_s, p_middle=p_middle, seed=seed)]
    windows = [w for w in windows if w.duration_s >= min_clip_s]
    if not windows:
        raise TooShortAudioError(
            source, f"{duration_s:.3f} s gives no clip of >= {min_clip_s} s (crop {crop_s} s)"
        )
    clips = []
    for window in windows:
        audio_n = load_audio(source, window.start_s, window.end_s)
        name = clip_id(track_id, window)
        write_wav_atomic(Path(output_dir) / f"{name}.wav", audio_n)
        clips.append({"id": name, "track_id": track_id, "source": source, "path": f"{name}.wav",
                      "start_secs": window.start_s, "end_secs": window.end_s})
    return {"clips": clips}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_prep crop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input-dir", type=Path, help="audio files; track id = file stem")
    source.add_argument("--records", type=Path, help="jsonify output: id + audio_path per line")
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--crop-seconds", type=positive_float, default=25.0,
                        help="clip length (paper 25; the reference's files are 30)")
    parser.add_argument("--p-middle", type=probability, default=0.8,
                        help="P([30, 30+crop)) for tracks > 60 s; 1.0 = the reference's --p 0")
    parser.add_argument("--multicrop", action="store_true",
                        help="every full window (MusicNet captioning)")
    parser.add_argument("--min-clip-seconds", type=positive_float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=positive_int, default=1)
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    tracks = list_tracks(args.input_dir, args.records, audio_flag="--input-dir")
    args.output_dir.mkdir(parents=True, exist_ok=True)
    work = partial(crop_track, output_dir=str(args.output_dir), crop_s=args.crop_seconds,
                   p_middle=args.p_middle, multicrop=args.multicrop,
                   min_clip_s=args.min_clip_seconds, seed=args.seed)
    result = run_cached(tracks, work, key=lambda track: track[0],
                        cache_dir=args.output_dir / ".cache" / f"crop-{options_tag(work.keywords)}",
                        stage="crop",
                        workers=args.workers, expected_errors=(AudioError,))
    rows = [clip for track in result.results.values() for clip in track["clips"]]
    manifest = args.output_dir / MANIFEST
    result.extra["clips"] = write_jsonl_atomic(manifest, rows, sort_keys=True)
    print(f"crop: {result.counts} -> {write_report(manifest, result)}")
    return exit_status(result)
