#!/usr/bin/env bash
# The budget study at the paper's scale on one GPU: ResNet-56 in bfloat16 at
# the paper's batch of 1000, one-cycle against the two baselines at an equal
# budget, several seeds per run in one program, then superconv.report.
set -euo pipefail
PROG="$(basename "$0")"

usage() {
  cat <<EOF
Usage: $PROG [options] [-- --config.KEY=VALUE ...]

Runs, from the repository root, on the local GPU, one after the other
(a part that fails or hits its limit does not stop the next; the exit
status is 1 if any did):
  for each ARM:LR of --arms and each budget: python -m superconv.main
    --config configs/budget_study.py:ARM with model MODEL, dtype DTYPE,
    batch BATCH, weight decay WD, schedule.max_lr LR, num_epochs BUDGET and
    num_parallel_seeds SEEDS (the seeds train as one vmapped program), each
    under its own time limit (SIGTERM: it stops at a checkpoint);
  then python -m superconv.report over the runs (budget analysis on,
    baselines piecewise and linear) into OUT/report.
The budget is sized to fit MINUTES from an estimated training rate: the
model's FLOP count per training image (superconv.bench; ResNet-56: 0.753
GFLOP) at an assumed MFU of the GPU's peak (default 3% of 989 TFLOP/s, the
H100/H200 bf16 dense peak), or a measured --img-per-s; the plan (runs,
epochs, images, estimated minutes, limits) is printed first and written to
OUT/plan.txt. It is an estimate: with a measured rate, pass it.
Defaults, why: one budget (each run costs OVERHEAD_S of start-up and
compilation, so a second budget would halve the training), 4 seeds per arm
(Welch intervals need spread), peak LRs 3.0 for one-cycle (the paper's CLR
peak at batch 1000) and 0.8 for the baselines (He et al.'s 0.1 at batch
128, scaled linearly): not tuned at this scale. Everything the report reads
(each seed's config.json and metrics.jsonl) and the report itself are
packed into OUT/gpu_study.tar.gz. Wheels in .whl/ are installed first into
a temporary directory.

Options:
  --out DIR          output directory (default: \$OUT or gpu_study)
  --python PY        interpreter with JAX (default: python3)
  --minutes M        time to spend, all runs and the report (default: 8)
  --arms LIST        ARM:LR,... (default: onecycle:3.0,piecewise:0.8,linear:0.8)
  --budgets LIST     epochs per run, or auto: the one that fits (default: auto)
  --seeds K          parallel seeds per run (default: 4)
  --model NAME       default: resnet56
  --dtype DTYPE      default: bfloat16 (float32 for a CPU check)
  --batch N          global batch (default: 1000)
  --weight-decay W   default: 1e-4 (the paper's)
  --data SPEC        config.dataset (default: folder:../shared/data/cifar10-jpeg.tar.xz;
                     on a machine without it, carry a copy and name it here)
  --train-size N     training images, for the plan (default: 50000)
  --mfu F            assumed model FLOPs utilization (default: 0.03)
  --peak-tflops T    the GPU's peak TFLOP/s in DTYPE (default: 989)
  --gflop G          training GFLOP per image (default: from superconv.bench)
  --img-per-s R      measured training images/s of one run, all its seeds
                     together (replaces the MFU estimate)
  --overhead-s S     start-up, data loading and compilation per run (default: 60)
  --reserve-s S      kept for wheels, nvidia-smi and the report (default: 45)
  --targets LIST     report's target accuracies (default: 0.8,0.85,0.9)
  --dry-run          print the plan and the commands, run and write nothing
  -h, --help         this help
Arguments after -- go to every run.

Example (device machine, repository root, data carried in .data/):
  bash benchmarks/gpu_study.sh --out "\$OUT" --data folder:.data/cifar10-jpeg.tar.xz
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }

OUT_DIR="${OUT:-gpu_study}"
PY="python3"
MINUTES=8
ARMS="onecycle:3.0,piecewise:0.8,linear:0.8"
BUDGETS="auto"
SEEDS=4
MODEL="resnet56"
DTYPE="bfloat16"
BATCH=1000
WD="1e-4"
DATA="folder:../shared/data/cifar10-jpeg.tar.xz"
TRAIN_SIZE=50000
MFU="0.03"
PEAK="989"
GFLOP=""
RATE=""
OVERHEAD_S=60
RESERVE_S=45
TARGETS="0.8,0.85,0.9"
DRY=0
EXTRA=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --out) OUT_DIR="${2:?--out needs a value}"; shift 2 ;;
    --python) PY="${2:?--python needs a value}"; shift 2 ;;
    --minutes) MINUTES="${2:?--minutes needs a value}"; shift 2 ;;
    --arms) ARMS="${2:?--arms needs a value}"; shift 2 ;;
    --budgets) BUDGETS="${2:?--budgets needs a value}"; shift 2 ;;
    --seeds) SEEDS="${2:?--seeds needs a value}"; shift 2 ;;
    --model) MODEL="${2:?--model needs a value}"; shift 2 ;;
    --dtype) DTYPE="${2:?--dtype needs a value}"; shift 2 ;;
    --batch) BATCH="${2:?--batch needs a value}"; shift 2 ;;
    --weight-decay) WD="${2:?--weight-decay needs a value}"; shift 2 ;;
    --data) DATA="${2:?--data needs a value}"; shift 2 ;;
    --train-size) TRAIN_SIZE="${2:?--train-size needs a value}"; shift 2 ;;
    --mfu) MFU="${2:?--mfu needs a value}"; shift 2 ;;
    --peak-tflops) PEAK="${2:?--peak-tflops needs a value}"; shift 2 ;;
    --gflop) GFLOP="${2:?--gflop needs a value}"; shift 2 ;;
    --img-per-s) RATE="${2:?--img-per-s needs a value}"; shift 2 ;;
    --overhead-s) OVERHEAD_S="${2:?--overhead-s needs a value}"; shift 2 ;;
    --reserve-s) RESERVE_S="${2:?--reserve-s needs a value}"; shift 2 ;;
    --targets) TARGETS="${2:?--targets needs a value}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (see $PROG --help)" ;;
  esac
