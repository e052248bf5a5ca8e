r"""Accuracy against training budget: schedules (arms) x budgets x seeds.

A point of the evidence is a run trained for that budget (not an
intermediate evaluation of a longer run). Given the final test accuracies of
such runs, this module computes what `superconv.report` shows for a budget
study:

* per (arm, budget): n, mean, sample sd and the 95% t-interval of the mean;
* per budget: the Welch difference of every arm against the *best baseline*
  at that budget (the baseline arm with the highest mean there), with its
  95% interval and two-sided p-value, and the minimum detectable difference
  (MDD) at 80% power for the seeds run;
* the *budget ratio* B'/B: the budget B' at which the best-baseline curve
  (at each measured budget the highest baseline mean, joined piecewise
  linearly in log budget) first reaches an arm's mean at budget B, with a
  percentile bootstrap interval over seeds; "not reached" when it never
  does within the measured budgets, "<= b_min/B" when the baselines are
  already as good at the smallest budget;
* the accuracy-versus-budget plot with a 95% CI band of the mean per arm.

Every distribution function is scipy.stats' (`t`, `nct`, `ttest_ind`).
Pure functions over `Point`s; `layout` decides from flattened configs
whether a set of configurations is such a study. No import of a driver.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import math
import warnings

import numpy as np
from scipy import optimize, stats

BUDGET_KEYS = ("num_epochs", "num_steps")
# Tuned per (arm, budget): never part of what makes an arm.
TUNED_KEYS = ("schedule.max_lr",)
# Arms may differ only in these keys (automatic detection).
ARM_PREFIX = "schedule."
CONFIDENCE = 0.95
ALPHA = 0.05  # Two-sided significance level of the MDD.
POWER = 0.80  # Power of the MDD.
BOOTSTRAP_RESAMPLES = 4000
BOOTSTRAP_SEED = 0  # numpy.random.default_rng seed: the same report twice.
PLOT = "accuracy_vs_budget.png"
BAND_LABEL = "band: 95% CI of the mean (t, n-1 df)"
MODES = ("auto", "on", "off")


class BudgetError(ValueError):
  """Bad budget-analysis input; a one-line message naming the argument."""


# ============================================================================
# Is this a budget study?
# ============================================================================


def _text(value) -> str:
  return value if isinstance(value, str) else json.dumps(value)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Configurations seen as arms x budgets."""

  arm_of: tuple  # Per configuration: the index of its arm.
  arm_settings: tuple  # Per arm: its settings less budget and tuned keys.
  differing: tuple  # Keys whose values differ between configurations.


def layout(settings: Sequence[dict], mode: str = "auto") -> Layout | None:
  """The arms of flattened configurations, or None if not a budget study.

  An arm is a configuration less `BUDGET_KEYS` and `TUNED_KEYS`. With
  mode "auto" it is a study when the configurations differ in a budget key
  and otherwise only in `schedule.*` keys, and some arm has at least two
  budgets; "on" takes any configurations as arms x budgets (one budget
  allowed); "off" never.
  """
  if mode not in MODES:
    raise BudgetError(f"--budget-analysis {mode!r}: one of {', '.join(MODES)}")
  if mode == "off" or not settings:
    return None
  keys = sorted(set().union(*settings))
  differing = tuple(
    k for k in keys if len({_text(s.get(k)) for s in settings}) > 1
  )
  dropped = set(BUDGET_KEYS) | set(TUNED_KEYS)
  arms, arm_of = {}, []
  for s in settings:
    key = json.dumps(
      {k: v for k, v in s.items() if k not in dropped}, sort_keys=True
    )
    arm_of.append(arms.setdefault(key, len(arms)))
  result = Layout(
    tuple(arm_of),
    tuple(json.loads(k) for k in arms),
    differing,
  )
  if mode == "on":
    return result
  others = [
    k for k in differing if k not in dropped and not k.startswith(ARM_PREFIX)
  ]
  if others or not set(BUDGET_KEYS) & set(differing):
    return None
  if len(arms) == len(settings):  # Every arm has one budget only.
    return None
  return result


# ============================================================================
# Statistics
# ============================================================================


@dataclasses.dataclass(frozen=True)
class Point:
  """One run: its arm, budget (epochs) and final accuracy (0-1)."""

  arm: str
  budget: float
  accuracy: float
  seed: int | None = None
  path: str = ""


