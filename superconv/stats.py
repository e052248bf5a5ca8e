"""Small-sample statistics for the report, in plain Python (no SciPy).

Everything the report needs to put error bars on a handful of seeds:

* `t_cdf`, `t_ppf`, `t_two_sided_p`: Student's t distribution for any real
  df > 0, through the regularized incomplete beta function
  I_x(a, b) (`betainc`, evaluated with the modified Lentz continued fraction
  of Numerical Recipes, 3rd ed., section 6.4):
      P(|T| > t) = I_{df / (df + t^2)}(df / 2, 1 / 2).
  The quantile inverts this by bisection on x, so it is deterministic and
  accurate to ~1e-12 relative.
* `summarize`: n, mean, sample standard deviation (ddof = 1) and the
  t-interval mean +- t_{(1+c)/2, n-1} * s / sqrt(n).
* `welch`: Welch's unequal-variance t-test (two-sided) and the interval of
  the difference of means, with the Welch-Satterthwaite degrees of freedom.
* `ratio_of_means`: mean(a) / mean(b) with a delta-method interval on the
  log scale (see its docstring).

Undefined quantities (a standard deviation of one value, an interval with
fewer than two values per group) are NaN, never an exception.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math

NAN = float("nan")


# ---------------------------------------------------------------------------
# Student's t distribution.
# ---------------------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
  """Continued fraction of I_x(a, b) (modified Lentz; converges for
  x < (a + 1) / (a + b + 2))."""
  tiny, eps = 1e-300, 1e-16
  qab, qap, qam = a + b, a + 1.0, a - 1.0
  c, d = 1.0, 1.0 - qab * x / qap
  d = 1.0 / (d if abs(d) > tiny else tiny)
  h = d
  for m in range(1, 1000):
    m2 = 2 * m
    aa = m * (b - m) * x / ((qam + m2) * (a + m2))
    d = 1.0 + aa * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + aa / c
    c = c if abs(c) > tiny else tiny
    h *= d * c
    aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
    d = 1.0 + aa * d
    d = 1.0 / (d if abs(d) > tiny else tiny)
    c = 1.0 + aa / c
    c = c if abs(c) > tiny else tiny
    delta = d * c
    h *= delta
    if abs(delta - 1.0) < eps:
      return h
  raise ArithmeticError(
    f"betainc({a}, {b}, {x}): continued fraction did not converge"
  )


def betainc(a: float, b: float, x: float) -> float:
  """Regularized incomplete beta function I_x(a, b), a, b > 0, 0 <= x <= 1."""
  if a <= 0 or b <= 0:
    raise ValueError(f"betainc: a and b must be > 0, got a={a}, b={b}")
  if not 0.0 <= x <= 1.0:
    raise ValueError(f"betainc: x must be in [0, 1], got {x}")
  if x == 0.0 or x == 1.0:
    return x
  log_front = (
    math.lgamma(a + b)
    - math.lgamma(a)
    - math.lgamma(b)
    + a * math.log(x)
    + b * math.log1p(-x)
  )
  if x < (a + 1.0) / (a + b + 2.0):
    return math.exp(log_front) * _betacf(a, b, x) / a
  return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _check_df(df: float) -> None:
  if not df > 0:
    raise ValueError(f"degrees of freedom must be > 0, got {df}")


def t_two_sided_p(t: float, df: float) -> float:
  """P(|T| >= |t|) for T ~ Student t with df degrees of freedom."""
  _check_df(df)
  if math.isnan(t):
    return NAN
  if math.isinf(t):
    return 0.0
  return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
  """P(T <= t) for T ~ Student t with df degrees of freedom."""
  half_tail = 0.5 * t_two_sided_p(t, df)
  return 1.0 - half_tail if t > 0 else half_tail


def t_ppf(q: float, df: float) -> float:
  """The q-quantile of Student's t with df degrees of freedom (0 < q < 1)."""
  _check_df(df)
  if not 0.0 < q < 1.0:
    raise ValueError(f"t_ppf: q must be in (0, 1), got {q}")
  if q == 0.5:
    return 0.0
  tail = min(q, 1.0 - q)  # One-sided tail beyond |t|.
  # P(T > t) = I_x(df/2, 1/2) / 2 with x = df / (df + t^2), increasing in x:
  # bisect on x in (0, 1), then t = sqrt(df (1 - x) / x).
  lo, hi = 0.0, 1.0
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    if mid in (lo, hi):
      break
    if 0.5 * betainc(df / 2.0, 0.5, mid) < tail:
      lo = mid
    else:
      hi = mid
  x = 0.5 * (lo + hi)
  t = math.sqrt(df * (1.0 - x) / x)
  return t if q > 0.5 else -t


# ---------------------------------------------------------------------------
# Summaries and tests.
# ---------------------------------------------------------------------------


def mean(values: Sequence[float]) -> float:
  return math.fsum(values) / len(values) if len(values) else NAN


def sample_std(values: Sequence[float]) -> float:
  """Standard deviation with ddof = 1 (NaN for fewer than two values)."""
  n = len(values)
  if n < 2:
    return NAN
  m = mean(values)
  return math.sqrt(math.fsum((v - m) ** 2 for v in values) / (n - 1))


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
  else:
    half = t_ppf(0.5 + confidence / 2.0, n - 1) * s / math.sqrt(n)
    low, high = m - half, m + half
  return Summary(n, m, s, low, high, min(values), max(values))


@dataclasses.dataclass(frozen=True)
class Welch:
  """Welch's t-test of mean(a) - mean(b)."""

  diff: float  # mean(a) - mean(b)
  t: float
  df: float  # Welch-Satterthwaite
  p_value: float  # Two-sided.
  ci_low: float  # Interval of the difference.
  ci_high: float


def _welch_df(parts: Sequence[float], ns: Sequence[int]) -> float:
  """Welch-Satterthwaite df of a sum of variance components s_i^2 / n_i."""
  denominator = math.fsum(p * p / (n - 1) for p, n in zip(parts, ns))
  return math.fsum(parts) ** 2 / denominator if denominator > 0 else NAN


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
  parts = [sample_std(a) ** 2 / len(a), sample_std(b) ** 2 / len(b)]
  se = math.sqrt(math.fsum(parts))
  if se == 0:
    if diff == 0:
      return Welch(diff, 0.0, NAN, 1.0, diff, diff)
    return Welch(diff, math.copysign(math.inf, diff), NAN, 0.0, diff, diff)
  df = _welch_df(parts, [len(a), len(b)])
  t = diff / se
  half = t_ppf(0.5 + confidence / 2.0, df) * se
  return Welch(diff, t, df, t_two_sided_p(t, df), diff - half, diff + half)


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
  Welch-Satterthwaite degrees of freedom for the two components, and
      [r exp(-t se), r exp(+t se)],  t = t_{(1+c)/2, df}.
  The log scale keeps the interval positive and symmetric in the sense that
  swapping a and b inverts it. Needs two values per group and positive
  means (else NaN); zero spread in both groups gives the point [r, r].
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
  se = math.sqrt(math.fsum(parts))
  if se == 0:
    return Ratio(r, r, r, NAN)
  df = _welch_df(parts, [len(a), len(b)])
  half = t_ppf(0.5 + confidence / 2.0, df) * se
  return Ratio(r, r * math.exp(-half), r * math.exp(half), df)
