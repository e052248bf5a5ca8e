"""The budget analysis (superconv.budget) and its section in the report.

Synthetic studies of known accuracies: table values are checked against
formulas evaluated here with scipy/numpy, the interpolation against hand
computation, the MDD against a Monte Carlo of the t-test it describes.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pathlib
import shutil
import sys
import textwrap

from conftest import run_script, traced_commands
import numpy as np
import pytest
from scipy import stats

from superconv import budget, cli, report

STEPS_PER_EPOCH = 10
BASELINES = ("piecewise", "linear")
# arm -> budget (epochs) -> final accuracies of seeds 0, 1, 2.
STUDY = {
  "onecycle": {
    1: [0.650, 0.655, 0.648],
    2: [0.720, 0.712, 0.725],
    4: [0.781, 0.776, 0.785],
  },
  "piecewise": {
    1: [0.600, 0.604, 0.598],
    2: [0.680, 0.676, 0.679],
    4: [0.760, 0.757, 0.765],
  },
  "linear": {
    1: [0.620, 0.615, 0.622],
    2: [0.700, 0.706, 0.698],
    4: [0.770, 0.762, 0.771],
  },
}
SCHEDULES = {
  "onecycle": {"name": "one_cycle", "pct_start": 0.3},
  "piecewise": {"name": "piecewise", "boundaries": [0.5, 0.75]},
  "linear": {"name": "linear", "warmup": 0.1},
}


def write_run(path, arm, epochs, seed, accuracy, max_lr):
  os.makedirs(path)
  config = {
    "seed": seed,
    "model": "resnet20",
    "batch_size": 128,
    "num_epochs": float(epochs),
    "num_steps": 0,
    "dataset": "synthetic",
    "schedule": {**SCHEDULES[arm], "max_lr": max_lr, "unit": "fraction"},
  }
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    last = epochs * STEPS_PER_EPOCH
    for step, acc in ((last // 2, accuracy / 2), (last, accuracy)):
      common = {"step": step, "epoch": step / STEPS_PER_EPOCH}
      f.write(json.dumps({**common, "train_loss": 1.0, "learning_rate": 0.1}))
      f.write("\n")
      f.write(json.dumps({**common, "eval_accuracy": acc, "eval_loss": 1.0}))
      f.write("\n")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  root = tmp_path_factory.mktemp("study")
  for arm, by_budget in STUDY.items():
    for epochs, accs in by_budget.items():
      # The tuned peak LR differs per (arm, budget): still one arm.
      lr = 0.1 * epochs + (0.3 if arm == "onecycle" else 0.0)
      for seed, acc in enumerate(accs):
        write_run(
          str(root / arm / f"{epochs}" / f"seed={seed}"),
          arm,
          epochs,
          seed,
          acc,
          lr,
        )
  return root


def labels(root):
  return [f"--label={root / arm}={arm}" for arm in STUDY]


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def written(study, tmp_path_factory):
  out = tmp_path_factory.mktemp("out")
  status = report.main(
    [
      str(study),
      "--out",
      str(out),
      "--budget-baseline",
      "piecewise,linear",
      *labels(study),
    ]
  )
  assert status == 0
  return out


# ---------------------------------------------------------------------------
# The report's tables against scipy.
# ---------------------------------------------------------------------------


def test_cells_mean_sd_and_t_interval(written):
  rows = read_csv(written / "budget_accuracy.csv")
  assert len(rows) == 9
  for row in rows:
    values = np.array(STUDY[row["arm"]][int(float(row["budget_epochs"]))])
    mean, sd = values.mean(), values.std(ddof=1)
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    assert int(row["seeds"]) == 3
    assert float(row["mean"]) == pytest.approx(mean, rel=1e-9)
    assert float(row["sd"]) == pytest.approx(sd, rel=1e-9)
    assert float(row["ci95_low"]) == pytest.approx(mean - half, rel=1e-9)
    assert float(row["ci95_high"]) == pytest.approx(mean + half, rel=1e-9)
    assert row["baseline"] == str(row["arm"] in BASELINES).lower()


def test_welch_difference_against_the_best_baseline(written):
  rows = read_csv(written / "budget_comparison.csv")
  # linear is the best baseline at every budget; compared: onecycle and
  # piecewise, 2 per budget.
  assert [(r["arm"], float(r["budget"]), r["baseline"]) for r in rows] == [
    (arm, b, "linear") for b in (1, 2, 4) for arm in ("onecycle", "piecewise")
  ]
  for row in rows:
    a = np.array(STUDY[row["arm"]][int(float(row["budget"]))])
    b = np.array(STUDY["linear"][int(float(row["budget"]))])
    va, vb = a.var(ddof=1) / 3, b.var(ddof=1) / 3
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 2)  # Welch-Satterthwaite.
    diff, se = a.mean() - b.mean(), math.sqrt(va + vb)
    half = stats.t.ppf(0.975, df) * se
    assert float(row["diff"]) == pytest.approx(diff, rel=1e-9)
    assert float(row["df"]) == pytest.approx(df, rel=1e-9)
    assert float(row["t"]) == pytest.approx(diff / se, rel=1e-9)
    assert float(row["p_value"]) == pytest.approx(
      2 * stats.t.sf(abs(diff / se), df), rel=1e-7
    )
    assert float(row["ci_low"]) == pytest.approx(diff - half, rel=1e-9)
    assert float(row["ci_high"]) == pytest.approx(diff + half, rel=1e-9)
    # MDD from the pooled sd of the three arms at this budget (6 df).
    budget_ = int(float(row["budget"]))
    pooled = math.sqrt(
      np.mean([np.var(STUDY[x][budget_], ddof=1) for x in STUDY])
    )
    assert float(row["mdd"]) == pytest.approx(
      budget.minimum_detectable_difference(pooled, 3, 3), rel=1e-9
    )


def test_report_md_plot_and_ratio_table(written):
  text = (written / "report.md").read_text()
  section = text.index("## Accuracy versus training budget")
  assert section < text.index("## Configurations")  # Near the top.
  assert "![accuracy versus budget](accuracy_vs_budget.png)" in text
  assert "| linear (best baseline) | 3 | 70.13 ± 0.42 |" in text
  assert "95% percentile bootstrap over seeds (4000 resamples" in text
  png = written / "accuracy_vs_budget.png"
  assert png.stat().st_size > 10_000
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  ratios = read_csv(written / "budget_ratio.csv")
  assert [(r["arm"], float(r["budget"])) for r in ratios] == [
    ("onecycle", 1),
    ("onecycle", 2),
    ("onecycle", 4),
  ]
  # onecycle at 4 epochs (78.07%) is above every baseline mean: not reached.
  assert ratios[2]["bound"] == ">" and float(ratios[2]["not_reached"]) == 1
  # At 1 epoch: linear's curve (61.9% at 1, 70.13% at 2) reaches 65.1%.
  target = np.mean(STUDY["onecycle"][1])
  low, high = np.mean(STUDY["linear"][1]), np.mean(STUDY["linear"][2])
  expected = 2 ** ((target - low) / (high - low))
  assert float(ratios[0]["ratio"]) == pytest.approx(expected, rel=1e-9)
  assert ratios[0]["bound"] == ""
  assert float(ratios[0]["ci_low"]) <= expected <= float(ratios[0]["ci_high"])


def test_legend_names_the_arms_and_the_band(study):
  rep = report.build([str(study)], labels={str(study / a): a for a in STUDY})
  analysis = report.budget_analysis(
    rep, baselines=BASELINES, labels={str(study / a): a for a in STUDY}
  )
  fig = budget.figure(analysis)
  texts = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
  assert texts == [
    "onecycle: mean, n=3 seeds",
    "piecewise (baseline): mean, n=3 seeds",
    "linear (baseline): mean, n=3 seeds",
    "band: 95% CI of the mean (t, n-1 df)",
  ]
  assert fig.axes[0].get_xlabel() == "training budget (epochs, log scale)"
  assert fig.axes[0].get_ylabel() == "final test accuracy (%)"


def test_unknown_baseline_is_one_line_and_writes_nothing(
  study, tmp_path, capsys
):
  out = tmp_path / "o"
  status = report.main(
    [str(study), "--out", str(out), "--budget-baseline", "cosine"]
  )
  err = capsys.readouterr().err
  assert status == 2 and err.count("\n") == 1
  assert "--budget-baseline 'cosine': not an arm; valid:" in err
  assert not out.exists()


# ---------------------------------------------------------------------------
# Detection.
# ---------------------------------------------------------------------------


def flat(**kw):
  base = {"model": "resnet20", "num_epochs": 1.0, "schedule.name": "piecewise"}
  return {**base, **kw}


def test_layout_detects_arms_by_budgets_only():
  study = [
    flat(),
    flat(num_epochs=2.0, **{"schedule.max_lr": 0.2}),
    flat(**{"schedule.name": "one_cycle"}),
    flat(num_epochs=2.0, **{"schedule.name": "one_cycle"}),
  ]
  lay = budget.layout(study)
  assert lay.arm_of == (0, 0, 1, 1)
  assert lay.arm_settings[1] == {
    "model": "resnet20",
    "schedule.name": "one_cycle",
  }
  # A model that differs: not a budget study (unless forced).
  other = study[:3] + [flat(num_epochs=2.0, model="resnet56")]
  assert budget.layout(other) is None
  assert budget.layout(other, "on").arm_of == (0, 0, 1, 2)
  # No budget differs, or every arm has one budget: not a study.
  assert budget.layout([flat(), flat(**{"schedule.name": "x"})]) is None
  assert (
    budget.layout([flat(), flat(num_epochs=2.0, **{"schedule.name": "x"})])
    is None
  )
  assert budget.layout(study, "off") is None
  with pytest.raises(budget.BudgetError, match="--budget-analysis 'maybe'"):
    budget.layout(study, "maybe")


def test_no_budget_section_without_a_budget_study(study):
  # One arm at one budget, or arms at one budget: no analysis.
  rep = report.build([str(study / "linear" / "2")])
  assert report.budget_analysis(rep) is None
  rep = report.build(
    [str(study / "linear" / "2"), str(study / "onecycle" / "2")]
  )
  assert report.budget_analysis(rep) is None
  with pytest.raises(report.ReportError, match="not arms x budgets"):
    report.budget_analysis(rep, baselines=["linear"])
  # Forced: one budget, Welch against the baseline, no ratio to compute.
  forced = report.budget_analysis(rep, mode="on", baselines=["linear"])
  assert forced.budgets == (2.0,) and len(forced.comparisons) == 1
  assert forced.ratios == ()


# ---------------------------------------------------------------------------
# The budget ratio.
# ---------------------------------------------------------------------------

BUDGETS = [1.0, 2.0, 4.0]
CURVE = [0.60, 0.70, 0.80]


@pytest.mark.parametrize(
  "target, expected, bound",
  [
    # Half-way from 0.70 (2 epochs) to 0.80 (4): half-way in log budget.
    (0.75, 2 * math.sqrt(2), ""),
    (0.70, 2.0, ""),
    # A quarter of the way from 1 to 2 epochs: 2 ** 0.25.
    (0.625, 2**0.25, ""),
    (0.60, 1.0, "<="),  # Reached at the smallest budget: only bounded.
    (0.55, 1.0, "<="),
    (0.81, 4.0, ">"),  # Never reached: not reached within 4 epochs.
  ],
)
def test_budget_to_reach_interpolates_in_log_budget(target, expected, bound):
  value, got = budget.budget_to_reach(BUDGETS, CURVE, target)
  assert got == bound
  assert value == pytest.approx(expected, rel=1e-12)


def test_first_crossing_of_a_curve_that_dips():
  value, bound = budget.budget_to_reach(BUDGETS, [0.60, 0.75, 0.70], 0.72)
  assert bound == "" and value == pytest.approx(2 ** (12 / 15), rel=1e-12)


def points(arm, by_budget):
  return [
    budget.Point(arm, b, acc, seed)
    for b, accs in by_budget.items()
    for seed, acc in enumerate(accs)
  ]


def test_ratio_below_one_not_reached_and_the_best_baseline_envelope():
  # No spread: every bootstrap resample is the point estimate.
  pts = points("piecewise", {1: [0.60] * 3, 2: [0.75] * 3, 4: [0.80] * 3})
  pts += points("linear", {1: [0.65] * 3, 2: [0.70] * 3, 4: [0.82] * 3})
  pts += points("onecycle", {1: [0.70] * 3, 2: [0.70] * 3, 4: [0.90] * 3})
  analysis = budget.analyze(pts, ["piecewise", "linear"], resamples=200)
  assert analysis.best_baseline == {
    1.0: "linear",
    2.0: "piecewise",
    4.0: "linear",
  }
  r1, r2, r4 = analysis.ratios
  # Envelope 0.65, 0.75, 0.82: 0.70 is reached half-way from 1 to 2.
  assert (r1.ratio, r1.bound) == (pytest.approx(math.sqrt(2), rel=1e-12), "")
  # At 2 epochs the baselines are ahead: B' = sqrt(2), ratio 0.71 < 1.
  assert (r2.ratio, r2.bound) == (
    pytest.approx(math.sqrt(2) / 2, rel=1e-12),
    "",
  )
  assert (r2.ci_low, r2.ci_high) == (pytest.approx(r2.ratio),) * 2
  assert (r4.ratio, r4.bound, r4.not_reached) == (1.0, ">", 1.0)
  assert (r4.ci_low_bound, r4.ci_high_bound) == (">", ">")
  text = budget.markdown(analysis)
  assert "| onecycle | 2 | 70.00 | 1.41 | 0.71 | [0.71, 0.71] | 0.0% |" in text
  assert "| onecycle | 4 | 90.00 | not reached (> 4.00) | not reached" in text


def test_bootstrap_is_seeded_and_brackets_the_estimate():
  pts = points("piecewise", {1: [0.60, 0.62, 0.61], 2: [0.70, 0.69, 0.72]})
  pts += points("onecycle", {1: [0.66, 0.64, 0.65], 2: [0.74, 0.73, 0.75]})
  a = budget.analyze(pts, ["piecewise"])
  b = budget.analyze(pts, ["piecewise"])
  assert a.ratios == b.ratios
  r = a.ratios[0]
  assert r.ci_low < r.ratio < r.ci_high and r.bound == ""
  # At 2 epochs one-cycle is above the baseline's top: not reached, and
  # so is every resample (its worst mean, 0.7333, beats piecewise's best).
  assert a.ratios[1].bound == ">" and a.ratios[1].not_reached == 1.0


# ---------------------------------------------------------------------------
# The minimum detectable difference.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n_a, n_b", [(3, 3), (5, 4)])
def test_mdd_has_80_percent_power_by_monte_carlo(n_a, n_b):
  sd = 0.004
  mdd = budget.minimum_detectable_difference(sd, n_a, n_b)
  trials = 40_000
  rng = np.random.default_rng(1234)
  a = rng.normal(mdd, sd, size=(trials, n_a))
  b = rng.normal(0.0, sd, size=(trials, n_b))
  p = stats.ttest_ind(a, b, axis=1, equal_var=True).pvalue
  rate = np.mean(p < 0.05)
  # Binomial standard error of the rate at 0.8; 4 of them (~6e-5 chance
  # of a false failure).
  se = math.sqrt(0.8 * 0.2 / trials)
  assert abs(rate - 0.8) < 4 * se, (rate, mdd)


def test_mdd_approaches_the_normal_approximation_for_many_seeds():
  # n = 400 per arm: t and noncentral t are within 0.1% of normal.
  z = stats.norm.ppf(0.975) + stats.norm.ppf(0.8)
  expected = z * 0.01 * math.sqrt(2 / 400)
  got = budget.minimum_detectable_difference(0.01, 400, 400)
  assert got == pytest.approx(expected, rel=2e-3)
  assert math.isnan(budget.minimum_detectable_difference(0.0, 3, 3))
  assert math.isnan(budget.minimum_detectable_difference(0.01, 1, 1))


# ---------------------------------------------------------------------------
# configs/budget_study.py and results/budget_study/reproduce.sh.
# ---------------------------------------------------------------------------

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = "results/budget_study/reproduce.sh"


def study_config(arm):
  return cli.load_config_file(f"{REPO / 'configs' / 'budget_study.py'}:{arm}")


def test_arms_share_everything_but_the_schedule():
  from superconv import schedules, train  # pylint: disable=g-import-not-at-top

  configs = {
    arm: study_config(arm)
    for arm in ("onecycle", "onecycle_cm", "piecewise", "linear")
  }
  flat = {a: report.flatten(c.to_dict()) for a, c in configs.items()}
  common = {k for k in flat["onecycle"] if not k.startswith("schedule.")}
  for arm, settings in flat.items():
    assert {k: settings[k] for k in common} == {
      k: flat["onecycle"][k] for k in common
    }, arm
  one = flat["onecycle"]
  assert (one["model"], one["shortcut"], one["dtype"]) == (
    "resnet20",
    "A",
    "float32",
  )
  assert (one["batch_size"], one["weight_decay"], one["nesterov"]) == (
    128,
    5e-4,
    True,
  )
  assert (one["crop_padding"], one["random_flip"]) == (4, True)
  assert flat["onecycle_cm"]["schedule.cycle_momentum"] is True
  assert not any(
    flat[a]["schedule.cycle_momentum"]
    for a in ("onecycle", "piecewise", "linear")
  )
  # The arms form a budget study for the report once budgets differ.
  settings = [{**flat[a], "num_epochs": e} for a in flat for e in (1.0, 2.0)]
  assert budget.layout(settings).arm_of == (0, 0, 1, 1, 2, 2, 3, 3)
  with pytest.raises(ValueError, match="one of onecycle, onecycle_cm"):
    study_config("cosine")
  for c in configs.values():
    train.validate(c, num_devices=1)
    # The linear schedule's own checks come with its implementation.
    if c.schedule.name in schedules.SCHEDULE_NAMES:
      train.validate(c, num_devices=1, num_train_examples=50_000)


def script(*args, env=None):
  return run_script(SCRIPT, *args, env=env, timeout=300)


commands = traced_commands


TINY_STUDY = [
  "--budgets",
  "1,2",
  "--seeds",
  "0,1",
  "--data",
  "synthetic",
  "--steps-per-epoch",
  "4",
  "--validation-size",
  "16",
  "--python",
  sys.executable,
]


def test_reproduce_dry_run_prints_the_plan_and_writes_nothing(tmp_path):
  runs, results = tmp_path / "runs", tmp_path / "results"
  proc = script(
    "--dry-run",
    "--runs",
    str(runs),
    "--results",
    str(results),
    *TINY_STUDY,
    "--",
    "--config.synthetic_train_size=64",
  )
  assert proc.returncode == 0, proc.stderr
  lines = proc.stdout.splitlines()
  assert lines[:4] == [
    "plan: arms onecycle,piecewise,linear; budgets 1,2 epoch(s); seeds 0,1",
    "plan: tuning 18 runs (6 grids of 3 values, seed 0), 27 epochs, plus"
    " extensions",
    "plan: test 12 runs (2 seeds each), 18 epochs",
    "plan: 45 epochs in all: about 2.1 h one run at a time at 170 s per"
    " epoch, 1.7 h at +22% with parallel runs",
  ]
  cmds = commands(proc.stdout)
  assert len(cmds) == 3 * 2 * 2 + 1
  py = sys.executable
  tune, test = cmds[0], cmds[1]
  assert tune == [
    py,
    "-m",
    "superconv.sweep",
    "tune",
    "--config",
    "configs/budget_study.py:onecycle",
    "--workdir",
    f"{runs}/tune/onecycle/1",
    "--budget-steps",
    "4",
    "--validation-size",
    "16",
    "--sweep",
    "schedule.max_lr=0.2,0.4,0.8",
    "--test-seeds",
    "0,1",
    "--parallel",
    "auto",
    "--quiet",
    "--config.dataset=synthetic",
    "--config.eval_every_epochs=1000",
    "--config.synthetic_train_size=64",
  ]
  assert test == [
    py,
    "-m",
    "superconv.sweep",
    "--config",
    "configs/budget_study.py:onecycle",
    "--workdir",
    f"{runs}/test/onecycle/1",
    "--sweep",
    "seed=0,1",
    "--parallel",
    "auto",
    "--quiet",
    "--config.dataset=synthetic",
    "--config.num_epochs=1",
    f"--config.schedule.max_lr=<winner of {runs}/tune/onecycle/1>",
    "--config.synthetic_train_size=64",
  ]
  # Budget by budget: every arm at budget 1, then every arm at budget 2
  # (twice the steps); each arm its own grid.
  tunes = [c for c in cmds[:-1] if "tune" in c]
  assert [c[c.index("--budget-steps") + 1] for c in tunes] == ["4"] * 3 + [
    "8"
  ] * 3
  grids = [c[c.index("--sweep") + 1] for c in tunes]
  assert (
    grids
    == [
      "schedule.max_lr=0.2,0.4,0.8",
      "schedule.max_lr=0.05,0.1,0.2",
      "schedule.max_lr=0.1,0.2,0.4",
    ]
    * 2
  )
  assert cmds[-1] == [
    py,
    "-m",
    "superconv.report",
    f"{results}/runs/test",
    "--out",
    str(results),
    "--budget-analysis",
    "on",
    "--budget-baseline",
    "piecewise,linear",
    "--targets",
    "0.6,0.7,0.75",
    *[
      x
      for a in ("onecycle", "piecewise", "linear")
      for x in ("--label", f"{results}/runs/test/{a}={a}")
    ],
  ]
  assert not runs.exists() and not results.exists()


@pytest.mark.parametrize(
  "args, message",
  [
    (["--arms", "onecycle,cosine"], "--arms: unknown arm 'cosine'"),
    (["--budgets", "1,0"], "--budgets: '0' is not a positive number"),
    (["--steps-per-epoch", "x"], "--steps-per-epoch must be a non-negative"),
    (["--grid", "linear"], "--grid linear: expected ARM=V1,V2"),
    (["--frobnicate"], "unknown option --frobnicate"),
  ],
)
def test_reproduce_bad_input_exits_2(args, message):
  proc = script("--dry-run", *args)
  assert proc.returncode == 2 and message in proc.stderr
  assert proc.stderr.count("\n") == 1


# Stands in for superconv.main in a full pass of reproduce.sh: a config.json
# like the study's (flattened where it matters) and a final evaluation whose
# accuracy peaks at max_lr = BEST[arm], grows with the budget and the seed.
# piecewise's best lies two grid steps below its grid, linear's one above.
STUDY_TRAINER = textwrap.dedent("""
    import json, math, os, sys
    args = sys.argv[1:]
    arm = args[args.index("--config") + 1].rsplit(":", 1)[1]
    workdir = args[args.index("--workdir") + 1]
    over = dict(a[len("--config."):].split("=", 1) for a in args
                if a.startswith("--config."))
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "calls"), "a") as f:
      f.write("x")
    lr = float(over["schedule.max_lr"])
    seed = int(over.get("seed", 0))
    val = int(over.get("validation_size", 0))
    steps = (int(over.get("num_steps", 0))
             or round(float(over["num_epochs"]) * 4))
    config = {"seed": seed, "model": "resnet20", "batch_size": 16,
              "dataset": over["dataset"], "validation_size": val,
              "num_steps": int(over.get("num_steps", 0)),
              "num_epochs": float(over.get("num_epochs", 0)),
              "schedule": {"name": arm, "max_lr": lr, "unit": "fraction"}}
    json.dump(config, open(os.path.join(workdir, "config.json"), "w"))
    best = {"onecycle": 0.4, "piecewise": 0.025, "linear": 0.4}[arm]
    acc = (0.5 + 0.05 * math.log2(steps / 4) + 0.03 * (arm == "onecycle")
           - 0.02 * math.log2(lr / best) ** 2 + 0.002 * seed)
    row = {"step": steps, "epoch": steps / 4}
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps({**row, "train_loss": 1.0}) + "\\n")
      f.write(json.dumps({**row, "eval_accuracy": acc, "eval_loss": 1.0,
                          "eval_examples": val or 100}) + "\\n")
    os.makedirs(os.path.join(workdir, "checkpoints", str(steps)))
    print(f"final: test accuracy {acc:.4f}, test loss 1.0")
