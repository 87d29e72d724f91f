"""The import rules of docs/architecture.md, checked on the source (every import statement,
including the lazy ones inside functions), so the next change cannot undo them:

1. `llark_jax` never imports `data_prep` (data_prep -> llark_jax only).
2. `llark_jax.model` imports nothing else of `llark_jax`.
3. Product code (`llark_jax` outside the demo modules) imports no demo module.
4. `llark_jax` imports without torch: no module of it imports torch at module level, except the
   encoders that need it (imported lazily through the encoder registry).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "llark_jax"
TORCH_AT_TOP_LEVEL_OK = {"llark_jax/checkpoints/torch_llark.py"}  # shipped to exports, not imported


def _module(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _imports(path: Path) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) of every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, node.lineno, id(node) in top))
    return found


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _is_demo(module: str) -> bool:
    return module.split(".")[1].startswith("demo") if module.count(".") else False


@pytest.mark.parametrize("rule", ["no_data_prep", "model_is_the_base", "no_demo_in_product",
                                  "no_torch_at_import"])
def test_import_rules(rule: str) -> None:
    broken = []
    for path in _sources():
        module = _module(path)
        rel = str(path.relative_to(REPO))
        for name, line, top_level in _imports(path):
            where = f"{rel}:{line} imports {name}"
            if rule == "no_data_prep" and name.split(".")[0] == "data_prep":
                broken.append(where)
            if (rule == "model_is_the_base" and module.startswith("llark_jax.model")
                    and name.startswith("llark_jax.") and not name.startswith("llark_jax.model")):
                broken.append(where)
            if (rule == "no_demo_in_product" and not _is_demo(module)
                    and name.startswith("llark_jax.") and _is_demo(name)
                    and module != "llark_jax.cli"):
                broken.append(where)
            if (rule == "no_torch_at_import" and top_level and name.split(".")[0] == "torch"
                    and rel not in TORCH_AT_TOP_LEVEL_OK):
                broken.append(where)
    assert not broken, "\n".join(broken)


def test_the_checker_sees_lazy_imports(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("import os\n\ndef f():\n    from data_prep.audio import load_audio\n")
    assert ("data_prep.audio", 4, False) in _imports(source)
    assert ("os", 1, True) in _imports(source)
