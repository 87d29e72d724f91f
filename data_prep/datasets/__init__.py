"""Dataset adapters: each reads a dataset's real files into uniform `TrackRecord`s.

`ADAPTERS` maps a dataset name (as ``python -m data_prep jsonify --dataset NAME`` takes it) to
``"module:function"``; the function has the signature ``(ctx: JsonifyContext) ->
Iterator[TrackRecord | RowSkip]`` (see `data_prep.datasets.base`). `load_adapter` imports lazily.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator

from data_prep.datasets.base import JsonifyContext, RowSkip, TrackRecord

ADAPTERS: dict[str, str] = {
    "fma": "data_prep.datasets.fma:read_records",
    "mtg-jamendo": "data_prep.datasets.mtg_jamendo:read_records",
    "jamendo": "data_prep.datasets.mtg_jamendo:read_records",  # the reference's registry key
    "magnatagatune": "data_prep.datasets.magnatagatune:read_records",
    "musicnet": "data_prep.datasets.musicnet:read_records",
    "musiccaps": "data_prep.datasets.captions:read_musiccaps",
    "yt8m-musictextclips": "data_prep.datasets.captions:read_yt8m",
    "giantsteps-key": "data_prep.datasets.evalsets:read_giantsteps_key",
    "giantsteps-tempo": "data_prep.datasets.evalsets:read_giantsteps_tempo",
    "gtzan": "data_prep.datasets.evalsets:read_gtzan",
    "medleydb": "data_prep.datasets.evalsets:read_medleydb",
    "lp-musiccaps-msd": "data_prep.datasets.lp_musiccaps:read_records",
    "musicqa": "data_prep.datasets.musicqa:read_records",
    "music-instruct": "data_prep.datasets.music_instruct:read_records",
}

Adapter = Callable[[JsonifyContext], Iterator[TrackRecord | RowSkip]]


def load_adapter(name: str) -> Adapter:
    """The reader function registered for ``name`` (KeyError lists the known names)."""
    if name not in ADAPTERS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(ADAPTERS)}")
    module, function = ADAPTERS[name].split(":")
    return getattr(importlib.import_module(module), function)
