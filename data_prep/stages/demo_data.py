"""`python -m data_prep demo-data --output-dir DIR`: synthesise the demo dataset from composed MIDI.

Every clip is composed from a per-clip seed (tempo, key, metre, chords, 1-4 instruments plus bass
and drums; see `data_prep.demo_dataset`) and rendered with the General-MIDI soundfont `pretty_midi`
ships, so it has exact ground truth and needs no download. Writes `DIR/audio/<clip_id>.wav`
(44.1 kHz mono 16-bit), `DIR/midi/<clip_id>.mid` and `DIR/clips.jsonl` (one ground-truth record
per clip with its `split`; eval clips are chosen by seed). Clips already on disk are not rendered
again; `--workers N` renders on N processes. `--augment` distorts every clip with its seeded
training chain (`data_prep.demo_augment`); `--ood` instead builds the out-of-distribution set
(`data_prep.demo_ood`: numpy synthesiser, 22.05 kHz, `audio/<clip_id>.mp3`, split `ood`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from data_prep.demo_dataset import build_dataset


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m data_prep demo-data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", type=Path, required=True)
    parser.add_argument("--n-clips", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length in seconds")
    parser.add_argument("--eval-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--augment", action="store_true", help="seeded training distortions")
    parser.add_argument("--ood", action="store_true", help="the out-of-distribution set instead")
    parser.add_argument("--workers", type=int, default=1, help="rendering processes")
    args = parser.parse_args(argv)
    if args.n_clips < 1 or args.seconds <= 0 or not 0 <= args.eval_fraction < 1:
        parser.error("need --n-clips >= 1, --seconds > 0 and 0 <= --eval-fraction < 1")
    if args.ood:
        from data_prep.demo_ood import build_ood_dataset

        truths = build_ood_dataset(args.output_dir, args.n_clips, args.seconds, args.seed,
                                   workers=args.workers)
    else:
        truths = build_dataset(args.output_dir, args.n_clips, args.seconds, args.seed,
                               args.eval_fraction, augment=args.augment, workers=args.workers)
    n_eval = sum(t.split == "eval" for t in truths)
    print(json.dumps({"clips": len(truths), "train": len(truths) - n_eval, "eval": n_eval,
                      "output_dir": str(args.output_dir)}))
    return 0
