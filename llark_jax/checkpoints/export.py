"""Export a LLark model to a Hugging Face directory that PyTorch loads without llark_jax.

    python -m llark_jax export --checkpoint PATH --output OUT [--dtype float32|bfloat16] [--force]
        [--verify] [--tokenizer DIR]

PATH is a training workdir or a model directory (`llark_jax.checkpoints.model_dir.load_model`);
a workdir trained without a tokenizer (synthetic batches) needs `--tokenizer`, whose LLark token
ids must equal the model's.
OUT receives:

    config.json, model.safetensors      the LM as a standard Llama (`model_type: llama`,
                                        `vocab_size` real rows: vocabulary padding dropped), so
                                        `AutoModelForCausalLM.from_pretrained(OUT)` works with no
                                        remote code; sharded with an index above 5 GiB
    tokenizer files                     `tokenizer.save_pretrained`, with `<audio_patch>`,
                                        `<audio_start>`, `<audio_end>`
    llark_projector.safetensors         `projector.weight` [E, D] (the Flax kernel [D, E]
                                        transposed, as torch `nn.Linear`), `projector.bias` [E],
                                        `layer_mix.logits` [L] when audio_layers L > 0
    llark_config.json                   audio_dim, audio_layers, temporal_pool, the audio token ids,
                                        dtype, plus `extra` (the CLI adds the feature pipeline
                                        spec, template name, system prompt and step)
    modeling_llark.py                   `LlarkForCausalLM` (a copy of `torch_llark.py`): the LM +
                                        projector + splice in PyTorch, see its docstring

All weights are written in `dtype` except `layer_mix.logits`, which stays float32 as in the JAX
model (`LayerMix` always holds float32 logits). The copy of the LM in `dtype` is made on the
model's devices only when the dtypes differ.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llark_jax import errors
from llark_jax.checkpoints.hf import save_llama
from llark_jax.checkpoints.safetensors_io import TensorEntry, write_safetensors
from llark_jax.checkpoints.tokens import AUDIO_END_TOKEN, AUDIO_PATCH_TOKEN, AUDIO_START_TOKEN
from llark_jax.model.llama import Llama
from llark_jax.model.llark import LLark
from llark_jax.model.quant import plain

PROJECTOR_FILE = "llark_projector.safetensors"
LLARK_CONFIG_FILE = "llark_config.json"
MODELING_FILE = "modeling_llark.py"
TORCH_SOURCE = Path(__file__).with_name("torch_llark.py")
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MAX_SHARD_BYTES = 5 * 2**30
# Files an export writes that a later export with another size or layout may not overwrite.
_STALE_PATTERNS = ("model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json")


class ExportError(ValueError):
    """A user mistake (bad output directory, tokenizer without the LLark tokens, ...)."""


def _llama_in_dtype(llama: Llama, dtype: Any) -> Llama:
    """`llama` itself when its params are already `dtype`, else a copy cast to `dtype`."""
    if jnp.dtype(llama.config.param_dtype) == jnp.dtype(dtype):
        return llama
    graphdef, state = nnx.split(llama)
    state = jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, state)
    cast = nnx.merge(graphdef, state)
    cast.config = dataclasses.replace(llama.config, param_dtype=dtype, dtype=dtype)
    return cast


def _check_tokenizer(model: LLark, tokenizer: Any) -> None:
    """Raises ExportError unless the tokenizer maps the audio tokens to the model's ids."""
    names = (AUDIO_PATCH_TOKEN, AUDIO_START_TOKEN, AUDIO_END_TOKEN)
    expected = (model.audio_patch_id, model.audio_start_id, model.audio_end_id)
    found = tuple(tokenizer.convert_tokens_to_ids(list(names)))
    if found != expected:
        raise ExportError(f"tokenizer ids {dict(zip(names, found, strict=True))} differ from the "
                          f"model's {dict(zip(names, expected, strict=True))}")
    if max(expected) >= model.llama.config.vocab_size:
        raise ExportError(f"audio token ids {expected} exceed the model's vocabulary "
                          f"({model.llama.config.vocab_size})")


def projector_entries(model: LLark, dtype: Any) -> list[TensorEntry]:
    """Safetensors entries of the projector in torch layout.

    `projector.weight` [E, D_in] (Flax kernel [D_in, E] transposed) and `projector.bias` [E] in
    `dtype`; `layer_mix.logits` [L] float32 when the projector has a LayerMix.
    """
    np_dtype = np.dtype(dtype)
    proj = model.projector

    def fetch(value: jax.Array, transpose: bool, as_dtype: np.dtype):
        def get() -> np.ndarray:
            array = np.asarray(jax.device_get(value), np.float32)
            return (array.T if transpose else array).astype(as_dtype)

        return get

    kernel, bias = proj.kernel.get_value(), proj.bias.get_value()
    entries = [
        TensorEntry("projector.bias", tuple(bias.shape), np_dtype, fetch(bias, False, np_dtype)),
        TensorEntry("projector.weight", tuple(kernel.shape[::-1]), np_dtype,
                    fetch(kernel, True, np_dtype)),
    ]
    if proj.layer_mix is not None:
        logits = proj.layer_mix.logits.get_value()
        f32 = np.dtype(np.float32)
        entries.insert(0, TensorEntry("layer_mix.logits", tuple(logits.shape), f32,
                                      fetch(logits, False, f32)))
    return entries