@dataclasses.dataclass(frozen=True)
class Cell:
  """The runs of one arm at one budget."""

  arm: str
  budget: float
  values: tuple  # Final accuracies, in seed order.
  n: int
  mean: float
  sd: float  # Sample standard deviation (ddof 1); NaN for n < 2.
  ci_low: float  # 95% t-interval of the mean; NaN for n < 2.
  ci_high: float


def cell(arm: str, budget: float, values: Sequence[float]) -> Cell:
  values = tuple(float(v) for v in values)
  n = len(values)
  mean = float(np.mean(values)) if n else math.nan
  if n < 2:
    return Cell(arm, budget, values, n, mean, math.nan, math.nan, math.nan)
  sd = float(np.std(values, ddof=1))
  low = high = mean
  if sd > 0:
    low, high = stats.t.interval(
      CONFIDENCE, n - 1, loc=mean, scale=sd / math.sqrt(n)
    )
  return Cell(arm, budget, values, n, mean, sd, float(low), float(high))


@dataclasses.dataclass(frozen=True)
class Comparison:
  """arm - best baseline at one budget (Welch)."""

  arm: str
  budget: float
  baseline: str
  diff: float
  ci_low: float
  ci_high: float
  t: float
  df: float
  p_value: float
  mdd: float  # Minimum detectable difference at POWER, two-sided ALPHA.


def welch(a: Sequence[float], b: Sequence[float]) -> tuple:
  """(diff, ci_low, ci_high, t, df, p) of mean(a) - mean(b), Welch.

  NaN but the difference with fewer than two values in a group or no
  spread in either.
  """
  diff = float(np.mean(a) - np.mean(b))
  if len(a) < 2 or len(b) < 2 or np.var(a) + np.var(b) == 0:
    return diff, math.nan, math.nan, math.nan, math.nan, math.nan
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)
    result = stats.ttest_ind(a, b, equal_var=False)
    low, high = result.confidence_interval(CONFIDENCE)
  return (
    diff,
    float(low),
    float(high),
    float(result.statistic),
    float(result.df),
    float(result.pvalue),
  )


def power(effect: float, sd: float, n_a: int, n_b: int, alpha=ALPHA) -> float:
  """Power of the two-sided two-sample t-test (equal variances).

  Exact through the noncentral t: with df = n_a + n_b - 2, noncentrality
  delta = effect / (sd sqrt(1/n_a + 1/n_b)) and c = t_{1 - alpha/2, df},
  power = P(T' > c) + P(T' < -c), T' ~ nct(df, delta).
  """
  df = n_a + n_b - 2
  delta = effect / (sd * math.sqrt(1 / n_a + 1 / n_b))
  c = stats.t.ppf(1 - alpha / 2, df)
  lower = stats.nct.cdf(-c, df, abs(delta))
  if not math.isfinite(lower):  # Underflow far in the tail (scipy: NaN).
    lower = 0.0
  return float(stats.nct.sf(c, df, abs(delta)) + lower)


def minimum_detectable_difference(
  sd: float, n_a: int, n_b: int, *, alpha=ALPHA, target_power=POWER
) -> float:
  """Smallest true difference the t-test detects with `target_power`.

  Solves `power(d, sd, n_a, n_b) = target_power` for d (Brent's method on
  the noncentral t power), treating `sd` as the true standard deviation.
  NaN without a positive sd or with fewer than 3 runs in all.
  """
  if not sd > 0 or n_a < 1 or n_b < 1 or n_a + n_b < 3:
    return math.nan
  f = lambda d: power(d, sd, n_a, n_b, alpha) - target_power
  high = sd
  while f(high) < 0:
    high *= 2
  return float(optimize.brentq(f, 0.0, high, xtol=1e-12 * sd, rtol=1e-12))


def pooled_sd(cells: Sequence[Cell]) -> tuple[float, int]:
  """sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1)) and its df, over cells n>=2."""
  used = [c for c in cells if c.n >= 2]
  df = sum(c.n - 1 for c in used)
  if not df:
    return math.nan, 0
  return math.sqrt(sum((c.n - 1) * c.sd**2 for c in used) / df), df


# ============================================================================
# The budget ratio
# ============================================================================


