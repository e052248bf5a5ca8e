"""benchmarks/gpu_study.sh: its plan, commands, input checks, shellcheck, and
one real run of it with tiny settings on the CPU, read back by the report."""

import csv
import json
import math
import pathlib
import shutil
import subprocess
import sys
import tarfile

from conftest import run_script, traced_commands
import pytest

from superconv import bench

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/gpu_study.sh"


def script(*args, env=None, timeout=60):
  return run_script(SCRIPT, *args, env=env, timeout=timeout)


commands = traced_commands


def plan_rows(stdout):
  rows = [l.split()[1:] for l in stdout.splitlines() if l.startswith("plan: ")]
  return [r for r in rows if "@" in r[0]]


def test_dry_run_sizes_the_budget_from_the_flop_count(tmp_path):
  proc = script(
    "--dry-run", "--python", sys.executable, "--out", str(tmp_path / "o")
  )
  assert proc.returncode == 0, proc.stderr
  # 8 minutes less 45 s reserved, 3 runs each paying 60 s of overhead; the
  # rest trains 4 seeds x 50,000 images per epoch at 3% of 989 TFLOP/s.
  gflop = bench.train_gflops_per_image("resnet56")
  rate = 0.03 * 989e3 / gflop
  epochs = math.floor(((8 * 60 - 45) / 3 - 60) * rate / (4 * 50_000))
  assert epochs == 16
  estimate = 60 + epochs * 50 * 1000 * 4 / rate
  limit = estimate + (435 - 3 * estimate) / 3
  assert plan_rows(proc.stdout) == [
    [
      f"{arm}@{lr}",
      str(epochs),
      str(epochs * 50),
      str(epochs * 50 * 4000),
      f"{estimate:.0f}",
      str(int(limit)),
    ]
    for arm, lr in (
      ("onecycle", "3.0"),
      ("piecewise", "0.8"),
      ("linear", "0.8"),
    )
  ]
  assert (
    f"plan: rate {rate:.0f} img/s per run, an ESTIMATE: 0.03 MFU" in proc.stdout
  )
  runs = commands(proc.stdout)
  assert len(runs) == 4
  out = str(tmp_path / "o")
  assert runs[0] == [
    "timeout",
    "--signal=TERM",
    "--kill-after=30",
    str(int(limit)),
    sys.executable,
    "-m",
    "superconv.main",
    "--config",
    "configs/budget_study.py:onecycle",
    "--workdir",
    f"{out}/runs/onecycle/{epochs}",
    "--config.model=resnet56",
    "--config.dtype=bfloat16",
    "--config.batch_size=1000",
    "--config.weight_decay=1e-4",
    "--config.num_parallel_seeds=4",
    f"--config.num_epochs={epochs}",
    "--config.schedule.max_lr=3.0",
    "--config.dataset=folder:../shared/data/cifar10-jpeg.tar.xz",
    "--config.eval_every_epochs=4",
  ]
  assert runs[-1] == [
    sys.executable,
    "-m",
    "superconv.report",
    f"{out}/runs",
    "--out",
    f"{out}/report",
    "--budget-analysis",
    "on",
    "--budget-baseline",
    "piecewise,linear",
    "--targets",
    "0.8,0.85,0.9",
    "--label",
    f"{out}/runs/onecycle=onecycle",
    "--label",
    f"{out}/runs/piecewise=piecewise",
    "--label",
    f"{out}/runs/linear=linear",
  ]
  assert not (tmp_path / "o").exists()  # A dry run writes nothing.


def test_a_measured_rate_and_given_budgets(tmp_path):
  proc = script(
    "--dry-run",
    "--python",
    sys.executable,
    "--out",
    str(tmp_path),
    "--img-per-s",
    "20000",
    "--budgets",
    "5,10",
    "--arms",
    "onecycle:1.5",
    "--seeds",
    "2",
    "--minutes",
    "4",
    "--gflop",
    "0.75",
  )
  assert proc.returncode == 0, proc.stderr
  assert "plan: rate 20000 img/s per run (given: --img-per-s)" in proc.stdout
  # 5 epochs: 250 steps x 1000 x 2 seeds = 500,000 images in 25 s + 60 s.
  # Both estimates (85 + 110 s) fit 240 - 45 s, the rest split evenly.
  assert plan_rows(proc.stdout) == [
    ["onecycle@1.5", "5", "250", "500000", "85", "85"],
    ["onecycle@1.5", "10", "500", "1000000", "110", "110"],
  ]
  proc = script(
    "--dry-run",
    "--out",
    str(tmp_path),
    "--gflop",
    "0.75",
    "--img-per-s",
    "100",
    "--minutes",
    "1",
  )
  assert proc.returncode == 2
  assert "not even one epoch fits in 1 minute(s)" in proc.stderr


