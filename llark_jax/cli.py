"""`python -m llark_jax COMMAND ...`: dispatch to the module that owns each command.

Each command module exposes `main(argv: list[str]) -> int` and parses its own flags, so a command's
dependencies are imported only when it runs.

Compiled XLA programs persist across runs in `$LLARK_JAX_COMPILATION_CACHE` (default
`~/.cache/llark_jax/xla`; `off` disables): a rerun of `train`, `demo`, `infer` or `serve` skips the
compiles that took over a second (bench/levers.py measures the train step's start).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

CACHE_ENV = "LLARK_JAX_COMPILATION_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "llark_jax" / "xla"

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("llark_jax.demo", "run the end-to-end demo on the embedded defaults"),
    "train": ("llark_jax.train.loop", "train LLark from a config (resumes from --workdir)"),
    "plan": ("llark_jax.train.plan", "AOT-compile a train step and report memory/FLOPs/hours"),
    "infer": ("llark_jax.infer.cli", "answer questions about audio files or TFRecord shards"),
    "eval": ("llark_jax.eval.cli", "score predictions (key, tempo, genre, instruments, captions)"),
    "export": ("llark_jax.checkpoints.export", "export a checkpoint to Hugging Face safetensors"),
    "serve": ("llark_jax.serve.cli", "OpenAI-compatible chat server with audio input"),
}


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str]) -> int:
    """Runs `commands[argv[0]]`'s `main(argv[1:])`; prints usage for no or unknown commands."""
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(f"usage: python -m {prog} COMMAND [ARGS]\n\ncommands:")
        for name, (_, help_text) in commands.items():
            print(f"  {name:<12} {help_text}")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(commands[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


def configure_compilation_cache(environ: MutableMapping[str, str]) -> str | None:
    """Sets JAX's persistent cache directory (read when jax is imported) from `CACHE_ENV`
    unless `JAX_COMPILATION_CACHE_DIR` is already set; returns the directory or None (off)."""
    if "JAX_COMPILATION_CACHE_DIR" in environ:
        return environ["JAX_COMPILATION_CACHE_DIR"] or None
    path = environ.get(CACHE_ENV, str(DEFAULT_CACHE))
    if path.strip().lower() in ("", "off", "0", "false"):
        return None
    environ["JAX_COMPILATION_CACHE_DIR"] = path
    return path


def main(argv: list[str] | None = None) -> int:
    configure_compilation_cache(os.environ)
    return dispatch("llark_jax", COMMANDS, sys.argv[1:] if argv is None else argv)
