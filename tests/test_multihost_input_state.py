"""Per-process input-pipeline states in checkpoints (`llark_jax.train.checkpoint`).

Two real processes joined by `maybe_initialize_distributed` (one from arguments, one from the
LLARK_* environment) gather JSON states of different lengths; every process gets all of them in
process order. Choosing a process's own state on
restore is checked for equal and mismatched process counts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llark_jax.train.checkpoint import InputStateMismatchError, own_input_state

REPO = Path(__file__).resolve().parents[1]

# Process 0 passes the coordinator as arguments (what `train --coordinator ... --process_id`
# does), process 1 through the LLARK_* environment variables.
GATHER = """
import json, os, sys
import jax
from llark_jax.train.mesh import maybe_initialize_distributed
host, port = sys.argv[1].split(":")
if os.environ.get("LLARK_PROCESS_ID") is None:
    assert maybe_initialize_distributed(host, 2, 0, int(port))
else:
    assert maybe_initialize_distributed()
assert jax.process_count() == 2 and jax.device_count() == 2
from llark_jax.train.checkpoint import gather_input_states
i = jax.process_index()
state = {"process": [i, 2], "refs": list(range(3 + 5 * i)), "name": "host-" + "x" * i}
print("GATHERED " + json.dumps(gather_input_states(state)), flush=True)
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_gather_states_of_different_lengths_in_order():
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LLARK_")},
           "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_PLATFORMS": "cpu"}
    address = f"127.0.0.1:{_free_port()}"
    env_of_process_1 = {"LLARK_COORDINATOR": "127.0.0.1",
                        "LLARK_COORDINATOR_PORT": address.split(":")[1],
                        "LLARK_NUM_PROCESSES": "2", "LLARK_PROCESS_ID": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", GATHER, address], cwd=REPO,
                              env={**env, **(env_of_process_1 if i else {})},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=180)[0])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    want = [{"process": [i, 2], "refs": list(range(3 + 5 * i)), "name": "host-" + "x" * i}
            for i in range(2)]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
        [line] = [ln for ln in output.splitlines() if ln.startswith("GATHERED ")]
        assert json.loads(line[len("GATHERED "):]) == want


def test_own_input_state_by_process_count():
    # This test process is process 0 of 1.
    assert own_input_state({"kind": "synthetic", "step": 4}) == {"kind": "synthetic", "step": 4}
    assert own_input_state({"processes": [{"step": 4}]}) == {"step": 4}
    same = {"kind": "synthetic", "seed": 0, "step": 5}
    assert own_input_state({"processes": [same, dict(same)]}) == same
    with pytest.raises(InputStateMismatchError, match="input states of 2 processes"):
        own_input_state({"processes": [{"process": [0, 2]}, {"process": [1, 2]}]})
