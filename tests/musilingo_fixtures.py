"""Tiny random MERT-v1-shaped checkpoints in the released Hugging Face layout (config.json with
model_type "mert_model" and MERT's extra fields, legacy weight-norm `weight_g`/`weight_v` names,
pytorch_model.bin or model.safetensors, preprocessor_config.json), and LP-MusicCaps / MusicQA /
Music Instruct files in their distributed formats."""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Real conv strides/kernels (hop 320 -> 75 Hz at 24 kHz); tiny widths and depth.
TINY_MERT = {
    "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4, "intermediate_size": 64,
    "conv_dim": [16] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "conv_bias": False,
    "hidden_act": "gelu", "feat_extract_activation": "gelu", "layer_norm_eps": 1e-5,
    "feat_proj_layer_norm": True, "mask_time_prob": 0.05, "mask_feature_prob": 0.0,
}
VARIANTS = {  # what distinguishes MERT-v1-95M (post-LN, group norm) from -330M (pre-LN)
    "95M": {"do_stable_layer_norm": False, "feat_extract_norm": "group"},
    "330M": {"do_stable_layer_norm": True, "feat_extract_norm": "layer"},
}


def mert_config(variant: str, **overrides) -> dict:
    return {
        "model_type": "mert_model", "architectures": ["MERTModel"],
        "auto_map": {"AutoConfig": "configuration_MERT.MERTConfig",
                     "AutoModel": "modeling_MERT.MERTModel"},
        "feature_extractor_cqt": False, "feature_extractor_cqt_bins": 336, "deepnorm": False,
        "attention_relax": -1.0, "sample_rate": 24000, **TINY_MERT, **VARIANTS[variant],
        **overrides,
    }


def reference_model(config: dict, seed: int = 0):
    """The transformers HubertModel that the saved weights come from (eval mode)."""
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(seed)
    fields = {k: v for k, v in config.items() if k in HubertConfig().to_dict()}
    fields.pop("model_type", None)
    fields.pop("architectures", None)
    model = HubertModel(HubertConfig(**fields, layerdrop=0.0)).eval()
    with torch.no_grad():  # O(1) weights so every layer changes the states visibly
        for name, p in model.named_parameters():
            if p.ndim >= 2 and "conv" not in name:
                p.normal_(0.0, 0.3)
    return model


def write_mert_checkpoint(root: Path, variant: str = "330M", fmt: str = "bin",
                          do_normalize: bool = True, seed: int = 0, **overrides):
    """Writes a MERT-format folder under `root`; returns (folder, reference HubertModel)."""
    root.mkdir(parents=True, exist_ok=True)
    config = mert_config(variant, **overrides)
    model = reference_model(config, seed)
    (root / "config.json").write_text(json.dumps(config, indent=2))
    (root / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": do_normalize, "feature_extractor_type": "Wav2Vec2FeatureExtractor",
        "feature_size": 1, "padding_side": "right", "padding_value": 0,
        "return_attention_mask": True, "sampling_rate": 24000}))
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        state[key] = value.clone().contiguous()
    if fmt == "bin":
        torch.save(state, root / "pytorch_model.bin")
    else:
        from safetensors.torch import save_file

        save_file(state, str(root / "model.safetensors"))
    return root, model
