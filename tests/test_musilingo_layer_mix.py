"""LayerMix: uniform at init, exact softmax-weighted sums on both layouts, trainable weights."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from llark_jax.model.layer_mix import LayerMix

L, T, D = 5, 7, 6


def _x_bltd(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, L, T, D)).astype(np.float32)


def test_init_is_plain_mean_on_both_layouts():
    mix, x_bltd = LayerMix(L), _x_bltd()
    np.testing.assert_allclose(mix(jnp.asarray(x_bltd)), x_bltd.mean(1), atol=1e-6)
    x_btf = x_bltd.transpose(0, 2, 1, 3).reshape(2, T, L * D)  # the stored [T, L*D] layout
    np.testing.assert_allclose(mix.mix_flat(jnp.asarray(x_btf)), x_bltd.mean(1), atol=1e-6)


def test_weighted_sum_matches_numpy_softmax():
    mix, x_bltd = LayerMix(L), _x_bltd(1)
    logits = np.array([2.0, -1.0, 0.5, 0.0, 3.0], np.float32)
    mix.logits[...] = jnp.asarray(logits)
    w = np.exp(logits - logits.max())
    w /= w.sum()
    expected_btd = np.einsum("l,bltd->btd", w, x_bltd)
    np.testing.assert_allclose(mix.weights(), w, rtol=1e-6)
    np.testing.assert_allclose(mix(jnp.asarray(x_bltd)), expected_btd, atol=1e-5)
    x_btf = x_bltd.transpose(0, 2, 1, 3).reshape(2, T, L * D)
    np.testing.assert_allclose(mix.mix_flat(jnp.asarray(x_btf)), expected_btd, atol=1e-5)
    y_bf16 = mix.mix_flat(jnp.asarray(x_btf, jnp.bfloat16))
    assert y_bf16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y_bf16, np.float32), expected_btd, atol=0.05)


def test_weights_learn_to_select_the_informative_layer():
    """Target = layer 3 of the input: Adam on the logits alone drives w[3] towards 1."""
    mix = LayerMix(L)
    x_bltd = jnp.asarray(_x_bltd(2))
    target_btd = x_bltd[:, 3]
    graphdef, params = nnx.split(mix, nnx.Param)
    tx = optax.adam(0.1)
    opt_state = tx.init(params)

    def loss_fn(p):
        return jnp.mean((nnx.merge(graphdef, p)(x_bltd) - target_btd) ** 2)

    @jax.jit
    def step(p, state):
        updates, state = tx.update(jax.grad(loss_fn)(p), state, p)
        return optax.apply_updates(p, updates), state

    first = float(loss_fn(params))
    for _ in range(150):
        params, opt_state = step(params, opt_state)
    trained = nnx.merge(graphdef, params)
    assert float(loss_fn(params)) < 0.05 * first
    assert int(np.argmax(trained.weights())) == 3 and float(trained.weights()[3]) > 0.9


def test_shape_errors_name_the_problem():
    with pytest.raises(ValueError, match="layers"):
        LayerMix(L)(jnp.zeros((2, L + 1, T, D)))
    with pytest.raises(ValueError, match="L \\* D"):
        LayerMix(L).mix_flat(jnp.zeros((2, T, L * D + 1)))
    with pytest.raises(ValueError, match="n_layers"):
        LayerMix(0)


def test_grouped_storage_equals_musilingo_order():
    """mix -> projector -> mean over groups of p frames (last group partial), MusiLingo's order,
    equals group means stored first (encoder `groupN`) -> mix -> projector: all maps are affine."""
    from llark_jax.model.llark import AudioProjector

    n_frames, width = 10, 6  # groups of 4 frames: 4, 4, 2
    mix = LayerMix(L)
    mix.logits[...] = jnp.asarray([0.3, -1.0, 2.0, 0.0, 0.7])
    proj = AudioProjector(width, 8, param_dtype=jnp.float32, dtype=jnp.float32,
                          rngs=nnx.Rngs(0))
    x_tf = np.random.default_rng(3).standard_normal((n_frames, L * width)).astype(np.float32)
    groups = [slice(0, 4), slice(4, 8), slice(8, 10)]
    projected_te = np.asarray(proj(mix.mix_flat(jnp.asarray(x_tf))))
    musilingo_ge = np.stack([projected_te[g].mean(0) for g in groups])
    stored_gf = np.stack([x_tf[g].mean(0) for g in groups])
    ours_ge = np.asarray(proj(mix.mix_flat(jnp.asarray(stored_gf))))
    np.testing.assert_allclose(ours_ge, musilingo_ge, atol=1e-5)
