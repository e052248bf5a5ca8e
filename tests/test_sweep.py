"""Sweeps: grid expansion, skip/resume, tuning, the validation split.

Most tests drive the sweep with a fake trainer (FAKE_TRAINER below: main's
command line and files, no JAX), so skipping, resuming a killed run and
tuning take milliseconds; one test runs a real two-run sweep of
`superconv.main`.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from superconv import data as data_lib
from superconv import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A stand-in for `python -m superconv.main`: writes config.json, one train and
# one eval row per step and a checkpoints/<step>/ directory; resumes from the
# latest checkpoint. Accuracy peaks at max_lr = 0.8 and warmup = 2. Files in
# the run directory steer it: `die_at` (SIGKILL itself before that step's
# checkpoint), `block_at` (wait there for a signal; on SIGINT/SIGTERM, note
# it in `signals` and exit 128 + signum as main does). max_lr >= 3 "diverges"
# (exit 3, as main on NaN). With
# FAKE_IGNORE_VALIDATION=1 it evaluates on 100 "test" images whatever
# validation_size says.
FAKE_TRAINER = textwrap.dedent("""
    import json, math, os, signal, sys, time
    args = sys.argv[1:]
    workdir = args[args.index("--workdir") + 1]
    over = dict(a[len("--config."):].split("=", 1) for a in args
                if a.startswith("--config."))
    os.makedirs(workdir, exist_ok=True)
    ckpts = os.path.join(workdir, "checkpoints")
    os.makedirs(ckpts, exist_ok=True)
    start = max([int(d) for d in os.listdir(ckpts)] + [0])
    with open(os.path.join(workdir, "invocations.txt"), "a") as f:
      f.write(f"start={start} " + " ".join(args) + "\\n")
    steps = int(over.get("num_steps", 5))
    seed = int(over.get("seed", 0))
    lr = float(over.get("schedule.max_lr", 0.8))
    warmup = float(over.get("schedule.warmup", 0))
    val = int(over.get("validation_size", 0))
    config = {"seed": seed, "num_steps": steps, "num_epochs": 0.0,
              "model": "fake", "batch_size": 16, "validation_size": val,
              "schedule": {"name": "constant", "max_lr": lr,
                           "warmup": warmup,
                           "unit": over.get("schedule.unit", "steps")}}
    with open(os.path.join(workdir, "config.json"), "w") as f:
      json.dump(config, f)
    if lr >= 3:
      print("superconv: error: non-finite loss", file=sys.stderr)
      sys.exit(3)
    final = (0.9 - 0.05 * math.log2(lr / 0.8) ** 2 - 0.01 * abs(warmup - 2)
             + 0.001 * seed)
    examples = 100 if os.environ.get("FAKE_IGNORE_VALIDATION") else (
        val or 100)
    path = os.path.join(workdir, "metrics.jsonl")
    rows = []
    if os.path.exists(path):
      rows = [json.loads(l) for l in open(path) if l.strip()]
    rows = [r for r in rows if r["step"] <= start]
    die_path = os.path.join(workdir, "die_at")
    die_at = int(open(die_path).read()) if os.path.exists(die_path) else 0
    block_path = os.path.join(workdir, "block_at")
    block_at = (int(open(block_path).read()) if os.path.exists(block_path)
                else 0)
    def on_signal(signum, frame):  # As main: stop with 128 + signum.
      with open(os.path.join(workdir, "signals"), "a") as f:
        f.write(signal.Signals(signum).name + "\\n")
      sys.exit(128 + signum)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    with open(path, "w") as f:
      for r in rows:
        f.write(json.dumps(r) + "\\n")
      for step in range(start + 1, steps + 1):
        if step == die_at:
          f.flush()
          os.kill(os.getpid(), signal.SIGKILL)
        if step == block_at:
          f.flush()
          open(os.path.join(workdir, "blocked"), "w").close()
          time.sleep(120)
        acc = final * step / steps
        common = {"step": step, "epoch": step / 4, "wall_time": step * 0.5,
                  "examples_seen": 16 * step}
        f.write(json.dumps({**common, "train_loss": 1 - acc,
                            "learning_rate": lr}) + "\\n")
        f.write(json.dumps({**common, "eval_accuracy": acc,
                            "eval_loss": 1 - acc,
                            "eval_examples": examples}) + "\\n")
        f.flush()
        os.makedirs(os.path.join(ckpts, str(step)))
    print(f"final: test accuracy {final:.4f}, test loss {1 - final:.4f}")
