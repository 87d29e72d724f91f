"""`mert`: MERT-v1 (95M / 330M) hidden states of every transformer layer, for MusiLingo.

Checkpoint: a local folder in the Hugging Face layout of the `m-a-p/MERT-v1-*` releases:
`config.json` (model_type "mert_model"), `model.safetensors` or `pytorch_model.bin`, and optionally
`preprocessor_config.json`. MERT's own `modeling_MERT.py` is never imported; the network is built
from transformers' HuBERT modules, which it subclasses:

* same: the 7-layer conv feature encoder (kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2: hop 320,
  so 75 frames/s at 24 kHz), the feature projection (LayerNorm + Linear), the weight-normed
  convolutional position embedding, post-LN (`do_stable_layer_norm` false, MERT-v1-95M style) and
  pre-LN (`do_stable_layer_norm` true) transformer layers, and all parameter names;
* MERT-only options: `feature_extractor_cqt` (a CQT branch concatenated before the projection)
  and `deepnorm` (scaled residuals in a post-LN encoder) are rejected with `MertConfigError`;
  `attention_relax` subtracts the row max before the softmax, which leaves attention unchanged in
  exact arithmetic, so it is ignored.

Hidden states are computed layer by layer here (not via `output_hidden_states`, whose meaning
changed across transformers versions) with MERT's definition (transformers 4.2x): L = layers + 1
states; state 0 is the encoder input (projected features + position embedding, LayerNorm'ed for
post-LN models), state i the output of layer i, and for pre-LN models the last state is after the
encoder's final LayerNorm. MERT-v1-330M: L = 25, D = 1024; MERT-v1-95M: L = 13, D = 768.

Input: mono float32 at 24 kHz, cropped to `max_seconds`, normalised per clip to zero mean and unit
variance ((x - mean) / sqrt(var + 1e-7), as `Wav2Vec2FeatureExtractor` with do_normalize) when
`normalize` is true; `normalize=None` follows the preprocessor config's `do_normalize` (default
true). (MusiLingo's released loaders normalise Music Instruct audio but feed LP-MusicCaps-MSD and
MusicQA audio unnormalised.)

Output grid (`frame_rate`): "native" keeps MERT's 75 Hz frames (T = floor((n - 400) / 320) + 1);
"10" (default) mean-pools them onto exact 100 ms frames: frame token t -> floor(t * 320 * 10 /
24000), T = floor(n / 2400) (50 for 5 s; the last frame averages the tokens that exist);
"groupN" averages consecutive groups of N native frames, the last group over the frames that
exist, T = ceil(T_native / N): MusiLingo's temporal compression (its code: N = 325, 4.33 s).
Because the layer mix, the projector and group averaging are all affine, storing "group325"
features and running the model with temporal_pool = 1 equals MusiLingo's encoder -> layer average
-> projector -> compression exactly, at 1/325 of the native storage.

Stored layout (`layers`): "all" -> float32 [T, L * D], layer-major within a frame, i.e.
`y.reshape(T, L, D)[t, l]` is state l at frame t (what `llark_jax.model.layer_mix` consumes);
"mean" -> [T, D], the plain mean over the L states (the learned mix at its uniform init, for
when L x storage is too much); "i,j,..." -> [T, k * D] with only those states, same layout.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llark_jax.audio.encoders import pooling
from llark_jax.audio.encoders.base import AudioEncoder, EncoderError, as_mono_float32

SAMPLE_RATE = 24000
NORM_EPS = 1e-7
FRAME_RATES = ("10", "native", "groupN")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_UNSUPPORTED_TRUE = ("feature_extractor_cqt", "deepnorm")
_HUBERT_FIELDS = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
    "layer_norm_eps", "feat_extract_norm", "feat_extract_activation", "conv_dim", "conv_stride",
    "conv_kernel", "conv_bias", "num_conv_pos_embeddings", "num_conv_pos_embedding_groups",
    "conv_pos_batch_norm", "do_stable_layer_norm", "feat_proj_layer_norm", "mask_time_prob",
    "mask_feature_prob",
)
DTYPES = ("float32", "bfloat16", "float16")  # torch dtypes by name (torch is imported lazily)

if TYPE_CHECKING:
    import torch


class MertConfigError(EncoderError):
    """The checkpoint folder is missing a file, or its config uses a MERT option not built here."""


def hubert_config_from_mert(mert_config: dict, where: str = "config.json"):
    """Maps a MERT `config.json` dict onto a `transformers.HubertConfig` (inference: no dropout)."""
    from transformers import HubertConfig

    model_type = mert_config.get("model_type")
    if model_type not in ("mert_model", "hubert"):
        raise MertConfigError(f"{where}: model_type {model_type!r} is not a MERT checkpoint")
    for option in _UNSUPPORTED_TRUE:
        if mert_config.get(option):
            raise MertConfigError(f"{where}: MERT option {option}=true is not supported "
                                  "(only the released MERT-v1 architecture is)")
    fields = {k: mert_config[k] for k in _HUBERT_FIELDS if k in mert_config}
    return HubertConfig(**fields, apply_spec_augment=False, layerdrop=0.0, hidden_dropout=0.0,
                        attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0)


def read_state_dict(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """The first of WEIGHT_FILES found, keys renamed to transformers 5's HubertModel names:
    prefixes `mert_model.`/`hubert.` dropped, legacy weight-norm `weight_g`/`weight_v` ->
    `parametrizations.weight.original0/1`."""
    for name in WEIGHT_FILES:
        path = checkpoint_dir / name
        if path.is_file():
            break
    else:
        raise MertConfigError(f"{checkpoint_dir}: no weights file (looked for {WEIGHT_FILES})")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        import torch

        state = torch.load(path, map_location="cpu", weights_only=True)
    renamed = {}
    for key, value in state.items():
        for prefix in ("mert_model.", "hubert."):
            key = key.removeprefix(prefix)
        key = key.replace(".weight_g", ".parametrizations.weight.original0")
        key = key.replace(".weight_v", ".parametrizations.weight.original1")
        renamed[key] = value
    return renamed


def load_mert(checkpoint_dir: str | Path):
    """(HubertModel in eval mode with every checkpoint tensor loaded, MERT config dict).

    Missing or unexpected parameter names raise `MertConfigError` listing them."""
    from transformers import HubertModel

    checkpoint_dir = Path(checkpoint_dir)
    config_path = checkpoint_dir / "config.json"
    if not config_path.is_file():
        raise MertConfigError(f"{config_path}: not found (expected a MERT-v1 checkpoint folder)")
    mert_config = json.loads(config_path.read_text())
    model = HubertModel(hubert_config_from_mert(mert_config, str(config_path)))
    state = read_state_dict(checkpoint_dir)
    expected, found = set(model.state_dict()), set(state)
    if expected != found:
        missing, unexpected = sorted(expected - found), sorted(found - expected)
        raise MertConfigError(f"{checkpoint_dir}: weights do not match the config: missing "
                              f"{missing[:8]} ({len(missing)}), unexpected {unexpected[:8]} "
                              f"({len(unexpected)})")
    model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False), mert_config


def hidden_states(model, x_bn: torch.Tensor) -> torch.Tensor:
    """MERT's all-layer output: normalised audio [B, n] -> [L = layers + 1, B, T, D]."""
    import torch

    with torch.no_grad():
        encoder = model.encoder
        stable = model.config.do_stable_layer_norm
        features_btc = model.feature_extractor(x_bn).transpose(1, 2)
        h_btd = model.feature_projection(features_btc)
        h_btd = h_btd + encoder.pos_conv_embed(h_btd)
        if not stable:
            h_btd = encoder.layer_norm(h_btd)
        states = [h_btd]
        for layer in encoder.layers:
            h_btd = layer(h_btd, attention_mask=None)
            states.append(h_btd)
        if stable:
            states[-1] = encoder.layer_norm(h_btd)
        return torch.stack(states)


