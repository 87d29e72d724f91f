"""Build the Jukebox VQ-VAE and the first `layer` blocks of the top prior from local checkpoints.

Models are constructed on the meta device (no memory, no random init) by `jukebox_infer`'s own
factories, then the checkpoint tensors are assigned in (`load_state_dict(assign=True)`), so the
5B prior's unused layers 36..71 are never materialised. Checkpoints are read with
`torch.load(weights_only=True)`, memory-mapped when the file is in the zip format; files in
torch's legacy format (torch < 1.6, which the 2020 release presumably used; not verified here)
cannot be mmapped and are read normally. The official code pickles its hyper-parameters as
`jukebox.hparams.Hyperparams` (a dict subclass); that one name is allow-listed as a plain
`OrderedDict`.

Key check (the reference used strict=False and silently ignored anything): every key the built
model expects must be present, and the only keys allowed beyond those are prior blocks with index
>= layer (`prior.transformer._attn_mods.<i>.*`).
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from llark_jax.audio.encoders.base import EncoderError

VQVAE_FILE = "vqvae.pth.tar"
PRIOR_FILE = "prior_level_2.pth.tar"
_BLOCK_KEY = re.compile(r"^prior\.transformer\._attn_mods\.(\d+)\.")

if TYPE_CHECKING:
    import torch


class CheckpointKeyError(EncoderError):
    """A checkpoint's keys do not match the model built from the hyper-parameters."""


@dataclass
class JukeboxModels:
    """vqvae: jukebox_infer VQVAE; prior: SimplePrior with `layer` transformer blocks.

    sample_rate: Hz of the audio the VQ-VAE expects; hop: samples per top-level token.
    """

    vqvae: torch.nn.Module
    prior: torch.nn.Module
    layer: int
    sample_rate: int
    hop: int


