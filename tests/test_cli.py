"""The top-level dispatcher: usage text and the persistent compilation cache setting."""

from __future__ import annotations

import pytest

from llark_jax.cli import CACHE_ENV, COMMANDS, DEFAULT_CACHE, configure_compilation_cache, main


def test_cache_defaults_to_the_user_cache_and_can_be_moved_or_switched_off(tmp_path):
    env: dict[str, str] = {}
    assert configure_compilation_cache(env) == str(DEFAULT_CACHE)
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(DEFAULT_CACHE)
    env = {CACHE_ENV: str(tmp_path)}
    assert configure_compilation_cache(env) == str(tmp_path)
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path)
    for off in ("off", "0", ""):
        env = {CACHE_ENV: off}
        assert configure_compilation_cache(env) is None
        assert "JAX_COMPILATION_CACHE_DIR" not in env
    env = {"JAX_COMPILATION_CACHE_DIR": "/elsewhere", CACHE_ENV: str(tmp_path)}
    assert configure_compilation_cache(env) == "/elsewhere"  # jax's own variable wins


@pytest.mark.parametrize("argv, status", [([], 2), (["--help"], 0), (["no-such-command"], 2)])
def test_usage_lists_every_command(argv, status, capsys):
    assert main(argv) == status
    out, err = capsys.readouterr()
    assert all(name in (out if status == 0 else err) for name in COMMANDS)
    if status:
        assert err.strip().splitlines()[-1].startswith("error: ")
