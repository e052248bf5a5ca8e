#!/usr/bin/env bash
# Copies the code to every worker of a TPU slice and installs it in a venv.
set -euo pipefail
PROG="$(basename "$0")"
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $PROG [options]

Packs the repository at REF with \`git archive\` (committed files only),
copies it to every worker (tpu-vm scp --worker=all) and there unpacks it to
\$HOME/$REMOTE_CODE_DIR, creates the virtual environment \$HOME/$REMOTE_VENV (once)
and runs pip install JAX_SPEC -e '.[EXTRAS]'. Safe to re-run: the code
directory is replaced, the venv is reused, pip only installs what changed.

Options:
$TPU_COMMON_HELP
  --ref REF              git commit/branch/tag to pack (default: HEAD)
  --python PY            Python (>= 3.11) for the venv on the workers: auto
                         (default: python3 if >= 3.11, else python3.11) or a
                         name like python3.12; apt-get installs it (and its
                         -venv package) when missing
  --jax-spec SPEC        JAX requirement to install (default: 'jax[tpu]')
  --extras EXTRAS        package extras (default: tfds,gcs; '' for none)

Example:
  $PROG --tpu-name sc-v4 --zone us-central2-b --project my-proj
EOF
}

REF="HEAD"
PYTHON="auto"
JAX_SPEC="jax[tpu]"
EXTRAS="tfds,gcs"
while (($#)); do
  if tpu_common_option "$@"; then shift "$SHIFT"; continue; fi
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --ref | --ref=*) take_value "$@"; REF="$VALUE"; shift "$SHIFT" ;;
    --python | --python=*) take_value "$@"; PYTHON="$VALUE"; shift "$SHIFT" ;;
    --jax-spec | --jax-spec=*) take_value "$@"; JAX_SPEC="$VALUE"; shift "$SHIFT" ;;
    --extras | --extras=*) take_value "$@"; EXTRAS="$VALUE"; shift "$SHIFT" ;;
    *) die_usage "unknown option $1 (see $PROG --help)" ;;
  esac
done

require_tpu_common
require "$REF" --ref
require "$JAX_SPEC" --jax-spec
if ! [[ "$PYTHON" =~ ^(auto|python3(\.[0-9]+)?)$ ]]; then
  die_usage "--python must be auto or a name like python3.11 (got '$PYTHON')"
fi
tpu_scope

if [[ -n "$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
  log "warning: uncommitted changes in $REPO_ROOT are not copied (git archive $REF)"
fi

TARBALL="${TMPDIR:-/tmp}/superconv-$TPU_NAME.tar.gz"
PACKAGE="."
if [[ -n "$EXTRAS" ]]; then
  PACKAGE=".[$EXTRAS]"
fi

# The remote script, one line; $HOME and $PY are expanded on the worker.
# shellcheck disable=SC2016  # single quotes: expanded on the worker
remote=(
  "set -euo pipefail"
  "PY=$PYTHON"
  'if [ "$PY" = auto ]; then if python3 -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>/dev/null; then PY=python3; else PY=python3.11; fi; fi'
  'command -v "$PY" >/dev/null && "$PY" -c "import ensurepip" 2>/dev/null || { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$PY" "$PY-venv"; }'
  "rm -rf \$HOME/$REMOTE_CODE_DIR.new && mkdir -p \$HOME/$REMOTE_CODE_DIR.new"
  "tar -xzf \$HOME/$REMOTE_TARBALL -C \$HOME/$REMOTE_CODE_DIR.new"
  "rm -rf \$HOME/$REMOTE_CODE_DIR && mv \$HOME/$REMOTE_CODE_DIR.new \$HOME/$REMOTE_CODE_DIR"
  "\$HOME/$REMOTE_VENV/bin/python -c \"import sys; sys.exit(sys.version_info < (3, 11))\" 2>/dev/null || \"\$PY\" -m venv --clear \$HOME/$REMOTE_VENV"
  "cd \$HOME/$REMOTE_CODE_DIR"
  "\$HOME/$REMOTE_VENV/bin/pip install -q --upgrade pip"
  "\$HOME/$REMOTE_VENV/bin/pip install -q $(quote_words "$JAX_SPEC" -e "$PACKAGE")"
  "\$HOME/$REMOTE_VENV/bin/python -c $(shell_quote 'import jax, superconv; print("jax", jax.__version__, "superconv OK")')"
)
remote_command="$(printf '%s; ' "${remote[@]}")"
remote_command="${remote_command%; }"

run git -C "$REPO_ROOT" archive --format=tar.gz -o "$TARBALL" "$REF"
run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:$REMOTE_TARBALL" \
  --worker=all "${SCOPE[@]}"
tpu_ssh all "$remote_command"