def reach_budgets(budgets, curves, targets) -> tuple[np.ndarray, np.ndarray]:
  """Vectorized `budget_to_reach`: curves (K, R) over K budgets, targets (R,).

  Returns (budget per column, bound code per column: 0 exact, -1 "<=",
  +1 ">").
  """
  logs = np.log(np.asarray(budgets, dtype=np.float64))
  curves = np.asarray(curves, dtype=np.float64).reshape(len(logs), -1)
  targets = np.broadcast_to(
    np.asarray(targets, dtype=np.float64), curves.shape[1:]
  )
  reached = curves >= targets
  first = np.argmax(reached, axis=0)  # First budget that reaches; 0 if none.
  before = np.maximum(first - 1, 0)
  cols = np.arange(curves.shape[1])
  low, high = curves[before, cols], curves[first, cols]
  with np.errstate(divide="ignore", invalid="ignore"):
    frac = (targets - low) / (high - low)
    inside = np.exp(logs[before] + frac * (logs[first] - logs[before]))
  bound = np.where(~reached.any(axis=0), 1, np.where(first == 0, -1, 0))
  value = np.where(
    bound == 1, budgets[-1], np.where(bound == -1, budgets[0], inside)
  )
  return value.astype(np.float64), bound


_BOUNDS = {0: "", -1: "<=", 1: ">"}


def budget_to_reach(budgets, means, target: float) -> tuple[float, str]:
  """First budget where the curve through (budgets, means) reaches target.

  The curve is piecewise linear in log budget between the measured points
  (budgets ascending). Returns (budget, "") for a crossing inside the
  range, (budgets[0], "<=") when the first point already reaches the
  target, and (budgets[-1], ">") when no point does ("not reached").
  """
  value, bound = reach_budgets(
    np.asarray(budgets, dtype=np.float64), np.asarray(means)[:, None], target
  )
  return float(value[0]), _BOUNDS[int(bound[0])]


@dataclasses.dataclass(frozen=True)
class BudgetRatio:
  """How much more budget the best baseline needs to match `arm` at B."""

  arm: str
  budget: float
  target: float  # The arm's mean accuracy at `budget`.
  baseline_budget: float  # B' (or the bound, see `bound`).
  ratio: float  # B' / B (or the bound).
  bound: str  # "" exact, "<=" already reached at b_min, ">" not reached.
  ci_low: float
  ci_low_bound: str
  ci_high: float
  ci_high_bound: str
  not_reached: float  # Fraction of bootstrap resamples not reached.
  resamples: int


def _envelope(cells: dict, baselines, means_of) -> tuple[list, np.ndarray]:
  """Budgets with a baseline, and the best baseline mean at each."""
  budgets = sorted({b for (arm, b) in cells if arm in baselines})
  best = [
    np.max(
      [means_of(cells[(a, b)]) for a in baselines if (a, b) in cells], axis=0
    )
    for b in budgets
  ]
  return budgets, np.asarray(best)


def _ratio_interval(ratios, codes, confidence) -> tuple:
  """Percentile interval of bootstrap ratios, censored ones at the ends.

  A resample below the range (code -1) sorts before every exact one, one
  not reached (+1) after; each end of the interval is one resample's
  (ratio, bound), by the inverted-CDF percentile.
  """
  encoded = np.where(codes == -1, -np.inf, np.where(codes == 1, np.inf, ratios))
  tail = (1 - confidence) / 2
  ends = np.quantile(encoded, [tail, 1 - tail], method="inverted_cdf")
  out = []
  for end in ends:
    i = int(np.flatnonzero(encoded == end)[0])
    out += [float(ratios[i]), _BOUNDS[int(codes[i])]]
  return tuple(out)


def budget_ratios(
  cells: dict,
  references: Sequence[str],
  baselines: Sequence[str],
  *,
  resamples: int = BOOTSTRAP_RESAMPLES,
  seed: int = BOOTSTRAP_SEED,
  confidence: float = CONFIDENCE,
) -> list[BudgetRatio]:
  """B'/B for every (reference arm, budget), with a bootstrap interval.

  Bootstrap: each (arm, budget) cell's runs are resampled with
  replacement, independently, `resamples` times (numpy default_rng(seed),
  cells in sorted order); each resample recomputes the target, the
  best-baseline curve and B'/B. Interval: the (1 -+ confidence)/2
  percentiles (inverted CDF), a censored resample counting as below the
  range ("<=") or above it (">"). Empty unless the baselines have at
  least two budgets.
  """
  if len({b for a, b in cells if a in baselines}) < 2:
    return []  # A curve needs two budgets.
  rng = np.random.default_rng(seed)
  boot = {}
  for key in sorted(cells):
    values = np.asarray(cells[key].values)
    index = rng.integers(0, len(values), size=(resamples, len(values)))
    boot[key] = values[index].mean(axis=1)
  budgets, best = _envelope(cells, baselines, lambda c: c.mean)
  _, best_boot = _envelope(boot, baselines, lambda m: m)
  out = []
  for arm in references:
    for b in sorted(b for (a, b) in cells if a == arm):
      target = cells[(arm, b)].mean
      reach, bound = budget_to_reach(budgets, best, target)
      reach_r, codes = reach_budgets(
        np.asarray(budgets, dtype=np.float64), best_boot, boot[(arm, b)]
      )
      out.append(
        BudgetRatio(
          arm,
          b,
          target,
          reach,
          reach / b,
          bound,
          *_ratio_interval(reach_r / b, codes, confidence),
          not_reached=float(np.mean(codes == 1)),
          resamples=resamples,
        )
      )
  return out


