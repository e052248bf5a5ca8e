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

import numpy as np
import pytest
from scipy import stats

from superconv import budget, report

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
