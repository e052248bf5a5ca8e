#!/usr/bin/env bash
# Reproduces results/budget_study/: final test accuracy against training
# budget for one-cycle and two tuned baselines (configs/budget_study.py):
# ResNet-20 on CIFAR-10 (JPEG q75), budgets of 1, 2 and 4 epochs, every
# point its own run, its peak LR tuned on a split held out of the training
# set, then 3 seeds on the full training set scored on the test set.
#
# Plan with the defaults (one epoch = 390 steps of 128 images; at ~300
# img/s an epoch takes ~170 s on 2 cores):
#   1. Tuning, per (arm, budget): schedule.max_lr over a 3-value grid (a
#      factor 2 apart) on 5,000 held-out training images, seed 0, the same
#      number of steps as the test runs, scored once at the end. When the
#      winner is at an edge of the grid the next value past that edge is
#      added and run (at most --max-extensions times), and the extension is
#      recorded in tuning.md. 3 arms x 3 budgets x 3 values = 27 runs,
#      3 x 3 x (1 + 2 + 4) = 63 epochs, plus B epochs per extension.
#   2. Test, per (arm, budget): the winner's peak LR, seeds 0, 1, 2, full
#      training set, test accuracy after every epoch: 27 runs, 63 epochs.
#   In all 54 runs and 126 epochs (plus extensions and ~0.07 epoch per
#   evaluation): ~6.0 h one run at a time, ~4.9 h with two runs pinned to a
#   core each (superconv.sweep --parallel auto, +22% images/s on 2 cores).
#   3. superconv.report over the test runs: accuracy against budget with 95%
#      CI bands, Welch differences against the best baseline per budget,
#      budget ratios, minimum detectable differences (report.md).
# Stop it at any time and run it again to go on: the sweeps skip finished
# runs and resume interrupted ones from their checkpoints (kept in --runs).
# After every sweep each finished run's config.json and metrics.jsonl are
# copied to RESULTS/runs/, and the tuning tables rewritten.
set -euo pipefail
PROG="$(basename "$0")"