# ============================================================================
# The whole analysis
# ============================================================================


@dataclasses.dataclass(frozen=True)
class Analysis:
  """Everything the report's budget section shows."""

  arms: tuple  # Reference arms first, then the baselines, as given.
  baselines: tuple
  budgets: tuple  # Ascending, epochs.
  cells: dict  # (arm, budget) -> Cell
  best_baseline: dict  # budget -> arm (budgets with a baseline)
  comparisons: tuple  # Comparison rows, by budget then arm.
  pooled: dict  # budget -> (pooled sd, df)
  ratios: tuple  # BudgetRatio rows.
  points: tuple


def _budget_key(budget: float) -> float:
  return round(float(budget), 6)


def analyze(
  points: Sequence[Point],
  baselines: Sequence[str] = (),
  *,
  resamples: int = BOOTSTRAP_RESAMPLES,
  seed: int = BOOTSTRAP_SEED,
) -> Analysis:
  """Cells, comparisons against the best baseline, MDDs and budget ratios."""
  arms = list(dict.fromkeys(p.arm for p in points))
  unknown = [b for b in baselines if b not in arms]
  if unknown:
    raise BudgetError(
      f"--budget-baseline {unknown[0]!r}: not an arm; valid: {', '.join(arms)}"
    )
  baselines = tuple(dict.fromkeys(baselines))
  references = [a for a in arms if a not in baselines]
  grouped: dict = {}
  for p in sorted(points, key=lambda p: (p.seed is None, p.seed or 0)):
    if not (math.isfinite(p.accuracy) and p.budget > 0):
      continue  # NaN budgets fail the comparison too.
    grouped.setdefault((p.arm, _budget_key(p.budget)), []).append(p.accuracy)
  cells = {k: cell(k[0], k[1], v) for k, v in sorted(grouped.items())}
  budgets = tuple(sorted({b for _, b in cells}))

  best_baseline, comparisons, pooled = {}, [], {}
  for b in budgets:
    here = [cells[(a, b)] for a in arms if (a, b) in cells]
    pooled[b] = pooled_sd(here)
    candidates = [c for c in here if c.arm in baselines]
    if not candidates:
      continue
    best = max(candidates, key=lambda c: c.mean)
    best_baseline[b] = best.arm
    for c in here:
      if c.arm == best.arm:
        continue
      comparisons.append(
        Comparison(
          c.arm,
          b,
          best.arm,
          *welch(c.values, best.values),
          mdd=minimum_detectable_difference(pooled[b][0], c.n, best.n),
        )
      )
  ratios = budget_ratios(
    cells, references, baselines, resamples=resamples, seed=seed
  )
  return Analysis(
    arms=tuple(references) + baselines,
    baselines=baselines,
    budgets=budgets,
    cells=cells,
    best_baseline=best_baseline,
    comparisons=tuple(comparisons),
    pooled=pooled,
    ratios=tuple(ratios),
    points=tuple(points),
  )


# ============================================================================
# Tables, text and the plot
# ============================================================================


def tables(analysis: Analysis) -> dict:
  """CSV tables: budget_accuracy, budget_comparison, budget_ratio."""
  accuracy = [
    {
      "arm": c.arm,
      "budget_epochs": c.budget,
      "baseline": c.arm in analysis.baselines,
      "seeds": c.n,
      "mean": c.mean,
      "sd": c.sd,
      "ci95_low": c.ci_low,
      "ci95_high": c.ci_high,
      "pooled_sd_at_budget": analysis.pooled[c.budget][0],
    }
    for c in (analysis.cells[k] for k in _cell_order(analysis))
  ]
  comparison = [dataclasses.asdict(c) for c in analysis.comparisons]
  ratio = [dataclasses.asdict(r) for r in analysis.ratios]
  return {
    "budget_accuracy": accuracy,
    "budget_comparison": comparison,
    "budget_ratio": ratio,
  }


