"""`llark_jax.checkpoints.export`: the exported Hugging Face directory in real torch/transformers.

Two tiny random LLarks (2 layers, E=64, test BPE tokenizer with the LLark tokens), exported and
loaded back through the shipped `modeling_llark.py`, compared with the Flax model's float32 logits
on 2 right-padded FastChat conversations of ~300 tokens (real tokens, real vocabulary columns):

- `untied_plain`: untied lm_head, MHA, llama3 RoPE scaling (theta 5e5), rms_norm_eps 1e-6,
  vocabulary padded to a multiple of 128, no layer mix, temporal_pool 1, one audio segment of
  200 frames, default frame order (k-th patch takes frame k);
- `tied_mix_pool`: tied embeddings, GQA (4 heads, 2 kv heads), linear RoPE scaling, a LayerMix
  over 2 layers with random logits, temporal_pool 2, two audio segments of 160 frames with an
  `audio_mask` and an explicit `audio_frame_index` (row 1's first segment has 50 patch tokens, so
  the explicit index differs from the default order).

fp32 contract: max|diff| <= 1e-4 * max(1, max|logit|); measured max|diff| <= 2.1e-6 with
max|logit| 2.7-3.2 (<= 7e-7 x max|logit|), with audio and text-only.
bf16 export (weights rounded to bfloat16, torch computing in bfloat16) vs Flax fp32: measured
max|diff| / max|logit| 0.013-0.014 (max|diff| 0.041-0.046) and top-1 agreement 97.7-98.0% on 563
and 457 real tokens. Bound: relative error <= 0.04 and top-1 agreement >= 95%. bf16 keeps 8
mantissa bits (relative rounding 2^-9 ~ 0.002 per weight and per activation); the error of a
logit accumulates over the residual stream, 2 layers and the 64-wide head to a few times that
(~7x here). These random models' logits are flat (max |logit| ~3 over 604 tokens), so the top-2
gap is often below the 0.04-0.05 error and ~2% of argmaxes swap; a mutation of the splice, the
frame index, the audio mask or the layer mix moves the logits by 1.9-4.5 (checked by hand).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from tokenizer_fixtures import make_llark_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from llark_jax.checkpoints import export
from llark_jax.checkpoints.hf import load_llama
from llark_jax.data import conversation as conv
from llark_jax.model.llama import Llama, LlamaConfig
from llark_jax.model.llark import LLark

FP32_REL_TOL = 1e-4
BF16_REL_TOL = 0.04
BF16_TOP1_MIN = 0.95
QUESTION = "Describe the instruments you hear, and tell me about the tempo and the key."
ANSWER = "A piano and a bass guitar play a slow groove with bright drums and warm strings."

MODELS = {
    "untied_plain": dict(
        llama=dict(num_heads=4, num_kv_heads=4, tie_word_embeddings=False, rope_theta=5e5,
                   rms_norm_eps=1e-6, vocab_multiple=128,
                   rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                     high_freq_factor=4.0, original_max_position_embeddings=64)),
        audio_dim=48, audio_layers=0, temporal_pool=1),
    "tied_mix_pool": dict(
        llama=dict(num_heads=4, num_kv_heads=2, tie_word_embeddings=True, rope_theta=1e4,
                   rope_scaling=dict(rope_type="linear", factor=2.0)),
        audio_dim=48, audio_layers=2, temporal_pool=2),
}


def _tiny_llark(tokenizer, spec: dict, seed: int = 0) -> LLark:
    ids = conv.AudioTokenIds.from_tokenizer(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                      num_layers=2, head_dim=16, initializer_range=0.08, **spec["llama"])
    model = LLark(Llama(cfg, rngs=nnx.Rngs(seed)), spec["audio_dim"], audio_patch_id=ids.patch,
                  audio_start_id=ids.start, audio_end_id=ids.end,
                  temporal_pool=spec["temporal_pool"], audio_layers=spec["audio_layers"],
                  rngs=nnx.Rngs(seed + 1))
    rng = np.random.default_rng(seed)
    layers = model.llama.layers  # stacked: norm scales [L, 64]
    for norm in (model.llama.final_norm, layers.input_norm, layers.post_attn_norm):
        shape = norm.scale.get_value().shape
        norm.scale.set_value(jnp.asarray(1 + 0.2 * rng.normal(size=shape), jnp.float32))
    if model.projector.layer_mix is not None:
        model.projector.layer_mix.logits.set_value(
            jnp.asarray(rng.normal(size=spec["audio_layers"]), jnp.float32))
    return model


def _batch(tokenizer, name: str) -> dict:
    """Right-padded ids/mask [2, T] + audio (+ audio_mask, audio_frame_index) for `name`."""
    rng = np.random.default_rng(1)
    if name == "untied_plain":
        frames, t_a, segments = [[200], [200]], 200, 1
    else:
        frames, t_a, segments = [[80, 80], [50, 80]], 160, 2
    pool = MODELS[name]["temporal_pool"]
    examples = [conv.build_example(tokenizer, conv.FASTCHAT_V0, QUESTION, ANSWER[: 80 - 30 * i],
                                   f, i == 0) for i, f in enumerate(frames)]
    length = max(len(e["input_ids"]) for e in examples)
    ids = np.full((2, length), tokenizer.pad_token_id, np.int64)
    mask = np.zeros((2, length), np.int64)
    index = np.zeros((2, length), np.int64)
    audio_mask = np.zeros((2, segments, t_a), bool)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[row, :n], mask[row, :n] = e["input_ids"], 1
        index[row] = conv.audio_frame_index(length, e["audio_patch_starts"], e["audio_frames"],
                                            t_a // pool)
        for s, n_frames in enumerate(e["audio_frames"]):
            audio_mask[row, s, : n_frames * pool - (row == 1 and s == 0)] = True
    shape = (2, t_a, 48) if segments == 1 else (2, segments, t_a, 48)
    batch = dict(ids=ids, mask=mask, audio=rng.normal(size=shape).astype(np.float32))
    if name == "tied_mix_pool":
        batch.update(audio_mask=audio_mask, index=index)
    return batch


def _load_modeling(directory: Path):
    """The exported `modeling_llark.py`, imported from the export directory itself."""
    spec = importlib.util.spec_from_file_location(f"modeling_llark_{directory.name}",
                                                  directory / export.MODELING_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _flax_logits(model: LLark, batch: dict, with_audio: bool = True) -> np.ndarray:
    logits = model(jnp.asarray(batch["ids"], jnp.int32),
                   jnp.asarray(batch["audio"]) if with_audio else None,
                   attention_mask=jnp.asarray(batch["mask"], jnp.int32),
                   audio_frame_index=(jnp.asarray(batch["index"], jnp.int32)
                                      if with_audio and "index" in batch else None),
                   audio_mask=(jnp.asarray(batch["audio_mask"])
                               if with_audio and "audio_mask" in batch else None))
    return np.asarray(logits)[..., : model.llama.config.vocab_size]


def _torch_logits(torch_model, batch: dict, with_audio: bool = True) -> np.ndarray:
    def t(key):
        return torch.from_numpy(batch[key]) if with_audio and key in batch else None

    with torch.no_grad():
        logits = torch_model(torch.from_numpy(batch["ids"]), t("audio"), t("index"),
                             attention_mask=torch.from_numpy(batch["mask"]),
                             audio_mask=t("audio_mask"))
    assert logits.dtype == torch.float32
    return logits.numpy()


def _compare(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> tuple[float, float, float]:
    """(max|diff|, max|ref logit|, top-1 agreement) over real tokens."""
    real = mask.astype(bool)
    diff = float(np.abs(ours - ref)[real].max())
    top1 = float((ours.argmax(-1) == ref.argmax(-1))[real].mean())
    return diff, float(np.abs(ref[real]).max()), top1


@pytest.fixture(scope="module", params=list(MODELS))
def exported(request, tmp_path_factory):
    """(name, tokenizer, Flax model, batch, Flax logits, fp32 export dir, bf16 export dir)."""
    name = request.param
    tokenizer = make_llark_tokenizer()
    model = _tiny_llark(tokenizer, MODELS[name])
    root = tmp_path_factory.mktemp(name)
    extra = {"template": "fastchat_v0", "system_prompt": "You are a music expert.",
             "features": {"encoder": "mel"}}
    fp32 = export.export_hf(model, tokenizer, root / "fp32", extra=extra)
    bf16 = export.export_hf(model, tokenizer, root / "bf16", dtype="bfloat16")
    batch = _batch(tokenizer, name)
    return dict(name=name, tokenizer=tokenizer, model=model, batch=batch, fp32=fp32, bf16=bf16,
                logits=_flax_logits(model, batch))


def test_files_and_configs(exported):
    out, model = exported["fp32"], exported["model"]
    cfg = model.llama.config
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", export.PROJECTOR_FILE,
            export.LLARK_CONFIG_FILE, export.MODELING_FILE} <= names
    hf = json.loads((out / "config.json").read_text())
    assert hf["model_type"] == "llama" and hf["vocab_size"] == cfg.vocab_size
    assert hf["tie_word_embeddings"] == cfg.tie_word_embeddings
    llark = json.loads((out / export.LLARK_CONFIG_FILE).read_text())
    assert llark["audio_layers"] == model.projector.audio_layers
    assert llark["temporal_pool"] == model.temporal_pool
    assert llark["audio_patch_id"] == model.audio_patch_id
    assert llark["template"] == "fastchat_v0" and llark["features"] == {"encoder": "mel"}
    with pytest.raises(export.ExportError, match="overwrite"):
        export.export_hf(model, exported["tokenizer"], out, extra={"audio_dim": 1})


def test_plain_transformers_loads_lm_and_tokenizer(exported):
    out, model = exported["fp32"], exported["model"]
    cfg = model.llama.config
    lm = AutoModelForCausalLM.from_pretrained(out)  # no trust_remote_code
    assert lm.dtype == torch.float32 and lm.config.model_type == "llama"
    assert lm.get_input_embeddings().weight.shape == (cfg.vocab_size, cfg.hidden_size)
    assert lm.lm_head.weight.shape == (cfg.vocab_size, cfg.hidden_size)
    tied = lm.lm_head.weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    assert tied == cfg.tie_word_embeddings
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == len(exported["tokenizer"])
    got = tokenizer.convert_tokens_to_ids(["<audio_patch>", "<audio_start>", "<audio_end>"])
    assert got == [model.audio_patch_id, model.audio_start_id, model.audio_end_id]
    batch = exported["batch"]  # the plain LM = the text-only Flax forward
    with torch.no_grad():
        logits = lm(torch.from_numpy(batch["ids"]),
                    attention_mask=torch.from_numpy(batch["mask"])).logits.numpy()
    diff, scale, _ = _compare(_flax_logits(model, batch, with_audio=False), logits, batch["mask"])
    assert diff <= FP32_REL_TOL * max(1.0, scale), (diff, scale)
    assert AutoModelForCausalLM.from_pretrained(exported["bf16"]).dtype == torch.bfloat16


@pytest.mark.parametrize("with_audio", [True, False], ids=["audio", "text_only"])
def test_fp32_logits_match_flax(exported, with_audio):
    batch = exported["batch"]
    module = _load_modeling(exported["fp32"])
    torch_model = module.LlarkForCausalLM.from_pretrained(exported["fp32"])
    assert (torch_model.layer_mix is None) == (exported["model"].projector.layer_mix is None)
    ours = exported["logits"] if with_audio else _flax_logits(exported["model"], batch, False)
    diff, scale, top1 = _compare(ours, _torch_logits(torch_model, batch, with_audio),
                                 batch["mask"])
    print(f"{exported['name']} fp32 audio={with_audio}: max|diff| {diff:.2e}, "
          f"max|logit| {scale:.2f}, top-1 {top1:.4f}")
    assert diff <= FP32_REL_TOL * max(1.0, scale), (diff, scale)


def test_bf16_logits_close_to_flax_fp32(exported):
    batch = exported["batch"]
    module = _load_modeling(exported["bf16"])
    torch_model = module.LlarkForCausalLM.from_pretrained(exported["bf16"])
    assert torch_model.projector.weight.dtype == torch.bfloat16
    diff, scale, top1 = _compare(exported["logits"], _torch_logits(torch_model, batch),
                                 batch["mask"])
    print(f"{exported['name']} bf16: max|diff| {diff:.3e}, rel {diff / scale:.4f}, "
          f"top-1 {top1:.4f} over {int(batch['mask'].sum())} tokens")
    assert diff <= BF16_REL_TOL * max(1.0, scale), (diff, scale)
    assert top1 >= BF16_TOP1_MIN


def test_cli_user_errors(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert export.main(["--checkpoint", str(missing), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not exist" in err and err.count("\n") == 1
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert export.main(["--checkpoint", str(tmp_path), "--output", str(full)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and "--force" in err and err.count("\n") == 1


def test_cli_exports_a_model_directory(tmp_path, capsys):
    """`python -m llark_jax export` on a model directory (the one loader) -> same logits."""
    from llark_jax.checkpoints.model_dir import new_model_dir

    tokenizer = make_llark_tokenizer()
    model = _tiny_llark(tokenizer, MODELS["tied_mix_pool"])
    source = new_model_dir(tmp_path / "model", model, tokenizer, template="fastchat_v0",
                           system_prompt="You are a music expert.", step=7)
    out = tmp_path / "export"
    assert export.main(["--checkpoint", str(source), "--output", str(out)]) == 0
    assert "exported step 7" in capsys.readouterr().out
    llark = json.loads((out / export.LLARK_CONFIG_FILE).read_text())
    assert (llark["template"], llark["system_prompt"], llark["step"]) == (
        "fastchat_v0", "You are a music expert.", 7)
    assert llark["features"]["encoder"] == "mel"
    batch = _batch(tokenizer, "tied_mix_pool")
    torch_model = _load_modeling(out).LlarkForCausalLM.from_pretrained(out)
    diff, scale, _ = _compare(_flax_logits(model, batch), _torch_logits(torch_model, batch),
                              batch["mask"])
    assert diff <= FP32_REL_TOL * max(1.0, scale), (diff, scale)
    # no checkpoint at the path: one error line; --force rewrites a finished export
    capsys.readouterr()
    assert export.main(["--checkpoint", str(tmp_path), "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    args = ["--checkpoint", str(source), "--output", str(out), "--dtype", "bfloat16"]
    assert export.main(args) == 2
    assert export.main([*args, "--force"]) == 0
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def _lm_params(llama: Llama, dtype) -> dict[tuple, np.ndarray]:
    """Every LM param in `dtype` as float32, vocabulary padding dropped (the exported view)."""
    vocab = llama.config.vocab_size
    out = {}
    for path, var in nnx.iter_graph(llama):
        if isinstance(var, nnx.Param):
            value = np.asarray(var.get_value()).astype(dtype).astype(np.float32)
            if path == ("embed",):
                value = value[:vocab]
            elif path == ("lm_head",):
                value = value[:, :vocab]
            out[path] = value
    return out


def _assert_lm_equal(loaded: Llama, original: Llama, dtype) -> None:
    ours, ref = _lm_params(loaded, dtype), _lm_params(original, dtype)
    assert sorted(ours) == sorted(ref)
    for path in ref:
        np.testing.assert_array_equal(ours[path], ref[path], err_msg=str(path))


def test_our_hf_loader_reads_the_export(exported):
    """`load_llama` on the export folder reads model.safetensors, not the projector file."""
    model = exported["model"]
    for key, dtype in (("fp32", jnp.float32), ("bf16", jnp.bfloat16)):
        loaded = load_llama(exported[key], dtype=dtype)
        assert loaded.config.vocab_size == model.llama.config.vocab_size
        _assert_lm_equal(loaded, model.llama, dtype)


def test_cli_exports_a_workdir_trained_without_a_tokenizer(tmp_path, capsys):
    """`train --config tiny` (synthetic batches) saves no tokenizer: `--tokenizer` supplies it."""
    from llark_jax.checkpoints.model_dir import load_model
    from llark_jax.train.loop import main as train_main

    tokenizer = make_llark_tokenizer()
    ids = conv.AudioTokenIds.from_tokenizer(tokenizer)
    workdir = tmp_path / "w"
    assert train_main(["--config", "tiny", "--workdir", str(workdir), "--config.train.steps=2",
                       "--config.optim.warmup_steps=1", "--config.metrics.tensorboard=False",
                       f"--config.model.llama.vocab_size={len(tokenizer)}",
                       f"--config.model.audio_start_id={ids.start}",
                       f"--config.model.audio_patch_id={ids.patch}",
                       f"--config.model.audio_end_id={ids.end}"]) == 0
    tokenizer.save_pretrained(str(tmp_path / "tok"))
    out = tmp_path / "export"
    capsys.readouterr()
    assert export.main(["--checkpoint", str(workdir), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "tokenizer" in err and err.count("\n") == 1
    args = ["--checkpoint", str(workdir), "--output", str(out), "--tokenizer"]
    assert export.main([*args, str(tmp_path / "absent")]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert export.main([*args, str(tmp_path / "tok")]) == 0
    assert "exported step 2" in capsys.readouterr().out
    assert json.loads((out / export.LLARK_CONFIG_FILE).read_text())["step"] == 2
    saved = AutoTokenizer.from_pretrained(out)
    assert saved.convert_tokens_to_ids(["<audio_patch>", "<audio_start>", "<audio_end>"]) == [
        ids.patch, ids.start, ids.end]
    trained = load_model(workdir, tokenizer=tokenizer).model.llama
    _assert_lm_equal(load_llama(out), trained, jnp.float32)
