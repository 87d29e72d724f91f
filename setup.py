"""Packaging beyond what pyproject.toml can say: the top-level `configs/` folder (the project's
layout keeps it there; `llark_jax.config.resolve_config` finds it in a checkout) also ships
inside the wheel as `llark_jax/configs/`, so installed commands find configs by name
(`--config tiny`, `--config llark_7b`, `--config musilingo:instruct`). Everything else is in
pyproject.toml."""

from setuptools import find_namespace_packages, setup

setup(
    packages=[*find_namespace_packages(include=["llark_jax*", "data_prep*"],
                                       exclude=["*__pycache__*"]),
              "llark_jax.configs"],
    package_dir={"llark_jax.configs": "configs"},
)
