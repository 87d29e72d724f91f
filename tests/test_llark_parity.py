"""LLark (JAX) vs a PyTorch reference of the official forward with the same random weights.

Batch: 2 FastChat-v0 conversations (audio first / audio last, ~330 and ~300 tokens, right-padded)
with 240 audio frames each, tiny 2-layer GQA Llama, float32. Tolerances: loss 1e-5 relative;
gradients 1e-4 relative (max |diff| / max |ref|) for the projector, decoder layer 1 and the
`<audio_start>`/`<audio_end>` embedding rows.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx
from llark_helpers import reference_batch, tiny_llark
from llark_torch_reference import TorchLLark

from llark_jax.model import trainable
from llark_jax.model.loss import masked_lm_loss


def _rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def setup():
    tok, examples, batch, audio = reference_batch()
    assert min(len(e["input_ids"]) for e in examples) >= 300
    model = tiny_llark(tok)
    graphdef, params = nnx.split(model, nnx.Param)

    def loss_fn(params):
        m = nnx.merge(graphdef, params)
        logits = m(jnp.asarray(batch["input_ids"]), jnp.asarray(audio),
                   attention_mask=jnp.asarray(batch["attention_mask"]))
        return masked_lm_loss(logits, jnp.asarray(batch["labels"]))[0], logits

    (loss, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)

    ref = TorchLLark(model)
    t_loss, t_logits = ref(
        torch.from_numpy(batch["input_ids"]).long(), torch.from_numpy(audio),
        torch.from_numpy(batch["attention_mask"]).long(),
        torch.from_numpy(batch["labels"]).long(),
    )
    t_loss.backward()
    return dict(model=model, params=params, grads=grads, loss=loss, logits=logits, ref=ref,
                t_loss=t_loss, t_logits=t_logits, batch=batch)


def test_loss_and_logits_match_reference(setup):
    s = setup
    rel = abs(float(s["loss"]) - s["t_loss"].item()) / abs(s["t_loss"].item())
    print(f"loss jax={float(s['loss']):.7f} torch={s['t_loss'].item():.7f} rel={rel:.2e}")
    assert rel < 1e-5
    real = s["batch"]["attention_mask"].astype(bool)
    diff = np.abs(np.asarray(s["logits"])[real] - s["t_logits"].detach().numpy()[real]).max()
    print(f"max |logit diff| on real tokens = {diff:.2e}")
    assert diff < 1e-4


def test_gradients_match_reference(setup):
    s = setup
    g, ref = s["grads"], s["ref"]
    hf = ref.lm.model.layers[1]
    ours = jax.tree.map(lambda stacked: stacked[1], g["llama"]["layers"])  # row 1 of [L, ...]
    d = s["model"].llama.config.hidden_size
    pairs = {
        "projector.kernel": (g["projector"]["kernel"][...], ref.mm_projector.weight.grad.T),
        "projector.bias": (g["projector"]["bias"][...], ref.mm_projector.bias.grad),
        "layer1.input_norm": (ours["input_norm"]["scale"][...], hf.input_layernorm.weight.grad),
        "layer1.post_attn_norm": (ours["post_attn_norm"]["scale"][...],
                                  hf.post_attention_layernorm.weight.grad),
        "layer1.o": (ours["attn"]["o"][...].reshape(-1, d), hf.self_attn.o_proj.weight.grad.T),
    }
    for name in "qkv":
        torch_grad = getattr(hf.self_attn, f"{name}_proj").weight.grad.T
        pairs[f"layer1.{name}"] = (ours["attn"][name][...].reshape(d, -1), torch_grad)
    for name in ("gate", "up", "down"):
        torch_grad = getattr(hf.mlp, f"{name}_proj").weight.grad.T
        pairs[f"layer1.{name}"] = (ours["mlp"][name][...], torch_grad)
    start, end = s["model"].audio_start_id, s["model"].audio_end_id
    t_embed_grad = ref.lm.model.embed_tokens.weight.grad.numpy()
    ours_embed = np.asarray(g["llama"]["embed"][...])
    pairs["embed[start,end]"] = (ours_embed[[start, end]], t_embed_grad[[start, end]])
    worst = 0.0
    for name, (ours, theirs) in pairs.items():
        rel = _rel(ours, np.asarray(theirs))
        print(f"grad {name}: rel {rel:.2e}")
        worst = max(worst, rel)
        assert rel < 1e-4, name
    print(f"worst grad rel diff {worst:.2e}")
    # The detach hack leaves exactly the start/end rows with gradient in the reference; our
    # row mask turns our full embedding gradient into the same thing.
    nonzero_rows = np.flatnonzero(np.abs(t_embed_grad).sum(1))
    assert set(nonzero_rows) == {start, end}
    mask = trainable.gradient_mask(s["model"], "llark_reference")
    masked = trainable.apply_mask(g, mask)["llama"]["embed"][...]
    assert _rel(masked, t_embed_grad) < 1e-4


def test_frozen_groups_get_exactly_zero_update(setup):
    s = setup
    params, grads, model = s["params"], s["grads"], s["model"]
    mask = trainable.gradient_mask(model, "llark_reference")
    tx = trainable.masked_optimizer(optax.adamw(1e-3, weight_decay=0.1), mask)
    updates, _ = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    old_embed, new_embed = params["llama"]["embed"][...], new["llama"]["embed"][...]
    keep = np.ones(old_embed.shape[0], bool)
    keep[[model.audio_start_id, model.audio_end_id]] = False
    np.testing.assert_array_equal(new_embed[keep], old_embed[keep])
    assert np.abs(new_embed[~keep] - old_embed[~keep]).min() > 0
    np.testing.assert_array_equal(new["llama"]["lm_head"][...], params["llama"]["lm_head"][...])
    for path in (("projector", "kernel"), ("llama", "final_norm", "scale")):
        a, b = new, params
        for k in path:
            a, b = a[k], b[k]
        assert np.abs(a[...] - b[...]).max() > 0, path
