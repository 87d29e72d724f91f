"""`python -m data_prep embed`: audio files -> `OUT/<clip_id>.npy` float32 [T, D] + JSON sidecar.

    python -m data_prep embed --encoder mel --audio-dir clips/ --output-dir emb/ [--batch-size 8]
    python -m data_prep embed --encoder jukebox --jukebox-dir ~/jukebox5b --audio-dir clips/
        --output-dir emb/ --batch-size 4 [--pooling reference|paper] [--layer 36]

Jukebox pooling (spec §7.1): `reference` (default) is LLark's code, AvgPool(34, stride 34) over
the first 2^20 samples' tokens: 240 frames at 10.13 Hz for a full clip, what `configs/llark_7b.py`
trains on (`data.audio_frames = 240`). `paper` is the paper's wording, exact 100 ms frames of the
first `--max-seconds` (250 frames for 25 s); train on such records with
`--config.data.audio_frames=250` (`python -m llark_jax train` stops with an error otherwise) and
`--config.data.encoder_args="{'pooling_mode': 'paper'}"` so `infer` pools audio the same way.

clip_id = the audio file's stem. Each clip's array is written atomically (tmp + os.replace) and
then its sidecar `{encoder, version, shape, frame_rate_hz, sample_rate, dim}`; a clip whose
sidecar already names the same encoder and version is skipped, so reruns resume. Unreadable or
failing clips are listed in `OUT/embed.report.json`; the batch goes on without them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_prep.stages.runner import Failure, StageResult, exit_status, write_report
from llark_jax.argtypes import non_negative_int, positive_float, positive_int
from llark_jax.audio.encoders import available_encoders, get_encoder
from llark_jax.audio.encoders.base import AudioEncoder, EncoderError
from llark_jax.audio.io import SAMPLE_RATE, AudioError, load_audio, require_audio_files, resample
from llark_jax.errors import UserError
from llark_jax.io import atomic_output, write_json_atomic

REPORT_STEM = "embed"  # the report is OUT/embed.report.json
EXPECTED_ERRORS = (AudioError, EncoderError)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m data_prep embed", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", choices=available_encoders(), default="mel")
    parser.add_argument("--audio-dir", required=True, type=Path)
    parser.add_argument("--output-dir", required=True, type=Path)
    parser.add_argument("--batch-size", type=positive_int, default=4, help="clips per encoder call")
    parser.add_argument("--limit", type=non_negative_int, default=0,
                        help="only the first N clips (0: all)")
    parser.add_argument("--encoder-arg", action="append", default=[], metavar="KEY=VALUE",
                        help="extra constructor argument for any encoder (repeatable; VALUE is "
                             "JSON if it parses, else a string), e.g. mert_dir=/models/mert")
    jukebox = parser.add_argument_group("jukebox")
    jukebox.add_argument("--jukebox-dir", default=None, help="default: $JUKEBOX_DIR")
    jukebox.add_argument("--layer", type=int, default=36)
    jukebox.add_argument("--pooling", choices=("reference", "paper"), default="reference",
                         help="reference: the code's 34-token windows, 240 frames (default; "
                              "configs/llark_7b.py); paper: exact 10 Hz, 250 frames for 25 s")
    jukebox.add_argument("--max-seconds", type=positive_float, default=25.0,
                         help="audio used per clip with --pooling paper")
    jukebox.add_argument("--device", default="auto")
    jukebox.add_argument("--dtype", default="auto",
                         choices=("auto", "float32", "bfloat16", "float16"))
    jukebox.add_argument("--windows-per-forward", type=positive_int, default=4)
    jukebox.add_argument("--jukebox-trust-pickle", action="store_true",
                         help="read checkpoints with weights_only=False (trusted files only)")
    return parser.parse_args(argv)


def encoder_kwargs(args: argparse.Namespace) -> dict:
    """Constructor arguments for the chosen encoder: its flag group, then `--encoder-arg`s."""
    kwargs: dict = {}
    common = {"jukebox_dir": args.jukebox_dir, "layer": args.layer, "pooling_mode": args.pooling,
              "max_seconds": args.max_seconds}
    if args.encoder == "jukebox":
        kwargs = {**common, "device": args.device, "dtype": args.dtype,
                  "windows_per_forward": args.windows_per_forward,
                  "trust_pickle": args.jukebox_trust_pickle}
    elif args.encoder == "jukebox-jukemirlib":
        kwargs = common
    for item in args.encoder_arg:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--encoder-arg expects KEY=VALUE, got {item!r}")
        try:
            kwargs[key] = json.loads(value)
        except ValueError:
            kwargs[key] = value
    return kwargs


def load_clip(path: Path, sample_rate: int) -> np.ndarray:
    """Mono float32 [n_samples] at the encoder's rate (typed `AudioError` for bad files)."""
    return resample(load_audio(path), SAMPLE_RATE, sample_rate)


