"""XManager launcher: `python -m llark_jax train` on TPU or GPU node pools of a GKE cluster.

    xmanager launch launch/xm_launch.py -- --target=tpu_v5p --topology=2x2x4 \\
        --config=configs/llark_7b.py --workdir=/gcs/BUCKET/runs/llark7b \\
        --override=model.path=/gcs/BUCKET/models/Llama-2-7b-chat-hf \\
        --override=data.path=/gcs/BUCKET/llark_tfrecords --sweep=optim.peak_lr=2e-5,5e-5
    python launch/xm_launch.py --dry_run ...   # print the resolved job specs as JSON; no cloud

One work unit per point of the `--sweep` grid (Cartesian product of the flags); each trains in
`<workdir>/<sweep values>`. A work unit is one xm.Job per host, all running the same image:

- TPU (`tpu_v4`, `tpu_v5e`, `tpu_v5p`): `--topology` is the slice (e.g. 2x2x4 = 16 v5p chips =
  4 hosts of 4 chips). Each host gets `TPU_WORKER_ID` and `TPU_WORKER_HOSTNAMES`, which
  `jax.distributed.initialize()` reads on GKE (`LLARK_DISTRIBUTED=auto`).
- GPU (`gpu_a100`, `gpu_h100`): `--gpus_per_node` GPUs on each of `--nodes` nodes, one process per
  node; process i gets `LLARK_COORDINATOR=<host of node 0>`, `LLARK_COORDINATOR_PORT`,
  `LLARK_NUM_PROCESSES`, `LLARK_PROCESS_ID` (see `llark_jax.train.mesh`).

Hosts address each other through the headless service `experiments` that xmanager's Kubernetes
backend creates (pod hostname = full job name, with `_` -> `-`). That backend predates GKE's TPU
node pools and names GPUs `nvidia-tesla-<type>`, so `launch()` installs `gke_node_selector` and
`gke_resources` in its place: TPU pods ask for `google.com/tpu: <chips per host>` on nodes labelled
`cloud.google.com/gke-tpu-accelerator` / `gke-tpu-topology`; GPU pods ask for `nvidia.com/gpu` on
`cloud.google.com/gke-accelerator: nvidia-h100-80gb` (or `nvidia-a100-80gb`) nodes.

The image is built by xmanager (`xm.PythonContainer`) from this repository with the platform's
jax wheel. The work directory must be shared by all hosts (a GCS FUSE mount such as
/gcs/BUCKET, or NFS): Orbax writes every host's array shards there and the metadata from host 0.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags

REPO = Path(__file__).resolve().parents[1]
JAX_VERSION = "0.10.2"
TORCH_CPU = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
SERVICE = "experiments"  # the headless service of xmanager's Kubernetes backend


@dataclasses.dataclass(frozen=True)
class Target:
    """An accelerator kind: its xm resource name, host size and jax wheel."""

    kind: str  # "tpu" | "gpu"
    resource: str  # xm.ResourceType name
    chips_per_host: int  # TPU chips per VM host of a multi-host slice (GPU: unused)
    jax_extra: str  # pip extra of jax for this platform
    default_topology: str  # TPU slice topology (GPU: unused)


TARGETS: dict[str, Target] = {
    "tpu_v4": Target("tpu", "tpu_v4", 4, "tpu", "2x2x2"),
    "tpu_v5e": Target("tpu", "tpu_v5e", 4, "tpu", "4x4"),
    "tpu_v5p": Target("tpu", "tpu_v5p", 4, "tpu", "2x2x4"),
    "gpu_a100": Target("gpu", "a100_80gib", 0, "cuda12", ""),
    "gpu_h100": Target("gpu", "h100", 0, "cuda12", ""),
}

GKE_ACCELERATOR = {  # xm resource name -> GKE node label value
    "tpu_v4": "tpu-v4-podslice", "tpu_v5e": "tpu-v5-lite-podslice", "tpu_v5p": "tpu-v5p-slice",
    "a100_80gib": "nvidia-a100-80gb", "h100": "nvidia-h100-80gb",
}

FLAGS = flags.FLAGS
flags.DEFINE_enum("target", "tpu_v5p", sorted(TARGETS), "accelerator kind")
flags.DEFINE_string("topology", "", "TPU slice topology, e.g. 2x2x4 (default per target)")
flags.DEFINE_integer("nodes", 1, "GPU nodes (one training process per node)")
flags.DEFINE_integer("gpus_per_node", 8, "GPUs per node")
flags.DEFINE_string("config", "configs/llark_7b.py", "config file, relative to the repository")
flags.DEFINE_string("workdir", None, "run directory shared by all hosts (e.g. /gcs/BUCKET/runs/x)")
flags.DEFINE_multi_string("override", [], "config override KEY=VALUE (repeatable)")
flags.DEFINE_multi_string("sweep", [], "KEY=V1,V2,... swept over (repeatable: Cartesian grid)")
flags.DEFINE_integer("coordinator_port", 8476, "jax.distributed coordinator port (GPU nodes; "
                     "TPU slices use JAX's GKE detection)")
flags.DEFINE_string("base_image", "python:3.11-slim", "base image of the training container")
flags.DEFINE_string("tpu_runtime", "v2-alpha-tpuv5", "TPU runtime version (GKE annotation)")
flags.DEFINE_string("experiment", "llark-train", "experiment title")
flags.DEFINE_bool("dry_run", False, "print the resolved job specs (JSON) and contact nothing")
flags.mark_flag_as_required("workdir")


@dataclasses.dataclass
class JobSpec:
    """One host's job: what xm.Job gets, in plain data."""

    name: str
    hostname: str
    requirements: Any  # xm.JobRequirements
    args: list[str]
    env: dict[str, str]


