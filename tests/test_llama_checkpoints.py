"""HF checkpoint round trips, the pytorch_model.bin fallback, sharded loading, LLark tokens."""

from __future__ import annotations

import copy
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.torch
import tokenizers
import torch
import transformers
from flax import nnx
from jax.sharding import Mesh, PartitionSpec
from llama_helpers import TINY, cached_checkpoint, make_torch_llama, random_batch, torch_logits

from llark_jax.checkpoints.hf import load_config, load_llama, save_llama
from llark_jax.checkpoints.tokens import extend_tokenizer, extend_with_llark_tokens
from llark_jax.model.llama import param_logical_axes
from llark_jax.model.sharding import DEFAULT_RULES, logical_rules, logical_to_spec

V = TINY["vocab_size"]


def _all_tensors(path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            out.update(safetensors.torch.load_file(os.path.join(path, f)))
    return out


def _assert_bit_exact(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert torch.equal(a[name].view(torch.uint8), b[name].view(torch.uint8)), name


@pytest.mark.parametrize(
    ("name", "dtype", "sharded"),
    [("gqa_llama3", torch.float32, False), ("mha_tied_1e4", torch.float32, True),
     ("gqa_untied_5e5", torch.bfloat16, True)],
)
def test_hf_round_trip_is_bit_exact(tmp_path, name, dtype, sharded):
    tm = make_torch_llama(name, dtype=dtype)
    src = cached_checkpoint(name, dtype, sharded)
    assert os.path.exists(os.path.join(src, "model.safetensors.index.json")) == sharded
    model = load_llama(src, dtype=jnp.bfloat16 if dtype == torch.bfloat16 else jnp.float32)
    dst = tmp_path / "dst"
    save_llama(model, dst, max_shard_bytes=60_000 if sharded else None)
    assert os.path.exists(dst / "model.safetensors.index.json") == sharded
    _assert_bit_exact(_all_tensors(src), _all_tensors(dst))
    assert load_config(dst, param_dtype=model.config.param_dtype,
                       dtype=model.config.dtype) == model.config
    reloaded = transformers.LlamaForCausalLM.from_pretrained(
        dst, dtype=dtype, attn_implementation="eager").eval()
    ids, mask = random_batch(V, [40, 31])
    np.testing.assert_array_equal(torch_logits(reloaded, ids, mask), torch_logits(tm, ids, mask))


def test_pytorch_bin_fallback_loads_same_weights(tmp_path):
    tm = make_torch_llama("gqa_untied_5e5")
    torch.save(tm.state_dict(), tmp_path / "pytorch_model.bin")
    with open(tmp_path / "config.json", "w") as f:
        json.dump(tm.config.to_dict(), f)
    from_bin = load_llama(tmp_path)
    from_st = load_llama(cached_checkpoint("gqa_untied_5e5"))
    for (path, a), (_, b) in zip(nnx.iter_graph(from_bin), nnx.iter_graph(from_st), strict=True):
        if isinstance(a, nnx.Param):
            np.testing.assert_array_equal(np.asarray(a[...]), np.asarray(b[...]), err_msg=str(path))


def test_keep_layers_matches_torch_with_its_layer_list_cut():
    """`keep_layers=1` of a 2-layer checkpoint is the torch model with `model.layers[:1]`."""
    tm = copy.deepcopy(make_torch_llama("gqa_untied_5e5"))  # the helper's model is shared
    tm.model.layers = tm.model.layers[:1]
    tm.config.num_hidden_layers = 1
    model = load_llama(cached_checkpoint("gqa_untied_5e5"), keep_layers=1)
    assert model.config.num_layers == 1
    ids, mask = random_batch(V, [300, 211])
    out = np.asarray(nnx.jit(lambda m, i, k: m(i, attention_mask=k))(
        model, jnp.asarray(ids), jnp.asarray(mask)))
    ref = torch_logits(tm, ids, mask)
    assert np.abs(out - ref)[mask.astype(bool)].max() <= 1e-4 * np.abs(ref).max()


def test_logical_to_spec_rules():
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    assert logical_to_spec(("embed", "mlp"), DEFAULT_RULES) == PartitionSpec("fsdp", "tensor")
    batch_spec = logical_to_spec(("batch", "length"), DEFAULT_RULES)
    assert batch_spec == PartitionSpec(("data", "fsdp"), None)
    # vocab 32004 is not divisible by the tensor axis: replicated instead of an IndivisibleError.
    mesh_t8 = Mesh(np.array(jax.devices()[:8]).reshape(1, 1, 8), ("data", "fsdp", "tensor"))
    spec = logical_to_spec(("vocab", "embed"), DEFAULT_RULES, mesh=mesh_t8, shape=(32004, 4096))
    assert spec == PartitionSpec(None, "fsdp")
    spec = logical_to_spec(("vocab", "embed"), DEFAULT_RULES, mesh=mesh_t8, shape=(32128, 4096))
    assert spec == PartitionSpec("tensor", "fsdp")
    # a mesh axis is used once; axes the mesh lacks are dropped.
    rules = (("heads", "tensor"), ("head_dim", "tensor"), ("embed", "model"))
    assert logical_to_spec(("embed", "heads", "head_dim"), rules, mesh=mesh) == PartitionSpec(
        None, "tensor", None)


def test_load_onto_mesh_matches_unsharded():
    tm = make_torch_llama("gqa_untied_5e5")
    path = cached_checkpoint("gqa_untied_5e5")
    mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
    sharded = load_llama(path, mesh=mesh)
    q = sharded.layers.attn.q  # all layers stacked [L, embed, heads, head_dim]
    assert param_logical_axes(q) == ("layers", "embed", "heads", "head_dim")
    assert q[...].sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
    assert len(q[...].addressable_shards) == 8
    ids, mask = random_batch(V, [64, 50, 64, 33])

    @nnx.jit
    def forward(model, ids, mask):
        with logical_rules(mesh, DEFAULT_RULES):
            return model(ids, attention_mask=mask)

    out = np.asarray(forward(sharded, jnp.asarray(ids), jnp.asarray(mask)))
    ref = torch_logits(tm, ids, mask)
    valid = mask.astype(bool)
    assert np.abs(out - ref)[valid].max() <= 1e-4 * np.abs(ref).max()


def _word_tokenizer(n: int, with_pad: bool) -> transformers.PreTrainedTokenizerFast:
    vocab = {f"w{i}": i for i in range(n)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="w0", pad_token="w1" if with_pad else None)


@pytest.mark.parametrize("name", ["gqa_untied_5e5", "mha_tied_1e4"])
def test_llark_token_rows(name):
    model = load_llama(cached_checkpoint(name))
    names = ["embed"] if model.config.tie_word_embeddings else ["embed", "lm_head"]
    before = {n: np.asarray(getattr(model, n)[...]) for n in names}
    before = {n: (v if n == "embed" else v.T) for n, v in before.items()}
    tokenizer = _word_tokenizer(V, with_pad=False)
    ids = extend_with_llark_tokens(model, tokenizer, seed=3)
    assert (ids.pad, ids.patch, ids.start, ids.end) == (V, V + 1, V + 2, V + 3)
    assert tokenizer.convert_ids_to_tokens([V, V + 3]) == ["[PAD]", "<audio_end>"]
    assert model.config.vocab_size == V + 4
    for n in names:
        rows = np.asarray(getattr(model, n)[...])
        rows = rows if n == "embed" else rows.T
        assert rows.shape == (V + 4, TINY["hidden_size"])
        np.testing.assert_array_equal(rows[:V], before[n])
        np.testing.assert_allclose(rows[V], before[n].mean(0), rtol=1e-6, atol=1e-7)
        assert 0.01 < rows[V + 1].std() < 0.03 and abs(rows[V + 1].mean()) < 0.01
        np.testing.assert_allclose(rows[V + 2], rows[: V + 2].mean(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(rows[V + 2], rows[V + 3])


def test_llark_tokens_reuse_existing_pad():
    model = load_llama(cached_checkpoint("mqa_linear"), vocab_multiple=128)
    assert model.embed[...].shape[0] == 384
    ids = extend_with_llark_tokens(model, _word_tokenizer(V, with_pad=True))
    assert (ids.pad, ids.patch, ids.start, ids.end) == (1, V, V + 1, V + 2)
    assert model.config.vocab_size == V + 3 and model.embed[...].shape[0] == 512
    logits = np.asarray(nnx.jit(lambda m, ids: m(ids))(model, jnp.zeros((1, 2), jnp.int32)))
    assert logits.shape == (1, 2, 512) and np.all(logits[..., V + 3 :] < -1e29)


@pytest.mark.parametrize("with_pad", [False, True])
def test_extend_tokenizer_alone_gives_the_model_extension_ids(with_pad):
    model = load_llama(cached_checkpoint("mqa_linear"))
    with_model = _word_tokenizer(V, with_pad=with_pad)
    alone = _word_tokenizer(V, with_pad=with_pad)
    assert extend_tokenizer(alone) == extend_with_llark_tokens(model, with_model)
    assert alone.get_vocab() == with_model.get_vocab() and len(alone) == model.config.vocab_size


def test_bad_checkpoints_raise_typed_errors(tmp_path):
    from llark_jax.checkpoints.hf import CheckpointError, fill_llama, load_config
    from llark_jax.checkpoints.safetensors_io import iter_tensors

    src = cached_checkpoint("mqa_linear")
    config = load_config(src)
    tensors = [(n, np.asarray(w)) for n, w in iter_tensors(os.path.join(src, "model.safetensors"))]
    with pytest.raises(CheckpointError, match="lacks tensors"):
        fill_llama(config, [t for t in tensors if "layers.1.mlp.up_proj" not in t[0]])
    with pytest.raises(CheckpointError, match="unexpected tensor 'model.extra.weight'"):
        fill_llama(config, [*tensors, ("model.extra.weight", tensors[0][1])])
    with pytest.raises(CheckpointError, match="does not fit"):
        fill_llama(config, [(n, w[..., :-1]) if n == "model.norm.weight" else (n, w)
                            for n, w in tensors])
    with open(tmp_path / "config.json", "w") as f:
        json.dump(config.to_hf_dict(), f)
    with pytest.raises(CheckpointError, match="no \\*.safetensors"):
        load_llama(tmp_path)