def sidecar(encoder: AudioEncoder, shape: tuple[int, ...]) -> dict:
    return {**encoder.describe(), "shape": list(shape)}


def is_done(out_dir: Path, clip_id: str, encoder: AudioEncoder) -> bool:
    meta_path, array_path = out_dir / f"{clip_id}.json", out_dir / f"{clip_id}.npy"
    if not (meta_path.exists() and array_path.exists()):
        return False
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("encoder") == encoder.name and meta.get("version") == encoder.version


def write_embedding(out_dir: Path, clip_id: str, y_td: np.ndarray, encoder: AudioEncoder) -> None:
    """Atomically writes `<clip_id>.npy` (float32 [T, D]) and then its `<clip_id>.json`."""
    with atomic_output(out_dir / f"{clip_id}.npy") as array_tmp, open(array_tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(y_td, dtype=np.float32))
    write_json_atomic(out_dir / f"{clip_id}.json", sidecar(encoder, y_td.shape))


def failure(clip_id: str, err: BaseException) -> Failure:
    return Failure(clip_id, type(err).__name__, str(err), isinstance(err, EXPECTED_ERRORS))


def encode_clips(encoder: AudioEncoder, items: list[tuple[str, np.ndarray]],
                 failures: list[Failure]) -> list[tuple[str, np.ndarray]]:
    """One encoder call for the batch; if it raises, clip by clip so one bad clip costs only
    itself. Empty outputs (clips shorter than one frame) are failures."""
    try:
        outputs = encoder.encode_batch([x_n for _, x_n in items])
    except Exception:  # noqa: BLE001 - find the failing clip(s) below
        outputs = []
        for clip_id, x_n in items:
            try:
                outputs.append(encoder.encode_batch([x_n])[0])
            except Exception as err:  # noqa: BLE001 - reported, the batch continues
                failures.append(failure(clip_id, err))
                outputs.append(None)
    done = []
    for (clip_id, _), y_td in zip(items, outputs, strict=True):
        if y_td is not None and y_td.shape[0] == 0:
            failures.append(failure(clip_id, EncoderError("clip shorter than one frame")))
        elif y_td is not None:
            done.append((clip_id, y_td))
    return done


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    paths = require_audio_files(args.audio_dir)[: args.limit or None]  # before loading a model
    encoder = get_encoder(args.encoder, **encoder_kwargs(args))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    failures: list[Failure] = []
    seen: dict[str, Path] = {}
    todo: list[tuple[str, Path]] = []
    n_cached = 0
    for path in paths:
        if path.stem in seen:
            failures.append(Failure(path.stem, "DuplicateClipId",
                                    f"{path} and {seen[path.stem]} have the same stem", True))
            continue
        seen[path.stem] = path
        if is_done(args.output_dir, path.stem, encoder):
            n_cached += 1
        else:
            todo.append((path.stem, path))

    start, n_encoded = time.perf_counter(), 0
    with tqdm(total=len(todo), desc=f"embed[{encoder.name}]", unit="clip") as progress:
        for i in range(0, len(todo), args.batch_size):
            batch, items = todo[i : i + args.batch_size], []
            for clip_id, path in batch:
                try:
                    items.append((clip_id, load_clip(path, encoder.sample_rate)))
                except Exception as err:  # noqa: BLE001 - reported, the batch continues
                    failures.append(failure(clip_id, err))
            for clip_id, y_td in encode_clips(encoder, items, failures) if items else []:
                write_embedding(args.output_dir, clip_id, y_td, encoder)
                n_encoded += 1
            progress.update(len(batch))
    seconds = time.perf_counter() - start
    clips_per_s = n_encoded / max(seconds, 1e-9)
    counts = {"items": len(paths), "processed": n_encoded, "cached": n_cached,
              "results": n_encoded + n_cached, "skipped": sum(f.expected for f in failures),
              "errors": sum(not f.expected for f in failures)}
    result = StageResult("embed", {}, failures, counts, seconds,
                         extra={**encoder.describe(), "clips_per_s": round(clips_per_s, 4)})
    report = write_report(args.output_dir / REPORT_STEM, result)
    print(f"embed[{encoder.name}]: {n_encoded} encoded, {n_cached} already done, "
          f"{len(failures)} failed in {seconds:.1f} s ({clips_per_s:.2f} clips/s); report {report}")
    return exit_status(result)
