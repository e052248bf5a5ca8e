"""benchmarks/gpu_matrix.sh: its commands, input checks and shellcheck."""

import pathlib
import shutil
import subprocess

from conftest import run_script, traced_commands
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = "benchmarks/gpu_matrix.sh"


def script(*args):
  return run_script(SCRIPT, *args)


commands = traced_commands


def test_dry_run_prints_the_two_benchmarks(tmp_path):
  proc = script("--dry-run", "--out", str(tmp_path / "o"))
  assert proc.returncode == 0, proc.stderr
  main, seeds = commands(proc.stdout)
  common = [
    "--dtype",
    "bfloat16",
    "--steps",
    "20",
    "--repeats",
    "3",
    "--warmup",
    "2",
    "--train-size",
    "10000",
    "--log-every",
    "20",
    "--loop-intervals",
    "2",
  ]
  assert main == [
    "timeout",
    "330",
    "python3",
    "-m",
    "superconv.bench",
    "--model",
    "resnet56,resnet18",
    "--batch",
    "128,512,1000",
    *common,
    "--compare-pytorch",
    "--torch-python",
    "python3",
    "--json",
    str(tmp_path / "o" / "bench_main.json"),
  ]
  assert seeds == [
    "timeout",
    "150",
    "python3",
    "-m",
    "superconv.bench",
    "--model",
    "resnet56,resnet18",
    "--batch",
    "128",
    "--parallel-seeds",
    "1,4,16",
    *common,
    "--json",
    str(tmp_path / "o" / "bench_seeds.json"),
  ]
  assert not (tmp_path / "o").exists()  # A dry run writes nothing.


def test_options_reach_the_commands(tmp_path):
  proc = script(
    "--dry-run",
    "--out",
    str(tmp_path),
    "--python",
    "py3",
    "--models",
    "resnet20",
    "--batches",
    "8",
    "--seeds",
    "1,2",
    "--steps",
    "1",
    "--repeats",
    "1",
    "--dtype",
    "float32",
    "--main-s",
    "60",
    "--seeds-s",
    "30",
    "--no-torch",
  )
  main, seeds = commands(proc.stdout)
  assert main[:3] == ["timeout", "60", "py3"] and seeds[:3] == [
    "timeout",
    "30",
    "py3",
  ]
  assert "--compare-pytorch" not in main
  assert main[main.index("--model") + 1] == "resnet20"
  assert seeds[seeds.index("--parallel-seeds") + 1] == "1,2"
  assert main[main.index("--dtype") + 1] == "float32"


@pytest.mark.parametrize(
  "args,message",
  [
    (["--steps", "0"], "--steps must be a positive integer (got '0')"),
    (["--main-s", "x"], "--main-s must be a positive integer (got 'x')"),
    (["--frobnicate"], "unknown option --frobnicate"),
  ],
)
def test_bad_input_exits_2(args, message):
  proc = script(*args)
  assert proc.returncode == 2
  assert message in proc.stderr


def test_help():
  proc = script("--help")
  assert proc.returncode == 0 and "Usage: gpu_matrix.sh" in proc.stdout


@pytest.mark.skipif(
  shutil.which("shellcheck") is None,
  reason="shellcheck not installed (.ci/run installs it)",
)
def test_shellcheck():
  proc = subprocess.run(
    ["shellcheck", "--severity=style", SCRIPT],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=60,
    check=False,
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr
