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


def _param_paths(params) -> dict[str, np.ndarray]:
    return {"/".join(map(str, path)): np.asarray(v.get_value())
            for path, v in nnx.to_flat_state(params)}


def test_audio_layers_zero_leaves_the_model_unchanged():
    """`model.audio_layers` = 0 (and a saved config without the key) builds exactly the model
    built before the option existed: same parameters, same values, same projected frames."""
    from train_helpers import tiny_config

    from llark_jax.checkpoints.build import llama_config, model_fn
    from llark_jax.model.llama import Llama
    from llark_jax.model.llark import LLark

    config = tiny_config()
    assert config.model.audio_layers == 0
    _, with_key, _ = nnx.split(model_fn(config.model, 0)(), nnx.Param, ...)
    del config.model["audio_layers"]  # a workdir config written before the key existed
    _, without_key, _ = nnx.split(model_fn(config.model, 0)(), nnx.Param, ...)
    rngs = nnx.Rngs(0)  # the constructor call as it was, without audio_layers
    plain = LLark(Llama(llama_config(config.model), rngs=rngs), config.model.audio_dim,
                  audio_start_id=253, audio_patch_id=254, audio_end_id=255, rngs=rngs)
    _, before, _ = nnx.split(plain, nnx.Param, ...)
    ref = _param_paths(before)
    assert "projector/kernel" in ref and not any("layer_mix" in k for k in ref)
    for params in (with_key, without_key):
        got = _param_paths(params)
        assert sorted(got) == sorted(ref)
        for name in ref:
            np.testing.assert_array_equal(got[name], ref[name], err_msg=name)
    audio = jnp.asarray(np.random.default_rng(0).standard_normal((2, 4, 16)), jnp.float32)
    model = nnx.merge(*nnx.split(model_fn(config.model, 0)()))
    np.testing.assert_array_equal(model.project_audio(audio), plain.project_audio(audio))


def test_audio_layers_mix_in_the_projector_and_train_under_projector_only():
    """audio_layers = 4 over audio_dim 16 (4 stored layers of 4): projector = mix_flat -> dense
    [4, E]; with the projector_only preset the layer logits train and the LM stays frozen."""
    from train_helpers import run_steps, tiny_config

    from llark_jax.model.llark import AudioProjector
    from llark_jax.model.sharding import logical_rules

    proj = AudioProjector(16, 8, audio_layers=4, param_dtype=jnp.float32, dtype=jnp.float32,
                          rngs=nnx.Rngs(0))
    proj.layer_mix.logits[...] = jnp.asarray([1.0, -2.0, 0.5, 0.0])
    assert proj.kernel.shape == (4, 8) and proj.audio_dim == 16
    x_tf = jnp.asarray(np.random.default_rng(4).standard_normal((3, 16)), jnp.float32)
    expected_te = proj.layer_mix.mix_flat(x_tf) @ proj.kernel[...] + proj.bias[...]
    np.testing.assert_allclose(proj(x_tf), expected_te, atol=1e-6)
    with pytest.raises(ValueError, match="audio_layers=3"):
        AudioProjector(16, 8, audio_layers=3, param_dtype=jnp.float32, dtype=jnp.float32,
                       rngs=nnx.Rngs(0))

    config = tiny_config(model__audio_layers="4", model__trainable="projector_only")
    setup, state, losses = run_steps(config, {"fsdp": 1}, 10, devices=jax.devices()[:1])
    with logical_rules(setup.mesh, setup.rules):  # the same (seeded) initial state again
        before = _param_paths(setup.fresh_state()["params"])
    after = _param_paths(state["params"])
    assert after["projector/layer_mix/logits"].shape == (4,)
    assert not np.allclose(after["projector/layer_mix/logits"], 0.0)  # it trained
    assert not np.allclose(after["projector/kernel"], before["projector/kernel"])
    frozen = [k for k in before if not k.startswith("projector/")]
    assert frozen and all(np.array_equal(after[k], before[k]) for k in frozen)
    assert losses[-3:].mean() < losses[:3].mean()  # per-step batches differ: compare means


def test_served_model_dir_keeps_the_layer_mix(tmp_path):
    """`new_model_dir` records audio_dim (stored width) and audio_layers in the manifest's
    config; `load_model` rebuilds the mix and restores its trained logits."""
    from tokenizer_fixtures import make_llark_tokenizer

    from llark_jax.checkpoints.model_dir import load_model, new_model_dir
    from llark_jax.data.conversation import AudioTokenIds
    from llark_jax.data.features import FeatureSpec
    from llark_jax.model.llama import Llama, LlamaConfig
    from llark_jax.model.llark import LLark

    tokenizer = make_llark_tokenizer()
    ids = AudioTokenIds.from_tokenizer(tokenizer)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                      num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
    model = LLark(Llama(cfg, rngs=nnx.Rngs(0)), 4 * 6, audio_layers=4, audio_patch_id=ids.patch,
                  audio_start_id=ids.start, audio_end_id=ids.end, rngs=nnx.Rngs(1))
    model.projector.layer_mix.logits[...] = jnp.asarray([0.5, -1.0, 2.0, 0.0])
    directory = new_model_dir(tmp_path / "model", model, tokenizer, FeatureSpec(encoder="mert"))
    loaded = load_model(directory)
    assert (loaded.config.model.audio_dim, loaded.config.model.audio_layers) == (24, 4)
    assert loaded.features.encoder == "mert"
    assert (loaded.model.projector.audio_dim, loaded.model.projector.audio_layers) == (24, 4)
    np.testing.assert_array_equal(loaded.model.projector.layer_mix.logits[...],
                                  [0.5, -1.0, 2.0, 0.0])
    audio = jnp.asarray(np.random.default_rng(5).standard_normal((1, 3, 24)), jnp.float32)
    np.testing.assert_allclose(loaded.model.project_audio(audio), model.project_audio(audio),
                               atol=1e-6)


def test_flops_count_the_dense_layer_after_the_mix():
    """With L stored layers the dense layer is D = audio_dim / L wide; the mix adds 6*audio_dim."""
    from train_helpers import tiny_config

    from llark_jax.checkpoints.build import llama_config
    from llark_jax.train.flops import train_flops_per_step

    cfg = llama_config(tiny_config().model)
    common = dict(batch=2, seq_len=32, audio_frames=3)
    mixed = train_flops_per_step(cfg, audio_dim=16, audio_layers=4, **common)
    plain_d = train_flops_per_step(cfg, audio_dim=4, **common)
    assert mixed - plain_d == 6 * 16 * 2 * 3
    assert train_flops_per_step(cfg, audio_dim=16, **common) > mixed
