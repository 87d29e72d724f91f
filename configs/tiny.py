"""Tiny random LLark on synthetic batches: the test and smoke-run config (CPU, float32, seconds).

`python -m llark_jax train --config configs/tiny.py --workdir /tmp/tiny --config.train.steps=20`
"""

import ml_collections

from llark_jax.config_base import base_config


def get_config() -> ml_collections.ConfigDict:
    config = base_config()
    m = config.model
    m.audio_start_id, m.audio_patch_id, m.audio_end_id = 253, 254, 255  # in the random vocab
    return config