usage() {
  cat <<EOF
Usage: $PROG [options] [-- --config.KEY=VALUE ...]

Tunes the peak LR of every (arm, budget) on a held-out split, trains the
winners over several seeds, writes the report (see the header of this file
for the plan). Run from anywhere; paths are relative to the repository root.

Options:
  --runs DIR           run directories with checkpoints (default: runs/budget_study)
  --results DIR        report, tuning tables, copies of the runs (default: results/budget_study)
  --data SPEC          config.dataset (default: folder:../shared/data/cifar10-jpeg.tar.xz)
  --arms LIST          default: onecycle,piecewise,linear (also: onecycle_cm)
  --baselines LIST     baseline arms of the report (default: piecewise,linear)
  --budgets LIST       epochs (default: 1,2,4)
  --seeds LIST         test seeds (default: 0,1,2)
  --grid ARM=V1,V2,..  initial peak-LR grid of an arm (repeatable); defaults:
                       onecycle and onecycle_cm 0.2,0.4,0.8; piecewise
                       0.05,0.1,0.2; linear 0.1,0.2,0.4
  --max-extensions N   grid extensions per (arm, budget) (default: 3)
  --validation-size N  held-out training images for tuning (default: 5000)
  --steps-per-epoch N  steps of one epoch of the full training set, the
                       tuning budget unit (default: 390 = 50000 // 128)
  --parallel N|auto    runs at once (superconv.sweep --parallel; default: auto)
  --targets LIST       report's target accuracies (default: 0.6,0.7,0.75)
  --epoch-seconds S    seconds per epoch of one run on the machine, for the
                       plan's estimate only (default: 170, ~300 img/s)
  --python PY          interpreter (default: \$PYTHON or python)
  --trainer CMD        superconv.sweep --trainer (default: superconv.main)
  --dry-run            print the plan and the commands, run and write nothing
  -h, --help           this help
Arguments after -- go to every run (e.g. a smaller model for a check).
EOF
}

die() { echo "$PROG: error: $*" >&2; exit 2; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUNS="runs/budget_study"
RESULTS="results/budget_study"
DATA="folder:../shared/data/cifar10-jpeg.tar.xz"
ARMS="onecycle,piecewise,linear"
BASELINES="piecewise,linear"
BUDGETS="1,2,4"
SEEDS="0,1,2"
MAX_EXT=3
VAL=5000
SPE=390
PAR="auto"
TARGETS="0.6,0.7,0.75"
EPOCH_S=170
PY="${PYTHON:-python}"
TRAINER=""
DRY=0
declare -A GRID=(
  [onecycle]="0.2,0.4,0.8"
  [onecycle_cm]="0.2,0.4,0.8"
  [piecewise]="0.05,0.1,0.2"
  [linear]="0.1,0.2,0.4"
)
EXTRA=()
while (($#)); do
  case "$1" in
    -h | --help) usage; exit 0 ;;
    --runs) RUNS="${2:?--runs needs a value}"; shift 2 ;;
    --results) RESULTS="${2:?--results needs a value}"; shift 2 ;;
    --data) DATA="${2:?--data needs a value}"; shift 2 ;;
    --arms) ARMS="${2:?--arms needs a value}"; shift 2 ;;
    --baselines) BASELINES="${2:?--baselines needs a value}"; shift 2 ;;
    --budgets) BUDGETS="${2:?--budgets needs a value}"; shift 2 ;;
    --seeds) SEEDS="${2:?--seeds needs a value}"; shift 2 ;;
    --grid)
      spec="${2:?--grid needs a value}"
      [[ "$spec" == *=* ]] || die "--grid $spec: expected ARM=V1,V2,..."
      GRID["${spec%%=*}"]="${spec#*=}"; shift 2 ;;
    --max-extensions) MAX_EXT="${2:?--max-extensions needs a value}"; shift 2 ;;
    --validation-size) VAL="${2:?--validation-size needs a value}"; shift 2 ;;
    --steps-per-epoch) SPE="${2:?--steps-per-epoch needs a value}"; shift 2 ;;
    --parallel) PAR="${2:?--parallel needs a value}"; shift 2 ;;
    --targets) TARGETS="${2:?--targets needs a value}"; shift 2 ;;
    --epoch-seconds) EPOCH_S="${2:?--epoch-seconds needs a value}"; shift 2 ;;
    --python) PY="${2:?--python needs a value}"; shift 2 ;;
    --trainer) TRAINER="${2:?--trainer needs a value}"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown option $1 (see $PROG --help)" ;;
  esac
done
for pair in "max-extensions:$MAX_EXT" "validation-size:$VAL" "steps-per-epoch:$SPE" "epoch-seconds:$EPOCH_S"; do
  [[ "${pair#*:}" =~ ^[0-9]+$ ]] || die "--${pair%%:*} must be a non-negative integer (got '${pair#*:}')"
done
IFS=, read -ra ARM_LIST <<<"$ARMS"
IFS=, read -ra BUDGET_LIST <<<"$BUDGETS"
for arm in "${ARM_LIST[@]}"; do
  case "$arm" in
    onecycle | onecycle_cm | piecewise | linear) ;;
    *) die "--arms: unknown arm '$arm' (onecycle, onecycle_cm, piecewise, linear)" ;;
  esac
done
for b in "${BUDGET_LIST[@]}"; do
  if [[ ! "$b" =~ ^[0-9]+(\.[0-9]+)?$ || "$b" =~ ^0+(\.0+)?$ ]]; then
    die "--budgets: '$b' is not a positive number of epochs"
  fi
done
cd "$ROOT"
TRAINER_ARGS=()
if [[ -n "$TRAINER" ]]; then TRAINER_ARGS=(--trainer "$TRAINER"); fi
FAILED=0

