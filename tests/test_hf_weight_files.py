"""Which files `load_llama` reads in an HF folder: the ones `transformers.from_pretrained` reads.

`model.safetensors`, else the shards of `model.safetensors.index.json`; a folder with neither
falls back to the `*.safetensors` holding Llama tensor names. Safetensors beside the LM (an
export's `llark_projector.safetensors`, a stale shard the index does not name) are never read.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import transformers
from flax import nnx
from llama_helpers import cached_checkpoint

from llark_jax.checkpoints.hf import CheckpointError, load_llama

SOURCE = "gqa_untied_5e5"
PROJECTOR = {"projector.weight": np.ones((64, 48), np.float32),
             "projector.bias": np.zeros(64, np.float32)}


def _source_tensors() -> dict[str, np.ndarray]:
    return safetensors.numpy.load_file(str(Path(cached_checkpoint(SOURCE)) / "model.safetensors"))


def _folder(root: Path, files: dict[str, dict[str, np.ndarray]]) -> Path:
    """`root` with the source's config.json and each {file name: tensors} written."""
    root.mkdir()
    shutil.copyfile(Path(cached_checkpoint(SOURCE)) / "config.json", root / "config.json")
    for name, tensors in files.items():
        safetensors.numpy.save_file(tensors, str(root / name))
    return root


def _write_index(root: Path, shards: dict[str, dict[str, np.ndarray]]) -> None:
    weight_map = {t: name for name, tensors in shards.items() for t in tensors}
    (root / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))


def _params(model) -> dict[tuple, np.ndarray]:
    return {path: np.asarray(v.get_value()) for path, v in nnx.iter_graph(model)
            if isinstance(v, nnx.Param)}


def _assert_same(model, reference) -> None:
    ours, ref = _params(model), _params(reference)
    assert sorted(ours) == sorted(ref)
    for path in ref:
        np.testing.assert_array_equal(ours[path], ref[path], err_msg=str(path))


def _halves() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    tensors = _source_tensors()
    names = sorted(tensors)
    first = {n: tensors[n] for n in names[: len(names) // 2]}
    return first, {n: tensors[n] for n in names[len(names) // 2 :]}


def test_model_safetensors_beside_a_projector_file(tmp_path):
    """An export's layout: the projector file beside model.safetensors is not read."""
    root = _folder(tmp_path / "m", {"model.safetensors": _source_tensors(),
                                    "llark_projector.safetensors": PROJECTOR})
    _assert_same(load_llama(root), load_llama(cached_checkpoint(SOURCE)))


def test_sharded_index_reads_only_its_shards(tmp_path):
    """Two shards + index, a projector file and a stale shard the index does not name."""
    first, second = _halves()
    stale = {n: w + 1 for n, w in first.items()}
    shards = {"model-00001-of-00002.safetensors": first,
              "model-00002-of-00002.safetensors": second}
    root = _folder(tmp_path / "m", {**shards, "llark_projector.safetensors": PROJECTOR,
                                    "model-00001-of-00003.safetensors": stale})
    _write_index(root, shards)
    _assert_same(load_llama(root), load_llama(cached_checkpoint(SOURCE)))


def test_model_safetensors_wins_over_an_index_as_in_transformers(tmp_path):
    """Both present: transformers reads model.safetensors, and so do we."""
    first, second = _halves()
    shards = {"model-00001-of-00002.safetensors": {n: w + 1 for n, w in first.items()},
              "model-00002-of-00002.safetensors": second}
    root = _folder(tmp_path / "m", {"model.safetensors": _source_tensors(), **shards})
    _write_index(root, shards)
    ours = load_llama(root)
    _assert_same(ours, load_llama(cached_checkpoint(SOURCE)))
    torch_model = transformers.LlamaForCausalLM.from_pretrained(root)
    np.testing.assert_array_equal(np.asarray(ours.embed[...]),
                                  torch_model.get_input_embeddings().weight.detach().numpy())


def test_unindexed_folder_reads_the_files_holding_llama_tensors(tmp_path):
    first, second = _halves()
    root = _folder(tmp_path / "m", {"part-a.safetensors": first, "part-b.safetensors": second,
                                    "llark_projector.safetensors": PROJECTOR})
    _assert_same(load_llama(root), load_llama(cached_checkpoint(SOURCE)))
    only_projector = _folder(tmp_path / "p", {"llark_projector.safetensors": PROJECTOR})
    with pytest.raises(CheckpointError, match="no \\*.safetensors with Llama weights"):
        load_llama(only_projector)