ACCURACY_COLUMNS = (
  "arm",
  "budget_epochs",
  "baseline",
  "seeds",
  "mean",
  "sd",
  "ci95_low",
  "ci95_high",
  "pooled_sd_at_budget",
)
# CSV columns of each table (written even when a table is empty).
COLUMNS = {
  "budget_accuracy": ACCURACY_COLUMNS,
  "budget_comparison": tuple(f.name for f in dataclasses.fields(Comparison)),
  "budget_ratio": tuple(f.name for f in dataclasses.fields(BudgetRatio)),
}


def _cell_order(analysis: Analysis) -> list:
  return [
    (a, b)
    for b in analysis.budgets
    for a in analysis.arms
    if (a, b) in analysis.cells
  ]


def _pp(value: float, digits: int = 2) -> str:
  """A 0-1 accuracy (or difference) in percent (points)."""
  return "n/a" if not math.isfinite(value) else f"{100 * value:.{digits}f}"


def _epochs(value: float) -> str:
  return f"{value:g}"


def _p(p: float) -> str:
  if not math.isfinite(p):
    return "n/a"
  return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def ratio_text(value: float, bound: str) -> str:
  if bound == ">":
    return f"not reached (> {value:.2f})"
  if bound == "<=":
    return f"<= {value:.2f}"
  return f"{value:.2f}"


def _end_text(value: float, bound: str) -> str:
  """An end of a ratio interval: '1.23', '> 1.00' or '<= 0.50'."""
  return f"{bound} {value:.2f}" if bound else f"{value:.2f}"


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> list[str]:
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  return lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def markdown(analysis: Analysis, plot: str = PLOT) -> str:
  """The report's budget section (Markdown, level-2 heading)."""
  out = _md_intro(analysis, plot)
  for b in analysis.budgets:
    out += _md_budget(analysis, b)
  if analysis.ratios:
    out += _md_ratios(analysis.ratios)
  out += [
    "",
    "Method: mean ± sample sd (ddof 1); 95% CI of a mean: Student t with"
    " n − 1 df (scipy.stats.t); Δ: Welch's t-test and interval"
    " (scipy.stats.ttest_ind, equal_var=False) of arm − best baseline;"
    " MDD: exact power of the two-sample t-test with the pooled sd of"
    " all arms at that budget taken as the true sd, n₁ + n₂ − 2 df, from"
    " the noncentral t (scipy.stats.nct), solved for the difference.",
  ]
  return "\n".join(out) + "\n"


def _md_intro(a: Analysis, plot: str) -> list[str]:
  return [
    "## Accuracy versus training budget",
    "",
    f"Arms: {', '.join(a.arms)}; budgets (epochs):"
    f" {', '.join(map(_epochs, a.budgets))}. Each point is a run"
    " trained for that budget (its own schedule over the whole budget),"
    " scored at its end."
    + (
      f" Baselines: {', '.join(a.baselines)}; at each budget the best"
      " baseline is the one with the highest mean there."
      if a.baselines
      else " No baseline arms named (--budget-baseline): no comparisons"
      " or budget ratios."
    ),
    "",
    f"![accuracy versus budget]({plot})",
    "",
    "Lines: mean final accuracy over seeds; bands: 95% t-interval of the"
    " mean; dots: single runs.",
  ]


def _md_budget_row(a: Analysis, arm: str, b: float) -> list | None:
  """One arm's row of a budget's table (None: the arm lacks the budget)."""
  c = a.cells.get((arm, b))
  if c is None:
    return None
  cmp_ = next(
    (x for x in a.comparisons if x.arm == arm and x.budget == b), None
  )
  row = [
    arm + (" (best baseline)" if arm == a.best_baseline.get(b) else ""),
    c.n,
    f"{_pp(c.mean)} ± {_pp(c.sd)}",
    f"[{_pp(c.ci_low)}, {_pp(c.ci_high)}]",
  ]
  if cmp_ is None:
    return row + ["-"] * 4
  return row + [
    f"{100 * cmp_.diff:+.2f}",
    f"[{_pp(cmp_.ci_low)}, {_pp(cmp_.ci_high)}]",
    _p(cmp_.p_value),
    _pp(cmp_.mdd),
  ]


