#!/usr/bin/env bash
# Keeps a (Spot) TPU slice alive and the run going until it has finished.
set -euo pipefail
PROG="$(basename "$0")"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [options] [-- extra trainer flags]

Runs one training run to completion on preemptible capacity. Every
POLL_SECONDS it reads the slice's state (tpu-vm describe
--format='value(state)'; with --spot also the queued resource's) and:

  not found          creates it (tpu_create.sh; --spot: a queued resource)
  PREEMPTED, TERMINATED, STOPPED, or queued resource SUSPENDED/FAILED
                     deletes it (tpu_delete.sh --yes), to re-create it
  READY, not started tpu_setup.sh, then tpu_run.sh (one attempt)
  READY, started     reads worker 0's ~/$REMOTE_EXIT:
                       0    done: exits 0
                       2, 3 bad input / non-finite loss: exits 1, no retry
                       else the run ended (or vanished): next attempt
  anything else      (CREATING, WAITING_FOR_RESOURCES, ...) waits

Every attempt runs the same command, so the trainer resumes from the latest
checkpoint in the gs:// WORKDIR. The code is pinned to the commit that REF names
when the loop starts. A run that is already going when the loop starts is
adopted, not restarted. The slice is left running at the end: delete it with
tpu_delete.sh. --dry-run prints the commands of one create/setup/run/poll
pass.

Options:
$TPU_COMMON_HELP
  --accelerator-type T   slice type, e.g. v4-8, v5litepod-8   [env ACCELERATOR_TYPE]
  --runtime-version V    TPU VM image (default: by type, see tpu_create.sh)
                         [env RUNTIME_VERSION]
  --spot                 Spot capacity via a queued resource
  --queued-resource-id ID  queued resource name (--spot only)
                         [env QUEUED_RESOURCE_ID; default: the TPU name]
  --config FILE          experiment config, e.g. configs/default.py [env CONFIG]
  --workdir GS_URL       gs://bucket/path for checkpoints and metrics [env WORKDIR]
  --tfds-data-dir DIR    TFDS_DATA_DIR on the workers         [env TFDS_DATA_DIR]
  --ref REF              git commit to run (default: HEAD, resolved once)
  --python PY            see tpu_setup.sh (default: auto)
  --jax-spec SPEC        see tpu_setup.sh (default: 'jax[tpu]')
  --extras EXTRAS        see tpu_setup.sh (default: tfds)
  --max-attempts N       give up after N runs that did not finish, or N failed
                         create requests (default: 10)
  --poll-seconds S       seconds between state checks (default: 60)
  -- FLAGS...            passed on to the trainer

Example:
  $PROG --tpu-name sc-v4 --zone us-central2-b --project my-proj \\
      --accelerator-type v4-8 --spot --config configs/default.py \\
      --workdir gs://my-bucket/superconv/default \\
      --tfds-data-dir gs://my-bucket/tensorflow_datasets
EOF
}

ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-}"
RUNTIME_VERSION="${RUNTIME_VERSION:-}"
QUEUED_RESOURCE_ID="${QUEUED_RESOURCE_ID:-}"
CONFIG="${CONFIG:-}"
WORKDIR="${WORKDIR:-}"
TFDS_DATA_DIR="${TFDS_DATA_DIR:-}"
SPOT=0
REF="HEAD"
PYTHON="auto"
JAX_SPEC="jax[tpu]"
EXTRAS="tfds"
MAX_ATTEMPTS=10
POLL_SECONDS=60
TRAINER_FLAGS=()
while (($#)); do
  if tpu_common_option "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --accelerator-type | --accelerator-type=*)
      take_value "$@"; ACCELERATOR_TYPE="$VALUE"; shift "$SHIFT" ;;
    --runtime-version | --runtime-version=*)
      take_value "$@"; RUNTIME_VERSION="$VALUE"; shift "$SHIFT" ;;
    --spot) SPOT=1; shift ;;
    --queued-resource-id | --queued-resource-id=*)
      take_value "$@"; QUEUED_RESOURCE_ID="$VALUE"; shift "$SHIFT" ;;
    --config | --config=*) take_value "$@"; CONFIG="$VALUE"; shift "$SHIFT" ;;
    --workdir | --workdir=*) take_value "$@"; WORKDIR="$VALUE"; shift "$SHIFT" ;;
    --tfds-data-dir | --tfds-data-dir=*)
      take_value "$@"; TFDS_DATA_DIR="$VALUE"; shift "$SHIFT" ;;
    --ref | --ref=*) take_value "$@"; REF="$VALUE"; shift "$SHIFT" ;;
    --python | --python=*) take_value "$@"; PYTHON="$VALUE"; shift "$SHIFT" ;;
    --jax-spec | --jax-spec=*) take_value "$@"; JAX_SPEC="$VALUE"; shift "$SHIFT" ;;
    --extras | --extras=*) take_value "$@"; EXTRAS="$VALUE"; shift "$SHIFT" ;;
    --max-attempts | --max-attempts=*)
      take_value "$@"; MAX_ATTEMPTS="$VALUE"; shift "$SHIFT" ;;
    --poll-seconds | --poll-seconds=*)
      take_value "$@"; POLL_SECONDS="$VALUE"; shift "$SHIFT" ;;
    --) shift; TRAINER_FLAGS=("$@"); break ;;
    *) die_usage "unknown option $1 (see $PROG --help)" ;;
  esac
