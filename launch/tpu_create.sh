#!/usr/bin/env bash
# Creates a Cloud TPU VM slice (on demand, or Spot through a queued resource).
set -euo pipefail
PROG="$(basename "$0")"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [options] [-- extra gcloud flags]

Creates the TPU VM slice TPU_NAME. With --spot, asks for Spot capacity
through a queued resource (gcloud compute tpus queued-resources create
--spot), which waits in a queue until capacity is free; without it, creates
an on-demand slice (gcloud compute tpus tpu-vm create).

Options:
$TPU_COMMON_HELP
  --accelerator-type T   slice type, e.g. v4-8, v5litepod-8     [env ACCELERATOR_TYPE]
  --runtime-version V    TPU VM image [env RUNTIME_VERSION; default by type:
                         v2/v3/v4 tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite,
                         v5p v2-alpha-tpuv5, v6e v2-alpha-tpuv6e]
  --spot                 Spot capacity via a queued resource
  --queued-resource-id ID  queued resource name (--spot only)
                         [env QUEUED_RESOURCE_ID; default: the TPU name]
  -- FLAGS...            passed on to gcloud (e.g. -- --network=my-net)

Example:
  $PROG --tpu-name sc-v4 --zone us-central2-b --project my-proj \\
      --accelerator-type v4-8 --spot
EOF
}

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
QUEUED_RESOURCE_ID="${QUEUED_RESOURCE_ID:-}"
SPOT=0
EXTRA=()
while (($#)); do
  if tpu_common_option "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --accelerator-type | --accelerator-type=*)
      take_value "$@"; ACCELERATOR_TYPE="$VALUE"; shift "$SHIFT" ;;
    --runtime-version | --runtime-version=*)
      take_value "$@"; RUNTIME_VERSION="$VALUE"; shift "$SHIFT" ;;
    --queued-resource-id | --queued-resource-id=*)
      take_value "$@"; QUEUED_RESOURCE_ID="$VALUE"; shift "$SHIFT" ;;
    --spot) SPOT=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die_usage "unknown option $1 (see $PROG --help)" ;;
  esac
done

require_tpu_common
require "$ACCELERATOR_TYPE" --accelerator-type ACCELERATOR_TYPE
if [[ -z "$RUNTIME_VERSION" ]]; then
  RUNTIME_VERSION="$(default_runtime_version "$ACCELERATOR_TYPE")" ||
    die_usage "missing required option --runtime-version (no default for accelerator type $ACCELERATOR_TYPE)"
fi
tpu_scope

if ((SPOT)); then
  run gcloud compute tpus queued-resources create \
    "${QUEUED_RESOURCE_ID:-$TPU_NAME}" "--node-id=$TPU_NAME" "${SCOPE[@]}" \
    "--accelerator-type=$ACCELERATOR_TYPE" \
    "--runtime-version=$RUNTIME_VERSION" --spot ${EXTRA[@]+"${EXTRA[@]}"}
else
  run gcloud compute tpus tpu-vm create "$TPU_NAME" "${SCOPE[@]}" \
    "--accelerator-type=$ACCELERATOR_TYPE" "--version=$RUNTIME_VERSION" \
    ${EXTRA[@]+"${EXTRA[@]}"}
fi
