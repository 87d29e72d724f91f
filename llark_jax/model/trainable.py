"""Trainable-set presets as gradient masks over the `nnx.Param` state of LLark (or a bare Llama).

Parameter groups (by path): `projector`, `embed`, `layers` (all decoder layers), `final_norm`,
`lm_head`. A preset maps each group to trainable (True), frozen (False) or "rows" (only the
embedding rows of `token_ids` train: a float32 [V,1] mask).

The decoder layers are stacked (`llark_jax.model.llama`: every `layers` param is [L, ...]), so a
bool on `layers` trains or freezes all L of them; selecting single layers means a row mask of the
same kind on the leading axis, float32 [L, 1, ...] (`apply_mask` broadcasts it and
`count_trainable` counts rows of any such leading-axis mask).

| preset                 | projector | layers | final_norm | lm_head | embed rows              |
|------------------------|-----------|--------|------------|---------|-------------------------|
| `llark_reference`      | train     | train  | train      | frozen  | `<audio_start>/<end>`   |
| `all`                  | train     | train  | train      | train   | all                     |
| `projector_only`       | train     | frozen | frozen     | frozen  | none (MusiLingo)        |
| `lm_frozen_new_tokens` | train     | frozen | frozen     | frozen  | `token_ids` only        |
| `lora`                 | train     | frozen | frozen     | frozen  | `<audio_start>/<end>`   |

LoRA adapters (`layers.*.<w>_lora`, `llark_jax.model.lora`) form their own group `lora`: trained
by `lora`, `llark_reference` and `all`, frozen by the two projector presets. `lora` is the LLark
recipe with the decoder frozen and adapters in its place (`model.lora.rank > 0`).

`llark_reference` is what the official run actually trains (spec §1.5): its `.detach()` of text
embeddings lets gradient reach `embed_tokens` only through the `<audio_start>`/`<audio_end>` rows,
and `lm_head` has requires_grad=False. With tied embeddings (SmolLM2) the embedding is also the
output layer; the row mask then trains those two rows in both roles.

`trained_rows` names the rows a preset trains; the train step passes them to the model as
`embed_grad_rows`, so a tied head computes the weight gradient of those rows only
(`llark_jax.model.llama.tied_logits`) instead of all V rows that the mask then zeroes.

`gradient_mask` returns a tree with the structure of `nnx.state(model, nnx.Param)` whose leaves
are Python bools or float32 row masks; `masked_optimizer` wraps an optax transform so masked
gradients enter the optimizer and masked updates leave it (frozen entries: exactly zero update,
also under weight decay).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

ROWS = "rows"
PRESETS: dict[str, dict[str, bool | str]] = {
    "llark_reference": dict(projector=True, layers=True, final_norm=True, lm_head=False,
                            embed=ROWS, lora=True),
    "all": dict(projector=True, layers=True, final_norm=True, lm_head=True, embed=True,
                lora=True),
    "projector_only": dict(projector=True, layers=False, final_norm=False, lm_head=False,
                           embed=False, lora=False),
    "lm_frozen_new_tokens": dict(projector=True, layers=False, final_norm=False, lm_head=False,
                                 embed=ROWS, lora=False),
    "lora": dict(projector=True, layers=False, final_norm=False, lm_head=False, embed=ROWS,
                 lora=True),
}


def _group(path: tuple[Any, ...]) -> str:
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    if names and names[0] == "llama":
        names = names[1:]
    if any(str(name).endswith("_lora") for name in names):
        return "lora"  # LoRA adapters (`llark_jax.model.lora`) inside the decoder layers
    if not names or names[0] not in PRESETS["all"]:
        raise KeyError(f"parameter {'.'.join(map(str, names))} belongs to no trainable group")
    return names[0]


def _default_rows(model_or_state: Any) -> tuple[int, ...] | None:
    start = getattr(model_or_state, "audio_start_id", None)
    end = getattr(model_or_state, "audio_end_id", None)
    return None if start is None else (start, end)


def gradient_mask(
    model_or_state: nnx.Module | nnx.State,
    preset: str = "llark_reference",
    token_ids: Sequence[int] | None = None,
) -> nnx.State:
    """Mask tree matching `nnx.state(model, nnx.Param)`: leaves bool or float32 [V,1] row masks.

    `token_ids`: the embedding rows that train under a "rows" group; defaults to the model's
    `(audio_start_id, audio_end_id)` when an LLark model is passed.
    """
    if preset not in PRESETS:
        raise KeyError(f"unknown trainable preset {preset!r}; known: {sorted(PRESETS)}")
    rules = PRESETS[preset]
    if isinstance(model_or_state, nnx.State):
        state = model_or_state
    else:
        state = nnx.state(model_or_state, nnx.Param)
    rows = token_ids if token_ids is not None else _default_rows(model_or_state)
    if ROWS in rules.values() and rows is None:
        raise ValueError(f"preset {preset!r} needs token_ids (embedding rows to train)")

    def leaf_mask(path: tuple[Any, ...], var: nnx.Variable) -> nnx.Variable:
        rule = rules[_group(path)]
        if rule != ROWS:
            return var.replace(value=bool(rule))
        row_mask = jnp.zeros((var.get_value().shape[0], 1), jnp.float32)
        return var.replace(value=row_mask.at[jnp.asarray(rows, jnp.int32)].set(1.0))

    return jax.tree_util.tree_map_with_path(
        leaf_mask, state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def trained_rows(preset: str, token_ids: Sequence[int]) -> tuple[int, ...] | None:
    """The embedding rows `preset` trains: `token_ids` under a "rows" preset, else None (the
    preset trains every row or none)."""
    if preset not in PRESETS:
        raise KeyError(f"unknown trainable preset {preset!r}; known: {sorted(PRESETS)}")
    return tuple(int(t) for t in token_ids) if PRESETS[preset]["embed"] == ROWS else None


def apply_mask(tree: Any, mask: Any) -> Any:
    """Multiply every leaf of `tree` by its mask leaf (bool: keep or zero; array: broadcast)."""

    def one(x: jax.Array, m: bool | jax.Array) -> jax.Array:
        if isinstance(m, bool):
            return x if m else jnp.zeros_like(x)
        return (x * m).astype(x.dtype)

    return jax.tree.map(one, tree, mask)


def masked_optimizer(tx: optax.GradientTransformation, mask: Any) -> optax.GradientTransformation:
    """`tx` fed with masked gradients and emitting masked updates (frozen = exactly 0)."""

    def init_fn(params: Any) -> optax.OptState:
        return tx.init(params)

    def update_fn(updates: Any, state: optax.OptState, params: Any = None):
        updates, state = tx.update(apply_mask(updates, mask), state, params)
        return apply_mask(updates, mask), state

    return optax.GradientTransformation(init_fn, update_fn)


def count_trainable(state: nnx.State, mask: nnx.State) -> int:
    """Number of scalar parameters the mask lets train."""
    sizes = jax.tree.map(lambda x, m: int(m) * x.size if isinstance(m, bool)
                         else int(m.sum()) * (x.size // x.shape[0]), state, mask)
    return sum(jax.tree.leaves(sizes))