run() {  # Print a command; unless --dry-run, run it; returns its status.
  printf '+'; printf ' %q' "$@"; printf '\n'
  if ((DRY)); then return 0; fi
  local status=0
  "$@" || status=$?
  if ((status)); then echo "$PROG: exit status $status of the command above" >&2; fi
  return "$status"
}

steps_of() {  # steps_of EPOCHS: round(EPOCHS x steps per epoch).
  awk -v b="$1" -v s="$SPE" 'BEGIN { printf "%d", b * s + 0.5 }'
}

# next_grid TUNING_JSON GRID: prints the grid grown by one value past the
# edge where the winner is (a factor 2, as the grid), or nothing when the
# winner is inside; with no winner (every candidate failed), one value
# below the lowest.
next_grid() {
  "$PY" - "$1" "$2" <<'EOF'
import json, sys
tuning = json.load(open(sys.argv[1]))
grid = sys.argv[2].split(",")
values = sorted(float(v) for v in grid)
winner = tuning.get("winner")
lr = None if winner is None else float(winner["overrides"]["schedule.max_lr"])
if lr is None or lr == values[0]:
  print(",".join([f"{values[0] / 2:g}"] + grid))
elif lr == values[-1]:
  print(",".join(grid + [f"{values[-1] * 2:g}"]))
EOF
}

# start_grid TUNING_JSON GRID: GRID joined with the grid a previous
# invocation ended with (so a resumed study does not extend it again).
start_grid() {
  "$PY" - "$1" "$2" <<'EOF'
import json, os, sys
grid = sys.argv[2].split(",")
if os.path.exists(sys.argv[1]):
  grid += json.load(open(sys.argv[1]))["grid"]["schedule.max_lr"]
print(",".join(sorted(dict.fromkeys(grid), key=float)))
EOF
}

winner_lr() {
  "$PY" -c 'import json, sys
w = json.load(open(sys.argv[1]))["winner"]
print(w["overrides"]["schedule.max_lr"] if w else "")' "$1"
}

# portable SRC DST [SRC DST ...]: each JSON file SRC written to DST with
# this checkout's absolute paths made relative to the repository root, and
# a "command" interpreter named only. One Python process for all the files.
portable() {
  "$PY" - "$ROOT" "$@" <<'EOF'
import json, os, sys
root, *pairs = sys.argv[1:]


def rel(value):
  if isinstance(value, dict):
    return {k: rel(v) for k, v in value.items()}
  if isinstance(value, list):
    return [rel(v) for v in value]
  if isinstance(value, str) and value.startswith(root + os.sep):
    return os.path.relpath(value, root)
  return value


for src, dst in zip(pairs[::2], pairs[1::2]):
  data = json.load(open(src))
  if data.get("command"):
    data["command"][0] = os.path.basename(data["command"][0])
  with open(dst, "w") as f:
    json.dump(rel(data), f, indent=2, sort_keys=True)
    f.write("\n")
EOF
}