done

require_tpu_common
require "$ACCELERATOR_TYPE" --accelerator-type ACCELERATOR_TYPE
require "$CONFIG" --config CONFIG
require "$WORKDIR" --workdir WORKDIR
require_gs "$WORKDIR" --workdir
require_int "$MAX_ATTEMPTS" --max-attempts 1
require_int "$POLL_SECONDS" --poll-seconds 0
if [[ -z "$RUNTIME_VERSION" ]] &&
  ! default_runtime_version "$ACCELERATOR_TYPE" >/dev/null; then
  die_usage "missing required option --runtime-version (no default for accelerator type $ACCELERATOR_TYPE)"
fi
COMMIT="$(git -C "$REPO_ROOT" rev-parse --verify --quiet "$REF^{commit}")" ||
  die_usage "--ref: $REF is not a commit of $REPO_ROOT"
QR_ID="${QUEUED_RESOURCE_ID:-$TPU_NAME}"
tpu_scope
tpu_common_args

# --- What each sibling script gets ------------------------------------------

create_args=(--accelerator-type "$ACCELERATOR_TYPE")
delete_args=(--yes)
if [[ -n "$RUNTIME_VERSION" ]]; then
  create_args+=(--runtime-version "$RUNTIME_VERSION")
fi
if ((SPOT)); then
  create_args+=(--spot --queued-resource-id "$QR_ID")
  delete_args+=(--spot --queued-resource-id "$QR_ID")
fi
setup_args=(--ref "$COMMIT" --python "$PYTHON" --jax-spec "$JAX_SPEC"
  --extras "$EXTRAS")
run_args=(--config "$CONFIG" --workdir "$WORKDIR")
if [[ -n "$TFDS_DATA_DIR" ]]; then
  run_args+=(--tfds-data-dir "$TFDS_DATA_DIR")
fi
run_args+=(-- ${TRAINER_FLAGS[@]+"${TRAINER_FLAGS[@]}"})

sibling() {
  local script="$1"
  shift
  bash "$LAUNCH_DIR/$script" "${COMMON_ARGS[@]}" "$@"
}

# --- Queries (their output is parsed, so they are not echoed) ---------------

# query CMD...: sets OUT to the last non-empty stdout line of CMD, "" when
# CMD says NOT_FOUND, "?" on any other failure. In a dry run: prints CMD and
# sets OUT="".
query() {
  OUT=""
  if [[ "$DRY_RUN" == 1 ]]; then
    run "$@"
    return 0
  fi
  local err stdout
  err="$(mktemp)"
  if stdout="$("$@" 2>"$err")"; then
    OUT="$(printf '%s\n' "$stdout" | awk 'NF { last = $0 } END { print last }')"
    OUT="${OUT//[[:space:]]/}"
  elif grep -qiE 'NOT_FOUND|not found' "$err"; then
    OUT=""
  else
    OUT="?"
    log "query failed: $(quote_words "$@"): $(head -n 1 "$err")"
  fi
  rm -f "$err"
}

node_state() {
  query gcloud compute tpus tpu-vm describe "$TPU_NAME" "${SCOPE[@]}" \
    '--format=value(state)'
}

queued_resource_state() {
  query gcloud compute tpus queued-resources describe "$QR_ID" "${SCOPE[@]}" \
    '--format=value(state.state)'
}

