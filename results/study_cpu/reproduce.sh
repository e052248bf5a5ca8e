#!/usr/bin/env bash
# Reproduces results/study_cpu/: one-cycle vs tuned warm-up + piecewise,
# ResNet-20, 200 steps of 256 images, 3 seeds each (configs/study_cpu.py).
# Run from the repository root: bash results/study_cpu/reproduce.sh [RUNS]
# About 75 minutes on a 2-core CPU. Interrupt and re-run to resume.
set -euo pipefail
runs=${1:-runs/study_cpu}
data=folder:../shared/data/cifar10-jpeg.tar.xz
py=${PYTHON:-python}
# Peak-LR grids: 0.2, 0.4, 0.8 for both; piecewise's best was its lowest
# value, so its grid was extended down until the best was inside it.
for s in onecycle piecewise; do
  case "$s" in
    onecycle) grid=0.2,0.4,0.8 ;;
    piecewise) grid=0.05,0.1,0.2,0.4,0.8 ;;
  esac
  # Peak LR picked on 5,000 held-out training images, evaluated at the end.
  "$py" -m superconv.sweep tune --config "configs/study_cpu.py:$s" \
      --workdir "$runs/tune_$s" --budget-steps 200 --validation-size 5000 \
      --sweep "schedule.max_lr=$grid" --quiet \
      "--config.dataset=$data" --config.eval_every_epochs=100
  lr=$("$py" -c 'import json,sys; w=json.load(open(sys.argv[1]))["winner"]
print(w["overrides"]["schedule.max_lr"])' "$runs/tune_$s/tuning.json")
  # The winner on the full training set, scored on the test set.
  "$py" -m superconv.sweep --config "configs/study_cpu.py:$s" \
      --workdir "$runs/$s" --sweep seed=0,1,2 --quiet \
      "--config.dataset=$data" "--config.schedule.max_lr=$lr"
done
"$py" -m superconv.report "$runs/onecycle" "$runs/piecewise" \
    --label "$runs/onecycle=one-cycle" --label "$runs/piecewise=piecewise" \
    --baseline piecewise --targets 0.4,0.45,0.5 --out "$runs/report"
