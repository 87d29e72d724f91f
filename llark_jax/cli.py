"""`python -m llark_jax COMMAND ...`: dispatch to the module that owns each command.

Each command module exposes `main(argv: list[str]) -> int` and parses its own flags, so a command's
dependencies are imported only when it runs. Installed, the same commands are the console script
`llark-jax COMMAND` (and `llark-prep STAGE` for `python -m data_prep`).

A user mistake (unknown command, bad flag, missing file, unknown config field, ...) ends with one
line `error: ...` on stderr and exit status 2 (`llark_jax.errors`); `--debug` anywhere on the
command line (or `LLARK_DEBUG=1`) shows the traceback instead.

Compiled XLA programs persist across runs in `$LLARK_JAX_COMPILATION_CACHE` (default
`~/.cache/llark_jax/xla`; `off` disables): a rerun of `train`, `demo`, `infer` or `serve` skips the
compiles that took over a second (bench/levers.py measures the train step's start).
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
from collections.abc import MutableMapping
from pathlib import Path

from llark_jax import errors

CACHE_ENV = "LLARK_JAX_COMPILATION_CACHE"
DEFAULT_CACHE = Path.home() / ".cache" / "llark_jax" / "xla"

CONSOLE_SCRIPTS = ("llark-jax", "llark-prep")  # pyproject.toml [project.scripts]

COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("llark_jax.demo", "run the end-to-end demo on the embedded defaults"),
    "train": ("llark_jax.train.loop", "train LLark from a config (resumes from --workdir)"),
    "plan": ("llark_jax.train.plan", "AOT-compile a train step and report memory/FLOPs/hours"),
    "infer": ("llark_jax.infer.cli", "answer questions about audio files or TFRecord shards"),
    "eval": ("llark_jax.eval.cli", "score predictions (key, tempo, genre, instruments, captions)"),
    "benchmark": ("llark_jax.benchmarks.cli", "score a model on a benchmark (Table 2, MCQ)"),
    "export": ("llark_jax.checkpoints.export", "export a checkpoint to Hugging Face safetensors"),
    "serve": ("llark_jax.serve.cli", "OpenAI-compatible chat server with audio input"),
}


def usage(prog: str, commands: dict[str, tuple[str, str]]) -> str:
    lines = [f"usage: {prog} [--debug] COMMAND [ARGS]",
             f"({prog} COMMAND --help lists a command's flags)", "", "commands:"]
    lines += [f"  {name:<12} {help_text}" for name, (_, help_text) in commands.items()]
    return "\n".join(lines)


def dispatch(prog: str, commands: dict[str, tuple[str, str]], argv: list[str]) -> int:
    """Runs `commands[argv[0]]`'s `main(argv[1:])`. No command or an unknown one: usage and an
    `error:` line (with the nearest command name), status 2. A user mistake raised by the command
    (`llark_jax.errors.is_user_error`) becomes one `error:` line and status 2, unless `--debug`."""
    argv, debug = errors.strip_debug_flag(argv)
    if debug:  # also seen by the commands' own handlers and by subprocesses (the demo's stages)
        os.environ[errors.DEBUG_ENV] = "1"
    if argv and argv[0] in ("-h", "--help"):
        print(usage(prog, commands))
        return 0
    if not argv or argv[0] not in commands:
        print(usage(prog, commands), file=sys.stderr)
        if not argv:
            return errors.fail("no command given")
        close = difflib.get_close_matches(argv[0], list(commands), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return errors.fail(f"unknown command {argv[0]!r}{hint}")
    try:
        module = importlib.import_module(commands[argv[0]][0])
        return int(module.main(argv[1:]) or 0)
    except Exception as err:
        if not errors.is_user_error(err):
            raise
        return errors.report(err)


def program_name(default: str) -> str:
    """`llark-jax` when run as the console script, else `python -m <package>`."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name in CONSOLE_SCRIPTS else default


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
    return dispatch(program_name("python -m llark_jax"), COMMANDS,
                    sys.argv[1:] if argv is None else argv)