def _md_budget(a: Analysis, b: float) -> list[str]:
  """A budget's table: every arm against the best baseline there."""
  sd, df = a.pooled[b]
  rows = [_md_budget_row(a, arm, b) for arm in a.arms]
  out = ["", f"### Budget {_epochs(b)} epoch(s)", ""]
  out += _table(
    [
      "arm",
      "seeds",
      "mean ± sd (%)",
      "95% CI (%)",
      "Δ vs best baseline (pp)",
      "95% CI of Δ (pp)",
      "p (Welch)",
      "MDD (pp)",
    ],
    [row for row in rows if row is not None],
  )
  return out + [
    "",
    f"Pooled sd at this budget: {_pp(sd)} pp ({df} df)."
    + (
      f" Minimum detectable difference (MDD): the true difference"
      f" that a test with these seeds finds at {POWER:.0%} power"
      f" (two-sided α = {ALPHA}); a non-significant Δ does not exclude"
      " a true difference smaller than the MDD."
      if a.best_baseline.get(b)
      else ""
    ),
  ]


def _md_ratios(ratios: Sequence) -> list[str]:
  """The budget-ratio table and how it is computed."""
  out = [
    "",
    "### Budget ratio",
    "",
    "B' = the budget at which the best baseline (at each measured"
    " budget the highest baseline mean, joined linearly in log budget)"
    " first reaches the arm's mean at budget B; ratio = B'/B (> 1: the"
    " baselines need more budget than the arm). Not extrapolated:"
    " beyond the largest budget it is *not reached*, below the smallest"
    " it is only bounded (<=). Interval: 95% percentile bootstrap over"
    f" seeds ({ratios[0].resamples} resamples, each (arm, budget)"
    f" cell resampled with replacement; numpy default_rng"
    f"({BOOTSTRAP_SEED})). With 3 seeds per cell the bootstrap has few"
    " distinct values and understates the uncertainty.",
    "",
  ]
  return out + _table(
    [
      "arm",
      "budget B",
      "arm's mean (%)",
      "B' (epochs)",
      "B'/B",
      "95% bootstrap interval",
      "resamples not reached",
    ],
    [
      [
        r.arm,
        _epochs(r.budget),
        _pp(r.target),
        ratio_text(r.baseline_budget, r.bound),
        ratio_text(r.ratio, r.bound),
        f"[{_end_text(r.ci_low, r.ci_low_bound)},"
        f" {_end_text(r.ci_high, r.ci_high_bound)}]",
        f"{r.not_reached:.1%}",
      ]
      for r in ratios
    ],
  )


def figure(analysis: Analysis):
  """The accuracy-versus-budget plot (a matplotlib Figure, no pyplot)."""
  from matplotlib import patches  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top

  fig = Figure(figsize=(7, 4.5))
  ax = fig.subplots()
  colours = [f"C{i}" for i in range(10)]
  for i, arm in enumerate(analysis.arms):
    cs = [
      analysis.cells[(arm, b)]
      for b in analysis.budgets
      if (arm, b) in analysis.cells
    ]
    if not cs:
      continue
    colour = colours[i % len(colours)]
    x = np.array([c.budget for c in cs])
    ns = sorted({c.n for c in cs})
    n = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"
    kind = " (baseline)" if arm in analysis.baselines else ""
    ax.plot(
      x,
      [100 * c.mean for c in cs],
      "-o",
      color=colour,
      label=f"{arm}{kind}: mean, {n} seeds",
    )
    ax.fill_between(
      x,
      [100 * c.ci_low for c in cs],
      [100 * c.ci_high for c in cs],
      color=colour,
      alpha=0.2,
      linewidth=0,
    )
    for c in cs:
      ax.plot(
        [c.budget] * c.n,
        [100 * v for v in c.values],
        ".",
        color=colour,
        alpha=0.6,
      )
  handles, _ = ax.get_legend_handles_labels()
  handles.append(patches.Patch(color="0.5", alpha=0.3, label=BAND_LABEL))
  ax.legend(handles=handles, fontsize=8)
  ax.set_xscale("log")
  ax.set_xticks(list(analysis.budgets))
  ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlabel("training budget (epochs, log scale)")
  ax.set_ylabel("final test accuracy (%)")
  ax.set_title("Final accuracy versus training budget")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def write_plot(analysis: Analysis, path: str):
  """Saves `figure(analysis)` as a PNG at `path`; returns the figure."""
  fig = figure(analysis)
  fig.savefig(path, dpi=110)
  return fig
