"""Experiment tracking beside `W/metrics.jsonl`: TensorBoard (`metrics.tensorboard`, default on)
and Weights & Biases (`metrics.wandb`, default off).

W&B is imported only when `metrics.wandb` is on (`pip install wandb`; a missing package is one
`error:` line). The run is `metrics.wandb_project` / `metrics.wandb_entity` ("" = the account's
default entity) named `metrics.wandb_run_name` ("" = the workdir's name); its id is kept in
`W/wandb_run_id`, so a resumed run appends to the same W&B run (steps W&B already has are
dropped by W&B with a warning). Credentials come only from W&B's own login (`wandb login`,
`WANDB_API_KEY`); `WANDB_MODE=offline` writes the run under `W/wandb/` for a later
`wandb sync`. The run's config is logged with every field whose name looks like a credential
(`*key`, `*token`, `*secret`, `*password`) replaced by "<redacted>"; the environment is never
logged.
"""

from __future__ import annotations

import json
import re
import secrets
from pathlib import Path
from typing import Any

import ml_collections

from llark_jax.config import config_to_json
from llark_jax.errors import UserError
from llark_jax.train.metrics import ScalarSink, TensorBoardSink

RUN_ID_FILE = "wandb_run_id"
_SECRET_NAME = re.compile(r"(^|_)(api_?key|key|token|secret|password|passwd)$", re.IGNORECASE)
REDACTED = "<redacted>"


class TrackingError(UserError):
    """Tracking asked for but not available (e.g. `metrics.wandb` without the package)."""


def redact(tree: Any) -> Any:
    """A copy of a JSON-like tree with credential-looking fields replaced by "<redacted>"."""
    if isinstance(tree, dict):
        return {k: REDACTED if _SECRET_NAME.search(str(k)) else redact(v)
                for k, v in tree.items()}
    if isinstance(tree, list):
        return [redact(v) for v in tree]
    return tree


def check_tracking(config: ml_collections.ConfigDict) -> None:
    """`TrackingError` now, before the run writes anything, when a tracker `config.metrics` asks
    for cannot start (`metrics.wandb` without the package)."""
    if config.metrics.wandb:
        _wandb()


def _wandb() -> Any:
    """The wandb module, or a `TrackingError` naming the install line."""
    try:
        import wandb
    except ImportError as err:
        raise TrackingError("metrics.wandb=True needs the wandb package: pip install wandb"
                            ) from err
    return wandb


class WandbSink:
    """Scalars to a Weights & Biases run (see the module docstring)."""

    def __init__(self, workdir: Path, config: ml_collections.ConfigDict):
        wandb = _wandb()
        m = config.metrics
        id_file = workdir / RUN_ID_FILE
        if not id_file.is_file():
            id_file.write_text(secrets.token_hex(8) + "\n")
        self.run = wandb.init(
            project=m.wandb_project or None, entity=m.wandb_entity or None,
            name=m.wandb_run_name or workdir.resolve().name, id=id_file.read_text().strip(),
            resume="allow", dir=str(workdir), config=redact(json.loads(config_to_json(config))))

    def add(self, step: int, scalars: dict[str, float]) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def make_sinks(workdir: Path, config: ml_collections.ConfigDict,
               is_primary: bool) -> tuple[ScalarSink, ...]:
    """The sinks `config.metrics` asks for (none on a non-primary host)."""
    if not is_primary:
        return ()
    sinks: list[ScalarSink] = []
    if config.metrics.wandb:
        sinks.append(WandbSink(workdir, config))
    if config.metrics.tensorboard:
        sinks.append(TensorBoardSink(workdir / "tensorboard"))
    return tuple(sinks)
