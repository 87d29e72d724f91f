"""Encoder registry: configs and the `embed` stage name an encoder; `get_encoder` builds it.

Entries are import paths, so naming `mel` never imports torch (and `jukebox`/`mert` import it only
when built). To add an encoder, subclass `base.AudioEncoder` in a new module and add
one line to `ENCODERS` (or call `register_encoder` from your own code).
"""

from __future__ import annotations

import importlib
import inspect

from llark_jax.audio.encoders.base import AudioEncoder, EncoderError

ENCODERS: dict[str, str] = {
    "mel": "llark_jax.audio.encoders.mel:MelEncoder",
    "mir": "llark_jax.audio.encoders.mir:MirEncoder",
    "jukebox": "llark_jax.audio.encoders.jukebox:JukeboxEncoder",
    "jukebox-jukemirlib": "llark_jax.audio.encoders.jukemirlib_backend:JukemirlibEncoder",
    "mert": "llark_jax.audio.encoders.mert:MertEncoder",
    "clap": "llark_jax.audio.encoders.clap:ClapEncoder",
}


def register_encoder(name: str, target: str) -> None:
    """Registers `target` ("package.module:ClassName") under `name`."""
    if ":" not in target:
        raise ValueError(f"encoder target must look like 'package.module:Class', got {target!r}")
    ENCODERS[name] = target


def available_encoders() -> list[str]:
    return sorted(ENCODERS)


def get_encoder(name: str, **kwargs) -> AudioEncoder:
    """Builds the encoder registered as `name` with constructor `kwargs`."""
    if name not in ENCODERS:
        known = ", ".join(available_encoders())
        raise EncoderError(f"unknown encoder {name!r}; available: {known}")
    module_name, class_name = ENCODERS[name].split(":")
    encoder_cls = getattr(importlib.import_module(module_name), class_name)
    params = inspect.signature(encoder_cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise EncoderError(f"encoder {name!r} has no argument(s) {unknown}; it takes: "
                               f"{', '.join(params) or 'none'}")
    return encoder_cls(**kwargs)


__all__ = ["AudioEncoder", "EncoderError", "ENCODERS", "available_encoders", "get_encoder",
           "register_encoder"]