""")


@pytest.fixture
def fake(tmp_path):
  path = tmp_path / "fake_trainer.py"
  path.write_text(FAKE_TRAINER)
  return f"{sys.executable} {path}"


def invocations(run_dir) -> list[str]:
  with open(os.path.join(run_dir, "invocations.txt")) as f:
    return f.read().splitlines()


def read_json(path):
  with open(path) as f:
    return json.load(f)


CONFIG = os.path.join(REPO, "configs", "quick.py")


# ---------------------------------------------------------------------------
# Grid expansion and naming.
# ---------------------------------------------------------------------------


def test_grid_is_the_cartesian_product_last_sweep_fastest(tmp_path):
  sweeps = [
    sweep.parse_sweep("seed=0,1"),
    sweep.parse_sweep("schedule.max_lr=0.8,1.6,3.0"),
  ]
  runs = sweep.plan(sweeps, str(tmp_path))
  assert [r.name for r in runs] == [
    "schedule.max_lr=0.8,seed=0",
    "schedule.max_lr=1.6,seed=0",
    "schedule.max_lr=3.0,seed=0",
    "schedule.max_lr=0.8,seed=1",
    "schedule.max_lr=1.6,seed=1",
    "schedule.max_lr=3.0,seed=1",
  ]
  assert runs[4].overrides == {"seed": "1", "schedule.max_lr": "1.6"}
  assert runs[4].workdir == str(tmp_path / "schedule.max_lr=1.6,seed=1")
  assert sweep.plan([], str(tmp_path))[0].name == "run"


def test_values_with_commas_in_brackets_and_unsafe_characters():
  key, values = sweep.parse_sweep(
    "config.schedule.boundaries=(25,37.5),(30, 40)"
  )
  assert key == "schedule.boundaries"
  assert values == ["(25,37.5)", "(30, 40)"]
  assert (
    sweep.run_name({"schedule.boundaries": "(30, 40)"})
    == "schedule.boundaries=_30,_40_"
  )
  assert (
    sweep.run_name({"dataset": "folder:/d/c.tar"}) == "dataset=folder__d_c.tar"
  )


@pytest.mark.parametrize(
  "spec, message",
  [
    ("seed", "expected key=v1,v2"),
    ("seed=0,,1", "empty value"),
    ("seed=1,1", "repeated value"),
    ("9x=1", "expected key=v1,v2"),
  ],
)
def test_bad_sweep_specs(spec, message):
  with pytest.raises(sweep.SweepError, match=message):
    sweep.parse_sweep(spec)


def test_same_key_twice_and_colliding_names_are_errors(tmp_path):
  with pytest.raises(sweep.SweepError, match="given twice"):
    sweep.expand_grid([("seed", ["0"]), ("seed", ["1"])])
  with pytest.raises(sweep.SweepError, match="share the directory"):
    sweep.plan([("dataset", ["a/b", "a_b"])], str(tmp_path))


def test_parse_overrides_both_spellings():
  common, rest = sweep.parse_overrides(
    ["--config.seed=3", "--workdir", "w", "--config.schedule.max_lr", "0.4"]
  )
  assert common == {"seed": "3", "schedule.max_lr": "0.4"}
  assert rest == ["--workdir", "w"]


# ---------------------------------------------------------------------------
# Sweeps with the fake trainer: skip, resume, bookkeeping.
# ---------------------------------------------------------------------------


def test_sweep_skips_complete_runs_and_resumes_a_killed_one(
  fake, tmp_path, capsys
):
  workdir = tmp_path / "sweep"
  argv = [
    "--config",
    CONFIG,
    "--workdir",
    str(workdir),
    "--trainer",
    fake,
    "--sweep",
    "seed=0,1",
    "--sweep",
    "schedule.max_lr=0.4,0.8",
    "--config.num_steps=5",
    "--quiet",
  ]
  killed = workdir / "schedule.max_lr=0.8,seed=0"
  killed.mkdir(parents=True)
  (killed / "die_at").write_text("3")

  assert sweep.main(argv) == 1  # One run died.
  state = read_json(workdir / "sweep.json")
  status = {r["name"]: r["status"] for r in state["runs"]}
  assert status == {
    "schedule.max_lr=0.4,seed=0": "completed",
    "schedule.max_lr=0.8,seed=0": "killed (signal 9)",
    "schedule.max_lr=0.4,seed=1": "completed",
    "schedule.max_lr=0.8,seed=1": "completed",
  }
  assert state["grid"] == {
    "seed": ["0", "1"],
    "schedule.max_lr": ["0.4", "0.8"],
  }
  assert state["common_overrides"] == {"num_steps": "5"}
  assert not sweep.is_complete(killed)
  done = read_json(workdir / "schedule.max_lr=0.8,seed=1" / "done.json")
  assert done["returncode"] == 0 and done["final_step"] == 5
  assert done["final_accuracy"] == pytest.approx(0.881)  # warmup 0: -0.02.
  assert done["overrides"] == {
    "num_steps": "5",
    "seed": "1",
    "schedule.max_lr": "0.8",
  }
  # The trainer got the swept and the common overrides.
  assert invocations(killed)[0].endswith(
    "--config.num_steps=5 --config.seed=0 --config.schedule.max_lr=0.8"
  )

  (killed / "die_at").unlink()
  capsys.readouterr()
  assert sweep.main(argv) == 0
  out = capsys.readouterr().out
  for name in (
    "schedule.max_lr=0.4,seed=0",
    "schedule.max_lr=0.4,seed=1",
    "schedule.max_lr=0.8,seed=1",
  ):
    assert len(invocations(workdir / name)) == 1  # Skipped, not re-run.
    assert f"[{name}] complete, skipped" in out
  calls = invocations(killed)
  assert [c.split()[0] for c in calls] == ["start=0", "start=2"]  # Resumed.
  steps = [json.loads(l)["step"] for l in open(killed / "metrics.jsonl")]
  assert steps == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
  # The summary table: run, status, final accuracy.
  assert "schedule.max_lr=0.8,seed=0  completed" in out
  assert "skipped (complete)" in out and "0.8800" in out
  status = {
    r["name"]: r["status"] for r in read_json(workdir / "sweep.json")["runs"]
  }
  assert status["schedule.max_lr=0.8,seed=0"] == "completed"
  assert status["schedule.max_lr=0.4,seed=1"] == "skipped (complete)"

  # Growing the grid adds runs; the others stay skipped.
  assert (
    sweep.main(
      argv[:-4]
      + [
        "--sweep",
        "schedule.max_lr=0.4,0.8,1.6",
        "--config.num_steps=5",
        "--quiet",
      ]
    )
    == 0
  )
  assert len(invocations(workdir / "schedule.max_lr=0.4,seed=0")) == 1
  assert sweep.is_complete(workdir / "schedule.max_lr=1.6,seed=1")


def test_ctrl_c_is_forwarded_once_and_the_same_command_resumes(fake, tmp_path):
  workdir = tmp_path / "sig"
  run = workdir / "seed=0"
  run.mkdir(parents=True)
  (run / "block_at").write_text("3")
  argv = [
    "--config",
    CONFIG,
    "--workdir",
    str(workdir),
    "--trainer",
    fake,
    "--sweep",
    "seed=0,1",
    "--config.num_steps=5",
    "--quiet",
  ]
  process = subprocess.Popen(
    [sys.executable, "-m", "superconv.sweep", *argv],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  try:
    for _ in range(600):
      if (run / "blocked").exists() or process.poll() is not None:
        break
      time.sleep(0.1)
    assert (run / "blocked").exists()
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  assert process.returncode == 130
  assert "run the same command to resume" in err
  assert (run / "signals").read_text() == "SIGINT\n"  # Forwarded once.
  runs = read_json(workdir / "sweep.json")["runs"]
  assert [r["status"] for r in runs] == ["interrupted", "pending"]
  assert not (workdir / "seed=1").exists()  # The sweep stopped there.

  (run / "block_at").unlink()
  assert sweep.main(argv) == 0
  assert [c.split()[0] for c in invocations(run)] == ["start=0", "start=2"]
  assert sweep.is_complete(run) and sweep.is_complete(workdir / "seed=1")


def test_changed_common_overrides_are_refused(fake, tmp_path, capsys):
  argv = [
    "--config",
    CONFIG,
    "--workdir",
    str(tmp_path),
    "--trainer",
    fake,
    "--sweep",
    "seed=0",
    "--quiet",
  ]
  assert sweep.main(argv + ["--config.num_steps=2"]) == 0
  capsys.readouterr()
  assert sweep.main(argv + ["--config.num_steps=3"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1
  assert "different --config.* overrides" in err
  assert sweep.main(argv + ["--config.seed=1"]) == 2
  assert "config.seed: both swept and overridden" in capsys.readouterr().err


def test_dry_run_runs_nothing(fake, tmp_path, capsys):
  assert (
    sweep.main(
      [
        "--config",
        CONFIG,
        "--workdir",
        str(tmp_path / "d"),
        "--trainer",
        fake,
        "--sweep",
        "seed=0,1",
        "--dry-run",
      ]
    )
    == 0
  )
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 2 and out[0].startswith("pending")
  assert "--config.seed=1" in out[1]
  assert not (tmp_path / "d").exists()


def test_unknown_key_is_refused_before_any_run(tmp_path, capsys):
  assert (
    sweep.main(
      [
        "--config",
        CONFIG,
        "--workdir",
        str(tmp_path / "u"),
        "--sweep",
        "schedule.max_rl=1,2",
      ]
    )
    == 2
  )
  err = capsys.readouterr().err
  assert "config.schedule.max_rl: unknown key" in err and "max_lr" in err
  assert not (tmp_path / "u").exists()


# ---------------------------------------------------------------------------
# Tuning at an equal budget.
# ---------------------------------------------------------------------------


def tune_argv(fake, workdir, *extra):
  return [
    "tune",
    "--config",
    CONFIG,
    "--workdir",
    str(workdir),
    "--trainer",
    fake,
    "--budget-steps",
    "4",
    "--validation-size",
    "500",
    "--quiet",
    "--sweep",
    "schedule.max_lr=0.2,0.8,3.2",
    "--sweep",
    "schedule.warmup=0,2",
    *extra,
  ]


def test_tune_picks_the_best_validation_accuracy(fake, tmp_path, capsys):
  workdir = tmp_path / "tune"
  assert sweep.main(tune_argv(fake, workdir, "--config.momentum=0.8")) == 0
  out = capsys.readouterr().out
  result = read_json(workdir / "tuning.json")
  assert result["budget_steps"] == 4 and result["validation_size"] == 500
  candidates = {c["name"]: c for c in result["candidates"]}
  assert len(candidates) == 6
  # 0.9 - 0.05 log2(lr / 0.8)^2 - 0.01 |warmup - 2|.
  assert candidates["schedule.max_lr=0.2,schedule.warmup=0"][
    "mean_validation_accuracy"
  ] == pytest.approx(0.9 - 0.2 - 0.02)
  assert candidates["schedule.max_lr=0.8,schedule.warmup=0"][
    "mean_validation_accuracy"
  ] == pytest.approx(0.88)
  diverged = candidates["schedule.max_lr=3.2,schedule.warmup=2"]
  assert not diverged["eligible"]
  assert diverged["runs"][0]["status"] == "diverged (rc=3)"
  assert result["winner"]["overrides"] == {
    "schedule.max_lr": "0.8",
    "schedule.warmup": "2",
  }
  # Every candidate trained at the budget on the validation split.
  run = workdir / "schedule.max_lr=0.2,schedule.warmup=2"
  call = invocations(run)[0]
  assert (
    "--config.num_steps=4" in call
    and "--config.validation_size=500" in call
    and "--config.momentum=0.8" in call
  )
  command = result["test_command"]
  assert command == (
    f"python -m superconv.sweep --config {os.path.relpath(CONFIG)}"
    f" --workdir {os.path.relpath(workdir)}/test --sweep seed=0,1,2,3,4"
    " --config.num_steps=4 --config.momentum=0.8"
    " --config.schedule.max_lr=0.8 --config.schedule.warmup=2"
  )
  assert "validation_size" not in command
  # 0.8/warmup 0 (0.88) is 0.02 below the winner, within 2 binomial standard
  # errors of a difference on 500 images: 2 sqrt(2 * 0.9 * 0.1 / 500) = 0.038.
  assert result["close_to_winner"] == ["schedule.max_lr=0.8,schedule.warmup=0"]
  assert "within 2 binomial standard errors (0.0379)" in out
  assert (
    command in out and "winner: schedule.max_lr=0.8,schedule.warmup=2" in out
  )


def test_tune_averages_swept_seeds_and_warns_about_epochs(
  fake, tmp_path, capsys
):
  assert (
    sweep.main(
      tune_argv(
        fake,
        tmp_path / "t",
        "--sweep",
        "seed=0,1",
        "--config.schedule.unit=epochs",
      )
    )
    == 0
  )
  assert "note: schedule.unit is epochs" in capsys.readouterr().out
  result = read_json(tmp_path / "t" / "tuning.json")
  winner = result["winner"]
  assert [r["seed"] for r in winner["runs"]] == ["0", "1"]
  assert winner["mean_validation_accuracy"] == pytest.approx(0.9005)
  assert any("schedule.unit=steps" in n for n in result["notes"])


def test_tune_refuses_runs_scored_on_the_test_set(
  fake, tmp_path, capsys, monkeypatch
):
  monkeypatch.setenv("FAKE_IGNORE_VALIDATION", "1")
  assert sweep.main(tune_argv(fake, tmp_path / "t")) == 2
  err = capsys.readouterr().err
  assert "not the 500-image validation split" in err
  assert not (tmp_path / "t" / "tuning.json").exists()


def test_tune_refuses_to_override_the_budget(fake, tmp_path, capsys):
  assert (
    sweep.main(tune_argv(fake, tmp_path / "t", "--config.num_steps=9")) == 2
  )
  assert "config.num_steps: set by tune" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# The validation split.
# ---------------------------------------------------------------------------


def indexed_dataset(num_train=50, num_test=20):
  """Pixel (0,0) holds the split (1 train, 2 test) and the index."""
  train = np.zeros((num_train, 4, 4, 3), np.uint8)
  train[:, 0, 0, 0] = 1
  train[:, 0, 0, 1] = np.arange(num_train)
  test = np.zeros((num_test, 4, 4, 3), np.uint8)
  test[:, 0, 0, 0] = 2
  test[:, 0, 0, 1] = np.arange(num_test)
  return data_lib.Dataset(
    "fake",
    train,
    (np.arange(num_train) % 10).astype(np.int32),
    test,
    (np.arange(num_test) % 10).astype(np.int32),
    tuple(f"c{i}" for i in range(10)),
  )


def test_validation_split_is_held_out_train_data_only():
  ds = indexed_dataset()
  split = data_lib.split_validation(ds, 10)
  train_ids = split.train_images[:, 0, 0, 1].tolist()
  val_ids = split.test_images[:, 0, 0, 1].tolist()
  # Evaluation set: train images only, never a test image.
  assert (split.test_images[:, 0, 0, 0] == 1).all()
  assert (split.train_images[:, 0, 0, 0] == 1).all()
  # No overlap, nothing lost, labels follow their images.
  assert len(train_ids) == 40 and len(val_ids) == 10
  assert not set(train_ids) & set(val_ids)
  assert sorted(train_ids + val_ids) == list(range(50))
  assert train_ids == sorted(train_ids)  # Original order kept.
  assert split.train_labels.tolist() == [i % 10 for i in train_ids]
  assert split.test_labels.tolist() == [i % 10 for i in val_ids]
  # The held-out images: the last 10 of a seed-0 permutation.
  assert val_ids == np.random.default_rng(0).permutation(50)[40:].tolist()
  # The same split every time, whatever else happens.
  again = data_lib.split_validation(indexed_dataset(), 10)
  assert again.test_images[:, 0, 0, 1].tolist() == val_ids
  assert split.name == "fake:validation=10"
  assert split.class_names == ds.class_names


def test_validation_split_size_checks():
  ds = indexed_dataset()
  assert data_lib.split_validation(ds, 0) is ds
  for bad in (50, 51, -1):
    with pytest.raises(
      ValueError,
      match=r"validation_size: must be in \[1,"
      r" 49\]",
    ):
      data_lib.split_validation(ds, bad)
  with pytest.raises(ValueError, match="validation_size: must be an integer"):
    data_lib.split_validation(ds, 2.5)


def test_validation_split_of_synthetic_data_normalizes_on_train_only():
  ds = data_lib.load(
    "synthetic", synthetic_train_size=64, synthetic_test_size=32
  )
  split = data_lib.split_validation(ds, 16)
  keep, held = data_lib.validation_indices(64, 16)
  mean, _ = split.channel_mean_std()
  expected = ds.train_images[keep].reshape(-1, 3).mean(0) / 255
  assert np.allclose(mean, expected, atol=1e-6)
  assert np.array_equal(split.test_images, ds.train_images[held])
  # No held-out image is identical to any test image either.
  test_rows = {img.tobytes() for img in ds.test_images}
  assert not any(img.tobytes() in test_rows for img in split.test_images)


# ---------------------------------------------------------------------------
# A real sweep of superconv.main.
# ---------------------------------------------------------------------------

TINY = [
  "--config.dataset=synthetic",
  "--config.synthetic_train_size=64",
  "--config.synthetic_test_size=32",
  "--config.batch_size=16",
  "--config.eval_batch_size=16",
  "--config.num_steps=4",
  "--config.model=resnet8",
  "--config.dtype=float32",
  # quick.py's pct_start 0.25 leaves no rising phase in 4 steps.
  "--config.schedule.pct_start=0.5",
]


def test_real_sweep_of_two_runs_completes_then_skips(
  tmp_path, capsys, monkeypatch
):
  # The runs inherit the environment: unoptimized XLA code compiles in half
  # the time, and these runs are all compilation.
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  workdir = tmp_path / "real"
  argv = [
    "--config",
    CONFIG,
    "--workdir",
    str(workdir),
    "--sweep",
    "seed=0,1",
    "--quiet",
    *TINY,
  ]
  assert sweep.main(argv) == 0
  for seed in (0, 1):
    run = workdir / f"seed={seed}"
    done = read_json(run / "done.json")
    assert (done["returncode"], done["final_step"], done["eval_examples"]) == (
      0,
      4,
      32,
    )
    assert 0.0 <= done["final_accuracy"] <= 1.0
    assert read_json(run / "config.json")["seed"] == seed
    assert (run / "checkpoints" / "4").is_dir()
    with open(run / "train.log") as f:
      assert "final: test accuracy" in f.read()
  capsys.readouterr()
  logs = [(workdir / f"seed={s}" / "train.log").read_text() for s in (0, 1)]
  assert sweep.main(argv) == 0
  # Skipped: no trainer started, so nothing appended to the logs.
  assert logs == [
    (workdir / f"seed={s}" / "train.log").read_text() for s in (0, 1)
  ]
  out = capsys.readouterr().out
  assert out.count("complete, skipped") == 2
  runs = read_json(workdir / "sweep.json")["runs"]
  assert [r["status"] for r in runs] == ["skipped (complete)"] * 2
  assert not math.isnan(runs[0]["final_accuracy"])


# ---------------------------------------------------------------------------
# Parallel runs.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "requested, pending, cores, platform, memory, flag_ok, slots, flag",
  [
    # auto on a 2-core CPU: two runs, one core and one XLA thread each.
    (None, 3, (0, 1), "cpu", None, True, ((0,), (1,)), True),
    (None, 3, (0, 1), "cpu", None, False, ((0,), (1,)), False),
    # auto: no more runs than pending runs or memory for them.
    (None, 1, (0, 1), "cpu", None, True, ((),), False),
    (None, 8, (0, 1, 2, 3), "cpu", 7 << 30, True, ((0, 1), (2, 3)), False),
    (None, 8, (0, 1, 2, 3), "cpu", 2 << 30, True, ((),), False),
    # auto on a GPU or TPU, or one core: one run at a time.
    (None, 5, (0, 1, 2, 3), "gpu", None, True, ((),), False),
    (None, 5, (0, 1, 2, 3), "tpu", None, True, ((),), False),
    (None, 5, (3,), "cpu", None, True, ((),), False),
    # Explicit: equal slots of len(cores) // N cores, the rest idle.
    (2, 1, (0, 1, 2, 3), "cpu", None, True, ((0, 1), (2, 3)), False),
    (
      3,
      9,
      (4, 5, 6, 7, 8, 9, 10, 11),
      "cpu",
      0,
      True,
      ((4, 5), (6, 7), (8, 9)),
      False,
    ),
    (2, 2, (5, 9), "gpu", None, True, ((5,), (9,)), True),
    (1, 9, (0, 1, 2, 3), "cpu", None, True, ((),), False),
  ],
)
def test_choose_parallelism(
  requested, pending, cores, platform, memory, flag_ok, slots, flag
):
  p = sweep.choose_parallelism(
    requested,
    pending,
    cores=cores,
    platform=platform,
    memory=memory,
    flag_ok=flag_ok,
  )
  assert (p.runs, p.slots) == (len(slots), slots)
  assert p.xla_flag == ("--xla_cpu_multi_thread_eigen=false" if flag else "")


def test_parallel_values_and_too_many_runs_for_the_cores(tmp_path, capsys):
  assert sweep.parse_parallel("auto") is None
  assert sweep.parse_parallel("3") == 3
  for bad in ("0", "-1", "two", "1.5"):
    with pytest.raises(sweep.SweepError, match="positive number of runs"):
      sweep.parse_parallel(bad)
  with pytest.raises(sweep.SweepError, match="only 2 CPU core"):
    sweep.choose_parallelism(
      3, 3, cores=(0, 1), platform="cpu", memory=None, flag_ok=True
    )
  argv = ["--config", CONFIG, "--workdir", str(tmp_path / "w")]
  assert sweep.main(argv + ["--sweep", "seed=0", "--parallel", "0"]) == 2
  err = capsys.readouterr().err
  assert err == (
    "superconv.sweep: error: --parallel '0': expected a positive number of"
    " runs or auto\n"
  )
  assert not (tmp_path / "w").exists()


# Wraps FAKE_TRAINER (its path is the first argument): records the CPU
# affinity and thread settings it got, and with FAKE_BARRIER set waits until
# FAKE_BARRIER_COUNT runs have started (exit 99 after 60 s alone), which
# only runs trained at the same time pass.
PINNED_TRAINER = textwrap.dedent("""
    import json, os, runpy, sys, time
    fake, args = sys.argv[1], sys.argv[2:]
    workdir = args[args.index("--workdir") + 1]
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "environment.json"), "w") as f:
      json.dump({"affinity": sorted(os.sched_getaffinity(0)),
                 "xla_flags": os.environ.get("XLA_FLAGS", ""),
                 "omp": os.environ.get("OMP_NUM_THREADS")}, f)
    barrier = os.environ.get("FAKE_BARRIER")
    if barrier and not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
      open(os.path.join(barrier, os.path.basename(workdir)), "w").close()
      for _ in range(600):
        if len(os.listdir(barrier)) >= int(os.environ["FAKE_BARRIER_COUNT"]):
          break
        time.sleep(0.1)
      else:
        sys.exit(99)
    sys.argv = [fake, *args]
    runpy.run_path(fake, run_name="__main__")
