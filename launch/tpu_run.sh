#!/usr/bin/env bash
# Starts the training run on every worker of a TPU slice, detached (nohup).
set -euo pipefail
PROG="$(basename "$0")"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [options] [-- extra trainer flags]

Runs, on every worker at once (tpu-vm ssh --worker=all), in ~/$REMOTE_CODE_DIR
with the venv of tpu_setup.sh first on PATH:

  python -m superconv.main --config CONFIG --workdir WORKDIR [flags...]

under nohup, detached, with stdout and stderr appended to ~/$REMOTE_LOG on
each worker: closing the SSH session does not stop it. When it ends, its
exit status is written to ~/$REMOTE_EXIT (tpu_spot_loop.sh polls it). A
worker where a run is still going is left alone, so re-running this is safe.
The same command resumes from the latest checkpoint in WORKDIR.

Options:
$TPU_COMMON_HELP
  --config FILE          experiment config, relative to the repository root,
                         e.g. configs/default.py                 [env CONFIG]
  --workdir GS_URL       gs://bucket/path for checkpoints and metrics (shared
                         by all workers, survives preemption)    [env WORKDIR]
  --tfds-data-dir DIR    exported as TFDS_DATA_DIR on the workers, e.g.
                         gs://bucket/tensorflow_datasets    [env TFDS_DATA_DIR]
  -- FLAGS...            passed on to the trainer (e.g. -- --config.seed=1)

Example:
  $PROG --tpu-name sc-v4 --zone us-central2-b --project my-proj \\
      --config configs/default.py --workdir gs://my-bucket/superconv/default \\
      --tfds-data-dir gs://my-bucket/tensorflow_datasets -- --config.seed=1
EOF
}

CONFIG="${CONFIG:-}"
WORKDIR="${WORKDIR:-}"
TFDS_DATA_DIR="${TFDS_DATA_DIR:-}"
TRAINER_FLAGS=()
while (($#)); do
  if tpu_common_option "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --config | --config=*) take_value "$@"; CONFIG="$VALUE"; shift "$SHIFT" ;;
    --workdir | --workdir=*) take_value "$@"; WORKDIR="$VALUE"; shift "$SHIFT" ;;
    --tfds-data-dir | --tfds-data-dir=*)
      take_value "$@"; TFDS_DATA_DIR="$VALUE"; shift "$SHIFT" ;;
    --) shift; TRAINER_FLAGS=("$@"); break ;;
    *) die_usage "unknown option $1 (see $PROG --help)" ;;
  esac
done

require_tpu_common
require "$CONFIG" --config CONFIG
require "$WORKDIR" --workdir WORKDIR
require_gs "$WORKDIR" --workdir

train="$(quote_words python -m superconv.main --config "$CONFIG" \
  --workdir "$WORKDIR" ${TRAINER_FLAGS[@]+"${TRAINER_FLAGS[@]}"})"
# The detached part: the trainer, then its exit status into REMOTE_EXIT.
detached="$train; echo \$? > \$HOME/$REMOTE_EXIT"

# One line for the worker's shell; $HOME, $PATH, $! and $(...) are expanded
# there.
remote=(
  "set -eu"
  "cd \$HOME/$REMOTE_CODE_DIR"
  "export PATH=\$HOME/$REMOTE_VENV/bin:\$PATH"
)
if [[ -n "$TFDS_DATA_DIR" ]]; then
  remote+=("export TFDS_DATA_DIR=$(shell_quote "$TFDS_DATA_DIR")")
fi
remote+=(
  "if [ -f \$HOME/$REMOTE_PID ] && kill -0 \"\$(cat \$HOME/$REMOTE_PID)\" 2>/dev/null; then echo \"superconv: a run is still going on \$(hostname), not starting another\"; else rm -f \$HOME/$REMOTE_EXIT; echo \"=== \$(date -u +%Y-%m-%dT%H:%M:%SZ) start on \$(hostname)\" >> \$HOME/$REMOTE_LOG; nohup bash -c $(shell_quote "$detached") >> \$HOME/$REMOTE_LOG 2>&1 < /dev/null & echo \$! > \$HOME/$REMOTE_PID; echo \"superconv: started on \$(hostname), log in ~/$REMOTE_LOG\"; fi"
)
remote_command="$(printf '%s; ' "${remote[@]}")"
remote_command="${remote_command%; }"

tpu_ssh all "$remote_command"
