"""Config loading: `configs/*.py` files with `get_config()` plus `--config.a.b=value` overrides.

`--config` takes a path (`configs/tiny.py`, `my_config.py`, `configs/musilingo.py:instruct`) or
the name of a config the package ships (`tiny`, `demo`, `llark_7b`, `musilingo:instruct`,
`demo_musilingo`, `base`): the top-level `configs/` folder of a checkout, which the wheel also
carries as `llark_jax/configs/` (setup.py), so names work from any directory once installed.

A config file is plain Python returning an `ml_collections.ConfigDict`. Overrides address nested
fields with dots; the value is parsed as a Python literal when possible (`3`, `1e-6`, `True`,
`(1, 2)`, `None`) and kept as a string otherwise, then cast to the type of the existing field.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import re
from importlib.machinery import SourceFileLoader
from pathlib import Path
from typing import Any

import ml_collections

from llark_jax.errors import UserError

OVERRIDE_PREFIX = "--config."
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ConfigError(UserError, ValueError):
    """A config file or override that cannot be applied; the message names the offender."""


def config_dirs() -> list[Path]:
    """Where shipped configs live: `llark_jax/configs/` in an installed wheel, the top-level
    `configs/` in a checkout (editable install or the repository root on `sys.path`)."""
    package = Path(__file__).resolve().parent
    return [d for d in (package / "configs", package.parent / "configs") if d.is_dir()]


def shipped_configs() -> dict[str, Path]:
    """Name -> file of every shipped config (the first directory of `config_dirs` wins)."""
    found: dict[str, Path] = {}
    for directory in config_dirs():
        for path in sorted(directory.glob("*.py")):
            if _NAME.fullmatch(path.stem) and not path.stem.startswith("_"):
                found.setdefault(path.stem, path)
    return found


def _split_arg(text: str) -> tuple[str, str | None]:
    """`file.py:ARG` / `name:ARG` -> (file or name, ARG); a Windows drive letter is no ARG."""
    if ":" in text and not text.endswith(".py"):
        head, arg = text.rsplit(":", 1)
        if head and arg and "/" not in arg and "\\" not in arg:
            return head, arg
    return text, None


def resolve_config(spec: str | Path) -> tuple[Path, str | None]:
    """(config file, `get_config` argument or None) for a path or a shipped config's name.

    An existing file wins over a name; `musilingo:instruct` and `configs/musilingo.py:instruct`
    pass `"instruct"` to `get_config`. Raises `ConfigError` naming the shipped configs (and the
    nearest name) when neither matches."""
    text, arg = _split_arg(str(spec))
    path = Path(text).expanduser()
    if path.is_file():
        return path, arg
    shipped = shipped_configs()
    name = text[:-3] if text.endswith(".py") and "/" not in text else text
    if name in shipped:
        return shipped[name], arg
    names = ", ".join(sorted(shipped)) or "none found"
    if path.is_dir():
        raise ConfigError(f"--config {text}: is a directory, not a config file "
                          f"(shipped configs: {names})")
    close = difflib.get_close_matches(Path(name).stem, list(shipped), n=1)
    hint = f"; did you mean --config {close[0]}?" if close else ""
    what = "config file not found" if ("/" in text or text.endswith(".py")) else "unknown config"
    raise ConfigError(f"{what}: {text} (a path, or one of the shipped configs: {names}){hint}")


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Imports a config file (or a shipped config by name, `resolve_config`) and returns its
    `get_config()`.

    `file.py:ARG` calls `get_config("ARG")` (e.g. `configs/musilingo.py:instruct` for a stage).
    """
    path, arg = resolve_config(path)
    if path.suffix.lower() in (".json", ".jsonl", ".yaml", ".yml", ".toml"):
        raise ConfigError(f"config file {path}: --config takes a Python config (configs/*.py, or "
                          f"a shipped name such as 'demo'), not a {path.suffix} file (a model "
                          f"directory's llark.json is read by infer/serve/export, not by train)")
    name = f"llark_config_{path.stem}"  # any file name: a Python source, whatever its suffix
    spec = importlib.util.spec_from_loader(name, SourceFileLoader(name, str(path)))
    module = importlib.util.module_from_spec(spec)
    module.__file__ = str(path)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        raise ConfigError(f"config file {path}: {err.msg} (line {err.lineno})") from err
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    if arg is None:
        return module.get_config()
    try:
        return module.get_config(arg)
    except TypeError as err:
        if "positional argument" not in str(err):
            raise
        raise ConfigError(f"config {path.stem} takes no argument (got :{arg})") from err
    except ValueError as err:  # e.g. an unknown MusiLingo stage
        raise ConfigError(f"config {path.stem}:{arg}: {err}") from err


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _cast_like(value: Any, current: Any, key: str) -> Any:
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"--config.{key}: expected a bool, got {value!r}")
    if isinstance(current, int | float) and not isinstance(value, int | float):
        raise ConfigError(f"--config.{key}: expected a number, got {value!r}")
    if isinstance(current, float) and isinstance(value, int):
        return float(value)
    if isinstance(current, str) and not isinstance(value, str):
        return str(value)
    if isinstance(current, tuple | list) and isinstance(value, tuple | list):
        return type(current)(value)
    return value