# Copies every finished run's config.json and metrics.jsonl from RUNS to
# RESULTS/runs (the same layout) and writes RESULTS/tuning.md.
export_results() {
  local marker dir rel
  local -a json=()  # SRC DST pairs for portable.
  while IFS= read -r marker; do
    dir="$(dirname "$marker")"
    rel="${dir#"$RUNS"/}"
    mkdir -p "$RESULTS/runs/$rel"
    cp "$dir/config.json" "$dir/metrics.jsonl" "$RESULTS/runs/$rel/"
    json+=("$dir/done.json" "$RESULTS/runs/$rel/done.json")
  done < <(find "$RUNS" -name done.json 2>/dev/null | sort)
  while IFS= read -r marker; do
    rel="${marker#"$RUNS"/}"
    mkdir -p "$RESULTS/runs/$(dirname "$rel")"
    case "$marker" in
      *.json) json+=("$marker" "$RESULTS/runs/$rel") ;;
      *) cp "$marker" "$RESULTS/runs/$rel" ;;
    esac
  done < <(find "$RUNS" \( -name tuning.json -o -name extensions.txt \) 2>/dev/null | sort)
  if ((${#json[@]})); then portable "${json[@]}"; fi
  "$PY" - "$RUNS" "$RESULTS/tuning.md" <<'EOF'
import glob, json, os, sys
runs, out = sys.argv[1:]
lines = [
  "# Peak-LR tuning per (arm, budget)",
  "",
  "Validation accuracy (%) of each peak LR (schedule.max_lr) on the"
  " held-out split after the run's full budget; * = chosen. Extensions:"
  " values added because the winner was at an edge of the grid.",
  "",
  "| arm | budget (epochs) | steps | grid | validation accuracy (%) |"
  " chosen LR | extensions |",
  "|---|---|---|---|---|---|---|",
]
for path in sorted(glob.glob(os.path.join(runs, "tune", "*", "*", "tuning.json"))):
  t = json.load(open(path))
  arm, budget = path.split(os.sep)[-3:-1]
  winner = t.get("winner") or {}
  cells = []
  for c in sorted(t["candidates"], key=lambda c: float(c["overrides"]["schedule.max_lr"])):
    acc = c["mean_validation_accuracy"]
    mark = "*" if c["name"] == winner.get("name") else ""
    text = "failed" if acc is None else f"{100 * acc:.2f}"
    cells.append(f"{c['overrides']['schedule.max_lr']}: {text}{mark}")
  notes = os.path.join(os.path.dirname(path), "extensions.txt")
  ext = open(notes).read().strip().replace("\n", "; ") if os.path.exists(notes) else "none"
  lines.append(
    f"| {arm} | {budget} | {t['budget_steps']} | {','.join(t['grid']['schedule.max_lr'])}"
    f" | {'; '.join(cells)} | {winner.get('overrides', {}).get('schedule.max_lr', '-')}"
    f" | {ext} |"
  )
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
with open(out, "w") as f:
  f.write("\n".join(lines) + "\n")
EOF
}

# Runs finished in an earlier session and committed under RESULTS/runs
# (config.json, metrics.jsonl, done.json; no checkpoints): copied back into
# RUNS so that the sweeps skip them, as if they had just run here.
import_results() {
  local marker rel
  while IFS= read -r marker; do
    rel="$(dirname "${marker#"$RESULTS/runs"/}")"
    if [[ ! -f "$RUNS/$rel/done.json" ]]; then
      mkdir -p "$RUNS/$rel"
      cp "$(dirname "$marker")"/{config.json,metrics.jsonl,done.json} "$RUNS/$rel/"
    fi
  done < <(find "$RESULTS/runs" -name done.json 2>/dev/null | sort)
  while IFS= read -r marker; do
    rel="${marker#"$RESULTS/runs"/}"
    if [[ ! -f "$RUNS/$rel" ]]; then
      mkdir -p "$RUNS/$(dirname "$rel")"
      cp "$marker" "$RUNS/$rel"
    fi
  done < <(find "$RESULTS/runs" \( -name tuning.json -o -name extensions.txt \) 2>/dev/null | sort)
}
if ((!DRY)); then import_results; fi

IFS=, read -ra SEED_LIST <<<"$SEEDS"
plan="$(awk -v arms="${#ARM_LIST[@]}" -v budgets="${#BUDGET_LIST[@]}" \
  -v seeds="${#SEED_LIST[@]}" -v epochs="$(IFS=+; echo "${BUDGET_LIST[*]}")" \
  -v epoch_s="$EPOCH_S" 'BEGIN {
    n = split(epochs, b, "+"); e = 0; for (i = 1; i <= n; i++) e += b[i]
    printf "plan: tuning %d runs (%d grids of 3 values, seed 0), %g epochs, plus extensions\n", arms * budgets * 3, arms * budgets, arms * 3 * e
    printf "plan: test %d runs (%d seeds each), %g epochs\n", arms * budgets * seeds, seeds, arms * seeds * e
    t = (arms * 3 * e + arms * seeds * e) * epoch_s / 3600
    printf "plan: %g epochs in all: about %.1f h one run at a time at %d s per epoch, %.1f h at +22%% with parallel runs\n", arms * (3 + seeds) * e, t, epoch_s, t / 1.22
  }')"
echo "plan: arms ${ARMS}; budgets ${BUDGETS} epoch(s); seeds ${SEEDS}"
echo "$plan"

# Budget by budget, so that a study stopped early has whole budgets.
for b in "${BUDGET_LIST[@]}"; do
  for arm in "${ARM_LIST[@]}"; do
    tune_dir="$RUNS/tune/$arm/$b"
    grid="${GRID[$arm]}"
    if ((!DRY)); then grid="$(start_grid "$tune_dir/tuning.json" "$grid")"; fi
    extensions=0
    while :; do
      run "$PY" -m superconv.sweep tune --config "configs/budget_study.py:$arm" \
        --workdir "$tune_dir" --budget-steps "$(steps_of "$b")" \
        --validation-size "$VAL" --sweep "schedule.max_lr=$grid" \
        --test-seeds "$SEEDS" --parallel "$PAR" --quiet "${TRAINER_ARGS[@]}" \
        "--config.dataset=$DATA" --config.eval_every_epochs=1000 "${EXTRA[@]}" ||
        true  # No winner yet (every candidate failed): extended below.
      if ((DRY)) || [[ ! -f "$tune_dir/tuning.json" ]]; then break; fi
      next="$(next_grid "$tune_dir/tuning.json" "$grid")"
      if [[ -z "$next" ]]; then break; fi
      if ((extensions >= MAX_EXT)); then
        echo "$arm, $b epoch(s): winner still at an edge of $grid after $MAX_EXT extensions" |
          tee -a "$tune_dir/extensions.txt"
        break
      fi
      echo "grid $grid -> $next (winner at an edge)" | tee -a "$tune_dir/extensions.txt"
      grid="$next"
      extensions=$((extensions + 1))
    done
    if ((DRY)); then
      lr="<winner of $tune_dir>"
    else
      lr="$(winner_lr "$tune_dir/tuning.json" 2>/dev/null || true)"
      if [[ -z "$lr" ]]; then
        echo "$PROG: $arm, $b epoch(s): no tuned LR; skipping its test runs" >&2
        FAILED=1
        continue
      fi
    fi
    run "$PY" -m superconv.sweep --config "configs/budget_study.py:$arm" \
      --workdir "$RUNS/test/$arm/$b" --sweep "seed=$SEEDS" --parallel "$PAR" \
      --quiet "${TRAINER_ARGS[@]}" "--config.dataset=$DATA" \
      "--config.num_epochs=$b" "--config.schedule.max_lr=$lr" "${EXTRA[@]}" ||
      FAILED=1
    if ((!DRY)); then export_results; fi
  done
done

LABELS=()
for arm in "${ARM_LIST[@]}"; do LABELS+=(--label "$RESULTS/runs/test/$arm=$arm"); done
KNOWN=()
IFS=, read -ra BASE_LIST <<<"$BASELINES"
for base in "${BASE_LIST[@]}"; do
  if [[ ",$ARMS," == *",$base,"* ]]; then KNOWN+=("$base"); fi
done
run "$PY" -m superconv.report "$RESULTS/runs/test" --out "$RESULTS" \
  --budget-analysis on --budget-baseline "$(IFS=,; echo "${KNOWN[*]}")" \
  --targets "$TARGETS" "${LABELS[@]}" || FAILED=1
exit "$FAILED"
