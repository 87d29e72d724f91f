"""Training from a Hugging Face directory: LLark token extension, id checks, a short real run."""

import json

import pytest
from flax import nnx
from tokenizer_fixtures import make_base_tokenizer
from train_helpers import tiny_config

from llark_jax.checkpoints.build import TokenIdMismatchError, resolve_config
from llark_jax.checkpoints.hf import save_llama
from llark_jax.model.llama import Llama, LlamaConfig
from llark_jax.train.loop import train


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A tiny random Llama saved as an HF directory with a real local BPE tokenizer (no pad)."""
    path = tmp_path_factory.mktemp("tiny_hf")
    tokenizer = make_base_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    save_llama(Llama(cfg, rngs=nnx.Rngs(0)), path)
    tokenizer.save_pretrained(path)
    return path, len(tokenizer)


def hf_config(path, n, **extra):
    # [PAD] = n, <audio_patch> = n + 1, <audio_start> = n + 2, <audio_end> = n + 3 (spec §1.3)
    return tiny_config(model__source="hf", model__path=str(path), model__vocab_size=str(n + 4),
                       model__audio_patch_id=str(n + 1), model__audio_start_id=str(n + 2),
                       model__audio_end_id=str(n + 3), **extra)


def test_token_ids_must_match_the_config(hf_dir):
    path, n = hf_dir
    resolved, tokenizer = resolve_config(hf_config(path, n))
    assert len(tokenizer) == n + 4 and resolved.model.vocab_size == n + 4
    assert resolved.model.llama.hidden_size == 32  # the checkpoint's dims are written in
    wrong = tiny_config(model__source="hf", model__path=str(path))  # tiny's ids 253..255
    with pytest.raises(TokenIdMismatchError, match="audio_start_id"):
        resolve_config(wrong)


def test_unset_token_ids_come_from_the_tokenizer(hf_dir):
    path, n = hf_dir
    config = tiny_config(model__source="hf", model__path=str(path), model__audio_patch_id="-1",
                         model__audio_start_id="-1", model__audio_end_id="-1")
    resolved, _ = resolve_config(config)
    m = resolved.model
    assert (m.audio_patch_id, m.audio_start_id, m.audio_end_id, m.vocab_size) == (
        n + 1, n + 2, n + 3, n + 4)


@pytest.mark.slow
def test_train_from_hf_directory(hf_dir, tmp_path):
    path, n = hf_dir
    config = hf_config(path, n, train__steps="3", train__checkpoint_every="3")
    assert train(config, tmp_path) == 0
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").open()]
    assert len(losses) == 3 and all(4.0 < loss < 9.0 for loss in losses)  # ~ln(604) = 6.4


def test_an_exported_llark_lm_keeps_its_token_rows(hf_dir, tmp_path):
    """An `export` folder's tokenizer holds the LLark tokens and its LM their rows already: the
    model built from it keeps both, row for row (3 more rows were added, and training stopped
    with "tokenizer grew to N tokens but the model to N + 3 rows")."""
    import numpy as np
    from transformers import AutoTokenizer

    from llark_jax.checkpoints.build import _pretrained_llama
    from llark_jax.checkpoints.tokens import extend_tokenizer

    path, n = hf_dir
    tokenizer = AutoTokenizer.from_pretrained(path)
    extend_tokenizer(tokenizer)
    exported = tmp_path / "export"
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8)
    saved = Llama(cfg, rngs=nnx.Rngs(1))
    save_llama(saved, exported)
    tokenizer.save_pretrained(exported)
    resolved, _ = resolve_config(hf_config(exported, n))
    built = _pretrained_llama(resolved.model, seed=0)
    assert built.config.vocab_size == resolved.model.vocab_size == n + 4
    np.testing.assert_array_equal(np.asarray(built.embed[...])[: n + 4],
                                  np.asarray(saved.embed[...])[: n + 4])