# Worker 0's run: its exit status, "running", or "none" (never started here,
# or killed without a status, e.g. by a maintenance restart).
run_status() {
  query gcloud compute tpus tpu-vm ssh "$TPU_NAME" --worker=0 "${SCOPE[@]}" \
    "--command=if [ -f \$HOME/$REMOTE_EXIT ]; then cat \$HOME/$REMOTE_EXIT; elif [ -f \$HOME/$REMOTE_PID ] && kill -0 \"\$(cat \$HOME/$REMOTE_PID)\" 2>/dev/null; then echo running; else echo none; fi"
}

# --- Dry run: one pass, in order ---------------------------------------------

if [[ "$DRY_RUN" == 1 ]]; then
  echo "# $PROG: one pass of the loop (not found -> create -> READY -> setup, run -> poll)"
  node_state
  if ((SPOT)); then queued_resource_state; fi
  sibling tpu_create.sh "${create_args[@]}"
  node_state
  sibling tpu_setup.sh "${setup_args[@]}"
  sibling tpu_run.sh "${run_args[@]}"
  run_status
  echo "# then every ${POLL_SECONDS}s until worker 0's exit status is 0 (at most $MAX_ATTEMPTS attempts)"
  exit 0
fi

# --- The loop -----------------------------------------------------------------

attempts=0          # runs started (setup + run)
create_failures=0   # failed create requests
query_failures=0    # consecutive failed describe calls
launched=0          # a run was started on the current slice
last=""
note() {            # logs a state once, not at every poll
  if [[ "$1" != "$last" ]]; then log "$1"; last="$1"; fi
}

while true; do
  node_state
  node="$OUT"
  if [[ "$node" == "?" ]]; then
    query_failures=$((query_failures + 1))
    if ((query_failures >= 10)); then
      die "10 describe calls in a row failed; giving up"
    fi
  else
    query_failures=0
  fi

  case "$node" in
    READY)
      run_status
      status="$OUT"
      if ((!launched)) && [[ "$status" == running ]]; then
        note "TPU $TPU_NAME READY, a run is already going: following it"
        launched=1
      elif ((!launched)); then
        if ((attempts >= MAX_ATTEMPTS)); then
          die "gave up after $attempts attempts (see tpu_logs.sh)"
        fi
        attempts=$((attempts + 1))
        note "TPU $TPU_NAME READY: attempt $attempts of $MAX_ATTEMPTS (setup, run)"
        if sibling tpu_setup.sh "${setup_args[@]}" &&
          sibling tpu_run.sh "${run_args[@]}"; then
          launched=1
        else
          log "setup or launch failed; will look again"
        fi
      else
        case "$status" in
          0)
            log "worker 0: the run exited with status 0; done after $attempts attempt(s)"
            exit 0 ;;
          2 | 3)
            die "worker 0: the run exited with status $status (bad input or non-finite loss); not retrying (see tpu_logs.sh)" ;;
          running) note "TPU $TPU_NAME READY: running (attempt $attempts)" ;;
          "?" | "") note "TPU $TPU_NAME READY: run status unknown (ssh failed)" ;;
          *)
            log "worker 0: the run ended with status '$status'; starting it again"
            launched=0
            continue ;;
        esac
      fi
      ;;
    PREEMPTED | TERMINATED | STOPPED)
      note "TPU $TPU_NAME is $node: deleting it to re-create it"
      launched=0
      sibling tpu_delete.sh "${delete_args[@]}" ||
        log "delete failed; will look again"
      ;;
    "")
      launched=0
      qr=""
      if ((SPOT)); then
        queued_resource_state
        qr="$OUT"
      fi
      case "$qr" in
        "")
          note "TPU $TPU_NAME not found: creating it"
          if sibling tpu_create.sh "${create_args[@]}"; then
            create_failures=0
          else
            create_failures=$((create_failures + 1))
            if ((create_failures >= MAX_ATTEMPTS)); then
              die "$create_failures create requests in a row failed; giving up"
            fi
          fi
          ;;
        SUSPENDED | FAILED)
          note "queued resource $QR_ID is $qr: deleting it to re-create it"
          sibling tpu_delete.sh "${delete_args[@]}" ||
            log "delete failed; will look again"
          ;;
        *) note "queued resource $QR_ID is $qr: waiting" ;;
      esac
      ;;
    "?") ;;
    *) note "TPU $TPU_NAME is $node: waiting" ;;
  esac
  sleep "$POLL_SECONDS"
done
