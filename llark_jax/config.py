"""Config loading: `configs/*.py` files with `get_config()` plus `--config.a.b=value` overrides.

A config file is plain Python returning an `ml_collections.ConfigDict`. Overrides address nested
fields with dots; the value is parsed as a Python literal when possible (`3`, `1e-6`, `True`,
`(1, 2)`, `None`) and kept as a string otherwise, then cast to the type of the existing field.
"""

from __future__ import annotations

import ast
import importlib.util
import json
from pathlib import Path
from typing import Any

import ml_collections

OVERRIDE_PREFIX = "--config."


class ConfigError(ValueError):
    """A config file or override that cannot be applied; the message names the offender."""


def load_config_file(path: str | Path) -> ml_collections.ConfigDict:
    """Imports the Python file at `path` and returns its `get_config()`.

    `file.py:ARG` calls `get_config("ARG")` (e.g. `configs/musilingo.py:instruct` for a stage).
    """
    text = str(path)
    arg = None
    if ":" in text and not text.endswith(".py"):
        text, arg = text.rsplit(":", 1)
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    spec = importlib.util.spec_from_file_location(f"llark_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config()")
    return module.get_config() if arg is None else module.get_config(arg)


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


def config_to_json(config: ml_collections.ConfigDict) -> str:
    """A JSON rendering of the config (stored with every checkpoint)."""
    return json.dumps(config.to_dict(), sort_keys=True, default=str)
