"""A tiny random Jukebox (real sample rate, hop 128 and 8192-token context; tiny widths/depths)
saved in the official checkpoint layout: {"hps": jukebox.hparams.Hyperparams, "model": state
dict with "module." prefixes, "step"}; the VQ-VAE in torch's legacy (non-zip) format like the
2020 files, the prior in the zip format. The prior file holds TINY_DEPTH blocks; the encoder runs
TINY_LAYER of them, as the real one runs 36 of 72."""

from __future__ import annotations

import contextlib
import io
import os
import sys
import types

import torch

TINY_VQVAE = {"width": 4, "depth": 1, "emb_width": 8, "l_bins": 32}
TINY_PRIOR = {"prior_width": 16, "heads": 2}
TINY_DEPTH = 5
TINY_LAYER = 3


@contextlib.contextmanager
def _official_hparams_class():
    """Makes `jukebox.hparams.Hyperparams` importable while pickling, like the official files."""
    from jukebox_infer.hparams import Hyperparams

    cls = type("Hyperparams", (Hyperparams,), {"__module__": "jukebox.hparams"})
    package, module = types.ModuleType("jukebox"), types.ModuleType("jukebox.hparams")
    module.Hyperparams = cls
    sys.modules.update({"jukebox": package, "jukebox.hparams": module})
    try:
        yield cls
    finally:
        del sys.modules["jukebox"], sys.modules["jukebox.hparams"]


def build_tiny_models(seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Random tiny VQ-VAE + TINY_DEPTH-block prior with O(1) weights (so conditioning matters)."""
    from jukebox_infer.hparams import setup_hparams
    from jukebox_infer.make_models import make_prior, make_vqvae

    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):
        vq_hps = setup_hparams("vqvae", {**TINY_VQVAE, "restore_vqvae": "",
                                         "sample_length": 8192 * 128})
        vqvae = make_vqvae(vq_hps, device="cpu", auto_download=False)
        pr_hps = setup_hparams("prior_5b", {**TINY_PRIOR, "prior_depth": TINY_DEPTH,
                                            "restore_prior": ""})
        prior = make_prior(pr_hps, vqvae, device="cpu", auto_download=False)
    generator = torch.Generator().manual_seed(seed)
    for module in (vqvae, prior):
        for name, tensor in module.state_dict().items():
            scale = 0.3 if tensor.dim() > 1 else 0.1
            noise = torch.randn(tensor.shape, generator=generator) * scale
            base = 1.0 if name.endswith(("ln_0.weight", "ln_1.weight", "ln.weight")) else 0.0
            tensor.copy_((base + noise).to(tensor.dtype))
    return vqvae, prior


def save_official_layout(state: dict, path: str, legacy_format: bool) -> None:
    """Saves a state dict as {"hps", "model": {"module." + key: tensor}, "step"}."""
    with _official_hparams_class() as hparams_cls:
        hps = hparams_cls(sr=44100, note="tiny test model")
        torch.save({"hps": hps, "model": {f"module.{k}": v for k, v in state.items()}, "step": 7},
                   path, _use_new_zipfile_serialization=not legacy_format)


def write_tiny_jukebox(directory: str, seed: int = 0) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Writes vqvae.pth.tar (legacy format) and prior_level_2.pth.tar (zip) into `directory`."""
    vqvae, prior = build_tiny_models(seed)
    save_official_layout(vqvae.state_dict(), os.path.join(directory, "vqvae.pth.tar"),
                         legacy_format=True)
    save_official_layout(prior.state_dict(), os.path.join(directory, "prior_level_2.pth.tar"),
                         legacy_format=False)
    return vqvae, prior


def tiny_encoder_kwargs(directory: str, **overrides) -> dict:
    """Constructor kwargs for JukeboxEncoder on the tiny checkpoints in `directory`."""
    return {"jukebox_dir": directory, "layer": TINY_LAYER, "device": "cpu",
            "vqvae_overrides": TINY_VQVAE, "prior_overrides": TINY_PRIOR, **overrides}