""")


@pytest.fixture
def pinned(fake, tmp_path):
  path = tmp_path / "pinned_trainer.py"
  path.write_text(PINNED_TRAINER)
  return f"{sys.executable} {path} {fake.split()[-1]}"


def expected_slots(n):
  cores = sorted(os.sched_getaffinity(0))
  per = len(cores) // n
  return [cores[i * per : (i + 1) * per] for i in range(n)]


@pytest.mark.skipif(
  len(os.sched_getaffinity(0)) < 2, reason="pinning two runs needs two cores"
)
def test_two_runs_at_once_each_pinned_then_skipped(
  pinned, tmp_path, capsys, monkeypatch
):
  barrier = tmp_path / "barrier"
  barrier.mkdir()
  monkeypatch.setenv("FAKE_BARRIER", str(barrier))
  monkeypatch.setenv("FAKE_BARRIER_COUNT", "2")
  workdir = tmp_path / "par"
  argv = [
    "--config",
    CONFIG,
    "--workdir",
    str(workdir),
    "--trainer",
    pinned,
    "--sweep",
    "seed=0,1",
    "--config.num_steps=5",
    "--parallel",
    "2",
  ]
  assert sweep.main(argv) == 0
  out = capsys.readouterr().out
  slots = expected_slots(2)
  envs = [read_json(workdir / f"seed={s}" / "environment.json") for s in (0, 1)]
  assert sorted(e["affinity"] for e in envs) == slots  # One slot each.
  for env in envs:
    one_core = len(env["affinity"]) == 1
    assert env["omp"] == str(len(env["affinity"]))
    assert ("--xla_cpu_multi_thread_eigen=false" in env["xla_flags"]) == (
      one_core
    )
  assert sorted(os.listdir(barrier)) == ["seed=0", "seed=1"]  # Together.
  for seed in (0, 1):
    run = workdir / f"seed={seed}"
    done = read_json(run / "done.json")
    assert (done["returncode"], done["final_step"]) == (0, 5)
    assert done["final_accuracy"] == pytest.approx(0.88 + 0.001 * seed)
    log = (run / "train.log").read_text()
    assert log.count("final: test accuracy") == 1  # Output kept per run.
    assert f"[seed={seed}] final: test accuracy" in out  # And echoed.
  assert "parallel: 2 runs at once, pinned to cores" in out
  assert "throughput: 160 images in" in out  # 2 runs x 5 steps x 16.

  capsys.readouterr()
  assert sweep.main(argv) == 0  # Complete: skipped, no trainer started.
  out = capsys.readouterr().out
  assert out.count("complete, skipped") == 2 and "parallel:" not in out
  assert all(len(invocations(workdir / f"seed={s}")) == 1 for s in (0, 1))


@pytest.mark.skipif(
  len(os.sched_getaffinity(0)) < 2, reason="pinning two runs needs two cores"
)
def test_ctrl_c_stops_every_parallel_run_once_and_resumes(pinned, tmp_path):
  workdir = tmp_path / "sig"
  for seed in (0, 1):
    (workdir / f"seed={seed}").mkdir(parents=True)
    (workdir / f"seed={seed}" / "block_at").write_text("3")
  argv = [
    "--config",
    CONFIG,
    "--workdir",
    str(workdir),
    "--trainer",
    pinned,
    "--sweep",
    "seed=0,1,2",
    "--config.num_steps=5",
    "--parallel",
    "2",
    "--quiet",
  ]
  process = subprocess.Popen(
    [sys.executable, "-m", "superconv.sweep", *argv],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  blocked = [workdir / f"seed={s}" / "blocked" for s in (0, 1)]
  try:
    for _ in range(600):
      if all(b.exists() for b in blocked) or process.poll() is not None:
        break
      time.sleep(0.1)
    assert all(b.exists() for b in blocked)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
  finally:
    if process.poll() is None:
      process.kill()
      process.wait()
  assert process.returncode == 130
  assert "run the same command to resume" in err
  for seed in (0, 1):  # Each trainer got exactly one SIGINT.
    assert (workdir / f"seed={seed}" / "signals").read_text() == "SIGINT\n"
  runs = read_json(workdir / "sweep.json")["runs"]
  assert [r["status"] for r in runs] == [
    "interrupted",
    "interrupted",
    "pending",
  ]
  assert not (workdir / "seed=2").exists()  # Never started.

  for seed in (0, 1):
    (workdir / f"seed={seed}" / "block_at").unlink()
  assert sweep.main(argv) == 0
  for seed in (0, 1):
    run = workdir / f"seed={seed}"
    assert [c.split()[0] for c in invocations(run)] == ["start=0", "start=2"]
  assert all(sweep.is_complete(workdir / f"seed={s}") for s in (0, 1, 2))


def final_state(run):
  """Metrics rows less timings, and the final parameters and BN stats."""
  import superconv  # pylint: disable=g-import-not-at-top

  timing = ("wall_time", "steps_per_sec", "eval_seconds")
  rows = [
    {k: v for k, v in json.loads(l).items() if k not in timing}
    for l in open(run / "metrics.jsonl")
  ]
  _, variables, _ = superconv.load_checkpoint(str(run))
  return rows, variables


@pytest.mark.skipif(
  len(os.sched_getaffinity(0)) < 2, reason="pinning two runs needs two cores"
)
def test_concurrent_runs_equal_the_same_runs_one_after_the_other(
  tmp_path, monkeypatch
):
  import jax  # pylint: disable=g-import-not-at-top

  # Both ways with --parallel 2: every run pinned to the same number of
  # cores with the same XLA flags, so the same program runs and the
  # results must agree bit for bit.
  monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=0")
  # The runs one after the other load what the first two compiled.
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
  common = ["--config", CONFIG, "--parallel", "2", "--quiet", *TINY]
  together, apart = tmp_path / "together", tmp_path / "apart"
  assert (
    sweep.main(common + ["--workdir", str(together), "--sweep", "seed=0,1"])
    == 0
  )
  for grid in ("seed=0", "seed=0,1"):  # One run per invocation.
    assert sweep.main(common + ["--workdir", str(apart), "--sweep", grid]) == 0
  for seed in (0, 1):
    rows_a, vars_a = final_state(together / f"seed={seed}")
    rows_b, vars_b = final_state(apart / f"seed={seed}")
    assert [r for r in rows_a if "eval_accuracy" in r] == [
      r for r in rows_b if "eval_accuracy" in r
    ]
    assert rows_a == rows_b
    leaves_a = jax.tree_util.tree_leaves_with_path(vars_a)
    leaves_b = jax.tree_util.tree_leaves(vars_b)
    assert len(leaves_a) == len(leaves_b) > 0
    for (path, a), b in zip(leaves_a, leaves_b):
      assert np.array_equal(np.asarray(a), np.asarray(b)), path
  # The two seeds differ, so equality is not vacuous.
  assert (
    final_state(together / "seed=0")[0] != final_state(together / "seed=1")[0]
  )


def test_auto_trains_whole_waves_then_the_rest_on_all_cores():
  def plan(jobs, cores):
    par = sweep.choose_parallelism(
      None, len(jobs), cores=cores, platform="cpu", memory=None, flag_ok=True
    )
    return [
      ("".join(j), p.slots, bool(p.xla_flag))
      for j, p in sweep.waves(list(jobs), par, auto=True)
    ]

  # 2 cores, 3 runs: two pinned to a core each, then one on both cores.
  assert plan("abc", (0, 1)) == [
    ("ab", ((0,), (1,)), True),
    ("c", ((0, 1),), False),
  ]
  assert plan("abcd", (0, 1)) == [("abcd", ((0,), (1,)), True)]
  singles = ((0,), (1,), (2,), (3,))
  assert plan("abcdefg", (0, 1, 2, 3)) == [
    ("abcd", singles, True),
    ("efg", ((0,), (1,), (2,)), True),  # Three runs: one core each.
  ]
  assert plan("abcdef", (0, 1, 2, 3)) == [
    ("abcd", singles, True),
    ("ef", ((0, 1), (2, 3)), False),  # Two runs: two cores each.
  ]
  # Explicit: every run on its slot, whatever is left over.
  par = sweep.choose_parallelism(
    2, 3, cores=(0, 1), platform="cpu", memory=None, flag_ok=True
  )
  assert sweep.waves(list("abc"), par, auto=False) == [(list("abc"), par)]
  assert sweep.waves([], par, auto=True) == []
