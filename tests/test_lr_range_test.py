"""LR range test: LR sequences, smoothing and stopping, suggestions on known
curves, a tiny real run (CLI and library) and apply_to_config."""

import json
import math
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from superconv import cli
from superconv import config as config_lib
from superconv import data as data_lib
from superconv import lr_range_test as lrt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def range_config(arg=None, **range_overrides):
  path = os.path.join(REPO, "configs", "lr_range_test.py")
  c = cli.load_config_file(path if arg is None else f"{path}:{arg}")
  c.dataset = "synthetic"
  c.batch_size = 16
  c.synthetic_train_size = 64
  c.synthetic_test_size = 40
  c.eval_batch_size = 16
  for k, v in range_overrides.items():
    c.range_test[k] = v
  return c


# ---------------------------------------------------------------------------
# The LR sequence
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", lrt.MODES)
def test_lr_sequence_hits_min_and_max_exactly(mode):
  n, lo, hi = 97, 1e-3, 3.0
  f = lrt.lr_schedule(mode, lo, hi, n)
  got = np.array([float(f(jnp.int32(i))) for i in range(n + 3)])
  assert got[0] == np.float32(lo)
  assert got[n - 1] == np.float32(hi)
  assert np.all(got[n:] == np.float32(hi))  # Held past the end.
  got = got[:n]
  if mode == "linear":
    np.testing.assert_allclose(np.diff(got), (hi - lo) / (n - 1), rtol=2e-5)
  else:
    np.testing.assert_allclose(
      got[1:] / got[:-1], (hi / lo) ** (1 / (n - 1)), rtol=1e-6
    )
  np.testing.assert_allclose(got, lrt.lr_values(mode, lo, hi, n), rtol=1e-7)


def test_lr_sequence_needs_two_steps():
  with pytest.raises(lrt.RangeTestError, match="range_test.num_steps"):
    lrt.lr_values("linear", 0.1, 1.0, 1)


# ---------------------------------------------------------------------------
# Smoothing and stopping
# ---------------------------------------------------------------------------


def test_smoothed_loss_is_bias_corrected_ema():
  losses = [3.0, 2.0, 2.5, 1.0]
  reason, smoothed = lrt.smooth_and_stop(losses, beta=0.9, diverge_factor=0)
  avg, expected = 0.0, []
  for t, loss in enumerate(losses, 1):
    avg = 0.9 * avg + 0.1 * loss
    expected.append(avg / (1 - 0.9**t))
  assert reason == "completed"
  np.testing.assert_allclose(smoothed, expected, rtol=1e-12)
  assert smoothed[0] == 3.0


def test_stops_when_smoothed_loss_exceeds_factor_times_minimum():
  # beta 0: smoothed = loss. Minimum 1.0; 3.9 is within 4x, 4.1 is not.
  reason, smoothed = lrt.smooth_and_stop(
    [2.0, 1.0, 1.5, 3.9, 4.1, 9.0, 1.0], beta=0.0, diverge_factor=4.0
  )
  assert reason == "diverged"
  assert len(smoothed) == 5  # Steps up to and including the stopping one.
  assert smoothed[-1] == 4.1


