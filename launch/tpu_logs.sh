#!/usr/bin/env bash
# Shows (and follows) the training log of one TPU worker.
set -euo pipefail
PROG="$(basename "$0")"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [options]

Prints the last LINES lines of ~/$REMOTE_LOG on one worker and follows it
(tail -F; Ctrl-C stops watching, not the run).

Options:
$TPU_COMMON_HELP
  --worker N             worker to read (default: 0, the one that prints
                         metrics)
  --lines N              lines of history (default: 100)
  --no-follow            print and exit instead of following

Example:
  $PROG --tpu-name sc-v4 --zone us-central2-b --project my-proj --worker 1
EOF
}

WORKER=0
LINES=100
FOLLOW=1
while (($#)); do
  if tpu_common_option "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --worker | --worker=*) take_value "$@"; WORKER="$VALUE"; shift "$SHIFT" ;;
    --lines | --lines=*) take_value "$@"; LINES="$VALUE"; shift "$SHIFT" ;;
    --no-follow) FOLLOW=0; shift ;;
    *) die_usage "unknown option $1 (see $PROG --help)" ;;
  esac
done

require_tpu_common
require_int "$WORKER" --worker 0
require_int "$LINES" --lines 0

tail_command="tail -n $LINES"
if ((FOLLOW)); then
  tail_command+=" -F"
fi
tpu_ssh "$WORKER" "$tail_command \$HOME/$REMOTE_LOG"
