"""`python -m data_prep instruct`: clip metadata JSONL -> filtered question/answer JSONL.

    python -m data_prep instruct --metadata clips.jsonl --task mir --dataset fma --output qa.jsonl

Backends: `openai` (needs OPENAI_API_KEY; any compatible server via --base-url/OPENAI_BASE_URL),
`offline` (deterministic templates, no key), `provided` (MusicCaps / YT8M-MusicTextClips captions).
`auto` picks `provided` for those caption datasets, else `openai` when OPENAI_API_KEY is set, else
`offline`. Reruns resume from the append-only log (default: OUTPUT.responses.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from data_prep.instruct.backends import OfflineBackend, OpenAIBackend, ProvidedCaptionBackend
from data_prep.instruct.captions import PROVIDED_CAPTION_FIELDS
from data_prep.instruct.client import API_KEY_ENV, ChatClient, RetryPolicy
from data_prep.instruct.filters import MODES
from data_prep.instruct.prompts import REASONING_TRACK_CAP, TASKS
from data_prep.instruct.runner import read_metadata, run_job, select_sample


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep instruct", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metadata", type=Path, required=True, help="clip metadata JSONL")
    p.add_argument("--task", choices=TASKS, required=True)
    p.add_argument("--dataset", required=True, help="fma, mtg-jamendo, musicnet, demo, ...")
    p.add_argument("--output", type=Path, required=True, help="filtered QA JSONL (one clip a line)")
    p.add_argument("--backend", choices=("auto", "openai", "offline", "provided"), default="auto")
    p.add_argument("--log", type=Path, help="result log (default OUTPUT.responses.jsonl)")
    p.add_argument("--model", help="override the paper's per-task model choice")
    p.add_argument("--base-url", help="OpenAI-compatible server (default $OPENAI_BASE_URL)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-samples", type=int,
                   help=f"seeded subsample size (reasoning default {REASONING_TRACK_CAP})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--filter-mode", choices=MODES, default="word")
    p.add_argument("--temperature", type=float, help="sampling temperature (API default if unset)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    p.add_argument("--max-attempts", type=int, default=6)
    p.add_argument("--backoff-base", type=float, default=1.0, help="seconds")
    p.add_argument("--backoff-max", type=float, default=60.0, help="seconds")
    return p


def choose_backend(args: argparse.Namespace) -> str:
    if args.backend != "auto":
        return args.backend
    if args.task == "captioning" and args.dataset in PROVIDED_CAPTION_FIELDS:
        return "provided"
    return "openai" if os.environ.get(API_KEY_ENV) else "offline"


def make_backend(args: argparse.Namespace, kind: str):
    if kind == "offline":
        return OfflineBackend(args.task, args.seed)
    if kind == "provided":
        if args.dataset not in PROVIDED_CAPTION_FIELDS:
            raise SystemExit(f"--backend provided needs one of {sorted(PROVIDED_CAPTION_FIELDS)}")
        return ProvidedCaptionBackend(args.dataset, args.seed)
    policy = RetryPolicy(max_attempts=args.max_attempts, timeout_s=args.timeout,
                         backoff_base_s=args.backoff_base, backoff_max_s=args.backoff_max)
    client = ChatClient(base_url=args.base_url, policy=policy, concurrency=args.concurrency,
                        seed=args.seed)
    options = {} if args.temperature is None else {"temperature": args.temperature}
    return OpenAIBackend(args.task, args.dataset, client, args.model, args.seed, **options)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kind = choose_backend(args)
    if args.backend == "auto" and kind == "offline":
        print(f"{API_KEY_ENV} is not set: using the offline template backend", file=sys.stderr)
    backend = make_backend(args, kind)
    records, problems = read_metadata(args.metadata)
    cap = args.max_samples
    if cap is None and args.task == "reasoning":
        cap = REASONING_TRACK_CAP
    selected = select_sample(records, cap, args.seed)
    log_path = args.log or args.output.with_name(args.output.name + ".responses.jsonl")
    report = run_job(selected, backend, task=args.task, dataset=args.dataset, output=args.output,
                     log_path=log_path, concurrency=args.concurrency, filter_mode=args.filter_mode)
    report = {"records_read": len(records), "input_problems": dict(problems), **report}
    report_path = args.output.with_name(args.output.name + ".report.json")
    tmp = report_path.with_name(report_path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, report_path)
    print(json.dumps({k: report[k] for k in ("selected", "already_done", "succeeded", "failed",
                                              "outstanding_failures", "clips_written",
                                              "pairs_written", "estimated_cost_usd_all_runs")}))
    return 1 if report["outstanding_failures"] or problems else 0