def normalise(x_n: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance: (x - mean) / sqrt(var + 1e-7) in float32."""
    return ((x_n - x_n.mean()) / np.sqrt(x_n.var() + NORM_EPS)).astype(np.float32)


def parse_layers(spec: str, n_states: int) -> tuple[str, list[int]]:
    """("all"|"mean"|"pick", state indices) for `spec` = "all", "mean" or "0,6,12"."""
    if spec in ("all", "mean"):
        return spec, list(range(n_states))
    try:
        picked = [int(part) for part in spec.split(",")]
    except ValueError:
        raise MertConfigError(f"layers={spec!r}: expected 'all', 'mean' or 'i,j,...'") from None
    bad = [i for i in picked if not 0 <= i < n_states]
    if bad or not picked:
        raise MertConfigError(f"layers={spec!r}: indices {bad} outside [0, {n_states})")
    return "pick", picked


def ten_hz_plan(n_samples: int, n_tokens: int, hop: int) -> pooling.FramePlan:
    """Exact 100 ms frames over the `n_tokens` MERT frames that exist (token t starts at t*hop)."""
    plan = pooling.paper_plan(n_samples, SAMPLE_RATE, hop)
    frame_t = plan.frame_of_token_t[:n_tokens]
    n_frames = min(plan.n_frames, int(frame_t[-1]) + 1) if frame_t.size else 0
    return pooling.FramePlan(n_frames=n_frames, frame_of_token_t=frame_t[frame_t < n_frames])


def parse_group(frame_rate: str) -> int:
    """N for "groupN", 0 for "10"/"native"; anything else raises `MertConfigError`."""
    if frame_rate in ("10", "native"):
        return 0
    size = frame_rate.removeprefix("group")
    if frame_rate.startswith("group") and size.isdigit() and int(size) > 0:
        return int(size)
    raise MertConfigError(f"frame_rate must be one of {FRAME_RATES}, got {frame_rate!r}")


def group_plan(n_tokens: int, size: int) -> pooling.FramePlan:
    """Consecutive groups of `size` frames, the last one partial: ceil(n_tokens / size) frames."""
    return pooling.FramePlan(n_frames=-(-n_tokens // size),
                             frame_of_token_t=np.arange(n_tokens, dtype=np.int64) // size)


class MertEncoder(AudioEncoder):
    """MERT-v1 all-layer features: float32 [T, L*D] (or a documented reduction) per clip.

    Args:
      mert_dir: checkpoint folder (config.json + weights [+ preprocessor_config.json]);
        default $MERT_DIR.
      frame_rate: "10" (mean-pooled 100 ms frames), "native" (75 Hz) or "groupN" (means of N
        native frames; "group325" = MusiLingo's compression).
      layers: "all", "mean" or comma-separated state indices (see the module docstring).
      max_seconds: clips are cropped to this many seconds (0: no crop).
      normalize: per-clip zero-mean/unit-variance input; None: the preprocessor config's choice.
      device: "auto" (cuda if available), "cpu", "cuda", ...
      dtype: "float32" (default), "bfloat16" or "float16" for the forward pass.
    """

    name = "mert"
    sample_rate = SAMPLE_RATE

    def __init__(self, mert_dir: str | Path | None = None, frame_rate: str = "10",
                 layers: str = "all", max_seconds: float = 30.0, device: str = "auto",
                 dtype: str = "float32", normalize: bool | None = None) -> None:
        mert_dir = mert_dir or os.environ.get("MERT_DIR")
        if not mert_dir:
            raise MertConfigError("mert: no checkpoint folder given (mert_dir or $MERT_DIR)")
        frame_rate = str(frame_rate)
        self.group = parse_group(frame_rate)
        if dtype not in DTYPES:
            raise MertConfigError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        mert_dir = Path(mert_dir)
        self.model, config = load_mert(mert_dir)
        if config.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
            raise MertConfigError(f"{mert_dir}: sample_rate {config['sample_rate']} != 24000")
        preprocessor = _read_json(mert_dir / "preprocessor_config.json")
        self.do_normalize = (bool(preprocessor.get("do_normalize", True)) if normalize is None
                             else normalize)
        self.hop = math.prod(self.model.config.conv_stride)
        native_hz = SAMPLE_RATE / self.hop
        self.native = frame_rate == "native"
        self.frame_rate_hz = (native_hz if self.native else native_hz / self.group if self.group
                              else 10.0)
        self.n_states = self.model.config.num_hidden_layers + 1
        self.layer_mode, self.layer_ids = parse_layers(layers, self.n_states)
        width = self.model.config.hidden_size
        self.dim = width if self.layer_mode == "mean" else width * len(self.layer_ids)
        self.max_samples = int(round(max_seconds * SAMPLE_RATE)) if max_seconds > 0 else None
        import torch

        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        self.torch_dtype = getattr(torch, dtype)
        self.model.to(self.device, self.torch_dtype)
        digest = hashlib.sha1((mert_dir / "config.json").read_bytes()).hexdigest()[:10]
        self.version = (f"mert-v1-{digest}-L{self.n_states}-D{width}-{self.layer_mode}"
                        f"{'' if self.layer_mode != 'pick' else ','.join(map(str, self.layer_ids))}"
                        f"-fr{frame_rate}-max{max_seconds:g}s-norm{int(self.do_normalize)}-{dtype}")

    def describe(self) -> dict:
        return {**super().describe(), "mert_states": self.n_states, "mert_layers": self.layer_mode,
                "mert_layer_ids": self.layer_ids,
                "mert_hidden_size": int(self.model.config.hidden_size)}

    def encode_batch(self, waveforms: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Clips of equal length run as one forward (exactly like singles: no padding)."""
        import torch

        clips = [self._prepare(x_n, f"clip {i}") for i, x_n in enumerate(waveforms)]
        outputs: list[np.ndarray | None] = [None] * len(clips)
        by_length: dict[int, list[int]] = {}
        for i, x_n in enumerate(clips):
            by_length.setdefault(x_n.shape[0], []).append(i)
        for n_samples, members in by_length.items():
            if n_samples < 400:
                for i in members:
                    outputs[i] = np.zeros((0, self.dim), np.float32)
                continue
            x_bn = torch.from_numpy(np.stack([clips[i] for i in members]))
            states_lbtd = hidden_states(self.model, x_bn.to(self.device, self.torch_dtype))
            states_lbtd = states_lbtd.float().cpu().numpy()
            for b, i in enumerate(members):
                outputs[i] = self._to_frames(states_lbtd[:, b], n_samples)
        return outputs

    def _prepare(self, waveform: np.ndarray, what: str) -> np.ndarray:
        x_n = as_mono_float32(waveform, what)[: self.max_samples]
        return normalise(x_n) if self.do_normalize and x_n.size else x_n

    def _to_frames(self, states_ltd: np.ndarray, n_samples: int) -> np.ndarray:
        """[L, T_native, D] -> [T, dim] in the stored layout."""
        if self.layer_mode == "mean":
            y_td = states_ltd.mean(axis=0, dtype=np.float64)
        else:
            picked_ltd = states_ltd[self.layer_ids]
            y_td = picked_ltd.transpose(1, 0, 2).reshape(picked_ltd.shape[1], -1)
        if self.group:
            y_td = pooling.mean_pool(y_td, group_plan(y_td.shape[0], self.group))
        elif not self.native:
            y_td = pooling.mean_pool(y_td, ten_hz_plan(n_samples, y_td.shape[0], self.hop))
        return np.ascontiguousarray(y_td, dtype=np.float32)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}
