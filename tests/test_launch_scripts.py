"""Launch scripts: the commands and job specs their dry runs resolve, checked by content.

`xm_launch.py --dry_run` runs with every socket connection refused, so it provably contacts no
cloud; `tpu_vm.sh` / `local.sh --dry-run` only print. The shell scripts must be shellcheck-clean
(skipped, with the reason, when shellcheck is not installed).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"

REFUSE_NETWORK = (
    "import socket, runpy, sys\n"
    "def refuse(*args, **kwargs):\n"
    "    raise RuntimeError('xm_launch tried to open a network connection')\n"
    "socket.socket.connect = refuse\n"
    "socket.socket.connect_ex = refuse\n"
    "socket.create_connection = refuse\n"
)
NO_NETWORK = REFUSE_NETWORK + (
    "sys.argv = [{path!r}, *sys.argv[1:]]\n"
    "runpy.run_path({path!r}, run_name='__main__')\n"
)


# The launch path's work units, added to xmanager's own offline experiment (xm_mock).
XM_WORK_UNITS = (
    "import importlib.util, json, sys\n"
    "spec = importlib.util.spec_from_file_location('xm_launch', {path!r})\n"
    "module = importlib.util.module_from_spec(spec)\n"
    "sys.modules['xm_launch'] = module\n"
    "spec.loader.exec_module(module)\n"
    "module.FLAGS(['xm_launch.py', *sys.argv[1:]])\n"
    "from xmanager import xm_mock\n"
    "experiment = xm_mock.MockExperiment()\n"
    "with experiment:\n"
    "    module.add_work_units(experiment, xm_mock.MockExecutable())\n"
    "print(json.dumps([dict(name=j.name, args=j.args.to_list(), env=dict(j.env_vars),\n"
    "                       executor=type(j.executor).__name__,\n"
    "                       accelerator=j.executor.requirements.accelerator.name)\n"
    "                  for j in experiment.launched_jobs]))\n"
)


def xm_dry_run(*flags: str) -> dict:
    script = NO_NETWORK.format(path=str(LAUNCH / "xm_launch.py"))
    done = subprocess.run([sys.executable, "-c", script, "--dry_run", *flags], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def shell_dry_run(script: str, *args: str, check: bool = True,
                  python: str | None = "python") -> subprocess.CompletedProcess:
    """`bash launch/SCRIPT ARGS`, with $PYTHON set to `python` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env.update({"PYTHON": python} if python else {})
    done = subprocess.run(["bash", str(LAUNCH / script), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, env=env)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def commands(output: str) -> list[list[str]]:
    """The `+ cmd args` lines of a dry run, split like the shell would."""
    return [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]


def test_xm_tpu_v5p_sweep_resolves_hosts_env_and_gke_scheduling():
    spec = xm_dry_run("--target=tpu_v5p", "--topology=2x2x4", "--workdir=/gcs/b/runs/x",
                      "--override=data.path=/gcs/b/data", "--sweep=optim.peak_lr=2e-5,5e-5")
    assert spec["executor"] == "xm_local.Kubernetes"
    assert "RUN pip install --no-cache-dir 'jax[tpu]==0.10.2'" in spec["image"]["instructions"]
    units = spec["work_units"]
    assert [u["hparams"] for u in units] == [{"optim.peak_lr": "2e-5"}, {"optim.peak_lr": "5e-5"}]
    for unit, lr in zip(units, ("2e-5", "5e-5"), strict=True):
        jobs = unit["jobs"]
        assert [j["name"] for j in jobs] == ["host0", "host1", "host2", "host3"]  # 16 chips / 4
        hostnames = [j["hostname"] for j in jobs]
        for i, job in enumerate(jobs):
            assert job["accelerator"] == "TPU_V5P" and job["topology"] == "2x2x4"
            assert job["command"] == [
                "python", "-m", "llark_jax", "train", "--config", "configs/llark_7b.py",
                "--workdir", f"/gcs/b/runs/x/peak_lr_{lr}", "--config.data.path=/gcs/b/data",
                f"--config.optim.peak_lr={lr}"]
            assert job["env"] == {"LLARK_DISTRIBUTED": "auto", "TPU_WORKER_ID": str(i),
                                  "TPU_WORKER_HOSTNAMES": ",".join(hostnames)}
            assert job["gke"]["limits"] == {"google.com/tpu": "4"}
            assert job["gke"]["node_selector"] == {
                "cloud.google.com/gke-tpu-accelerator": "tpu-v5p-slice",
                "cloud.google.com/gke-tpu-topology": "2x2x4"}
            assert "v2-alpha-tpuv5" in job["gke"]["executor"]
        assert hostnames[0] == f"EXPERIMENT-{unit['work_unit']}-host0.experiments"


def test_xm_gpu_h100_two_nodes_get_explicit_coordinator():
    spec = xm_dry_run("--target=gpu_h100", "--nodes=2", "--workdir=/gcs/b/runs/h100",
                      "--config=configs/musilingo.py")
    assert "RUN pip install --no-cache-dir 'jax[cuda12]==0.10.2'" in spec["image"]["instructions"]
    [unit] = spec["work_units"]
    jobs = unit["jobs"]
    assert [j["name"] for j in jobs] == ["node0", "node1"]
    for i, job in enumerate(jobs):
        assert job["accelerator"] == "H100"
        assert job["command"][-4:] == ["--config", "configs/musilingo.py", "--workdir",
                                       "/gcs/b/runs/h100"]
        assert job["env"] == {"LLARK_COORDINATOR": "EXPERIMENT-1-node0.experiments",
                              "LLARK_COORDINATOR_PORT": "8476", "LLARK_NUM_PROCESSES": "2",
                              "LLARK_PROCESS_ID": str(i)}
        assert job["gke"]["limits"] == {"nvidia.com/gpu": "8"}
        assert job["gke"]["node_selector"] == {
            "cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}


def test_xm_single_host_v5e_and_bad_sweep():
    spec = xm_dry_run("--target=tpu_v5e", "--topology=2x4", "--workdir=/w")
    [job] = spec["work_units"][0]["jobs"]
    assert job["gke"]["limits"] == {"google.com/tpu": "8"}
    assert job["gke"]["node_selector"]["cloud.google.com/gke-tpu-accelerator"] == (
        "tpu-v5-lite-podslice")
    script = NO_NETWORK.format(path=str(LAUNCH / "xm_launch.py"))
    bad = subprocess.run([sys.executable, "-c", script, "--dry_run", "--workdir=/w",
                          "--sweep=optim.peak_lr"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "expected KEY=V1,V2" in bad.stderr


def test_xm_launch_path_adds_one_job_group_per_sweep_point():
    script = REFUSE_NETWORK + XM_WORK_UNITS.format(
        path=str(LAUNCH / "xm_launch.py"))
    done = subprocess.run(
        [sys.executable, "-c", script, "--target=gpu_h100", "--nodes=2", "--workdir=/w",
         "--sweep=optim.peak_lr=1e-5,2e-5"], cwd=REPO, capture_output=True, text=True,
        timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    jobs = json.loads(done.stdout)
    assert [(j["name"], j["env"]["LLARK_PROCESS_ID"]) for j in jobs] == [
        ("node0", "0"), ("node1", "1"), ("node0", "0"), ("node1", "1")]
    for job, unit, lr in zip(jobs, (1, 1, 2, 2), ("1e-5", "1e-5", "2e-5", "2e-5"), strict=True):
        assert job["executor"] == "Kubernetes" and job["accelerator"] == "H100"
        # xmanager names pods <experiment>_<work unit>_<job> with "_" -> "-".
        assert job["env"]["LLARK_COORDINATOR"] == f"1-{unit}-node0.experiments"
        assert job["args"] == ["train", "--config", "configs/llark_7b.py", "--workdir",
                               f"/w/peak_lr_{lr}", f"--config.optim.peak_lr={lr}"]


def test_tpu_vm_dry_run_prints_the_whole_lifecycle():
    done = shell_dry_run(
        "tpu_vm.sh", "--dry-run", "--name", "llark-v5p", "--project", "proj",
        "--zone", "us-east5-a", "--accelerator", "v5p-32", "--queued", "--spot",
        "--bucket", "bkt", "all", "delete", "--", "--config.train.steps=1000")
    cmds = commands(done.stdout)
    where = ["--project", "proj", "--zone", "us-east5-a"]
    assert cmds[0] == ["gcloud", "compute", "tpus", "queued-resources", "create", "llark-v5p",
                       "--node-id", "llark-v5p", *where, "--accelerator-type", "v5p-32",
                       "--runtime-version", "v2-alpha-tpuv5", "--spot"]
    ssh_all = [c for c in cmds if c[3:5] == ["tpu-vm", "ssh"] and "--worker=all" in c]
    assert len(ssh_all) == 3  # install, mount, train
    install, mount, train = (c[c.index("--command") + 1] for c in ssh_all)
    assert "'jax[tpu]==0.10.2'" in install and "pip install -q --no-deps -e ." in install
    assert "python3.11 -m venv .venv" in install  # TPU VM images ship Python 3.10
    assert "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in install
    assert "gcsfuse --implicit-dirs --rename-dir-limit=200000 bkt /gcs/bkt" in mount
    assert "export LLARK_DISTRIBUTED=auto" in train
    assert (".venv/bin/python -m llark_jax train --config configs/llark_7b.py --workdir "
            "/gcs/bkt/runs/llark-v5p --config.train.steps=1000") in train
    assert any(c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in c
               for c in cmds)
    logs = next(c for c in cmds if "--worker=0" in c)
    assert logs[-1] == "tail -n +1 -F ~/llark-train.log"
    assert cmds[-1] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "llark-v5p",
                        *where, "--force", "--quiet"]
    assert [line for line in done.stdout.splitlines() if line.startswith("# step:")] == [
        f"# step: {s}" for s in ("create", "install", "mount", "train", "logs", "delete")]


def test_tpu_vm_explicit_coordinator_and_missing_flags():
    done = shell_dry_run("tpu_vm.sh", "--dry-run", "--name", "v4", "--project", "p", "--zone",
                         "us-central2-b", "--accelerator", "v4-32", "--version",
                         "tpu-ubuntu2204-base", "--workdir", "/nfs/run", "--coordinator-port",
                         "8476", "create", "train")
    cmds = commands(done.stdout)
    assert cmds[0][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "v4"]
    assert ["--accelerator-type", "v4-32"] == cmds[0][10:12]
    train = cmds[-1][cmds[-1].index("--command") + 1]
    for word in ("LLARK_COORDINATOR=WORKER0_IP", "LLARK_COORDINATOR_PORT=8476",
                 "LLARK_NUM_PROCESSES=NUM_WORKERS", "agent-worker-number", "--workdir /nfs/run"):
        assert word in train
    missing = shell_dry_run("tpu_vm.sh", "--dry-run", "--project", "p", "train", check=False)
    assert missing.returncode == 2 and "--name, --project and --zone are required" in (
        missing.stderr)
    no_dir = shell_dry_run("tpu_vm.sh", "--dry-run", "--name", "n", "--project", "p", "--zone",
                           "z", "train", check=False)
    assert no_dir.returncode == 2 and "must be shared" in no_dir.stderr


def test_local_dry_run_single_and_multi_process():
    multi = commands(shell_dry_run("local.sh", "--dry-run", "--processes", "2", "--cpu-devices",
                                   "4", "--port", "12345", "--config", "configs/tiny.py",
                                   "--workdir", "runs/mh", "--config.train.steps=5").stdout)
    assert len(multi) == 2
    for i, cmd in enumerate(multi):
        assert cmd[:7] == ["env", "JAX_PLATFORMS=cpu",
                           "XLA_FLAGS=--xla_force_host_platform_device_count=4",
                           "LLARK_COORDINATOR=127.0.0.1:12345", "LLARK_NUM_PROCESSES=2",
                           f"LLARK_PROCESS_ID={i}", "python"]
        assert cmd[7:] == ["-m", "llark_jax", "train", "--config", "configs/tiny.py",
                           "--workdir", "runs/mh", "--config.train.steps=5"]
    [single] = commands(shell_dry_run("local.sh", "--dry-run", "--config", "configs/tiny.py",
                                      "--workdir", "runs/t").stdout)
    assert single == ["env", "python", "-m", "llark_jax", "train", "--config", "configs/tiny.py",
                      "--workdir", "runs/t"]
    gpus = commands(shell_dry_run("local.sh", "--dry-run", "--processes", "2",
                                  "--gpus-per-process", "4", "--config", "c.py",
                                  "--workdir", "w").stdout)
    assert [c[4] for c in gpus] == ["CUDA_VISIBLE_DEVICES=0,1,2,3", "CUDA_VISIBLE_DEVICES=4,5,6,7"]


def test_local_takes_overrides_in_both_forms_and_the_checkouts_python():
    """docs/training.md writes `--config.train.steps 20` too; a bare `python` outside the venv
    has no jax, so without --python or $PYTHON the checkout's .venv runs the job."""
    [cmd] = commands(shell_dry_run("local.sh", "--dry-run", "--config", "c.py", "--workdir", "w",
                                   "--config.train.steps", "20", "--config.optim.lr=1e-4",
                                   python=None).stdout)
    venv = REPO / ".venv" / "bin" / "python"
    assert cmd[1] == (str(venv) if venv.exists() else "python3")
    assert cmd[-2:] == ["--config.train.steps=20", "--config.optim.lr=1e-4"]
    missing = shell_dry_run("local.sh", "--dry-run", "--config", "c.py", "--workdir", "w",
                            "--config.train.steps", check=False)
    assert missing.returncode == 2 and "--config.train.steps needs a value" in missing.stderr


@pytest.mark.parametrize("script", ["tpu_vm.sh", "local.sh"])
def test_shellcheck_clean(script):
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck)")
    done = subprocess.run(["shellcheck", str(LAUNCH / script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_local_stops_all_processes_when_one_fails(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text(
        "#!/usr/bin/env bash\n"
        'echo "process $LLARK_PROCESS_ID of $LLARK_NUM_PROCESSES at $LLARK_COORDINATOR: $*"\n'
        'if [[ "$LLARK_PROCESS_ID" == 1 ]]; then\n'
        f'  until [[ -s {tmp_path}/survivor.pid ]]; do sleep 0.1; done; exit 3\n'
        'fi\n'
        f'echo $$ > {tmp_path}/survivor.pid\n'
        "exec sleep 300\n")
    fake_python.chmod(0o755)
    workdir = tmp_path / "run"
    done = subprocess.run(
        ["bash", str(LAUNCH / "local.sh"), "--processes", "2", "--port", "23456",
         "--stop-grace", "2", "--python", str(fake_python), "--config", "c.py",
         "--workdir", str(workdir)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert "a process exited with status 3" in done.stderr
    for i in range(2):
        log = (workdir / "logs" / f"process_{i}.log").read_text()
        assert log.startswith(f"process {i} of 2 at 127.0.0.1:23456: -m llark_jax train")
    survivor = int((tmp_path / "survivor.pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(survivor, 0)


FAKE_GCLOUD = """#!/usr/bin/env bash
# Records its argv (one shell-quoted line per call) and answers the describe queries.
printf '%q ' "$@" >> "$GCLOUD_LOG"; echo >> "$GCLOUD_LOG"
case "$*" in
  *"queued-resources describe"*)
    n=$(grep -c "queued-resources describe" "$GCLOUD_LOG")
    if ((n < 3)); then echo "${QR_EARLY_STATE:-PROVISIONING}"; else echo ACTIVE; fi ;;
  *"networkEndpoints[0].ipAddress"*) echo 10.130.0.7 ;;
  *"networkEndpoints.len()"*) echo 4 ;;
esac
"""


def test_tpu_vm_runs_exactly_the_printed_commands(tmp_path):
    """With `gcloud` replaced by a recorder, a real run executes what --dry-run printed."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gcloud").write_text(FAKE_GCLOUD)
    (bin_dir / "gcloud").chmod(0o755)
    log = tmp_path / "gcloud.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "GCLOUD_LOG": str(log),
           "TPU_VM_POLL_S": "0"}
    args = ["--name", "qr", "--project", "p", "--zone", "z", "--accelerator", "v5p-32",
            "--queued", "--workdir", "/nfs/run", "--coordinator-port", "8476", "create", "train",
            "--", "--config.train.steps=3"]
    done = subprocess.run(["bash", str(LAUNCH / "tpu_vm.sh"), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    ran = [shlex.split(line) for line in log.read_text().splitlines()]
    describes = [c for c in ran if c[:3] == ["compute", "tpus", "queued-resources"]
                 and c[3] == "describe"]
    assert len(describes) == 3  # PROVISIONING, PROVISIONING, ACTIVE
    printed = [c[1:] for c in commands(shell_dry_run("tpu_vm.sh", "--dry-run", *args).stdout)]
    ran_train = ran[-1][ran[-1].index("--command") + 1]
    printed_train = printed[-1][printed[-1].index("--command") + 1]
    assert ran[0] == printed[0]  # queued-resources create
    assert ran_train == printed_train.replace("WORKER0_IP", "10.130.0.7").replace(
        "NUM_WORKERS", "4")
    assert "LLARK_COORDINATOR=10.130.0.7 LLARK_COORDINATOR_PORT=8476 LLARK_NUM_PROCESSES=4" in (
        ran_train)

    log.unlink()
    failed = subprocess.run(["bash", str(LAUNCH / "tpu_vm.sh"), *args[:-4], "create"],
                            env={**env, "QR_EARLY_STATE": "FAILED"}, cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and "queued resource qr is FAILED" in failed.stderr