def apply_override(config: ml_collections.ConfigDict, key: str, text: str) -> None:
    """Sets `config.<key>` (dotted path) from the command-line text `text`."""
    *parents, leaf = key.split(".")
    node = config
    for name in parents:
        if name not in node or not isinstance(node[name], ml_collections.ConfigDict):
            raise ConfigError(f"--config.{key}: no config section {name!r}")
        node = node[name]
    if leaf not in node:
        raise ConfigError(f"--config.{key}: unknown field {leaf!r} (known: {sorted(node.keys())})")
    value = _cast_like(_parse_value(text), node[leaf], key)
    with node.ignore_type():
        node[leaf] = value


def split_overrides(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """Separates `--config.a.b=v` / `--config.a.b v` overrides from the other arguments."""
    rest: list[str] = []
    overrides: list[tuple[str, str]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(OVERRIDE_PREFIX):
            body = arg[len(OVERRIDE_PREFIX) :]
            if "=" in body:
                key, text = body.split("=", 1)
            elif i + 1 < len(argv):
                key, text = body, argv[i + 1]
                i += 1
            else:
                raise ConfigError(f"{arg}: missing value")
            overrides.append((key, text))
        else:
            rest.append(arg)
        i += 1
    return rest, overrides


def load_config(
    path: str | Path, overrides: list[tuple[str, str]] | None = None
) -> ml_collections.ConfigDict:
    """Loads a config file and applies `(dotted_key, text)` overrides in order."""
    config = load_config_file(path)
    for key, text in overrides or []:
        apply_override(config, key, text)
    return config


def _choice(config: ml_collections.ConfigDict, key: str, allowed: Any) -> None:
    node = config
    for name in key.split("."):
        if name not in node:
            return  # a config without the field (older checkpoints): nothing to check
        node = node[name]
    if node not in allowed:
        raise ConfigError(f"{key}={node!r}: choose one of {sorted(allowed)}")


def _check_lora(model: ml_collections.ConfigDict) -> None:
    from llark_jax.model.lora import TARGETS, parse_targets
    from llark_jax.model.trainable import PRESETS

    lora = model.get("lora")
    rank = int(lora.rank) if lora is not None else 0
    quantize = model.get("quantize_base", "")
    if quantize not in ("", "int8", "int4"):
        raise ConfigError(f"model.quantize_base={quantize!r}: choose '', 'int8' or 'int4'")
    if quantize and PRESETS[model.trainable]["layers"] is not False:
        raise ConfigError(f"model.quantize_base={quantize!r} freezes the decoder weights; "
                          f"model.trainable={model.trainable!r} trains them (use 'lora')")
    if model.get("trainable") == "lora" and rank <= 0:
        raise ConfigError("model.trainable='lora' needs model.lora.rank > 0")
    if rank < 0:
        raise ConfigError(f"model.lora.rank={rank}: must be >= 0")
    if rank:
        targets = parse_targets(lora.targets)
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown or not targets:
            raise ConfigError(f"model.lora.targets={lora.targets!r}: choose from {list(TARGETS)}")


def validate_config(config: ml_collections.ConfigDict, *, check_paths: bool = False) -> None:
    """Rejects, with a `ConfigError` naming the field, values the run would only trip over later
    (after imports and compiles): unknown model/data sources, trainable presets, templates,
    logical-axis rules, loss normalisations, attention implementations, negative task weights;
    with `check_paths`, a missing `model.path` for hf/gguf sources and tfrecord data without
    `data.path`."""
    from llark_jax.data.conversation import TOKENIZER_TEMPLATE_NAME, get_template
    from llark_jax.model.attention import ATTENTION_KINDS, SPLASH_BLOCK
    from llark_jax.model.trainable import PRESETS
    from llark_jax.train.mesh import rules_of
    from llark_jax.train.step import NORMALIZATIONS

    _choice(config, "model.source", ("random", "hf", "gguf"))
    _choice(config, "data.source", ("synthetic", "tfrecord"))
    _choice(config, "model.trainable", PRESETS)
    try:
        rules_of(config)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"logical_axis_rules: {err}") from None
    _choice(config, "train.loss_normalization", NORMALIZATIONS)
    _choice(config, "model.attention", ATTENTION_KINDS)
    if config.model.get("attention") == "splash" and config.data.seq_len % SPLASH_BLOCK:
        raise ConfigError(f"model.attention=splash needs data.seq_len a multiple of "
                          f"{SPLASH_BLOCK}, got {config.data.seq_len}")
    _check_lora(config.model)
    keep = config.model.get("keep_layers", 0)
    if keep < 0 or (keep and config.model.source == "random"):
        raise ConfigError(f"model.keep_layers={keep}: must be >= 0, and > 0 only with an hf or "
                          "gguf checkpoint (a random model takes model.llama.num_layers)")
    for key, minimum in (("train.log_every", 1), ("train.prefetch", 0),
                         ("train.eval_every", 0), ("train.eval_batches", 1)):
        value = config.train.get(key.split(".")[1], minimum)
        if value < minimum:
            raise ConfigError(f"{key}={value}: must be >= {minimum}")
    negative = {task: w for task, w in config.data.get("task_weights", {}).items()
                if not w >= 0}
    if negative:
        raise ConfigError(f"data.task_weights: weights are shares of the epoch, >= 0; got "
                          f"{negative}")
    template = config.data.get("template")
    if template and template != TOKENIZER_TEMPLATE_NAME:
        try:
            get_template(template)
        except KeyError as err:
            raise ConfigError(f"data.template={template!r}: {err.args[0]}") from None
    if not check_paths:
        return
    source, path = config.model.source, config.model.get("path", "")
    if source == "hf" and not Path(path).is_dir():
        raise ConfigError(f"model.path={path!r}: no such directory (model.source=hf reads a "
                          "local Hugging Face directory: config.json, *.safetensors, tokenizer)")
    if source == "gguf" and path and not Path(path).is_file():
        raise ConfigError(f"model.path={path!r}: no such GGUF file")
    if config.data.source == "tfrecord" and not config.data.get("path"):
        raise ConfigError("data.source=tfrecord needs data.path (comma-separated shard globs)")


def config_to_json(config: ml_collections.ConfigDict) -> str:
    """A JSON rendering of the config (stored with every checkpoint)."""
    return json.dumps(config.to_dict(), sort_keys=True, default=str)
