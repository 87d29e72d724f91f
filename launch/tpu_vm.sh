#!/usr/bin/env bash
# Train on a Cloud TPU VM slice with gcloud: create it, install this repository on every worker,
# mount the bucket, start `python -m llark_jax train` on --worker=all, stream logs, delete.
#
#   launch/tpu_vm.sh [OPTIONS] STEP... [-- --config.KEY=VALUE ...]
#
# STEPs (run in the order given): create  install  mount  data  train  logs  delete
#   all = create install mount train logs
#
# OPTIONS
#   --name NAME            TPU VM / queued resource name (required)
#   --project PROJECT      GCP project (required)
#   --zone ZONE            e.g. us-east5-a (v5p), us-west4-a (v5e), us-central2-b (v4) (required)
#   --accelerator TYPE     e.g. v5p-32, v5litepod-16, v4-32 (default v5p-8)
#   --version VERSION      TPU software version (default v2-alpha-tpuv5; v4: tpu-ubuntu2204-base,
#                          v5e: v2-alpha-tpuv5-lite)
#   --queued               create through a queued resource (waits until ACTIVE)
#   --spot                 spot capacity
#   --bucket BUCKET        GCS bucket mounted with gcsfuse at /gcs/BUCKET on every worker
#   --copy-data GS_DIR     data step: rsync GS_DIR to ~/llark_data on every worker
#   --config FILE          config file in the repository (default configs/llark_7b.py)
#   --workdir DIR          run directory shared by all workers (default /gcs/BUCKET/runs/NAME)
#   --coordinator-port P   pass worker 0's address and port explicitly (LLARK_COORDINATOR*)
#                          instead of jax's TPU auto-detection (LLARK_DISTRIBUTED=auto)
#   --dry-run              print every command instead of running it
#
# Everything after `--` is passed to the trainer (config overrides). Re-running `train` resumes
# from the newest checkpoint in --workdir. `install` ships the committed HEAD (git archive).
# gcsfuse gets --rename-dir-limit because Orbax commits a checkpoint by renaming its directory.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

name="" project="" zone="" bucket="" copy_data="" workdir="" coordinator_port=""
accelerator="v5p-8"
version="v2-alpha-tpuv5"
config="configs/llark_7b.py"
queued=0 spot=0 dry_run=0
jax_version="0.10.2"
torch_cpu="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
poll_s="${TPU_VM_POLL_S:-30}"  # seconds between queued-resource state checks
remote_dir="llark"
log_file="llark-train.log"
steps=()
overrides=()

while (($#)); do
  case "$1" in
    --name) name="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --queued) queued=1; shift ;;
    --spot) spot=1; shift ;;
    --bucket) bucket="$2"; shift 2 ;;
    --copy-data) copy_data="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --coordinator-port) coordinator_port="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; overrides=("$@"); break ;;
    create|install|mount|data|train|logs|delete) steps+=("$1"); shift ;;
    all) steps+=(create install mount train logs); shift ;;
    *) echo "tpu_vm.sh: unknown argument: $1" >&2; usage 2 ;;
  esac
done