done
for pair in "seeds:$SEEDS" "batch:$BATCH" "train-size:$TRAIN_SIZE"; do
  [[ "${pair#*:}" =~ ^[1-9][0-9]*$ ]] || die "--${pair%%:*} must be a positive integer (got '${pair#*:}')"
done
for pair in "minutes:$MINUTES" "mfu:$MFU" "peak-tflops:$PEAK" "overhead-s:$OVERHEAD_S" \
  "reserve-s:$RESERVE_S" "gflop:${GFLOP:-1}" "img-per-s:${RATE:-1}"; do
  [[ "${pair#*:}" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || die "--${pair%%:*} must be a number (got '${pair#*:}')"
done
IFS=, read -ra ARM_SPECS <<<"$ARMS"
for spec in "${ARM_SPECS[@]}"; do
  [[ "$spec" =~ ^(onecycle|onecycle_cm|piecewise|linear):[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] ||
    die "--arms: '$spec' is not ARM:LR with ARM one of onecycle, onecycle_cm, piecewise, linear"
done
if [[ "$BUDGETS" != auto ]]; then
  IFS=, read -ra BUDGET_LIST <<<"$BUDGETS"
  for b in "${BUDGET_LIST[@]}"; do
    [[ "$b" =~ ^[0-9]*\.?[0-9]+$ ]] || die "--budgets: '$b' is not a number of epochs"
  done
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if ((!DRY)); then
  mkdir -p "$OUT_DIR/logs"
  if compgen -G ".whl/*.whl" >/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --upgrade --target /tmp/superconv-site .whl/*.whl
    export PYTHONPATH="/tmp/superconv-site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  { nvidia-smi 2>&1 || echo "nvidia-smi: not available"; } >"$OUT_DIR/nvidia-smi.txt"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [[ -z "$GFLOP" ]]; then
  GFLOP="$("$PY" -c 'import sys
from superconv import bench
print(bench.train_gflops_per_image(sys.argv[1]))' "$MODEL" 2>/dev/null)" ||
    die "cannot compute the FLOP count of $MODEL with $PY; pass --gflop"
fi

# The plan: one line per run (arm, lr, epochs, steps, images, estimated and
# limit seconds), from awk. Steps per epoch: train size // batch.
PLAN="$(awk -v arms="$ARMS" -v budgets="$BUDGETS" -v seeds="$SEEDS" \
  -v batch="$BATCH" -v n="$TRAIN_SIZE" -v gflop="$GFLOP" -v mfu="$MFU" \
  -v peak="$PEAK" -v rate="$RATE" -v overhead="$OVERHEAD_S" \
  -v total="$MINUTES" -v reserve="$RESERVE_S" 'BEGIN {
  if (rate == "") rate = mfu * peak * 1e3 / gflop
  na = split(arms, a, ",")
  avail = total * 60 - reserve
  if (budgets == "auto") {
    e = int(((avail / na) - overhead) * rate / (seeds * n))
    if (e < 1) { print "error: not even one epoch fits"; exit 1 }
    nb = 1; b[1] = e
  } else nb = split(budgets, b, ",")
  runs = 0; sum = 0
  for (i = 1; i <= na; i++) for (j = 1; j <= nb; j++) {
    runs++
    split(a[i], al, ":"); arm[runs] = al[1]; lr[runs] = al[2]; ep[runs] = b[j]
    steps[runs] = int(b[j] * int(n / batch) + 0.5)
    img[runs] = steps[runs] * batch * seeds
    est[runs] = overhead + img[runs] / rate; sum += est[runs]
  }
  extra = (avail - sum) / runs
  for (r = 1; r <= runs; r++) {
    limit = (extra >= 0) ? est[r] + extra : est[r] * avail / sum
    printf "%s %s %g %d %d %.0f %d\n", arm[r], lr[r], ep[r], steps[r], img[r], est[r], limit
  }
  printf "rate %.0f %.0f %.0f\n", rate, sum, avail
}')" || die "--minutes $MINUTES: ${PLAN#error: } in $MINUTES minute(s) at this rate"

{
  echo "plan: $MODEL $DTYPE, batch $BATCH, $SEEDS parallel seeds per run, $TRAIN_SIZE training images, $DATA"
  read -r _ rate sum avail <<<"$(tail -n 1 <<<"$PLAN")"
  if [[ -n "$RATE" ]]; then
    echo "plan: rate $rate img/s per run (given: --img-per-s)"
  else
    echo "plan: rate $rate img/s per run, an ESTIMATE: $MFU MFU of $PEAK TFLOP/s at $GFLOP GFLOP per training image"
  fi
  printf 'plan: %-22s %7s %7s %12s %8s %8s\n' run epochs steps images "est. s" "limit s"
  while read -r arm lr ep steps img est limit; do
    [[ "$arm" == rate ]] && continue
    printf 'plan: %-22s %7s %7s %12s %8s %8s\n' "$arm@$lr" "$ep" "$steps" "$img" "$est" "$limit"
  done <<<"$PLAN"
  echo "plan: $(($(wc -l <<<"$PLAN") - 1)) run(s), $(awk '$1 != "rate" { s += $5 } END { print s }' <<<"$PLAN") images, about $(awk -v s="$sum" 'BEGIN { printf "%.1f", s / 60 }') min estimated of the $avail s left after the reserve"
} | if ((DRY)); then cat; else tee "$OUT_DIR/plan.txt"; fi

run() {  # run LOG COMMAND...: print it; unless --dry-run, run it with output to LOG too.
  local log="$1"; shift
  printf '+'; printf ' %q' "$@"; printf '\n'
  if ((DRY)); then return 0; fi
  # A run that fails or hits its limit must not stop the next one.
  set +e
  "$@" 2>&1 | tee "$log"
  local status="${PIPESTATUS[0]}"
  set -e
  echo "$PROG: exit status $status" | tee -a "$log"
  if ((status)); then FAILED=1; fi
}
FAILED=0

LABELS=()
BASES=()
while read -r arm lr ep _ _ _ limit; do
  [[ "$arm" == rate ]] && continue
  eval_every="$(awk -v e="$ep" 'BEGIN { v = e / 4; print (v < 1 ? 1 : v) }')"
  run "$OUT_DIR/logs/${arm}_$ep.log" timeout --signal=TERM --kill-after=30 "$limit" \
    "$PY" -m superconv.main --config "configs/budget_study.py:$arm" \
    --workdir "$OUT_DIR/runs/$arm/$ep" "--config.model=$MODEL" \
    "--config.dtype=$DTYPE" "--config.batch_size=$BATCH" \
    "--config.weight_decay=$WD" "--config.num_parallel_seeds=$SEEDS" \
    "--config.num_epochs=$ep" "--config.schedule.max_lr=$lr" \
    "--config.dataset=$DATA" "--config.eval_every_epochs=$eval_every" \
    "${EXTRA[@]}"
  if [[ " ${LABELS[*]} " != *" $OUT_DIR/runs/$arm=$arm "* ]]; then
    LABELS+=(--label "$OUT_DIR/runs/$arm=$arm")
    if [[ "$arm" == piecewise || "$arm" == linear ]]; then BASES+=("$arm"); fi
  fi
done <<<"$PLAN"

run "$OUT_DIR/logs/report.log" "$PY" -m superconv.report "$OUT_DIR/runs" \
  --out "$OUT_DIR/report" --budget-analysis on \
  --budget-baseline "$(IFS=,; echo "${BASES[*]}")" --targets "$TARGETS" \
  "${LABELS[@]}"
if ((!DRY)); then
  if (cd "$OUT_DIR" && find runs report \( -name config.json -o -name metrics.jsonl \
    -o -path 'report/*' \) -type f -print0 | tar --null -czf gpu_study.tar.gz -T -); then
    echo "$PROG: wrote $OUT_DIR/gpu_study.tar.gz"
  else
    echo "$PROG: could not pack $OUT_DIR/gpu_study.tar.gz" >&2
  fi
fi
exit "$FAILED"
