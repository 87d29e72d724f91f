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


# --- dataset files in their released formats -------------------------------------------------

LP_COLUMNS = ("track_id", "title", "artist_name", "release", "year", "tag", "caption_writing",
              "caption_summary", "caption_paraphrase", "caption_attribute_prediction", "path")


def lp_row(track_id: str, caption: str = "A calm piano piece.") -> dict:
    return {"track_id": track_id, "title": "T", "artist_name": "A", "release": "R", "year": 1994,
            "tag": ["piano", "calm"], "caption_writing": caption, "caption_summary": "s",
            "caption_paraphrase": "p", "caption_attribute_prediction": "x",
            "path": f"{track_id[2]}/{track_id[3]}/{track_id}.clip.mp3"}


def write_lp_musiccaps(root: Path, shards: dict[str, list[dict]]) -> Path:
    """`root/data/{name}.parquet` per shard name (e.g. "train-00000-of-00002-abc")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True, exist_ok=True)
    for name, rows in shards.items():
        table = pa.Table.from_pylist(rows) if rows else pa.table({c: [] for c in LP_COLUMNS})
        pq.write_table(table, root / "data" / f"{name}.parquet")
    return root


def musicqa_item(audio_name: str, question: str, answer: str) -> dict:
    return {"audio_name": audio_name, "conversation": [{"from": "human", "value": question},
                                                       {"from": "gpt", "value": answer}]}


def write_musicqa(root: Path, partitions: dict[str, list]) -> Path:
    """`root/MusicQA/{Partition}MusicQA.json` for each partition name (Finetune, Eval, Pretrain)."""
    (root / "MusicQA" / "audios").mkdir(parents=True, exist_ok=True)
    for name, items in partitions.items():
        (root / "MusicQA" / f"{name}MusicQA.json").write_text(json.dumps(items, indent=2))
    return root


MUSICCAPS_HEADER = ("ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,"
                    "is_balanced_subset,is_audioset_eval")


def write_musiccaps_csv(folder: Path, eval_ids: list[str], train_ids: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [f'{y},30,40,/m/04rlf,"[\'piano\']",A caption.,4,False,{y in eval_ids}'
            for y in [*eval_ids, *train_ids]]
    (folder / "musiccaps-public.csv").write_text("\n".join([MUSICCAPS_HEADER, *rows]) + "\n")
    return folder / "musiccaps-public.csv"


def mi_item(ytid: str, question: str, answer: str, is_eval: bool | None) -> dict:
    item = {"ytid": ytid, "question": question, "answer": answer, "sampling_rate": 48000}
    if is_eval is not None:
        item["is_audioset_eval"] = is_eval
    return item


def write_music_instruct(root: Path, short: list[dict] | None, long: list[dict] | None) -> Path:
    """`root/MusicInstruct/music_instruct_{short,long}.json` as {"QA": [...]}."""
    (root / "MusicInstruct").mkdir(parents=True, exist_ok=True)
    for name, items in (("short", short), ("long", long)):
        if items is not None:
            path = root / "MusicInstruct" / f"music_instruct_{name}.json"
            path.write_text(json.dumps({"QA": items}))
    return root
