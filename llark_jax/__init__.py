"""llark-jax: the LLark music LLM (Gardner et al., ICML 2024) in JAX/Flax NNX.

This package must import without torch; torch lives in `data_prep/`, `tests/` and `bench/`.
"""
