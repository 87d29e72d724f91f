"""`python -m llark_jax COMMAND ...`: dispatch to the module that owns each command.

Each command module exposes `main(argv: list[str]) -> int` and parses its own flags, so a command's
dependencies are imported only when it runs.
"""

from __future__ import annotations

import importlib
import sys

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


def main(argv: list[str] | None = None) -> int:
    return dispatch("llark_jax", COMMANDS, sys.argv[1:] if argv is None else argv)
