"""Stacked decoder layers: the `lax.scan` over [L, ...] params equals a per-layer loop."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llark_jax.model import llama
from llark_jax.model.llama import Llama, LlamaConfig, param_logical_axes

CONFIG = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_layers=3,
                     num_heads=4, num_kv_heads=2, head_dim=8)


def _layer_loop(layers, x_btd, cos_bth, sin_bth, segment_ids_bt, **_):
    """Reference: row l of every stacked param merged into one layer, applied in a Python loop."""
    graphdef, stacked = nnx.split(layers)
    for i in range(CONFIG.num_layers):
        layer = nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], stacked))
        x_btd, _ = layer(x_btd, cos_bth, sin_bth, segment_ids_bt)
    return x_btd


def _loss_and_grads(model: Llama, ids_bt, seg_bt):
    def loss_fn(m):
        logits = m(ids_bt, segment_ids=seg_bt)
        return jnp.mean(jax.nn.logsumexp(logits, axis=-1) - logits[..., 0])

    return nnx.value_and_grad(loss_fn)(model)


@pytest.mark.parametrize("scan_layers, remat", [(True, False), (True, True), (False, False),
                                                (False, True)])
def test_scan_equals_layer_loop_loss_and_gradients(scan_layers, remat, monkeypatch):
    """Rolled (`scan_layers`) and unrolled scans, with and without remat."""
    model = Llama(dataclasses.replace(CONFIG, remat=remat, scan_layers=scan_layers),
                  rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    ids_bt = jnp.asarray(rng.integers(0, 128, (2, 300)), jnp.int32)
    seg_bt = jnp.asarray(np.repeat([[1] * 200 + [2] * 80 + [0] * 20], 2, axis=0), jnp.int32)
    loss_s, grads_s = _loss_and_grads(model, ids_bt, seg_bt)
    monkeypatch.setattr(llama, "_scan_layers", _layer_loop)
    loss_u, grads_u = _loss_and_grads(model, ids_bt, seg_bt)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-6)
    flat_u, flat_s = jax.tree.leaves(nnx.state(grads_u)), jax.tree.leaves(nnx.state(grads_s))
    assert len(flat_u) == len(flat_s) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))
    for g_u, g_s in zip(flat_u, flat_s, strict=True):
        np.testing.assert_allclose(g_s, g_u, rtol=1e-5, atol=1e-7)


def test_layer_params_are_stacked_with_independent_rows():
    model = Llama(CONFIG, rngs=nnx.Rngs(0))
    stacked = [(path, v) for path, v in nnx.iter_graph(model.layers) if isinstance(v, nnx.Param)]
    assert len(stacked) == 9
    for path, var in stacked:
        value = np.asarray(var.get_value())
        assert value.shape[0] == CONFIG.num_layers, path
        assert param_logical_axes(var)[0] == "layers" and len(param_logical_axes(var)) == value.ndim
        if path[-1] == "scale":
            np.testing.assert_array_equal(value, 1.0)
        else:  # each row: N(0, initializer_range), drawn independently
            assert not np.allclose(value[0], value[1]), path
            np.testing.assert_allclose(value.std(axis=tuple(range(1, value.ndim))),
                                       CONFIG.initializer_range, rtol=0.2)