def llark_config(model: LLark, dtype: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `llark_config.json` dict: projector shape, pooling, audio token ids, dtype + extra."""
    proj = model.projector
    config: dict[str, Any] = {
        "format": "llark-jax-export",
        "format_version": 1,
        "audio_dim": int(proj.audio_dim),
        "audio_layers": int(proj.audio_layers),
        "projector_in_dim": int(proj.kernel.get_value().shape[0]),
        "hidden_size": int(model.llama.config.hidden_size),
        "temporal_pool": int(model.temporal_pool),
        "audio_patch_id": int(model.audio_patch_id),
        "audio_start_id": int(model.audio_start_id),
        "audio_end_id": int(model.audio_end_id),
        "dtype": dtype,
    }
    clash = sorted(set(config) & set(extra or {}))
    if clash:
        raise ExportError(f"extra keys {clash} would overwrite the exported model's own fields")
    return {**config, **(extra or {})}


def _add_token_ids(config_path: Path, tokenizer: Any) -> None:
    """Writes the tokenizer's bos/eos/pad ids into config.json (HF generation defaults)."""
    config = json.loads(config_path.read_text())
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key, None)
        if value is not None:
            config[key] = int(value)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def remove_stale_files(output: Path) -> None:
    """Deletes LM weight files of an earlier export (a stale index would shadow the new file)."""
    for pattern in _STALE_PATTERNS:
        for path in output.glob(pattern):
            path.unlink()


def export_hf(
    model: LLark,
    tokenizer: Any,
    output: str | Path,
    *,
    dtype: str = "float32",
    extra: dict[str, Any] | None = None,
    max_shard_bytes: int | None = MAX_SHARD_BYTES,
) -> Path:
    """Writes `model` + `tokenizer` as a Hugging Face directory (layout in the module docstring).

    Args:
      model: the LLark; its LM may pad the vocabulary (`LlamaConfig.padded_vocab_size`), the
        export holds exactly `vocab_size` rows of embed [V, E] and lm_head [V, E].
      tokenizer: a transformers tokenizer holding the LLark tokens with the model's ids.
      output: directory, created if missing; files of the same names are overwritten.
      dtype: "float32" or "bfloat16" for the exported weights.
      extra: JSON-serialisable fields added to `llark_config.json` (must not clash with its own).
    Returns: `output` as a Path.
    """
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r} is not one of {sorted(DTYPES)}")
    _check_tokenizer(model, tokenizer)
    config = llark_config(model, dtype, extra)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    remove_stale_files(output)
    # dequantised, LoRA adapters folded into their weights: the export is a plain Llama
    save_llama(_llama_in_dtype(plain(model.llama), DTYPES[dtype]), output,
               max_shard_bytes=max_shard_bytes)
    _add_token_ids(output / "config.json", tokenizer)
    tokenizer.save_pretrained(str(output))
    write_safetensors(output / PROJECTOR_FILE, projector_entries(model, DTYPES[dtype]))
    (output / LLARK_CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    shutil.copyfile(TORCH_SOURCE, output / MODELING_FILE)
    return output


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m llark_jax export",
        description="Export a LLark checkpoint as a Hugging Face Llama + projector for PyTorch.",
    )
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="training workdir or model directory")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="HF tokenizer dir (only for a workdir trained without one)")
    parser.add_argument("--output", required=True, type=Path, help="directory to write")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of the exported weights (default float32)")
    parser.add_argument("--force", action="store_true",
                        help="write into an existing non-empty output directory")
    parser.add_argument("--verify", action="store_true",
                        help="load the export in PyTorch and compare its logits with the Flax "
                             "model's on a templated example (needs torch; fp32 must meet the "
                             "1e-4 relative contract)")
    return parser


def _check_paths(checkpoint: Path, output: Path, force: bool, tokenizer: Path | None) -> None:
    if not checkpoint.exists():
        raise ExportError(f"{checkpoint} does not exist")
    if tokenizer is not None and not tokenizer.is_dir():
        raise ExportError(f"--tokenizer {tokenizer}: no such directory")
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise ExportError(f"{output} is not empty (pass --force to write into it)")
    if output.resolve() == checkpoint.resolve():
        raise ExportError("--output must differ from --checkpoint")


def _load_tokenizer(directory: Path | None) -> Any:
    """The tokenizer saved in `directory` (`--tokenizer`), None without the flag."""
    if directory is None:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(directory))


def main(argv: list[str]) -> int:
    """`python -m llark_jax export ...`; user mistakes print one `error:` line and return 2."""
    args = _parser().parse_args(argv)
    try:
        _check_paths(args.checkpoint, args.output, args.force, args.tokenizer)
    except ExportError as e:
        return errors.report(e)
    from llark_jax.checkpoints.model_dir import ModelDirError, load_model

    try:
        loaded = load_model(args.checkpoint, tokenizer=_load_tokenizer(args.tokenizer))
        extra = {
            "features": loaded.features.to_json(),
            "template": loaded.template.name,
            "system_prompt": loaded.template.system_prompt,
            "step": int(loaded.step),
        }
        out = export_hf(loaded.model, loaded.tokenizer, args.output, dtype=args.dtype,
                        extra=extra)
    except (ExportError, ModelDirError) as e:
        return errors.report(e)
    print(f"exported step {loaded.step} of {args.checkpoint} to {out} ({args.dtype})")
    if args.verify:
        from llark_jax.checkpoints.export_check import verify_export

        check = verify_export(loaded, out, args.dtype)
        print(f"verify: max|diff| {check['max_abs_diff']:.3g} at max|logit| "
              f"{check['max_abs_logit']:.3g} ({check['relative']:.2g} relative), top-1 "
              f"{check['top1_agreement']:.1%} over {check['tokens']} tokens")
        if not check["ok"]:
            print("error: the exported model's logits differ from the Flax model's beyond the "
                  "fp32 contract", file=sys.stderr)
            return 1
    return 0