def test_divergence_stop_uses_the_smoothed_loss():
  losses = [1.0] * 20 + [50.0] * 20
  reason, smoothed = lrt.smooth_and_stop(losses, beta=0.98, diverge_factor=4.0)
  # Bias-corrected EMA of 20 ones then k fifties exceeds 4 at k = 2.
  assert reason == "diverged"
  assert len(smoothed) == 22
  assert smoothed[-2] <= 4.0 < smoothed[-1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nonfinite_loss_stops(bad):
  reason, smoothed = lrt.smooth_and_stop([2.0, 1.5, bad, 1.0], beta=0.98)
  assert reason == "nonfinite"
  assert len(smoothed) == 3 and math.isnan(smoothed[-1])


def test_diverge_factor_zero_never_stops_on_a_finite_loss():
  reason, smoothed = lrt.smooth_and_stop(
    [1.0, 100.0, 1e6], beta=0.5, diverge_factor=0
  )
  assert reason == "completed" and len(smoothed) == 3


# ---------------------------------------------------------------------------
# Suggestions on synthetic curves with known answers
# ---------------------------------------------------------------------------


def exponential_curve():
  """101 LRs 1e-4 .. 10 (x = log10 lr in steps of 0.05).

  Steepest fall on the segment x in [-2, -1.95] (sigmoid centred at its
  middle), minimum at x = -0.5 (a quadratic rise starts there).
  """
  x = np.linspace(-4, 1, 101)
  lrs = 10.0**x
  loss = (
    2.3
    - 2.0 / (1 + np.exp(-12 * (x + 1.975)))
    + 3.0 * np.maximum(x + 0.5, 0) ** 2
  )
  return lrs, loss


def fastai_valley(lrs, losses):
  """fastai.callback.schedule.valley, transcribed as published."""
  n = len(losses)
  max_start, max_end = 0, 0
  lds = [1] * n
  for i in range(1, n):
    for j in range(0, i):
      if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
        lds[i] = lds[j] + 1
      if lds[max_end] < lds[i]:
        max_end = i
        max_start = max_end - lds[max_end]
  sections = (max_end - max_start) / 3
  idx = max_start + int(sections) + int(sections / 2)
  return float(lrs[idx])


def test_exponential_suggestions_on_a_known_curve():
  lrs, loss = exponential_curve()
  s = lrt.suggest("exponential", lrs, loss, num_planned=101)
  assert s["steepest"]["index"] == 40  # x = -2.
  assert s["steepest"]["lr"] == pytest.approx(0.01, rel=1e-12)
  assert s["min_loss_div_10"]["index"] == 70  # x = -0.5.
  assert s["min_loss_div_10"]["lr"] == pytest.approx(10**-0.5 / 10, rel=1e-12)
  # Window = points 10..95; the valley runs from its start to the minimum
  # (60 points after the first): fastai's index -1 + 20 + 10 = 29 -> 39.
  v = s["valley"]
  assert (v["valley_start"], v["valley_end"]) == (10, 70)
  assert v["index"] == 39
  assert v["lr"] == pytest.approx(10**-2.05, rel=1e-12)
  assert v["lr"] == fastai_valley(lrs[10:-5], loss[10:-5])
  assert s["smith"] is None
  rec = lrt.recommend("exponential", s)
  assert rec["rule"] == "min_loss_div_10" and rec["fallback"] is None
  assert rec["max_lr"] == s["min_loss_div_10"]["lr"]
  assert rec["min_lr"] == pytest.approx(rec["max_lr"] / 25)
  rec = lrt.recommend("exponential", s, rule="valley", div_factor=10)
  assert (rec["rule"], rec["max_lr"]) == ("valley", v["lr"])
  assert rec["min_lr"] == pytest.approx(v["lr"] / 10)


def test_linear_steepest_is_against_lr_not_log_lr():
  # LRs 0.05 .. 3.0 in steps of 0.05; the loss falls 0.1 per step, and 0.3
  # between lr 0.15 and 0.2 (index 2). Against log(lr) the last segment,
  # the shortest in log space, would be the steepest instead.
  lrs = np.linspace(0.05, 3.0, 60)
  loss = 8.0 - 0.1 * np.arange(60)
  loss[3:] -= 0.2
  s = lrt.suggest("linear", lrs, loss, num_planned=60, skip_start=0, skip_end=0)
  assert s["steepest"]["index"] == 2
  assert s["steepest"]["lr"] == pytest.approx(0.15)
  assert s["steepest"]["slope"] == pytest.approx(-0.3 / 0.05)
  assert lrt.steepest(lrs, loss, log_x=True)["index"] == 58


@pytest.mark.parametrize("seed", range(5))
def test_valley_matches_fastai_on_noisy_curves(seed):
  rng = np.random.default_rng(seed)
  lrs, loss = exponential_curve()
  noisy = loss + rng.normal(0, 0.05, loss.shape)
  assert lrt.valley(lrs, noisy)["lr"] == fastai_valley(lrs, noisy)


def test_no_suggestion_when_the_loss_never_falls():
  lrs = np.geomspace(1e-3, 1, 50)
  rising = np.linspace(1, 2, 50)
  assert lrt.steepest(lrs, rising, log_x=True) is None
  assert lrt.valley(lrs, rising) is None


def test_too_few_points_gives_no_loss_suggestions():
  s = lrt.suggest(
    "exponential", [1e-3, 1e-2, 1e-1], [2.0, 1.0, 9.0], num_planned=100
  )
  assert s["steepest"] is s["valley"] is s["min_loss_div_10"] is None
  assert lrt.recommend("exponential", s) is None


def test_smith_rule_picks_where_accuracy_stops_rising():
  lrs = np.linspace(0.25, 2.25, 9)
  acc = [0.10, 0.20, 0.35, 0.50, 0.60, 0.62, 0.63, 0.61, 0.40]
  s = lrt.smith(lrs, acc, eval_size=1000, num_classes=10)
  # Peak 0.63 at lr 1.75; one standard error sqrt(.63 .37 / 1000) = 0.0153
  # -> the first accuracy >= 0.6147 is 0.62 at lr 1.5.
  assert s["tolerance"] == pytest.approx(math.sqrt(0.63 * 0.37 / 1000))
  assert s["peak_lr"] == 1.75 and s["peak_accuracy"] == 0.63
  assert s["max_lr"] == 1.5 and s["min_lr"] == 1.5 / 4
  assert s["rise_lr"] == 0.5  # 0.20 > chance 0.1 + 2 x 0.0095.
  assert not s["still_rising"]
  wide = lrt.smith(lrs, acc, eval_size=1000, tolerance=0.05)
  assert wide["max_lr"] == 1.25
  rising = lrt.smith(lrs[:4], acc[:4], eval_size=1000)
  assert rising["still_rising"] and rising["max_lr"] == 1.0


def test_linear_recommendation_uses_smith_and_falls_back_without_eval():
  lrs = np.linspace(0.01, 3.0, 100)
  loss = 2.3 - 1.5 * np.sin(np.linspace(0, np.pi, 100))
  s = lrt.suggest(
    "linear",
    lrs,
    loss,
    num_planned=100,
    eval_lrs=[0.5, 1.0, 1.5],
    eval_accuracies=[0.3, 0.5, 0.4],
    eval_size=1000,
  )
  rec = lrt.recommend("linear", s)
  assert rec == {
    "rule": "smith",
    "max_lr": 1.0,
    "min_lr": 0.25,
    "div_factor": 4.0,
    "fallback": None,
  }
  s["smith"] = None
  rec = lrt.recommend("linear", s, div_factor=5)
  assert rec["rule"] == "min_loss_div_10"
  assert rec["min_lr"] == rec["max_lr"] / 5
  assert rec["fallback"] == "smith gave no value; used min_loss_div_10"


def test_eval_subset_first_and_fixed_random():
  dataset = data_lib.load(
    "synthetic", synthetic_train_size=8, synthetic_test_size=50
  )
  first = lrt.eval_subset(dataset, 10, "first", 0)
  np.testing.assert_array_equal(first.test_images, dataset.test_images[:10])
  np.testing.assert_array_equal(first.train_images, dataset.train_images)
  a = lrt.eval_subset(dataset, 10, "random", 3)
  b = lrt.eval_subset(dataset, 10, "random", 3)
  c = lrt.eval_subset(dataset, 10, "random", 4)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  np.testing.assert_array_equal(a.test_images, b.test_images)
  assert not np.array_equal(a.test_images, c.test_images)
  index = np.sort(np.random.default_rng(3).choice(50, 10, replace=False))
  np.testing.assert_array_equal(a.test_images, dataset.test_images[index])
  assert lrt.eval_subset(dataset, 0, "random", 0) is dataset  # 0 = all.


@pytest.mark.parametrize(
  "mode,key,value,words",
  [
    ("linear", "min_lr", -0.5, "must be >= 0, got -0.5"),
    ("exponential", "min_lr", 0.0, "must be > 0 in exponential mode"),
    ("linear", "min_lr", 2.0, "2.0 must be below range_test.max_lr (1.5)"),
    ("linear", "num_epochs", -1.0, "must be >= 0, got -1.0"),
    ("linear", "eval_subset", "all", "unknown 'all'; valid: first, random"),
    ("linear", "beta", 1.0, "must be in [0, 1), got 1.0"),
    ("linear", "skip_end", -1, "must be >= 0, got -1"),
    ("linear", "recommend", "best", "unknown 'best'; valid: '', steepest"),
    ("linear", "div_factor", 0.5, "must be >= 1 (or 0 = the mode's)"),
  ],
)
def test_validate_names_the_bad_key(mode, key, value, words):
  config = range_config(mode)
  lrt.validate(config)  # The presets pass.
  config.range_test[key] = value
  with pytest.raises(lrt.RangeTestError) as e:
    lrt.validate(config)
  assert str(e.value).startswith(f"range_test.{key}: {words}")


def test_validate_names_the_first_bad_key_in_the_presets_order():
  config = range_config("linear")
  config.range_test.div_factor = 0.5  # Last in default_config's order...
  config.range_test.eval_size = -1  # ...this one earlier.
  with pytest.raises(lrt.RangeTestError, match=r"^range_test\.eval_size:"):
    lrt.validate(config)


def _scripted_rows(losses, lrs):
  return [
    {"step": i + 1, "lr": float(lr), "loss": loss, "smoothed_loss": loss}
    for i, (lr, loss) in enumerate(zip(lrs, losses))
  ]


def _summary(config, rows, reason, num_planned):
  return lrt.summarize(
    config,
    rows,
    reason=reason,
    num_planned=num_planned,
    steps_per_epoch=4,
    num_classes=10,
    eval_size=0,
    notes=["given first"],
  )


def test_summary_notes_say_what_to_change():
  config = range_config("exponential", num_steps=50)
  lrs = np.geomspace(1e-4, 10, 50)
  # Falls, never rises again: max_lr too low to see the breakdown.
  falling = list(np.linspace(2.3, 1.0, 50))
  s = _summary(config, _scripted_rows(falling, lrs), "completed", 50)
  assert s["notes"][0] == "given first"
  assert any(n.startswith("the loss never rose") for n in s["notes"])
  assert s["min_smoothed_loss"] == pytest.approx(1.0)
  assert s["min_smoothed_loss_lr"] == pytest.approx(10.0)
  # NaN at step 4 of 50: stopped early, no loss-based suggestion.
  early = _scripted_rows([2.3, 2.2, 2.1, float("nan")], lrs)
  s = _summary(config, early, "nonfinite", 50)
  assert s["notes"][1:] == [
    "stopped (nonfinite) after 4 of 50 steps: lower range_test.max_lr or"
    " range_test.min_lr",
    "too few finite points for the loss-based suggestions: lower"
    " range_test.skip_start/skip_end or run longer",
  ]
  assert s["min_smoothed_loss"] == pytest.approx(2.1)
  assert s["stop_lr"] == pytest.approx(lrs[3])
  # Nothing finite: no minimum.
  s = _summary(config, _scripted_rows([float("nan")], lrs), "nonfinite", 50)
  assert s["min_smoothed_loss"] is s["min_smoothed_loss_lr"] is None


# ---------------------------------------------------------------------------
# Real runs (ResNet-8, synthetic data)
# ---------------------------------------------------------------------------


def rows_of(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def test_cli_run_writes_the_three_files_and_no_checkpoint(tmp_path):
  workdir = tmp_path / "rt"
  cmd = [
    sys.executable,
    "-m",
    "superconv.lr_range_test",
    "--config",
    os.path.join(REPO, "configs", "lr_range_test.py"),
    "--workdir",
    str(workdir),
    "--config.dataset=synthetic",
    "--config.model=resnet8",
    "--config.batch_size=16",
    "--config.synthetic_train_size=64",
    "--config.synthetic_test_size=40",
    "--config.eval_batch_size=16",
    "--config.range_test.num_steps=10",
    "--config.range_test.min_lr=0.01",
    "--config.range_test.max_lr=0.1",
    "--config.range_test.eval_every=5",
    "--config.range_test.eval_size=24",
    "--config.range_test.eval_subset=random",
    "--config.range_test.skip_start=0",
    "--config.range_test.skip_end=0",
    "--config.range_test.diverge_factor=0",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  p = subprocess.run(
    cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300
  )
  assert p.returncode == 0, p.stderr[-3000:]
  assert "recommended: max_lr" in p.stdout
  assert sorted(os.listdir(workdir)) == [
    "lr_range_test.json",
    "lr_range_test.jsonl",
    "lr_range_test.png",
  ]

  rows = rows_of(workdir / "lr_range_test.jsonl")
  assert [r["step"] for r in rows] == list(range(1, 11))
  assert rows[0]["lr"] == 0.01 and rows[-1]["lr"] == 0.1
  np.testing.assert_allclose(np.diff([r["lr"] for r in rows]), 0.01, rtol=1e-5)
  for r in rows:
    assert {"step", "lr", "loss", "smoothed_loss"} <= set(r)
  assert rows[0]["smoothed_loss"] == rows[0]["loss"]
  evals = [r for r in rows if "eval_accuracy" in r]
  assert [r["step"] for r in evals] == [5, 10]
  for r in evals:
    assert 0 <= r["eval_accuracy"] <= 1 and r["eval_loss"] > 0
    assert round(r["eval_accuracy"] * 24) == pytest.approx(
      r["eval_accuracy"] * 24, abs=1e-4
    )  # Measured on 24 images.

  with open(workdir / "lr_range_test.json") as f:
    summary = json.load(f)
  assert summary["stop_reason"] == "completed"
  assert summary["steps_run"] == summary["steps_planned"] == 10
  assert summary["eval_size"] == 24
  assert set(summary["suggestions"]) == set(lrt.SUGGESTIONS)
  assert summary["suggestions"]["smith"]["max_lr"] in [0.05, 0.1]
  rec = summary["recommendation"]
  assert rec["rule"] == "smith"
  assert rec["max_lr"] == summary["suggestions"]["smith"]["max_lr"]
  assert rec["min_lr"] == pytest.approx(rec["max_lr"] / 4)
  assert summary["settings"]["mode"] == "linear"
  assert summary["config"]["model"] == "resnet8"
  with open(workdir / "lr_range_test.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(workdir / "lr_range_test.jsonl") as f:
    rows = [json.loads(line) for line in f]
  fig = lrt.plot(rows, summary, str(workdir / "again.png"))
  legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert legend[0] == (
    f"recommended range: {rec['min_lr']:.3g} to {rec['max_lr']:.3g}"
  )
  assert f"Smith max_lr: {rec['max_lr']:.3g} *" in legend


class ScriptedSteps:
  """Stands in for train.create_train_state / make_train_step: the real
  run loop, but each step's loss comes from a script (no compilation)."""

  def __init__(self, losses):
    self.losses = losses
    self.calls = 0
    self.state_args = None

  def create_train_state(self, config, model, image_shape, tx):
    self.state_args = (config, model, image_shape, tx)
    return {"step": np.int32(0)}

  def make_train_step(self, config, dataset, aug):
    def step(state, images, labels):
      i = int(state["step"][0])
      self.calls += 1
      metrics = {
        "train_loss": self.losses[i],
        "train_accuracy": 0.5,
        "grad_norm": 1.0,
        "learning_rate": 0.25 * (i + 1),
        "momentum": 0.9,
      }
      return (
        {"step": state["step"] + 1},
        {k: np.array([v], np.float32) for k, v in metrics.items()},
      )

    return step


@pytest.mark.parametrize(
  "losses,reason,recorded",
  [
    ([2.0, 1.0, 1.0, 3.0, 9.0, 1.0, 1.0, 1.0], "diverged", 5),
    ([2.0, 1.0, float("nan"), 1.0, 1.0, 1.0, 1.0, 1.0], "nonfinite", 3),
    ([2.0, 1.0, 1.5, 3.9, 1.0, 1.0, 1.0, 1.0], "completed", 8),
  ],
)
def test_run_loop_stops_at_the_step_that_stopped_it(
  tmp_path, monkeypatch, losses, reason, recorded
):
  from superconv import models, train

  scripted = ScriptedSteps(losses)
  monkeypatch.setattr(train, "create_train_state", scripted.create_train_state)
  monkeypatch.setattr(train, "make_train_step", scripted.make_train_step)
  config = range_config(
    "exponential", num_steps=8, beta=0.0, min_lr=0.25, max_lr=2.0
  )
  dataset = data_lib.load(
    "synthetic", synthetic_train_size=64, synthetic_test_size=40
  )
  summary = lrt.run(config, str(tmp_path), dataset)

  rows = rows_of(tmp_path / "lr_range_test.jsonl")
  assert summary["stop_reason"] == reason
  assert summary["steps_run"] == len(rows) == recorded
  assert [r["step"] for r in rows] == list(range(1, recorded + 1))
  assert [float(r["loss"]) for r in rows] == pytest.approx(
    losses[:recorded], nan_ok=True
  )
  # One step is in flight when the stop is seen; it is discarded.
  assert scripted.calls == min(recorded + 1, 8)
  assert sorted(os.listdir(tmp_path)) == [
    "lr_range_test.json",
    "lr_range_test.jsonl",
    "lr_range_test.png",
  ]

  # The initial state is a training run's: train.create_train_state with
  # the config's seed, the training model and the data's image shape.
  view, model, image_shape, _ = scripted.state_args
  assert view.seed == config.seed and view.model == config.model
  assert model == models.from_config(
    config, dataset.num_classes, axis_name=train.AXIS
  )
  assert image_shape == (32, 32, 3)


def test_cli_bad_key_is_one_line_naming_it(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "superconv.lr_range_test",
    "--config",
    os.path.join(REPO, "configs", "lr_range_test.py"),
    "--workdir",
    str(tmp_path),
    "--config.range_test.min_lr=-1",
  ]
  p = subprocess.run(
    cmd,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert p.returncode == 2
  assert p.stderr.strip().splitlines()[-1] == (
    "superconv.lr_range_test: error: range_test.min_lr: must be >= 0, got -1.0"
  )
  assert not os.listdir(tmp_path)


def test_cli_refuses_a_bucket_workdir_before_any_work(tmp_path):
  cmd = [
    sys.executable,
    "-m",
    "superconv.lr_range_test",
    "--config",
    os.path.join(REPO, "configs", "lr_range_test.py"),
    "--workdir",
    "gs://bucket/rt",
  ]
  p = subprocess.run(
    cmd,
    cwd=tmp_path,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO),
  )
  assert p.returncode == 2
  assert (
    p.stderr.strip()
    .splitlines()[-1]
    .startswith(
      "superconv.lr_range_test: error: --workdir: gs://bucket/rt: the range"
      " test writes to a local directory"
    )
  )
  assert not os.listdir(tmp_path)  # No ./gs:/bucket/rt either.


# ---------------------------------------------------------------------------
# apply_to_config
# ---------------------------------------------------------------------------


def saved_test(tmp_path, rec):
  lrt.write_json(
    str(tmp_path / "lr_range_test.json"),
    {"mode": "linear", "recommendation": rec, "notes": []},
  )
  return str(tmp_path)


@pytest.mark.parametrize(
  "name,key,value",
  [
    ("one_cycle", "div_factor", 4.0),
    ("cyclical", "base_lr", 0.3),
  ],
)
def test_apply_to_config_sets_lrs_and_returns_provenance(
  tmp_path, name, key, value
):
  path = saved_test(
    tmp_path, {"rule": "smith", "max_lr": 1.2, "min_lr": 0.3, "div_factor": 4.0}
  )
  config = config_lib.base_config()
  config.schedule.name = name
  config.lock()
  provenance = lrt.apply_to_config(config, path)
  assert config.schedule.max_lr == 1.2
  assert config.schedule[key] == pytest.approx(value)
  assert provenance == {
    "max_lr": 1.2,
    "min_lr": 0.3,
    "rule": "smith",
    "mode": "linear",
    "source": os.path.join(path, "lr_range_test.json"),
    "set": {"schedule.max_lr": 1.2, f"schedule.{key}": value},
  }


def test_apply_to_config_records_the_source_in_the_config(tmp_path):
  path = saved_test(
    tmp_path, {"rule": "smith", "max_lr": 1.2, "min_lr": 0.3, "div_factor": 4.0}
  )
  config = config_lib.base_config()
  config.schedule.name = "one_cycle"
  if "lr_from_range_test" not in config.schedule:  # Until config.py has it.
    config.schedule.lr_from_range_test = ""
  config.schedule.lr_from_range_test = os.path.relpath(path)
  config.lock()
  lrt.apply_to_config(config, config.schedule.lr_from_range_test)
  recorded = json.loads(config.to_json_best_effort())["schedule"]
  assert recorded["lr_from_range_test"] == os.path.join(
    os.path.abspath(path), "lr_range_test.json"
  )
  assert recorded["max_lr"] == 1.2
  assert recorded["div_factor"] == pytest.approx(4.0)


def test_apply_to_config_warmup_starts_at_min_lr(tmp_path):
  path = saved_test(
    tmp_path,
    {"rule": "valley", "max_lr": 0.5, "min_lr": 0.02, "div_factor": 25.0},
  )
  config = config_lib.base_config()
  config.schedule.name = "cosine"
  config.schedule.warmup = 2.0
  p = lrt.apply_to_config(config, os.path.join(path, "lr_range_test.json"))
  assert config.schedule.max_lr == 0.5
  assert config.schedule.warmup_start_factor == pytest.approx(0.04)
  assert p["rule"] == "valley"


def test_apply_to_config_errors_name_the_key(tmp_path):
  config = config_lib.base_config()
  with pytest.raises(
    lrt.RangeTestError, match="^schedule.lr_from_range_test: no such file"
  ):
    lrt.apply_to_config(config, str(tmp_path / "missing"))
  path = saved_test(tmp_path, None)
  with pytest.raises(
    lrt.RangeTestError,
    match=("^schedule.lr_from_range_test: .* no recommendation"),
  ):
    lrt.apply_to_config(config, path)


def test_training_run_takes_its_lrs_from_a_saved_test(tmp_path):
  """main applies schedule.lr_from_range_test; config.json records it."""
  path = saved_test(
    tmp_path,
    {"rule": "smith", "max_lr": 0.5, "min_lr": 0.125, "div_factor": 4.0},
  )
  workdir = tmp_path / "run"
  base = [
    sys.executable,
    "-m",
    "superconv.main",
    "--config",
    os.path.join(REPO, "configs", "quick.py"),
    "--workdir",
    str(workdir),
    "--config.dataset=synthetic",
    "--config.batch_size=16",
    "--config.synthetic_train_size=32",
    "--config.synthetic_test_size=16",
    "--config.eval_batch_size=16",
    "--config.num_steps=4",
    "--config.schedule.pct_start=0.5",
    "--config.log_every_steps=1",
  ]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  bad = subprocess.run(
    base + ["--config.schedule.lr_from_range_test=" + str(tmp_path / "no")],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert bad.returncode == 2
  assert "schedule.lr_from_range_test" in bad.stderr
  assert not workdir.exists()

  p = subprocess.run(
    base + ["--config.schedule.lr_from_range_test=" + path],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert p.returncode == 0, p.stderr[-3000:]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["schedule"]["max_lr"] == 0.5
  assert saved["schedule"]["div_factor"] == 4.0
  assert saved["schedule"]["lr_from_range_test"] == os.path.join(
    path, "lr_range_test.json"
  )
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").open()]
  # one_cycle over 4 steps: step 1 uses the initial LR, max_lr / 4.
  first = [r for r in rows if r["step"] == 1 and "learning_rate" in r]
  assert first[0]["learning_rate"] == pytest.approx(0.125)
