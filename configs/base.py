"""The schema every config derives from (`llark_jax.config_base`), with its default values."""

import ml_collections

from llark_jax.config_base import base_config


def get_config() -> ml_collections.ConfigDict:
    return base_config()
