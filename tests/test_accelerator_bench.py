"""`bench/accelerator.py --tiny` runs on CPU end to end; `--write` updates RESULTS.md in place."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RESULTS = """# Benchmark results

## Decode (KV cache)

| batch |
|---|

Benchmark wall time: 1.0 min.
"""


@pytest.mark.slow  # ~35 s on a loaded 2-core machine (two compiles + timing rounds)
def test_tiny_run_measures_train_and_decode_and_writes_its_section(tmp_path):
    results, store, out = tmp_path / "RESULTS.md", tmp_path / "acc.json", tmp_path / "out.json"
    results.write_text(RESULTS)
    proc = subprocess.run(
        [sys.executable, "bench/accelerator.py", "--tiny", "--budget-s", "30", "--write",
         "--store", str(store), "--results", str(results), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(store.read_text()) == result
    assert result["tiny"] and result["platform"] == "cpu" and result["attention"] == "einsum"
    train = result["train"]
    assert 0 < train["mfu"] < 1 and train["tokens_per_s"] > 0 and train["seconds"]["runs"] >= 1
    rows = {row["batch"]: row for row in result["decode"]["rows"]}
    assert sorted(rows) == [1, 8, 32]
    assert rows[1]["tokens_per_s"] > 0 and rows[1]["ours_step_ms"] > 0
    assert "| decode batch 8 |" in proc.stdout and "MFU **" in proc.stdout

    text = results.read_text()  # the section sits before the wall-time line, once
    assert text.count("## Accelerator") == 1
    assert text.index("## Decode") < text.index("## Accelerator") < text.index("Benchmark wall")

    sys.path.insert(0, str(REPO / "bench"))
    from render import ACCELERATOR_HEADING, accelerator_section, replace_section

    again = replace_section(text, ACCELERATOR_HEADING, accelerator_section(result))
    assert again == text  # rewriting replaces the section, nothing else moves


@pytest.mark.parametrize("outside, shown", [(0.023, "| 2.3% | - | **met** |"),
                                            (-0.03, "| -3.0% (below 0: "),
                                            (0.08, "| 8.0% | - | short |")])
def test_goal_table_shows_the_host_loop_row_and_labels_a_negative_fraction(outside, shown):
    """The Goals table of RESULTS.md: a host-loop fraction below 0 can only be noise and says so."""
    sys.path.insert(0, str(REPO / "bench"))
    from render import render

    text = render({"host_loop": {"prefetch": {"outside": outside}}}, {})
    row = next(line for line in text.splitlines() if line.startswith("| Host loop"))
    assert shown in row
    assert ("run-to-run noise" in row) == (outside < 0)