""")


def test_reproduce_tunes_extends_edge_grids_tests_and_reports(tmp_path):
  trainer = tmp_path / "trainer.py"
  trainer.write_text(STUDY_TRAINER)
  runs, results = tmp_path / "runs", tmp_path / "results"
  args = [
    "--runs",
    str(runs),
    "--results",
    str(results),
    *TINY_STUDY,
    "--parallel",
    "1",
    "--trainer",
    f"{sys.executable} {trainer}",
  ]
  proc = script(*args)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  tuning = (results / "tuning.md").read_text()
  ext = "grid 0.05,0.1,0.2 -> 0.025,0.05,0.1,0.2 (winner at an edge);"
  ext += (
    " grid 0.025,0.05,0.1,0.2 -> 0.0125,0.025,0.05,0.1,0.2 (winner at an edge)"
  )
  assert "| piecewise | 1 | 4 | 0.0125,0.025,0.05,0.1,0.2 |" in tuning
  assert f"| 0.025 | {ext} |" in tuning
  assert "| linear | 2 | 8 | 0.1,0.2,0.4,0.8 |" in tuning
  assert (
    "| 0.4 | grid 0.1,0.2,0.4 -> 0.1,0.2,0.4,0.8 (winner at an edge) |"
    in tuning
  )
  assert (
    "| onecycle | 2 | 8 | 0.2,0.4,0.8 |" in tuning
    and "| 0.4 | none |" in tuning
  )
  # The test runs train the winner, full training set, test set.
  config = json.loads(
    (results / "runs/test/piecewise/2/seed=1/config.json").read_text()
  )
  assert (
    config["schedule"]["max_lr"],
    config["num_epochs"],
    config["seed"],
  ) == (0.025, 2.0, 1)
  assert config["validation_size"] == 0
  copied = sorted(
    str(p.relative_to(results / "runs"))
    for p in (results / "runs").rglob("*")
    if p.is_file()
  )
  runs_done = 4 * 2 + 5 * 2 + 3 * 2 + 3 * 2 * 2
  # config.json, metrics.jsonl and done.json of every run (no checkpoints),
  # tuning.json of every (arm, budget), extensions.txt of the four extended.
  assert len(copied) == 3 * runs_done + 3 * 2 + 2 * 2
  assert {os.path.basename(p) for p in copied} == {
    "config.json",
    "metrics.jsonl",
    "done.json",
    "tuning.json",
    "extensions.txt",
  }
  # done.json names no path of this machine's checkout.
  done = json.loads(
    (results / "runs/test/piecewise/2/seed=1/done.json").read_text()
  )
  assert done["returncode"] == 0 and done["overrides"]["seed"] == "1"
  assert done["command"][0] == os.path.basename(sys.executable)
  assert "configs/budget_study.py:piecewise" in done["command"]
  assert not any(str(REPO) in a for a in done["command"])
  for path in (results / "runs").rglob("tuning.json"):
    assert str(REPO) not in path.read_text(), path
  text = (results / "report.md").read_text()
  assert "## Accuracy versus training budget" in text
  assert "Baselines: piecewise, linear" in text
  ratios = read_csv(results / "budget_ratio.csv")
  assert [(r["arm"], float(r["budget"])) for r in ratios] == [
    ("onecycle", 1.0),
    ("onecycle", 2.0),
  ]
  assert (results / "accuracy_vs_budget.png").stat().st_size > 10_000

  # Run again: everything is skipped, no grid is extended again.
  calls = sorted((p, p.read_text()) for p in runs.rglob("calls"))
  proc = script(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert sorted((p, p.read_text()) for p in runs.rglob("calls")) == calls
  assert (results / "tuning.md").read_text() == tuning

  # Another machine: only the committed results, no runs directory. The
  # finished runs are taken from the results: nothing is trained again.
  shutil.rmtree(runs)
  proc = script(*args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert list(runs.rglob("calls")) == []
  assert (results / "tuning.md").read_text() == tuning
  assert read_csv(results / "budget_ratio.csv") == ratios
