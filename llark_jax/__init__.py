"""llark-jax: the LLark music LLM (Gardner et al., ICML 2024) in JAX/Flax NNX.

This package must import without torch: torch is imported only inside the torch audio encoders
(`llark_jax.audio.encoders.jukebox`, `.mert`) when one is built, and by `data_prep/`, `tests/` and
`bench/`. It never imports `data_prep` (the offline stage imports it).
"""
