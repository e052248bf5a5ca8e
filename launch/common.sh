# shellcheck shell=bash
# shellcheck disable=SC2034  # the variables are used by the sourcing scripts
# Shared helpers for the launch scripts; sourced, never run.
#
#   PROG          script name used in messages (set by the sourcing script)
#   DRY_RUN       1 = print commands ("+ cmd", shell-quoted) on stdout, run
#                 nothing; 0 = echo them on stderr, then run them
#   die_usage     one line on stderr, exit 2 (bad or missing arguments)
#   die           one line on stderr, exit 1 (a failure at run time)
#   take_value    --opt VALUE / --opt=VALUE parsing
#   require       a required option (flag, else env var, else exit 2)
#   run           the run / dry-run wrapper
#   shell_quote   POSIX single-quoting that stays readable

LAUNCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$LAUNCH_DIR/.." && pwd)"
DRY_RUN="${DRY_RUN:-0}"
PROG="${PROG:-$(basename "$0")}"

# Files on each TPU worker (relative to the remote home directory).
REMOTE_CODE_DIR="superconv"                  # unpacked repository
REMOTE_VENV="superconv-venv"                 # virtual environment
REMOTE_TARBALL="superconv.tar.gz"            # uploaded `git archive`
REMOTE_LOG="superconv-run.log"               # trainer stdout + stderr
REMOTE_PID="superconv-run.pid"               # pid of the detached run
REMOTE_EXIT="superconv-run.exit"             # exit status, once finished

die_usage() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 1
}

log() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

# shell_quote WORD: WORD as is when it has only safe characters, otherwise
# single-quoted ('it'\''s'), so that the result can be pasted into a shell.
shell_quote() {
  local s="$1"
  if [[ -n "$s" && "$s" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$s"
  else
    local q="'\\''"
    printf "'%s'" "${s//\'/$q}"
  fi
}

# quote_words WORD...: the words shell-quoted, joined by single spaces.
quote_words() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(shell_quote "$w")"
  done
  printf '%s' "$out"
}

# run CMD ARG...: prints "+ CMD ARG..." (stdout in a dry run, else stderr)
# and, unless this is a dry run, runs it.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '+ %s\n' "$(quote_words "$@")"
    return 0
  fi
  printf '+ %s\n' "$(quote_words "$@")" >&2
  "$@"
}

# take_value "$@": for "--opt VALUE" or "--opt=VALUE" at $1, sets VALUE and
# SHIFT (how many words to shift). A missing value exits 2.
take_value() {
  local opt="$1"
  if [[ "$opt" == --*=* ]]; then
    VALUE="${opt#*=}"
    SHIFT=1
  elif (($# >= 2)) && [[ "$2" != --* ]]; then
    VALUE="$2"
    SHIFT=2
  else
    die_usage "option ${opt%%=*} needs a value"
  fi
}

# require VALUE OPTION [ENVVAR]: exits 2 naming OPTION when VALUE is empty.
require() {
  local value="$1" opt="$2" env="${3:-}"
  if [[ -z "$value" ]]; then
    if [[ -n "$env" ]]; then
      die_usage "missing required option $opt (or set $env)"
    fi
    die_usage "missing required option $opt"
  fi
}

# require_int VALUE OPTION [MIN]: a non-negative integer >= MIN.
require_int() {
  local value="$1" opt="$2" min="${3:-0}"
  if ! [[ "$value" =~ ^[0-9]+$ ]] || ((10#$value < min)); then
    die_usage "$opt must be an integer >= $min (got '$value')"
  fi
}

# require_gs VALUE OPTION: a gs://bucket/path URL.
require_gs() {
  local value="$1" opt="$2"
  if [[ "$value" != gs://?* ]]; then
    die_usage "$opt must be a gs://bucket/path URL (got '$value')"
  fi
}

# --- TPU options shared by the tpu_*.sh scripts -----------------------------

TPU_NAME="${TPU_NAME:-}"
ZONE="${ZONE:-}"
PROJECT="${PROJECT:-${CLOUDSDK_CORE_PROJECT:-}}"

# tpu_common_option "$@": handles --tpu-name, --zone, --project, --dry-run
# (setting SHIFT) and returns 0; returns 1 for any other option.
tpu_common_option() {
  case "$1" in
    --tpu-name | --tpu-name=*) take_value "$@"; TPU_NAME="$VALUE" ;;
    --zone | --zone=*) take_value "$@"; ZONE="$VALUE" ;;
    --project | --project=*) take_value "$@"; PROJECT="$VALUE" ;;
    --dry-run) DRY_RUN=1; SHIFT=1 ;;
    *) return 1 ;;
  esac
}

TPU_COMMON_HELP="\
  --tpu-name NAME        TPU VM (node) name                       [env TPU_NAME]
  --zone ZONE            zone, e.g. us-central2-b                 [env ZONE]
  --project PROJECT      Google Cloud project   [env PROJECT, CLOUDSDK_CORE_PROJECT]
  --dry-run              print the commands (one per line, '+ ' prefix,
                         shell-quoted) instead of running them
  -h, --help             this help"

require_tpu_common() {
  require "$TPU_NAME" --tpu-name TPU_NAME
  require "$ZONE" --zone ZONE
  require "$PROJECT" --project PROJECT
}

# gcloud's location flags for every TPU command.
tpu_scope() {
  SCOPE=("--zone=$ZONE" "--project=$PROJECT")
}

# tpu_ssh WORKER REMOTE_COMMAND: one command on one worker (or "all").
tpu_ssh() {
  tpu_scope
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "--worker=$1" "${SCOPE[@]}" \
    "--command=$2"
}

# Forwards the common options to a sibling script.
tpu_common_args() {
  COMMON_ARGS=(--tpu-name "$TPU_NAME" --zone "$ZONE" --project "$PROJECT")
  if [[ "$DRY_RUN" == 1 ]]; then
    COMMON_ARGS+=(--dry-run)
  fi
}

# default_runtime_version ACCELERATOR_TYPE: the TPU VM image for JAX.
default_runtime_version() {
  case "$1" in
    v2-* | v3-* | v4-*) printf '%s' tpu-ubuntu2204-base ;;
    v5litepod-* | v5e-*) printf '%s' v2-alpha-tpuv5-lite ;;
    v5p-*) printf '%s' v2-alpha-tpuv5 ;;
    v6e-*) printf '%s' v2-alpha-tpuv6e ;;
    *) return 1 ;;
  esac
}