@pytest.mark.parametrize(
  "args,message",
  [
    (["--seeds", "0"], "--seeds must be a positive integer (got '0')"),
    (["--mfu", "x"], "--mfu must be a number (got 'x')"),
    (["--arms", "cosine:1"], "--arms: 'cosine:1' is not ARM:LR"),
    (["--budgets", "1,two"], "--budgets: 'two' is not a number of epochs"),
    (["--frobnicate"], "unknown option --frobnicate"),
  ],
)
def test_bad_input_exits_2(args, message):
  proc = script("--dry-run", *args)
  assert proc.returncode == 2
  assert message in proc.stderr and proc.stderr.count("\n") == 1


def test_help():
  proc = script("--help")
  assert proc.returncode == 0 and "Usage: gpu_study.sh" in proc.stdout
  assert "an estimate" in proc.stdout.lower()


@pytest.mark.skipif(
  shutil.which("shellcheck") is None,
  reason="shellcheck not installed (.ci/run installs it)",
)
def test_shellcheck():
  proc = subprocess.run(
    [
      "shellcheck",
      "--severity=style",
      SCRIPT,
      "results/budget_study/reproduce.sh",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tiny_study_on_the_cpu_is_read_by_the_report(tmp_path):
  out = tmp_path / "out"
  proc = script(
    "--out",
    str(out),
    "--python",
    sys.executable,
    "--model",
    "resnet8",
    "--dtype",
    "float32",
    "--batch",
    "16",
    "--seeds",
    "2",
    "--train-size",
    "64",
    "--budgets",
    "1",
    "--arms",
    "piecewise:0.1",
    "--img-per-s",
    "100",
    "--overhead-s",
    "200",
    "--minutes",
    "8",
    "--data",
    "synthetic",
    "--",
    "--config.synthetic_train_size=64",
    "--config.synthetic_test_size=16",
    "--config.eval_batch_size=16",
    env={
      # Unoptimized XLA code compiles in half the time: this run is all
      # compilation.
      "XLA_FLAGS": "--xla_backend_optimization_level=0",
    },
    timeout=900,
  )
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  assert proc.stdout.count("gpu_study.sh: exit status 0") == 2  # Run, report.
  plan = (out / "plan.txt").read_text()
  assert "plan: 1 run(s), 128 images" in plan  # 4 steps x 16 x 2 seeds.
  for seed in (0, 1):  # Two seeds trained as one program, logged apart.
    run = out / "runs" / "piecewise" / "1" / f"seed={seed}"
    config = json.loads((run / "config.json").read_text())
    assert (config["seed"], config["schedule"]["max_lr"]) == (seed, 0.1)
    assert (config["model"], config["num_epochs"]) == ("resnet8", 1.0)
    assert (config["batch_size"], config["num_parallel_seeds"]) == (16, 1)
  with open(out / "report" / "budget_accuracy.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["arm"], r["seeds"]) for r in rows] == [("piecewise", "2")]
  with open(out / "report" / "runs.csv") as f:
    runs = list(csv.DictReader(f))
  assert len(runs) == 2 and all(r["complete"] == "true" for r in runs)
  for r in runs:
    assert 0 <= float(r["final_accuracy"]) <= 1
  text = (out / "report" / "report.md").read_text()
  assert "### Budget 1 epoch(s)" in text and "piecewise (best baseline)" in text
  with tarfile.open(out / "gpu_study.tar.gz") as tar:
    names = set(tar.getnames())
  assert "report/report.md" in names
  assert "runs/piecewise/1/seed=1/metrics.jsonl" in names
  assert not any("checkpoints" in n for n in names)
