#!/usr/bin/env bash
# Deletes a TPU VM slice (or its queued resource), after confirmation.
set -euo pipefail
PROG="$(basename "$0")"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [options]

Deletes the TPU VM TPU_NAME, or with --spot its queued resource together with
the TPU VM it holds (queued-resources delete --force). Asks for confirmation
unless --yes. The gs:// workdir is not touched.

Options:
$TPU_COMMON_HELP
  --spot                 delete the queued resource (slices made with
                         tpu_create.sh --spot)
  --queued-resource-id ID  queued resource name (--spot only)
                         [env QUEUED_RESOURCE_ID; default: the TPU name]
  -y, --yes              do not ask for confirmation

Example:
  $PROG --tpu-name sc-v4 --zone us-central2-b --project my-proj --spot --yes
EOF
}

QUEUED_RESOURCE_ID="${QUEUED_RESOURCE_ID:-}"
SPOT=0
YES=0
while (($#)); do
  if tpu_common_option "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --spot) SPOT=1; shift ;;
    --queued-resource-id | --queued-resource-id=*)
      take_value "$@"; QUEUED_RESOURCE_ID="$VALUE"; shift "$SHIFT" ;;
    -y | --yes) YES=1; shift ;;
    *) die_usage "unknown option $1 (see $PROG --help)" ;;
  esac
done

require_tpu_common
tpu_scope

if ((SPOT)); then
  what="queued resource ${QUEUED_RESOURCE_ID:-$TPU_NAME} (and TPU VM $TPU_NAME)"
else
  what="TPU VM $TPU_NAME"
fi
if [[ "$DRY_RUN" != 1 ]] && ((!YES)); then
  printf 'Delete %s in zone %s of project %s? [y/N] ' "$what" "$ZONE" \
    "$PROJECT" >&2
  answer=""
  read -r answer || true
  if [[ "$answer" != [yY] && "$answer" != [yY][eE][sS] ]]; then
    log "not deleted"
    exit 1
  fi
fi

if ((SPOT)); then
  run gcloud compute tpus queued-resources delete \
    "${QUEUED_RESOURCE_ID:-$TPU_NAME}" "${SCOPE[@]}" --force --quiet
else
  run gcloud compute tpus tpu-vm delete "$TPU_NAME" "${SCOPE[@]}" --quiet
fi
