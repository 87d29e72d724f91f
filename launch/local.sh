#!/usr/bin/env bash
# Train on this machine: one process, or N local processes joined by jax.distributed.
#
#   launch/local.sh --config configs/tiny.py --workdir runs/tiny [--config.train.steps=20 ...]
#   launch/local.sh --processes 2 --cpu-devices 4 --config configs/tiny.py --workdir runs/mh
#   launch/local.sh --dry-run --processes 2 ...        # print the commands, run nothing
#
# With --processes N > 1 every process gets LLARK_COORDINATOR=127.0.0.1:PORT,
# LLARK_NUM_PROCESSES=N and LLARK_PROCESS_ID=i (read by llark_jax.train.mesh), and writes its log
# to WORKDIR/logs/process_<i>.log. --cpu-devices D fakes D CPU devices per process (XLA_FLAGS),
# which is how multi-host runs are rehearsed without accelerators. --gpus-per-process G pins
# process i to GPUs [i*G, (i+1)*G) via CUDA_VISIBLE_DEVICES. The script exits with the first
# non-zero status of its processes and then stops the others: SIGTERM, and SIGKILL after
# --stop-grace seconds (default 30); Ctrl-C/SIGTERM stop all of them the same way. Needs bash >= 4.3.
# Config overrides take either form, `--config.train.steps=20` or `--config.train.steps 20`.
# The interpreter is --python BIN, else $PYTHON, else the checkout's .venv/bin/python (what
# `make` creates), else python3.
set -euo pipefail

usage() {
  sed -n '2,/^set -euo pipefail/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit "${1:-2}"
}

processes=1
cpu_devices=""
gpus_per_process=""
port=""
stop_grace=30
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -n "${PYTHON:-}" ]]; then
  python_bin="$PYTHON"
elif [[ -x "$repo/.venv/bin/python" ]]; then
  python_bin="$repo/.venv/bin/python"
else
  python_bin=python3
fi
dry_run=0
config=""
workdir=""
overrides=()

while (($#)); do
  case "$1" in
    --processes) processes="$2"; shift 2 ;;
    --cpu-devices) cpu_devices="$2"; shift 2 ;;
    --gpus-per-process) gpus_per_process="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --stop-grace) stop_grace="$2"; shift 2 ;;
    --python) python_bin="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage 0 ;;
    --config.*=*) overrides+=("$1"); shift ;;
    --config.*)
      [[ $# -ge 2 && "$2" != --* ]] || { echo "local.sh: $1 needs a value" >&2; exit 2; }
      overrides+=("$1=$2"); shift 2 ;;
    *) echo "local.sh: unknown argument: $1" >&2; usage 2 ;;
  esac
done

[[ -n "$config" && -n "$workdir" ]] || { echo "local.sh: --config and --workdir are required" >&2; usage 2; }
[[ "$processes" =~ ^[1-9][0-9]*$ ]] || { echo "local.sh: --processes must be a positive integer" >&2; exit 2; }

# Prints a command as a copy-pastable shell line (env assignments first).
show() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
}

train_cmd=("$python_bin" -m llark_jax train --config "$config" --workdir "$workdir" "${overrides[@]}")

common_env=()
if [[ -n "$cpu_devices" ]]; then
  common_env+=("JAX_PLATFORMS=cpu" "XLA_FLAGS=--xla_force_host_platform_device_count=$cpu_devices")
fi

if ((processes == 1)); then
  if ((dry_run)); then
    show env "${common_env[@]}" "${train_cmd[@]}"
    exit 0
  fi
  exec env "${common_env[@]}" "${train_cmd[@]}"
fi

if [[ -z "$port" ]]; then
  if ((dry_run)); then
    port=PORT
  else
    port="$("$python_bin" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  fi
fi

pids=()
# SIGTERM to every process (the trainer checkpoints and exits), SIGKILL to those still alive
# after --stop-grace seconds (e.g. blocked in a collective whose peer died).
stop_all() {
  local pid t alive
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for ((t = 0; t < stop_grace; t++)); do
    alive=0
    for pid in "${pids[@]}"; do
      if kill -0 "$pid" 2>/dev/null; then alive=1; fi
    done
    ((alive)) || return 0
    sleep 1
  done
  for pid in "${pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

if ((!dry_run)); then
  mkdir -p "$workdir/logs"
  trap 'stop_all; exit 130' INT
  trap 'stop_all; exit 143' TERM
fi

for ((i = 0; i < processes; i++)); do
  proc_env=("${common_env[@]}" "LLARK_COORDINATOR=127.0.0.1:$port"
            "LLARK_NUM_PROCESSES=$processes" "LLARK_PROCESS_ID=$i")
  if [[ -n "$gpus_per_process" ]]; then
    first=$((i * gpus_per_process))
    visible="$(seq -s, "$first" $((first + gpus_per_process - 1)))"
    proc_env+=("CUDA_VISIBLE_DEVICES=$visible")
  fi
  if ((dry_run)); then
    show env "${proc_env[@]}" "${train_cmd[@]}"
    echo "  > $workdir/logs/process_$i.log"
  else
    env "${proc_env[@]}" "${train_cmd[@]}" >"$workdir/logs/process_$i.log" 2>&1 &
    pids+=("$!")
  fi
done
((dry_run)) && exit 0

echo "local.sh: $processes processes on 127.0.0.1:$port, logs in $workdir/logs/" >&2
status=0
for ((n = 0; n < processes; n++)); do
  code=0
  wait -n || code=$?
  if ((code != 0)); then
    status=$code
    echo "local.sh: a process exited with status $code; stopping the others (logs: $workdir/logs/)" >&2
    stop_all
    wait || true
    break
  fi
done
exit "$status"
