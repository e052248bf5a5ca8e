#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one call: bf16 ResNet-56/ResNet-18 at
# batches 128/512/1000 against PyTorch, then K = 1/4/16 parallel seeds.
set -euo pipefail
PROG="$(basename "$0")"

usage() {
  cat <<EOF
Usage: $PROG [options]

Runs, from the repository root, on all local GPUs:
  1. python -m superconv.bench --model MODELS --batch BATCHES --dtype bfloat16
     --compare-pytorch (step, aug and loop rates, MFU, memory; PyTorch's best
     setting: torch.compile, channels_last, bf16 autocast), limit MAIN_S s;
  2. python -m superconv.bench --model MODELS --batch 128 --parallel-seeds SEEDS
     (throughput per replica against K), limit SEEDS_S s.
Each part writes its rows to OUT as JSON after every row and its log beside
them, so a part stopped at its limit keeps what it measured. About 8 minutes
on one H200 with the defaults. Wheels in .whl/ (e.g. ml_collections, which
a bare JAX image lacks) are installed first into a temporary directory.

Options:
  --out DIR          where JSON, logs and nvidia-smi go (default: \$OUT or bench_gpu)
  --python PY        interpreter with JAX (and torch for step 1) (default: python3)
  --models LIST      default: resnet56,resnet18
  --batches LIST     default: 128,512,1000
  --seeds LIST       default: 1,4,16
  --steps N          timed steps per repeat (default: 20)
  --repeats N        repeats, median reported (default: 3)
  --main-s S         limit of part 1 in seconds (default: 330)
  --seeds-s S        limit of part 2 in seconds (default: 150)
  --dtype DTYPE      default: bfloat16 (float32 for a CPU check)
  --no-torch         skip the PyTorch comparison
  --dry-run          print the commands instead of running them
  -h, --help         this help

Example (device machine, repository root):
  bash benchmarks/gpu_matrix.sh --out "\$OUT"
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }

OUT_DIR="${OUT:-bench_gpu}"
PY="python3"
MODELS="resnet56,resnet18"
BATCHES="128,512,1000"
SEEDS="1,4,16"
STEPS=20
REPEATS=3
MAIN_S=330
SEEDS_S=150
DTYPE="bfloat16"
TORCH=1
DRY=0
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --out) OUT_DIR="${2:?--out needs a value}"; shift 2 ;;
    --python) PY="${2:?--python needs a value}"; shift 2 ;;
    --models) MODELS="${2:?--models needs a value}"; shift 2 ;;
    --batches) BATCHES="${2:?--batches needs a value}"; shift 2 ;;
    --seeds) SEEDS="${2:?--seeds needs a value}"; shift 2 ;;
    --steps) STEPS="${2:?--steps needs a value}"; shift 2 ;;
    --repeats) REPEATS="${2:?--repeats needs a value}"; shift 2 ;;
    --main-s) MAIN_S="${2:?--main-s needs a value}"; shift 2 ;;
    --seeds-s) SEEDS_S="${2:?--seeds-s needs a value}"; shift 2 ;;
    --dtype) DTYPE="${2:?--dtype needs a value}"; shift 2 ;;
    --no-torch) TORCH=0; shift ;;
    --dry-run) DRY=1; shift ;;
    *) die "unknown option $1 (see $PROG --help)" ;;
  esac
done
for pair in "steps:$STEPS" "repeats:$REPEATS" "main-s:$MAIN_S" "seeds-s:$SEEDS_S"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} must be a positive integer (got '${pair#*:}')"
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

run() {  # run LOG COMMAND...: print it; unless --dry-run, run it with output to LOG too.
  local log="$1"; shift
  printf '+'; printf ' %q' "$@"; printf '\n'
  if ((DRY)); then return 0; fi
  # A part that fails or hits its limit must not stop the next one.
  set +e
  "$@" 2>&1 | tee "$log"
  local status="${PIPESTATUS[0]}"
  set -e
  echo "$PROG: exit status $status" | tee -a "$log"
}

if ((!DRY)); then
  mkdir -p "$OUT_DIR"
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/superconv-site .whl/*.whl
    export PYTHONPATH="/tmp/superconv-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  { nvidia-smi 2>&1 || echo "nvidia-smi: not available"; } >"$OUT_DIR/nvidia-smi.txt"
fi

COMMON=(--dtype "$DTYPE" --steps "$STEPS" --repeats "$REPEATS" --warmup 2
        --train-size 10000 --log-every 20 --loop-intervals 2)
TORCH_ARGS=()
if ((TORCH)); then TORCH_ARGS=(--compare-pytorch --torch-python "$PY"); fi

run "$OUT_DIR/bench_main.log" timeout "$MAIN_S" "$PY" -m superconv.bench \
  --model "$MODELS" --batch "$BATCHES" "${COMMON[@]}" "${TORCH_ARGS[@]}" \
  --json "$OUT_DIR/bench_main.json"
run "$OUT_DIR/bench_seeds.log" timeout "$SEEDS_S" "$PY" -m superconv.bench \
  --model "$MODELS" --batch 128 --parallel-seeds "$SEEDS" "${COMMON[@]}" \
  --json "$OUT_DIR/bench_seeds.json"