die() { echo "tpu_vm.sh: $*" >&2; exit 2; }
[[ -n "$name" && -n "$project" && -n "$zone" ]] || die "--name, --project and --zone are required"
((${#steps[@]})) || die "no STEP given (create install mount data train logs delete | all)"
if [[ -z "$workdir" ]]; then
  [[ -n "$bucket" ]] || die "--workdir or --bucket is required (the run directory must be shared)"
  workdir="/gcs/$bucket/runs/$name"
fi

# Runs a command, or prints it (shell-quoted, copy-pastable) with --dry-run.
run() {
  if ((dry_run)); then
    local arg line="+"
    for arg in "$@"; do
      if [[ "$arg" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then line+=" $arg"; else line+=" ${arg@Q}"; fi
    done
    printf '%s\n' "$line"
  else
    "$@"
  fi
}

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--project "$project" --zone "$zone")

# Runs a shell command on every worker of the slice.
on_all_workers() {
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command "$1"
}

quote_words() {
  printf '%q ' "$@"
}

step_create() {
  local extra=()
  ((spot)) && extra+=(--spot)
  if ((queued)); then
    run gcloud compute tpus queued-resources create "$name" --node-id "$name" "${where[@]}" \
      --accelerator-type "$accelerator" --runtime-version "$version" "${extra[@]}"
    if ((dry_run)); then
      run gcloud compute tpus queued-resources describe "$name" "${where[@]}" \
        --format 'value(state.state)'
      return
    fi
    local state=""
    until [[ "$state" == ACTIVE ]]; do
      state="$(gcloud compute tpus queued-resources describe "$name" "${where[@]}" \
        --format 'value(state.state)')"
      echo "tpu_vm.sh: queued resource $name is ${state:-unknown}" >&2
      case "$state" in
        FAILED|SUSPENDED) die "queued resource $name is $state" ;;
        ACTIVE) ;;
        *) sleep "$poll_s" ;;
      esac
    done
  else
    run "${gcloud_tpu[@]}" create "$name" "${where[@]}" --accelerator-type "$accelerator" \
      --version "$version" "${extra[@]}"
  fi
}

step_install() {
  local archive="/tmp/llark-src-$name.tar.gz"
  run git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
  run "${gcloud_tpu[@]}" scp "$archive" "$name:llark-src.tar.gz" "${where[@]}" --worker=all
  # TPU VM images ship Python 3.10; the project needs 3.11 (deadsnakes). torch (used by data_prep
  # only) comes from the CPU wheel index so pip does not pull CUDA libraries onto a TPU host.
  on_all_workers "set -e; if ! command -v python3.11 >/dev/null; then \
sudo add-apt-repository -y ppa:deadsnakes/ppa; sudo apt-get update -q; \
sudo apt-get install -y -q python3.11 python3.11-venv; fi; \
mkdir -p ~/$remote_dir; tar -xzf ~/llark-src.tar.gz -C ~/$remote_dir; \
cd ~/$remote_dir; python3.11 -m venv .venv; .venv/bin/pip install -q --upgrade pip; \
.venv/bin/pip install -q $torch_cpu; .venv/bin/pip install -q -r requirements.txt; \
.venv/bin/pip install -q --no-deps -r requirements-nodeps.txt; \
.venv/bin/pip install -q 'jax[tpu]==$jax_version'; .venv/bin/pip install -q --no-deps -e ."
}

step_mount() {
  [[ -n "$bucket" ]] || die "mount needs --bucket"
  on_all_workers "set -e; if ! command -v gcsfuse >/dev/null; then \
export GCSFUSE_REPO=gcsfuse-\$(lsb_release -c -s); \
echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt \$GCSFUSE_REPO main\" \
| sudo tee /etc/apt/sources.list.d/gcsfuse.list; \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
sudo apt-get update -q; sudo apt-get install -y -q gcsfuse; fi; \
sudo mkdir -p /gcs/$bucket; sudo chown \$USER /gcs/$bucket; \
mountpoint -q /gcs/$bucket || gcsfuse --implicit-dirs --rename-dir-limit=200000 $bucket /gcs/$bucket"
}

step_data() {
  [[ -n "$copy_data" ]] || die "data needs --copy-data gs://BUCKET/DIR"
  on_all_workers "set -e; mkdir -p ~/llark_data; gcloud storage rsync -r $copy_data ~/llark_data"
}

step_train() {
  local env_words=(LLARK_DISTRIBUTED=auto)
  if [[ -n "$coordinator_port" ]]; then
    local ip hosts
    if ((dry_run)); then
      ip="WORKER0_IP" hosts="NUM_WORKERS"
      run "${gcloud_tpu[@]}" describe "$name" "${where[@]}" \
        --format 'value(networkEndpoints[0].ipAddress)'
      run "${gcloud_tpu[@]}" describe "$name" "${where[@]}" \
        --format 'value(networkEndpoints.len())'
    else
      ip="$("${gcloud_tpu[@]}" describe "$name" "${where[@]}" \
        --format 'value(networkEndpoints[0].ipAddress)')"
      hosts="$("${gcloud_tpu[@]}" describe "$name" "${where[@]}" \
        --format 'value(networkEndpoints.len())')"
    fi
    env_words=("LLARK_COORDINATOR=$ip" "LLARK_COORDINATOR_PORT=$coordinator_port"
               "LLARK_NUM_PROCESSES=$hosts")
  fi
  local train_words
  train_words="$(quote_words .venv/bin/python -m llark_jax train --config "$config" \
    --workdir "$workdir" "${overrides[@]}")"
  # The worker number comes from the VM metadata (0 on the worker that hosts the coordinator).
  local worker_id="LLARK_PROCESS_ID=\$(curl -s -H Metadata-Flavor:Google \
http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)"
  [[ -n "$coordinator_port" ]] || worker_id=""
  on_all_workers "cd ~/$remote_dir && export $(quote_words "${env_words[@]}")$worker_id && \
setsid nohup $train_words > ~/$log_file 2>&1 < /dev/null & sleep 1; echo started on \$(hostname)"
}

step_logs() {
  run "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker=0 \
    --command "tail -n +1 -F ~/$log_file"
}

step_delete() {
  if ((queued)); then
    run gcloud compute tpus queued-resources delete "$name" "${where[@]}" --force --quiet
  else
    run "${gcloud_tpu[@]}" delete "$name" "${where[@]}" --quiet
  fi
}

for step in "${steps[@]}"; do
  ((dry_run)) && echo "# step: $step"
  "step_$step"
done
