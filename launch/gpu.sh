#!/usr/bin/env bash
# Runs the trainer on the GPUs of this node, alone or as one process of a
# multi-node job (plain, or under SLURM's srun).
set -euo pipefail
PROG="$(basename "$0")"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [options] [-- extra trainer flags]

One node: runs  python -m superconv.main --config CONFIG --workdir WORKDIR
on all the GPUs it sees (one process; pmap spreads the batch over them).

Several nodes: start this script once per node (srun does that). It exports
  SUPERCONV_COORDINATOR_ADDRESS  host:port of process 0
  SUPERCONV_NUM_PROCESSES        number of processes (nodes)
  SUPERCONV_PROCESS_ID           this process, 0 .. N-1
for the trainer's jax.distributed.initialize(coordinator_address,
num_processes, process_id), then runs the same command. Each value comes
from its option, else the environment variable of that name, else SLURM:
  address  first host of \`scontrol show hostnames \$SLURM_JOB_NODELIST\`
           (or \$SLURM_NODELIST), with --port
  count    \$SLURM_NTASKS (or \$SLURM_NNODES)
  id       \$SLURM_PROCID (or \$SLURM_NODEID)
With one process (or none of these set) nothing is exported.

Options:
  --config FILE              experiment config, e.g. configs/default.py [env CONFIG]
  --workdir DIR              run directory; with several nodes a path every
                             node sees (shared filesystem or gs://) [env WORKDIR]
  --coordinator-address H:P  process 0's address      [env SUPERCONV_COORDINATOR_ADDRESS]
  --num-processes N          process count            [env SUPERCONV_NUM_PROCESSES]
  --process-id I             this process's index     [env SUPERCONV_PROCESS_ID]
  --port P                   coordinator port when the address comes from
                             SLURM (default: 12345)  [env SUPERCONV_COORDINATOR_PORT]
  --gpus LIST                GPUs to use, e.g. 0,1,2,3 (sets CUDA_VISIBLE_DEVICES;
                             default: all)
  --tfds-data-dir DIR        exported as TFDS_DATA_DIR         [env TFDS_DATA_DIR]
  --python PY                Python interpreter (default: python) [env PYTHON]
  --dry-run                  print the commands instead of running them
  -h, --help                 this help
  -- FLAGS...                passed on to the trainer (e.g. -- --config.seed=1)

Examples:
  $PROG --config configs/default.py --workdir runs/default
  srun --nodes=2 --ntasks-per-node=1 $PROG --config configs/default.py \\
      --workdir /shared/runs/default          # see slurm_example.sbatch
  $PROG --config configs/default.py --workdir /shared/runs/default \\
      --coordinator-address node0:12345 --num-processes 2 --process-id 1
EOF
}

CONFIG="${CONFIG:-}"
WORKDIR="${WORKDIR:-}"
COORDINATOR="${SUPERCONV_COORDINATOR_ADDRESS:-}"
NUM_PROCESSES="${SUPERCONV_NUM_PROCESSES:-}"
PROCESS_ID="${SUPERCONV_PROCESS_ID:-}"
PORT="${SUPERCONV_COORDINATOR_PORT:-12345}"
GPUS=""
TFDS_DATA_DIR="${TFDS_DATA_DIR:-}"
PYTHON="${PYTHON:-python}"
TRAINER_FLAGS=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --config | --config=*) take_value "$@"; CONFIG="$VALUE"; shift "$SHIFT" ;;
    --workdir | --workdir=*) take_value "$@"; WORKDIR="$VALUE"; shift "$SHIFT" ;;
    --coordinator-address | --coordinator-address=*)
      take_value "$@"; COORDINATOR="$VALUE"; shift "$SHIFT" ;;
    --num-processes | --num-processes=*)
      take_value "$@"; NUM_PROCESSES="$VALUE"; shift "$SHIFT" ;;
    --process-id | --process-id=*)
      take_value "$@"; PROCESS_ID="$VALUE"; shift "$SHIFT" ;;
    --port | --port=*) take_value "$@"; PORT="$VALUE"; shift "$SHIFT" ;;
    --gpus | --gpus=*) take_value "$@"; GPUS="$VALUE"; shift "$SHIFT" ;;
    --tfds-data-dir | --tfds-data-dir=*)
      take_value "$@"; TFDS_DATA_DIR="$VALUE"; shift "$SHIFT" ;;
    --python | --python=*) take_value "$@"; PYTHON="$VALUE"; shift "$SHIFT" ;;
    --) shift; TRAINER_FLAGS=("$@"); break ;;
    *) die_usage "unknown option $1 (see $PROG --help)" ;;
  esac
done

require "$CONFIG" --config CONFIG
require "$WORKDIR" --workdir WORKDIR
require_int "$PORT" --port 1

# --- Process count, id and coordinator: options, environment, SLURM --------

source_of_values="options/environment"
slurm_count="${SLURM_NTASKS:-${SLURM_NNODES:-}}"
if [[ -n "$slurm_count" ]] && { [[ -z "$NUM_PROCESSES" ]] ||
  [[ -z "$PROCESS_ID" ]] || [[ -z "$COORDINATOR" ]]; }; then
  source_of_values="SLURM"
  NUM_PROCESSES="${NUM_PROCESSES:-$slurm_count}"
  PROCESS_ID="${PROCESS_ID:-${SLURM_PROCID:-${SLURM_NODEID:-}}}"
  if [[ -z "$COORDINATOR" ]] && ((10#${NUM_PROCESSES:-1} > 1)); then
    nodelist="${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-}}"
    require "$nodelist" --coordinator-address \
      "SUPERCONV_COORDINATOR_ADDRESS, or SLURM_JOB_NODELIST"
    first_host="$(scontrol show hostnames "$nodelist" | head -n 1)" ||
      die "scontrol show hostnames $nodelist failed"
    [[ -n "$first_host" ]] || die "scontrol show hostnames $nodelist printed no host"
    COORDINATOR="$first_host:$PORT"
  fi
fi

distributed=0
if [[ -n "$NUM_PROCESSES" ]]; then
  require_int "$NUM_PROCESSES" --num-processes 1
  if ((10#$NUM_PROCESSES > 1)); then
    distributed=1
    require "$COORDINATOR" --coordinator-address SUPERCONV_COORDINATOR_ADDRESS
    require "$PROCESS_ID" --process-id SUPERCONV_PROCESS_ID
    require_int "$PROCESS_ID" --process-id 0
    if ((10#$PROCESS_ID >= 10#$NUM_PROCESSES)); then
      die_usage "--process-id must be below --num-processes ($PROCESS_ID >= $NUM_PROCESSES)"
    fi
    if ! [[ "$COORDINATOR" =~ ^.+:[0-9]+$ ]]; then
      die_usage "--coordinator-address must be host:port (got '$COORDINATOR')"
    fi
  fi
elif [[ -n "$PROCESS_ID$COORDINATOR" ]]; then
  require "$NUM_PROCESSES" --num-processes SUPERCONV_NUM_PROCESSES
fi

# --- Environment, then the trainer ------------------------------------------

set_env() {  # set_env NAME VALUE: export (printed like a command)
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+ export %s=%s\n' "$1" "$(shell_quote "$2")"
  else
    printf '+ export %s=%s\n' "$1" "$(shell_quote "$2")" >&2
    export "$1=$2"
  fi
}

if ((distributed)); then
  log "process $PROCESS_ID of $NUM_PROCESSES, coordinator $COORDINATOR (from $source_of_values)"
  set_env SUPERCONV_COORDINATOR_ADDRESS "$COORDINATOR"
  set_env SUPERCONV_NUM_PROCESSES "$NUM_PROCESSES"
  set_env SUPERCONV_PROCESS_ID "$PROCESS_ID"
else
  # One process: make sure no stale value from the environment reaches the
  # trainer.
  unset SUPERCONV_COORDINATOR_ADDRESS SUPERCONV_NUM_PROCESSES SUPERCONV_PROCESS_ID
fi
if [[ -n "$GPUS" ]]; then
  set_env CUDA_VISIBLE_DEVICES "$GPUS"
fi
if [[ -n "$TFDS_DATA_DIR" ]]; then
  set_env TFDS_DATA_DIR "$TFDS_DATA_DIR"
fi
train=("$PYTHON" -m superconv.main --config "$CONFIG" --workdir "$WORKDIR"
  ${TRAINER_FLAGS[@]+"${TRAINER_FLAGS[@]}"})
if [[ "$DRY_RUN" == 1 ]]; then
  run "${train[@]}"
  exit 0
fi
printf '+ %s\n' "$(quote_words "${train[@]}")" >&2
exec "${train[@]}"  # exec: signals from srun/SLURM reach the trainer
