"""Small-sample statistics for the report, on top of `scipy.stats`.

Everything the report needs to put error bars on a handful of seeds:

* `summarize`: n, mean, sample standard deviation (ddof = 1) and the
  t-interval mean +- t_{(1+c)/2, n-1} * s / sqrt(n)
  (`scipy.stats.t.interval`).
* `welch`: Welch's unequal-variance t-test (two-sided) and the interval of
  the difference of means, with the Welch-Satterthwaite degrees of freedom
  (`scipy.stats.ttest_ind(equal_var=False)` and its `confidence_interval`).
* `ratio_of_means`: mean(a) / mean(b) with a delta-method interval on the
  log scale (see its docstring), the one piece scipy has no function for;
  its quantile is `scipy.stats.t.ppf`.

Undefined quantities (a standard deviation of one value, an interval with
fewer than two values per group) are NaN, never an exception. Degenerate
samples (zero spread) are handled here, before scipy would divide by zero.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math

import numpy as np
import scipy.stats

NAN = float("nan")


def mean(values: Sequence[float]) -> float:
  return math.fsum(values) / len(values) if len(values) else NAN


def sample_std(values: Sequence[float]) -> float:
  """Standard deviation with ddof = 1 (NaN for fewer than two values)."""
  if len(values) < 2:
    return NAN
  return float(np.std(np.asarray(values, dtype=np.float64), ddof=1))


@dataclasses.dataclass(frozen=True)
class Summary:
  """Mean, spread and t-interval of one sample."""

  n: int
  mean: float
  std: float  # Sample standard deviation (ddof = 1).
  ci_low: float  # mean - t_{(1+c)/2, n-1} s / sqrt(n)
  ci_high: float
  min: float
  max: float


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
  """n, mean, std, t-interval of the mean, min and max of `values`."""
  values = [float(v) for v in values]
  n = len(values)
  if n == 0:
    return Summary(0, NAN, NAN, NAN, NAN, NAN, NAN)
  m, s = mean(values), sample_std(values)
  if n < 2:
    low = high = NAN
  elif s == 0:
    low = high = m
  else:
    low, high = scipy.stats.t.interval(
      confidence, n - 1, loc=m, scale=s / math.sqrt(n)
    )
  return Summary(n, m, s, float(low), float(high), min(values), max(values))


@dataclasses.dataclass(frozen=True)
class Welch:
  """Welch's t-test of mean(a) - mean(b)."""

  diff: float  # mean(a) - mean(b)
  t: float
  df: float  # Welch-Satterthwaite
  p_value: float  # Two-sided.
  ci_low: float  # Interval of the difference.
  ci_high: float


def welch(
  a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> Welch:
  """Two-sided Welch t-test of mean(a) - mean(b) and its t-interval.

  With fewer than two values in a group everything but `diff` is NaN. When
  both groups have zero variance the test degenerates: p = 1 if the means
  are equal, else 0 (t = +-inf), and the interval is the point `diff`.
  """
  a, b = [float(v) for v in a], [float(v) for v in b]
  diff = mean(a) - mean(b) if a and b else NAN
  if len(a) < 2 or len(b) < 2:
    return Welch(diff, NAN, NAN, NAN, NAN, NAN)
  if sample_std(a) == 0 and sample_std(b) == 0:
    if diff == 0:
      return Welch(diff, 0.0, NAN, 1.0, diff, diff)
    return Welch(diff, math.copysign(math.inf, diff), NAN, 0.0, diff, diff)
  r = scipy.stats.ttest_ind(a, b, equal_var=False)
  ci = r.confidence_interval(confidence)
  return Welch(
    diff,
    float(r.statistic),
    float(r.df),
    float(r.pvalue),
    float(ci.low),
    float(ci.high),
  )


@dataclasses.dataclass(frozen=True)
class Ratio:
  """mean(a) / mean(b) and its interval."""

  ratio: float
  ci_low: float
  ci_high: float
  df: float  # Welch-Satterthwaite df of the log-ratio's variance.


def ratio_of_means(
  a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> Ratio:
  """Ratio of means r = mean(a) / mean(b) with a log-scale delta interval.

  Delta method on log r = log mean(a) - log mean(b):
      se^2 = s_a^2 / (n_a mean(a)^2) + s_b^2 / (n_b mean(b)^2)
  (squared coefficients of variation of the two means), with
  Welch-Satterthwaite degrees of freedom for the two components,
      df = se^4 / sum_i (se_i^4 / (n_i - 1)),
  and [r exp(-t se), r exp(+t se)], t = t_{(1+c)/2, df}. The log scale
  keeps the interval positive and symmetric in the sense that swapping a
  and b inverts it. Needs two values per group and positive means (else
  NaN); zero spread in both groups gives the point [r, r].

  The report uses it for speed-ups: the ratio of a baseline's mean time to
  target to a configuration's.
  """
  a, b = [float(v) for v in a], [float(v) for v in b]
  if not a or not b:
    return Ratio(NAN, NAN, NAN, NAN)
  ma, mb = mean(a), mean(b)
  if ma <= 0 or mb <= 0:
    return Ratio(NAN, NAN, NAN, NAN)
  r = ma / mb
  if len(a) < 2 or len(b) < 2:
    return Ratio(r, NAN, NAN, NAN)
  parts = [
    sample_std(a) ** 2 / (len(a) * ma * ma),
    sample_std(b) ** 2 / (len(b) * mb * mb),
  ]
  se2 = math.fsum(parts)
  if se2 == 0:
    return Ratio(r, r, r, NAN)
  df = se2**2 / math.fsum(
    p * p / (n - 1) for p, n in zip(parts, (len(a), len(b)))
  )
  half = float(scipy.stats.t.ppf(0.5 + confidence / 2.0, df)) * math.sqrt(se2)
  return Ratio(r, r * math.exp(-half), r * math.exp(half), df)
