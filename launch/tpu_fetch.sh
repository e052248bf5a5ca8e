#!/usr/bin/env bash
# Copies a run's gs:// workdir (and optionally worker 0's log) to local disk.
set -euo pipefail
PROG="$(basename "$0")"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [options]

Mirrors WORKDIR (checkpoints, metrics.jsonl, tensorboard/, config.json) into
DEST with \`gcloud storage rsync --recursive\` (or \`gsutil -m rsync -r\`).
Re-running copies only what changed.

Options:
  --workdir GS_URL       the run's gs://bucket/path               [env WORKDIR]
  --dest DIR             local directory (default: runs/<last part of WORKDIR>)
  --gsutil               use gsutil -m rsync -r instead of gcloud storage rsync
  --exclude-checkpoints  skip checkpoints/ (metrics and config only)
  --log                  also copy worker 0's ~/$REMOTE_LOG to DEST/worker0.log
                         (needs --tpu-name, --zone, --project)
  --tpu-name NAME        TPU VM name (for --log)                  [env TPU_NAME]
  --zone ZONE            zone (for --log)                         [env ZONE]
  --project PROJECT      project (for --log)   [env PROJECT, CLOUDSDK_CORE_PROJECT]
  --dry-run              print the commands instead of running them
  -h, --help             this help

Example:
  $PROG --workdir gs://my-bucket/superconv/default --dest runs/default
EOF
}

WORKDIR="${WORKDIR:-}"
DEST=""
GSUTIL=0
EXCLUDE_CHECKPOINTS=0
FETCH_LOG=0
while (($#)); do
  if tpu_common_option "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --workdir | --workdir=*) take_value "$@"; WORKDIR="$VALUE"; shift "$SHIFT" ;;
    --dest | --dest=*) take_value "$@"; DEST="$VALUE"; shift "$SHIFT" ;;
    --gsutil) GSUTIL=1; shift ;;
    --exclude-checkpoints) EXCLUDE_CHECKPOINTS=1; shift ;;
    --log) FETCH_LOG=1; shift ;;
    *) die_usage "unknown option $1 (see $PROG --help)" ;;
  esac
done

require "$WORKDIR" --workdir WORKDIR
require_gs "$WORKDIR" --workdir
WORKDIR="${WORKDIR%/}"
if [[ -z "$DEST" ]]; then
  DEST="runs/${WORKDIR##*/}"
fi
if ((FETCH_LOG)); then
  require_tpu_common
fi

run mkdir -p "$DEST"
if ((GSUTIL)); then
  exclude=()
  if ((EXCLUDE_CHECKPOINTS)); then exclude=(-x '^checkpoints/'); fi
  run gsutil -m rsync -r ${exclude[@]+"${exclude[@]}"} "$WORKDIR" "$DEST"
else
  exclude=()
  if ((EXCLUDE_CHECKPOINTS)); then exclude=("--exclude=^checkpoints/"); fi
  run gcloud storage rsync --recursive ${exclude[@]+"${exclude[@]}"} \
    "$WORKDIR" "$DEST"
fi
if ((FETCH_LOG)); then
  tpu_scope
  run gcloud compute tpus tpu-vm scp "$TPU_NAME:$REMOTE_LOG" \
    "$DEST/worker0.log" --worker=0 "${SCOPE[@]}"
fi
