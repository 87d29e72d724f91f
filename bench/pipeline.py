"""Input-pipeline throughput vs what a training step consumes.

Writes a synthetic dataset with the real writer (250 frames x D features per clip, bf16, a
realistic mix of short MIR and long reasoning answers), then times the pipeline (record read ->
QA expansion -> tokenization with the test BPE tokenizer -> packing -> batch assembly) on one
process. The consumption side is an estimate from 6 * params * tokens per step at a given MFU:

    python bench/pipeline.py [--clips 48] [--dim 4800] [--batches 20]
        [--params 7e9 --chips 32 --peak-tflops 275 --mfu 0.4]   # per-host rate needed

Prints examples/s and tokens/s of the pipeline, the rate one host's training step consumes, and
their ratio (>1: the pipeline keeps up on one core).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from records_helpers import make_pipeline, make_shards  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--dim", type=int, default=4800, help="embedding width (Jukebox: 4800)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--max-segments", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--params", type=float, default=7e9)
    parser.add_argument("--chips", type=int, default=32, help="accelerators in the job")
    parser.add_argument("--hosts", type=int, default=8, help="hosts feeding those chips")
    parser.add_argument("--peak-tflops", type=float, default=275.0, help="per chip (v4: 275)")
    parser.add_argument("--mfu", type=float, default=0.4)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        records, _ = make_shards(Path(tmp), args.clips, shard_size=16, frames=(250, 250),
                                 dim=args.dim, qa_per_clip=(3, 8), long_fraction=0.35)
        write_s = time.perf_counter() - t0
        pipeline = make_pipeline(records, batch_size=args.batch_size, seq_len=args.seq_len,
                                 max_segments=args.max_segments, max_frames=250, dim=args.dim,
                                 audio_dtype="bfloat16")
        next(pipeline)  # fills the pool and opens the shards
        examples = tokens = 0
        t0 = time.perf_counter()
        for _ in range(args.batches):
            batch = next(pipeline)
            examples += sum(len(row) for row in pipeline.last_examples)
            tokens += int((batch["segment_ids"] > 0).sum())
        seconds = time.perf_counter() - t0
        pipeline.close()

    step_flops = 6 * args.params * tokens / args.batches * args.hosts  # global batch = hosts x B
    step_s = step_flops / (args.chips * args.peak_tflops * 1e12 * args.mfu)
    need_examples = examples / args.batches / step_s  # per host
    result = {
        "write_clips_per_s": round(args.clips / write_s, 1),
        "pipeline_examples_per_s": round(examples / seconds, 1),
        "pipeline_tokens_per_s": round(tokens / seconds),
        "pipeline_batches_per_s": round(args.batches / seconds, 2),
        "non_pad_fraction": round(pipeline.non_pad_fraction, 4),
        "examples_per_row": round(examples / args.batches / args.batch_size, 2),
        "train_step_s_estimate": round(step_s, 3),
        "train_examples_per_s_per_host": round(need_examples, 1),
        "headroom": round(examples / seconds / need_examples, 2),
    }
    print(json.dumps({"config": vars(args), **result}, indent=1))


if __name__ == "__main__":
    main()