def read_state_dict(path: str, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Reads `checkpoint["model"]` (or a bare state dict) with `module.` prefixes stripped."""
    if not os.path.isfile(path):
        raise EncoderError(f"Jukebox checkpoint not found: {path}")
    try:
        checkpoint = _load(path, trust_pickle)
    except pickle.UnpicklingError as err:
        raise EncoderError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({str(err)[:300]}); "
            "if you trust the file, pass --jukebox-trust-pickle"
        ) from err
    state = checkpoint["model"] if isinstance(checkpoint, Mapping) and "model" in checkpoint else (
        checkpoint)
    if not isinstance(state, Mapping):
        raise EncoderError(f"{path}: expected a state dict under 'model', got {type(state)}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _load(path: str, trust_pickle: bool) -> object:
    import torch  # lazily: `llark_jax` imports without torch

    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False,
                          pickle_module=_JukeboxAliasPickle)
    with torch.serialization.safe_globals(
        [(collections.OrderedDict, "jukebox.hparams.Hyperparams")]
    ):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap can only be used" not in str(err):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)


class _JukeboxAliasUnpickler(pickle.Unpickler):
    """Full unpickler (trusted files only) resolving `jukebox.*` classes to `jukebox_infer.*`."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 (pickle API)
        if module == "jukebox" or module.startswith("jukebox."):
            module = "jukebox_infer" + module[len("jukebox"):]
        return super().find_class(module, name)


class _JukeboxAliasPickle:
    Unpickler = _JukeboxAliasUnpickler
    load = staticmethod(lambda f, **kw: _JukeboxAliasUnpickler(f, **kw).load())
    loads = staticmethod(lambda b, **kw: _JukeboxAliasUnpickler(io.BytesIO(b), **kw).load())


def check_keys(expected: set[str], found: set[str], what: str,
               ignorable: Callable[[str], bool] = lambda key: False) -> None:
    """Raises CheckpointKeyError listing missing keys and unexpected, non-ignorable keys."""
    missing = sorted(expected - found)
    unexpected = sorted(k for k in found - expected if not ignorable(k))
    if missing or unexpected:
        raise CheckpointKeyError(
            f"{what}: {len(missing)} missing key(s) {missing[:8]}, "
            f"{len(unexpected)} unexpected key(s) {unexpected[:8]}"
        )


def is_block_at_or_after(layer: int) -> Callable[[str], bool]:
    """Predicate: key belongs to prior block index >= layer (unused by a depth-`layer` prior)."""

    def ignorable(key: str) -> bool:
        match = _BLOCK_KEY.match(key)
        return bool(match) and int(match.group(1)) >= layer

    return ignorable


def vqvae_hparams(overrides: Mapping | None = None):
    """jukebox_infer's `vqvae` hparams; sample_length = n_ctx * top hop is set by the caller."""
    from jukebox_infer.hparams import setup_hparams

    return setup_hparams("vqvae", dict(overrides or {}))


def prior_hparams(layer: int, overrides: Mapping | None = None):
    """jukebox_infer's `prior_5b` hparams truncated to `layer` blocks (no checkpoint path)."""
    from jukebox_infer.hparams import setup_hparams

    return setup_hparams("prior_5b", {**dict(overrides or {}), "prior_depth": layer,
                                      "restore_prior": ""})


def build_empty_models(layer: int, vqvae_overrides: Mapping | None = None,
                       prior_overrides: Mapping | None = None) -> JukeboxModels:
    """VQ-VAE + depth-`layer` prior on the meta device (no memory, no init) via jukebox_infer."""
    import torch
    from jukebox_infer.make_models import make_prior, make_vqvae

    vq_hps = vqvae_hparams({**dict(vqvae_overrides or {}), "restore_vqvae": ""})
    pr_hps = prior_hparams(layer, prior_overrides)
    top_hop = _top_hop(vq_hps)
    vq_hps.sample_length = pr_hps.n_ctx * top_hop
    with contextlib.redirect_stdout(io.StringIO()), torch.device("meta"):
        vqvae = make_vqvae(vq_hps, device="meta", auto_download=False)
        prior = make_prior(pr_hps, vqvae, device="meta", auto_download=False)
    return JukeboxModels(vqvae=vqvae, prior=prior, layer=layer, sample_rate=int(vq_hps.sr),
                         hop=top_hop)


def build_models(
    jukebox_dir: str,
    layer: int,
    vqvae_overrides: Mapping | None = None,
    prior_overrides: Mapping | None = None,
    trust_pickle: bool = False,
) -> JukeboxModels:
    """`build_empty_models`, then the checkpoint tensors assigned in after the key check."""
    paths = {name: os.path.join(jukebox_dir, name) for name in (VQVAE_FILE, PRIOR_FILE)}
    for path in paths.values():
        if not os.path.isfile(path):
            raise EncoderError(f"Jukebox checkpoint not found: {path}")
    models = build_empty_models(layer, vqvae_overrides, prior_overrides)

    vq_state = read_state_dict(paths[VQVAE_FILE], trust_pickle)
    check_keys(set(models.vqvae.state_dict()), set(vq_state), paths[VQVAE_FILE])
    models.vqvae.load_state_dict(vq_state, strict=True, assign=True)

    pr_state = read_state_dict(paths[PRIOR_FILE], trust_pickle)
    expected = set(models.prior.state_dict())
    check_keys(expected, set(pr_state), paths[PRIOR_FILE], is_block_at_or_after(layer))
    models.prior.load_state_dict({k: pr_state[k] for k in expected}, strict=True, assign=True)
    for module in (models.vqvae, models.prior):
        module.eval().requires_grad_(False)
    return models


def _top_hop(vq_hps) -> int:
    """Samples per top-level token: prod(stride ** down) over levels (128 for Jukebox)."""
    hop = 1
    for down, stride in zip(vq_hps.downs_t, vq_hps.strides_t, strict=True):
        hop *= stride**down
    return hop
