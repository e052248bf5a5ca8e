"""Report statistics on hand-made runs, against hand-computed values.

Expected numbers come from tables (t quantiles), closed forms (the t
distribution with 2 degrees of freedom), a published example, a numerical
integral of the t density, a Monte Carlo simulation (the delta-method ratio,
the one interval scipy has no function for) or arithmetic written out here,
never from the code under test.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os

import numpy as np
import pytest
import scipy.stats

from superconv import report, stats

T975_2 = 4.302653  # t_{0.975, 2}
T975_4 = 2.776445  # t_{0.975, 4}


# ---------------------------------------------------------------------------
# The t distribution and the tests.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "confidence, df, quantile",
  [
    # Published t table, t_{(1 + confidence) / 2, df}.
    (0.95, 1, 12.706205),
    (0.95, 2, 4.302653),
    (0.95, 3, 3.182446),
    (0.95, 4, 2.776445),
    (0.95, 10, 2.228139),
    (0.95, 30, 2.042272),
    (0.90, 5, 2.015048),
    (0.99, 1, 63.656741),
    (0.99, 8, 3.355387),
    (0.80, 20, 1.325341),
  ],
)
def test_summary_interval_uses_the_t_table(confidence, df, quantile):
  # df + 1 values 0, 1, ..., df: mean df / 2, s^2 = (df + 1)(df + 2) / 12.
  values = list(range(df + 1))
  n = df + 1
  s = math.sqrt(n * (n + 1) / 12)
  summary = stats.summarize(values, confidence)
  assert summary.mean == df / 2
  assert summary.std == pytest.approx(s, rel=1e-12)
  half = quantile * s / math.sqrt(n)
  # The table's 6 decimals (quantiles >= 1.3) bound the agreement: < 4e-7.
  assert summary.ci_high - df / 2 == pytest.approx(half, rel=1e-6)
  assert df / 2 - summary.ci_low == pytest.approx(half, rel=1e-6)


def t_two_sided_p_by_integration(t: float, df: float) -> float:
  """1 - 2 * integral_0^|t| of the t density (Simpson, 20k intervals)."""
  const = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(
    df * math.pi
  )
  pdf = lambda x: const * (1 + x * x / df) ** (-(df + 1) / 2)
  n, h = 20000, abs(t) / 20000
  total = (
    pdf(0)
    + pdf(abs(t))
    + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
  )
  return 1 - 2 * total * h / 3


def test_welch_closed_form_example():
  # a = [0, 2], b = [3, 5]: s^2 = 2 each, se^2 = 2, t = -3/sqrt(2), df = 2,
  # p = 1 - |t| / sqrt(2 + t^2) = 1 - sqrt(9/13).
  w = stats.welch([0, 2], [3, 5])
  assert w.diff == -3
  assert w.t == pytest.approx(-3 / math.sqrt(2), rel=1e-12)
  assert w.df == pytest.approx(2.0, rel=1e-12)
  assert w.p_value == pytest.approx(1 - math.sqrt(9 / 13), abs=1e-12)
  half = T975_2 * math.sqrt(2)
  assert (w.ci_low, w.ci_high) == pytest.approx(
    (-3 - half, -3 + half), abs=1e-5
  )


def test_welch_wikipedia_example():
  # en.wikipedia.org/wiki/Welch%27s_t-test, example 1: t = -2.46,
  # df = 24.9 (Welch-Satterthwaite 24.99), p = 0.021.
  a1 = [
    27.5,
    21.0,
    19.0,
    23.6,
    17.0,
    17.9,
    16.9,
    20.1,
    21.9,
    22.6,
    23.1,
    19.6,
    19.0,
    21.7,
    21.4,
  ]
  a2 = [
    27.1,
    22.0,
    20.8,
    23.4,
    23.4,
    23.5,
    25.8,
    22.0,
    24.8,
    20.2,
    21.9,
    22.1,
    22.9,
    20.5,
    24.4,
  ]
  w = stats.welch(a1, a2)
  assert w.t == pytest.approx(-2.46, abs=0.005)
  assert w.df == pytest.approx(24.99, abs=0.01)
  assert w.p_value == pytest.approx(0.021, abs=0.0005)
  assert w.p_value == pytest.approx(
    t_two_sided_p_by_integration(w.t, w.df), abs=1e-9
  )


def test_ratio_of_means_delta_interval():
  # a = [8, 10, 12] (mean 10, s 2), b = [4, 5, 6] (mean 5, s 1): both CVs 0.2,
  # se^2 = 2 * 0.04 / 3, Welch df = 4, interval 2 exp(+-t_{.975,4} se).
  r = stats.ratio_of_means([8, 10, 12], [4, 5, 6])
  se = math.sqrt(2 * 0.04 / 3)
  assert r.ratio == 2.0
  assert r.df == pytest.approx(4.0, rel=1e-12)
  assert r.ci_low == pytest.approx(2 * math.exp(-T975_4 * se), rel=1e-6)
  assert r.ci_high == pytest.approx(2 * math.exp(T975_4 * se), rel=1e-6)
  # Swapping the groups inverts the interval.
  inv = stats.ratio_of_means([4, 5, 6], [8, 10, 12])
  assert (inv.ci_low, inv.ci_high) == pytest.approx(
    (1 / r.ci_high, 1 / r.ci_low), rel=1e-9
  )
  assert math.isnan(stats.ratio_of_means([1.0], [2.0, 3.0]).ci_low)


def test_ratio_of_means_interval_covers_at_its_nominal_level():
  """Monte Carlo: normal samples with unequal sizes and spreads.

  Where the delta method applies (CV <= 0.1, 6-10 values per group) the
  interval should hold the true ratio mu_a / mu_b in a fraction `confidence`
  of the simulated experiments. A vectorized run of 2,000,000 experiments
  gives 0.9519 here, so the method's own error is about 0.002; the test
  allows 0.003 for it plus 4 binomial standard errors of this N = 6000
  simulation
  (sqrt(0.95 * 0.05 / 6000) = 0.0028). The delta-method variance must match
  the simulated variance of log r within 4 of its relative standard errors
  (sqrt(2 / (N - 1)) = 0.018 for a normal sample variance).
  """
  n_a, n_b, mu_a, mu_b, cv_a, cv_b = 10, 6, 10.0, 5.0, 0.1, 0.05
  confidence, trials = 0.95, 6000
  rng = np.random.default_rng(20240601)
  a = rng.normal(mu_a, cv_a * mu_a, size=(trials, n_a))
  b = rng.normal(mu_b, cv_b * mu_b, size=(trials, n_b))
  hits, log_r, se2 = 0, [], []
  for x, y in zip(a, b):
    r = stats.ratio_of_means(x, y, confidence)
    hits += r.ci_low <= mu_a / mu_b <= r.ci_high
    log_r.append(math.log(r.ratio))
    # The interval is r exp(+-t se): recover se from its width.
    t = scipy.stats.t.ppf(0.5 + confidence / 2, r.df)
    se2.append((math.log(r.ci_high / r.ci_low) / (2 * t)) ** 2)
  binomial_se = math.sqrt(confidence * (1 - confidence) / trials)
  assert abs(hits / trials - confidence) <= 0.003 + 4 * binomial_se
  variance_ratio = np.mean(se2) / np.var(log_r, ddof=1)
  assert abs(variance_ratio - 1) <= 4 * math.sqrt(2 / (trials - 1))


def test_summary_of_one_value_has_no_spread():
  s = stats.summarize([0.5])
  assert (s.n, s.mean) == (1, 0.5)
  assert math.isnan(s.std) and math.isnan(s.ci_low)


# ---------------------------------------------------------------------------
# A report over hand-made run directories.
# ---------------------------------------------------------------------------


def write_run(path, config, evals, *, steps_per_epoch, batch_size, wall_of):
  """config.json + metrics.jsonl: a train and an eval row per (step, acc)."""
  os.makedirs(path)
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  with open(os.path.join(path, "metrics.jsonl"), "w") as f:
    for step, accuracy in evals:
      common = {
        "step": step,
        "epoch": step / steps_per_epoch,
        "examples_seen": step * batch_size,
        "wall_time": wall_of(step),
      }
      f.write(
        json.dumps(
          {
            **common,
            "train_loss": 2.0 - accuracy,
            "train_accuracy": accuracy,
            "learning_rate": config["schedule"]["max_lr"],
            "momentum": 0.9,
            "batch_size": batch_size,
          }
        )
        + "\n"
      )
      f.write(
        json.dumps(
          {
            **common,
            "eval_loss": 1.0 - accuracy,
            "eval_accuracy": accuracy,
            "eval_examples": 100,
            "eval_seconds": 0.1,
          }
        )
        + "\n"
      )


def config(seed, **kw):
  c = {
    "seed": seed,
    "model": "resnet56",
    "dataset": "synthetic",
    "batch_size": 128,
    "num_steps": 0,
    "num_epochs": 0.0,
    "log_every_steps": 10,
    "data_dir": f"/somewhere/{seed}",
    "schedule": {"name": "piecewise", "max_lr": 0.1},
  }
  for k, v in kw.items():
    if k in ("name", "max_lr"):
      c["schedule"][k] = v
    else:
      c[k] = v
  return c


# Baseline: batch 128, 600 steps, evaluation every 100 steps (1 epoch).
BASE_ACC = {
  0: [0.3, 0.5, 0.7, 0.90, 0.90, 0.90],  # 0.90 reached at 400
  1: [0.3, 0.5, 0.7, 0.8, 0.905, 0.91],  # at 500
  2: [0.3, 0.5, 0.7, 0.8, 0.85, 0.92],
}  # at 600 (and 0.92 at 600)
# Fast: batch 256, 300 steps, evaluation every 50 steps (1 epoch).
FAST_ACC = {
  0: [0.3, 0.5, 0.7, 0.90, 0.91, 0.93],  # 0.90 at 200, 0.92 at 300
  1: [0.3, 0.5, 0.7, 0.8, 0.90, 0.94],  # at 250, 300
  2: [0.3, 0.5, 0.7, 0.8, 0.85, 0.95],
}  # at 300, 300
# Five seeds, 3 epochs of 100 steps (num_epochs, not num_steps).
FIVE_FINAL = [0.80, 0.81, 0.82, 0.83, 0.84]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("runs")
  for seed, accs in BASE_ACC.items():
    write_run(
      str(root / "base" / f"seed={seed}"),
      config(seed, num_steps=600),
      list(zip(range(100, 700, 100), accs)),
      steps_per_epoch=100,
      batch_size=128,
      wall_of=lambda s, seed=seed: s / 10 + seed,
    )
  for seed, accs in FAST_ACC.items():
    write_run(
      str(root / "fast" / f"seed={seed}"),
      config(seed, num_steps=300, batch_size=256, name="one_cycle", max_lr=1.0),
      list(zip(range(50, 350, 50), accs)),
      steps_per_epoch=50,
      batch_size=256,
      wall_of=lambda s, seed=seed: s / 10 + seed,
    )
  for seed, final in enumerate(FIVE_FINAL):
    write_run(
      str(root / "five" / f"seed={seed}"),
      config(seed, model="resnet20", num_epochs=3.0),
      [(100, 0.5), (200, 0.7), (300, final)],
      steps_per_epoch=100,
      batch_size=128,
      wall_of=lambda s: s / 10,
    )
  # Killed after 2 of 3 epochs: listed, not counted.
  write_run(
    str(root / "five" / "seed=5"),
    config(5, model="resnet20", num_epochs=3.0),
    [(100, 0.5), (200, 0.99)],
    steps_per_epoch=100,
    batch_size=128,
    wall_of=lambda s: s / 10,
  )
  return root


def build(runs, **kw):
  labels = {str(runs / n): n for n in ("base", "fast", "five")}
  return report.build(
    [str(runs)], targets=(0.90, 0.92), baseline="base", labels=labels, **kw
  )


def by(rows, **match):
  found = [r for r in rows if all(r[k] == v for k, v in match.items())]
  assert len(found) == 1, (match, rows)
  return found[0]


def test_runs_are_grouped_by_config_minus_seed(runs):
  r = build(runs)
  assert [c.label for c in r.configs] == ["base", "fast", "five"]
  assert [len(c.runs) for c in r.configs] == [3, 3, 5]
  assert [len(c.incomplete) for c in r.configs] == [0, 0, 1]
  assert r.configs[2].incomplete[0].total_steps == 300  # 3 epochs x 100.


def test_automatic_labels_use_the_keys_that_differ(runs):
  r = report.build([str(runs)], targets=(0.9,))
  assert [c.label for c in r.configs] == [
    "resnet56 piecewise",
    "resnet56 one_cycle",
    "resnet20 piecewise",
  ]


def test_final_accuracy_mean_std_and_t_interval(runs):
  rows = build(runs).tables["accuracy"]
  base = by(rows, configuration="base")
  assert base["seeds"] == 3
  assert base["final_accuracy_mean"] == pytest.approx(0.91, abs=1e-12)
  assert base["final_accuracy_std"] == pytest.approx(0.01, abs=1e-12)
  half = T975_2 * 0.01 / math.sqrt(3)
  assert base["ci95_low"] == pytest.approx(0.91 - half, abs=1e-7)
  assert base["ci95_high"] == pytest.approx(0.91 + half, abs=1e-7)
  five = by(rows, configuration="five")
  std = math.sqrt((0.02**2 * 2 + 0.01**2 * 2) / 4)
  assert (five["seeds"], five["incomplete_runs"]) == (5, 1)
  assert five["final_accuracy_mean"] == pytest.approx(0.82, abs=1e-12)
  assert five["final_accuracy_std"] == pytest.approx(std, abs=1e-12)
  assert five["ci95_high"] - five["final_accuracy_mean"] == pytest.approx(
    T975_4 * std / math.sqrt(5), abs=1e-7
  )
  assert five["final_accuracy_max"] == 0.84  # The killed run's 0.99 is out.
  fast = by(rows, configuration="fast")
  assert fast["peak_accuracy_mean"] == pytest.approx(0.94, abs=1e-12)
  assert fast["wall_seconds_mean"] == pytest.approx(31.0, abs=1e-12)


def test_time_to_target(runs):
  rows = build(runs).tables["targets"]
  base = by(rows, configuration="base", target=0.90)
  assert (base["seeds_reached"], base["seeds"]) == (3, 3)
  assert base["steps_mean"] == 500 and base["steps_std"] == 100
  assert (base["steps_min"], base["steps_max"]) == (400, 600)
  assert base["epochs_mean"] == 5.0
  assert base["examples_mean"] == 500 * 128
  assert base["wall_seconds_mean"] == pytest.approx(51.0)  # 40, 51, 62.
  assert base["wall_seconds_std"] == pytest.approx(11.0)
  base92 = by(rows, configuration="base", target=0.92)
  assert base92["seeds_reached"] == 1 and base92["steps_mean"] == 600
  assert math.isnan(base92["steps_std"])
  fast = by(rows, configuration="fast", target=0.90)
  assert (fast["steps_mean"], fast["steps_std"]) == (250, 50)
  assert fast["epochs_mean"] == 5.0
  five = by(rows, configuration="five", target=0.90)
  assert five["seeds_reached"] == 0 and math.isnan(five["steps_mean"])


def test_speedup_and_welch_against_the_baseline(runs):
  r = build(runs)
  fast = by(r.tables["speedup"], configuration="fast", target=0.90)
  # Steps: 500 / 250, both CVs 0.2 with 3 seeds -> df 4.
  se = math.sqrt(2 * 0.04 / 3)
  assert fast["speedup_steps"] == pytest.approx(2.0)
  assert fast["speedup_steps_ci95_low"] == pytest.approx(
    2 * math.exp(-T975_4 * se), rel=1e-6
  )
  assert fast["speedup_steps_ci95_high"] == pytest.approx(
    2 * math.exp(T975_4 * se), rel=1e-6
  )
  # Examples: batch 256 vs 128 cancels the step advantage.
  assert fast["speedup_examples"] == pytest.approx(1.0)
  # Wall: base 40, 51, 62 (mean 51, s 11); fast 20, 26, 32 (mean 26, s 6).
  assert fast["speedup_wall_seconds"] == pytest.approx(51 / 26)
  parts = [11**2 / (3 * 51**2), 6**2 / (3 * 26**2)]
  df = sum(parts) ** 2 / sum(p * p / 2 for p in parts)
  half = scipy.stats.t.ppf(0.975, df) * math.sqrt(sum(parts))
  assert fast["speedup_wall_seconds_ci95_low"] == pytest.approx(
    51 / 26 * math.exp(-half), rel=1e-9
  )
  # 0.92: only 1 of 3 baseline seeds got there -> no ratio.
  fast92 = by(r.tables["speedup"], configuration="fast", target=0.92)
  assert (fast92["seeds_reached"], fast92["baseline_seeds_reached"]) == (3, 1)
  assert math.isnan(fast92["speedup_steps"])
  # Final accuracy: 0.94 +- 0.01 vs 0.91 +- 0.01, n = 3 each -> df 4.
  w = by(r.tables["comparison"], configuration="fast")
  t = 0.03 / math.sqrt(2 * 0.0001 / 3)
  assert w["accuracy_diff"] == pytest.approx(0.03, abs=1e-12)
  assert w["welch_t"] == pytest.approx(t, rel=1e-9)
  assert w["welch_df"] == pytest.approx(4.0, rel=1e-9)
  assert w["p_value"] == pytest.approx(
    t_two_sided_p_by_integration(t, 4), abs=1e-9
  )
  assert 0.02 < w["p_value"] < 0.022  # t = 3.674 on 4 df.
  five = by(r.tables["comparison"], configuration="five")
  assert five["accuracy_diff"] == pytest.approx(-0.09, abs=1e-12)


def read_csv(path):
  with open(path) as f:
    return list(csv.DictReader(f))


def test_written_report_csv_and_plots(runs, tmp_path):
  r = build(runs)
  out = str(tmp_path / "report")
  paths = report.write(r, out)
  for name in report.PLOTS:
    with open(os.path.join(out, name), "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert os.path.getsize(os.path.join(out, name)) > 5000
  accuracy = read_csv(os.path.join(out, "accuracy.csv"))
  base = by(accuracy, configuration="base")
  assert float(base["final_accuracy_mean"]) == pytest.approx(0.91)
  assert float(base["ci95_high"]) == pytest.approx(
    0.91 + T975_2 * 0.01 / math.sqrt(3), abs=1e-8
  )
  targets = read_csv(os.path.join(out, "targets.csv"))
  assert by(targets, configuration="fast", target="0.9")["steps_mean"] == "250"
  speedup = read_csv(os.path.join(out, "speedup.csv"))
  assert float(
    by(speedup, configuration="fast", target="0.9")["speedup_steps"]
  ) == pytest.approx(2.0)
  runs_csv = read_csv(os.path.join(out, "runs.csv"))
  assert len(runs_csv) == 12
  assert [x["complete"] for x in runs_csv].count("false") == 1
  with open(os.path.join(out, "report.md")) as f:
    md = f.read()
  assert "| base | 3 | 91.00 ± 1.00 | [88.52, 93.48] |" in md
  assert "| five | 5 | 82.00 ± 1.58 | [80.04, 83.96] |" in md
  assert (
    "| base | 90.00% | 3/3 | 500 ± 100 (400–600) | 5.0 ± 1.0 (4.0–6.0)" in md
  )
  se = math.sqrt(2 * 0.04 / 3)
  assert (
    f"| fast | 90.00% | 3/3 vs 3/3 | 2.00× [{2 * math.exp(-T975_4 * se):.2f},"
    f" {2 * math.exp(T975_4 * se):.2f}] | 1.00× "
  ) in md
  assert "| fast | 3.00 |" in md and "0.0213" in md
  assert all(f"]({name})" in md for name in report.PLOTS)
  # Deterministic: the same runs give byte-identical markdown and CSVs.
  again = str(tmp_path / "again")
  report.write(build(runs), again)
  for path in paths:
    if path.endswith((".md", ".csv")):
      with (
        open(path) as a,
        open(os.path.join(again, os.path.basename(path))) as b,
      ):
        assert a.read() == b.read()


def test_cli_errors_are_one_line(runs, tmp_path, capsys):
  assert (
    report.main([str(runs), "--out", str(tmp_path), "--baseline", "nope"]) == 2
  )
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "--baseline 'nope'" in err
  assert report.main([str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
  assert (
    report.main([str(runs), "--out", str(tmp_path), "--targets", "92"]) == 2
  )
  assert "--targets" in capsys.readouterr().err


def test_cli_writes_the_report(runs, tmp_path, capsys):
  out = tmp_path / "cli"
  assert (
    report.main(
      [
        str(runs / "base"),
        str(runs / "fast"),
        "--out",
        str(out),
        "--targets",
        "0.9",
        "--baseline",
        "one_cycle",
      ]
    )
    == 0
  )
  assert "Baseline: **one_cycle**" in capsys.readouterr().out
  speedup = read_csv(str(out / "speedup.csv"))
  assert float(speedup[0]["speedup_steps"]) == pytest.approx(0.5)


def test_accuracy_plot_says_what_it_shows(runs):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig = report.figure(build(runs), "accuracy_vs_steps.png")
  ax = fig.axes[0]
  assert len(fig.axes) == 1  # No zoom panel.
  assert ax.get_ylabel() == "evaluation accuracy (%)"
  assert ax.get_title() == "Evaluation accuracy (%) vs steps"
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [
    "base: mean of 3 seeds",
    "fast: mean of 3 seeds",
    "five: mean of 5 seeds",
    "target 90.00%",
    "target 92.00%",
    "shaded: min to max over seeds",
  ]
  base = ax.get_lines()[0]
  assert list(base.get_xdata()) == list(range(100, 700, 100))
  # In %: the mean of BASE_ACC at each evaluation.
  expected = 100 * np.mean(list(BASE_ACC.values()), axis=0)
  np.testing.assert_allclose(base.get_ydata(), expected, rtol=1e-12)
  band = ax.collections[0].get_paths()[0].vertices[:, 1]
  assert band.min() == pytest.approx(30.0) and band.max() == pytest.approx(92.0)
  targets = [l.get_ydata()[0] for l in ax.get_lines()[3:]]
  assert targets == [pytest.approx(90.0), pytest.approx(92.0)]
  plt.close(fig)


def test_loss_plot_has_plain_log_tick_labels(runs):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig = report.figure(build(runs), "train_loss.png")
  ax = fig.axes[0]
  fig.canvas.draw()
  assert ax.get_yscale() == "log"
  low, high = ax.get_ylim()
  shown = [
    t.get_text()
    for t in ax.get_yticklabels()
    if t.get_text() and low <= t.get_position()[1] <= high
  ]
  # train_loss = 2 - accuracy spans 1.05..1.7: labels 1.25, 1.5.
  assert shown == ["1.25", "1.5"]
  assert not [t for t in ax.get_yticklabels(minor=True) if t.get_text()]
  plt.close(fig)


def test_wallclock_plot_only_on_request(runs, tmp_path):
  r = build(runs)
  report.write(r, str(tmp_path / "default"))
  md = (tmp_path / "default" / "report.md").read_text()
  assert not (tmp_path / "default" / report.WALLCLOCK_PLOT).exists()
  assert "No accuracy-versus-wall-clock plot" in md
  assert report.WALLCLOCK_PLOT not in md
  drawn = dataclasses.replace(r, wallclock_plot=True)
  report.write(drawn, str(tmp_path / "drawn"))
  md = (tmp_path / "drawn" / "report.md").read_text()
  png = tmp_path / "drawn" / report.WALLCLOCK_PLOT
  assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert f"]({report.WALLCLOCK_PLOT})" in md