def parse_sweep(entries: Sequence[str]) -> list[dict[str, str]]:
    """`["a=1,2", "b=x"]` -> `[{"a": "1", "b": "x"}, {"a": "2", "b": "x"}]` (one point if empty)."""
    axes: list[tuple[str, list[str]]] = []
    for entry in entries:
        key, sep, values = entry.partition("=")
        if not sep or not key or not values:
            raise ValueError(f"--sweep {entry!r}: expected KEY=V1,V2,...")
        axes.append((key, [v for v in values.split(",") if v]))
    return [dict(zip([k for k, _ in axes], point, strict=True))
            for point in itertools.product(*[v for _, v in axes])]


def parse_overrides(entries: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for entry in entries:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise ValueError(f"--override {entry!r}: expected KEY=VALUE")
        pairs[key] = value
    return pairs


def hosts_for(target: Target, topology: str) -> int:
    """Number of VM hosts of a TPU slice (v5e slices of up to 8 chips are single-host)."""
    import xmanager.xm as xm

    chips = xm.Topology(topology).chip_count
    if chips <= 8 and target.resource == "tpu_v5e":
        return 1
    return max(1, math.ceil(chips / target.chips_per_host))


def _target_of(executor: Any) -> tuple[Target, Any]:
    requirements = executor.requirements
    name = requirements.accelerator.name.lower()
    return next(t for t in TARGETS.values() if t.resource == name), requirements


def gke_node_selector(executor: Any) -> dict[str, str]:
    """GKE node labels for the executor's accelerator (replaces xmanager's TPU-less version)."""
    target, requirements = _target_of(executor)
    label = GKE_ACCELERATOR[target.resource]
    if target.kind == "tpu":
        return {"cloud.google.com/gke-tpu-accelerator": label,
                "cloud.google.com/gke-tpu-topology": requirements.topology.name}
    return {"cloud.google.com/gke-accelerator": label}


def gke_limits(executor: Any) -> dict[str, str]:
    """Container resource limits: TPU chips of one host, or the node's GPUs."""
    target, requirements = _target_of(executor)
    if target.kind == "tpu":
        topology = requirements.topology
        chips = topology.chip_count // hosts_for(target, topology.name)
        return {"google.com/tpu": str(chips)}
    return {"nvidia.com/gpu": f"{requirements.topology.chip_count}"}


def gke_resources(executor: Any) -> Any:
    from kubernetes import client as k8s_client

    return k8s_client.V1ResourceRequirements(limits=gke_limits(executor))


def install_gke_scheduling() -> None:
    """Makes xmanager's Kubernetes backend use `gke_node_selector` / `gke_resources`."""
    from xmanager.cloud import kubernetes as xm_k8s

    xm_k8s.node_selector_from_executor = gke_node_selector
    xm_k8s.requirements_from_executor = gke_resources


def sweep_tag(point: dict[str, str]) -> str:
    """Run-directory name of a sweep point: `optim.peak_lr=2e-5` -> `peak_lr_2e-5`."""
    if not point:
        return ""
    return "_".join(f"{k.rsplit('.', 1)[-1]}_{v}" for k, v in point.items()).replace("/", "-")


def train_args(config: str, workdir: str, overrides: dict[str, str]) -> list[str]:
    """Arguments of `python -m llark_jax` for one run."""
    return ["train", "--config", config, "--workdir", workdir,
            *[f"--config.{key}={value}" for key, value in overrides.items()]]


def work_unit_jobs(point: dict[str, str], full_name: Callable[[str], str]) -> list[JobSpec]:
    """The per-host jobs of one sweep point; `full_name(job)` is xmanager's full job name."""
    import xmanager.xm as xm

    target = TARGETS[FLAGS.target]
    overrides = {**parse_overrides(FLAGS.override), **point}
    tag = sweep_tag(point)
    workdir = f"{FLAGS.workdir.rstrip('/')}/{tag}" if tag else FLAGS.workdir
    args = train_args(FLAGS.config, workdir, overrides)
    if target.kind == "tpu":
        topology = FLAGS.topology or target.default_topology
        requirements = xm.JobRequirements({target.resource: xm.Topology(topology)})
        n_hosts = hosts_for(target, topology)
        names = [f"host{i}" for i in range(n_hosts)]
    else:
        requirements = xm.JobRequirements({target.resource: FLAGS.gpus_per_node})
        n_hosts = FLAGS.nodes
        names = [f"node{i}" for i in range(n_hosts)]
    hostnames = [f"{full_name(name).replace('_', '-')}.{SERVICE}" for name in names]
    jobs = []
    for i, name in enumerate(names):
        if target.kind == "tpu":
            env = {"LLARK_DISTRIBUTED": "auto", "TPU_WORKER_ID": str(i),
                   "TPU_WORKER_HOSTNAMES": ",".join(hostnames)}
        elif n_hosts > 1:
            env = {"LLARK_COORDINATOR": hostnames[0],
                   "LLARK_COORDINATOR_PORT": str(FLAGS.coordinator_port),
                   "LLARK_NUM_PROCESSES": str(n_hosts), "LLARK_PROCESS_ID": str(i)}
        else:  # one GPU node: a single process sees all its GPUs
            env = {}
        jobs.append(JobSpec(name, hostnames[i], requirements, args, env))
    return jobs


def docker_instructions(target: Target) -> list[str]:
    """Image recipe: the repository, its pinned requirements and the platform's jax wheel."""
    src = REPO.name
    return [
        "ENV PYTHONUNBUFFERED=1",
        f"COPY {src}/ /llark",
        "WORKDIR /llark",
        f"RUN pip install --no-cache-dir {TORCH_CPU}",  # data_prep only; no CUDA libraries
        "RUN pip install --no-cache-dir -r requirements.txt",
        "RUN pip install --no-cache-dir --no-deps -r requirements-nodeps.txt",
        f"RUN pip install --no-cache-dir 'jax[{target.jax_extra}]=={JAX_VERSION}'",
        "RUN pip install --no-cache-dir --no-deps -e .",
    ]


def executor_for(target: Target, requirements: Any) -> Any:
    from xmanager import xm_local

    if target.kind == "tpu":
        return xm_local.Kubernetes(
            requirements=requirements,
            tpu_capability=xm_local.TpuCapability(tpu_runtime_version=FLAGS.tpu_runtime))
    return xm_local.Kubernetes(requirements=requirements)


def dry_run_spec() -> dict[str, Any]:
    """The whole experiment as JSON-able data (hostnames use the placeholder experiment id)."""
    target = TARGETS[FLAGS.target]
    units = []
    for wid, point in enumerate(parse_sweep(FLAGS.sweep), start=1):
        jobs = work_unit_jobs(point, lambda job, wid=wid: f"EXPERIMENT_{wid}_{job}")
        units.append({"work_unit": wid, "hparams": point, "jobs": [
            {"name": j.name, "hostname": j.hostname, "requirements": repr(j.requirements),
             "accelerator": j.requirements.accelerator.name,
             "topology": j.requirements.topology.name,
             "command": ["python", "-m", "llark_jax", *j.args], "env": j.env,
             "gke": {"limits": gke_limits(executor), "node_selector": gke_node_selector(executor),
                     "executor": repr(executor)}}
            for j in jobs
            for executor in [executor_for(target, j.requirements)]]})
    return {
        "experiment": FLAGS.experiment, "target": FLAGS.target, "platform": "gke",
        "executor": "xm_local.Kubernetes",
        "image": {"base_image": FLAGS.base_image, "instructions": docker_instructions(target)},
        "work_units": units,
    }


def add_work_units(experiment: Any, executable: Any) -> None:
    """Adds one work unit (a JobGroup of per-host jobs) per sweep point to `experiment`."""
    import xmanager.xm as xm

    target = TARGETS[FLAGS.target]
    for point in parse_sweep(FLAGS.sweep):

        async def make_unit(work_unit: Any, point: dict = point, **_: Any) -> None:
            jobs = work_unit_jobs(point, work_unit.get_full_job_name)
            work_unit.add(xm.JobGroup(**{
                j.name: xm.Job(executable, executor_for(target, j.requirements),
                               args=j.args, env_vars=j.env, name=j.name)
                for j in jobs}))

        experiment.add(make_unit)


def launch() -> None:
    """Builds the image and adds one work unit per sweep point (contacts GCP and GKE)."""
    import xmanager.xm as xm
    from xmanager import xm_local

    target = TARGETS[FLAGS.target]
    install_gke_scheduling()
    with xm_local.create_experiment(experiment_title=FLAGS.experiment) as experiment:
        spec = xm.PythonContainer(path=str(REPO), base_image=FLAGS.base_image,
                                  entrypoint=xm.ModuleName("llark_jax"),
                                  docker_instructions=docker_instructions(target))
        [executable] = experiment.package([
            xm.Packageable(executable_spec=spec,
                           executor_spec=xm_local.Kubernetes.Spec())])
        add_work_units(experiment, executable)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.dry_run:
        print(json.dumps(dry_run_spec(), indent=2))
        return
    launch()


if __name__ == "__main__":
    app.run(main)
