"""Learning-rate and momentum schedules, as optax schedules.

Every builder returns pure, jittable functions of the step (`optax.Schedule`),
so the value used for the i-th batch (0-based) is `schedule(i)`, the step
count lives in the optimizer state (`optax.inject_hyperparams`) and a resumed
run continues the schedule exactly.

Builders:

* `one_cycle`: PyTorch's `torch.optim.lr_scheduler.OneCycleLR`, same argument
  names, defaults and the same value step for step (two- and three-phase,
  'cos' and 'linear' annealing, momentum cycled 0.95 -> 0.85 -> 0.95 by
  default, `total_steps` or `epochs` x `steps_per_epoch`).
* `cyclical` / `cyclical_momentum`: Smith's cyclical learning rate (CLR,
  arXiv:1506.01186) in its 'triangular', 'triangular2' and 'exp_range' modes,
  and the momentum cycled inversely to it (as PyTorch's `CyclicLR`).
* `warmup_piecewise`, `warmup_decay`, `warmup_constant`: the baselines, a
  linear warm-up joined to piecewise-constant decay, a decay (cosine, or
  the budget literature's baselines: linear to zero, Li, Yumer & Ramanan
  2020, "Budgeted Training", the strongest budget-aware schedule they found,
  and REX, Chen, Wolfe & Kyrillidis 2021, which ranks above linear and
  one-cycle in most of their settings) or a constant; `inverse_momentum`
  cycles momentum inversely to any of them.

Construction: optax.join_schedules joins the phases (warm-up, OneCycleLR
phases, decay); optax.linear_schedule, piecewise_constant_schedule and
constant_schedule are used as they are. The annealing phases (one-cycle, the
cosine, linear and REX decays) are small pure functions of our own because
optax's cannot express PyTorch's fractional phase ends (pct_start *
total_steps - 1) and because float32 `1 + cos(x)` near x = pi (and `1 - t /
T` near t = T, as in optax.linear_schedule) loses the tiny final learning
rates; ours keep every value within float32 rounding of the float64 formula
(relative error < 1e-6 up to 80k steps).

`config.default_schedule_config()` is the `config.schedule` sub-config (plain
data in the schema); `validate()` checks it and `create()` turns it into
`(lr_fn, momentum_fn)`. Durations in the config
(`step_size`, `warmup`, `boundaries`) are in `schedule.unit` and become steps
through `superconv.config.steps`, the project's one conversion helper.

`key_points` and `describe` name a schedule's landmarks; the program that
prints and plots them is `superconv.schedules_main` (no data is loaded):

  python -m superconv.schedules --config configs/default.py --out schedule.png
"""

from __future__ import annotations

from collections.abc import Sequence
import math

import jax.numpy as jnp
import numpy as np
import optax

from superconv import config as config_lib

SCHEDULE_NAMES = (
  "one_cycle",
  "cyclical",
  "piecewise",
  "cosine",
  "constant",
  "linear",
  "rex",
)
UNITS = ("steps", "epochs", "fraction")
ANNEAL_STRATEGIES = ("cos", "linear")
CLR_MODES = ("triangular", "triangular2", "exp_range")


class ScheduleError(ValueError):
  """A schedule setting that cannot work; the message names the key."""


def _check(condition: bool, key: str, message: str) -> None:
  if not condition:
    raise ScheduleError(f"{key}: {message}")


# ---------------------------------------------------------------------------
# Exact step arithmetic in float32.
# ---------------------------------------------------------------------------
# A schedule sees the int32 step count. Positions inside a phase are computed
# as (integer part, done in int32 and exact) + (fractional part, small), so the
# fraction of a phase is accurate to float32 rounding for any step below 2**24,
# not only near step 0.


def _offset(step, value: float):
  """float32 of `step + value` without losing the fraction of `value`."""
  whole = math.floor(value)
  frac = value - whole
  step = jnp.asarray(step)
  if jnp.issubdtype(step.dtype, jnp.integer):
    return (step + whole).astype(jnp.float32) + jnp.float32(frac)
  return step.astype(jnp.float32) + jnp.float32(value)


def _anneal_weights(done, left, length: float, strategy: str):
  """Weights (w_start, w_end) of a phase's start and end values.

  `done` = steps since the phase start and `left` = steps to the phase end
  (both float32, done + left = length). The value is
  start * w_start + end * w_end, a sum of two non-negative terms, so it keeps
  float32 relative accuracy even where it approaches a tiny end value.
  'linear': w_start = 1 - pct, w_end = pct.
  'cos':    w_start = (1 + cos(pi pct)) / 2 = cos^2(pi pct / 2), w_end = sin^2;
            evaluated from whichever of pct and 1 - pct is smaller.
  'rex':    w_start = (1 - pct) / (1/2 + (1 - pct) / 2) (the REX profile),
            w_end = 1 - w_start = pct / (1 + (1 - pct)).
  """
  done = jnp.clip(done, 0.0, length)
  left = jnp.clip(left, 0.0, length)
  pct = done / jnp.float32(length)
  rest = left / jnp.float32(length)
  if strategy == "linear":
    return rest, pct
  if strategy == "rex":
    return 2 * rest / (1 + rest), pct / (1 + rest)
  half_pi = jnp.float32(math.pi / 2)
  first_half = pct <= 0.5
  w_start = jnp.where(
    first_half, jnp.cos(half_pi * pct) ** 2, jnp.sin(half_pi * rest) ** 2
  )
  w_end = jnp.where(
    first_half, jnp.sin(half_pi * pct) ** 2, jnp.cos(half_pi * rest) ** 2
  )
  return w_start, w_end


def _phase(
  start_value: float,
  end_value: float,
  start_step: float,
  end_step: float,
  strategy: str,
  origin: int,
) -> optax.Schedule:
  """One OneCycleLR phase, as a schedule of the step counted from `origin`.

  PyTorch: pct = (step - start_step) / (end_step - start_step) and the value
  anneals from start_value (pct = 0) to end_value (pct = 1). `origin` is the
  first step of the phase (join_schedules passes step - origin).
  """
  length = end_step - start_step
  a, b = jnp.float32(start_value), jnp.float32(end_value)

  def schedule(local_step):
    done = _offset(local_step, origin - start_step)
    left = -_offset(local_step, origin - end_step)
    w_start, w_end = _anneal_weights(done, left, length, strategy)
    return a * w_start + b * w_end

  return schedule


# ---------------------------------------------------------------------------
# One-cycle (PyTorch OneCycleLR).
# ---------------------------------------------------------------------------


def _check_one_cycle(
  *,
  total_steps,
  max_lr,
  pct_start,
  anneal_strategy,
  div_factor,
  final_div_factor,
  three_phase,
  cycle_momentum,
  base_momentum,
  max_momentum,
  prefix: str = "",
) -> None:
  p = prefix
  _check(
    total_steps >= 2,
    f"{p}total_steps" if not p else "num_steps",
    f"one_cycle needs at least 2 steps, got {total_steps}",
  )
  _check(
    max_lr > 0 and math.isfinite(max_lr),
    f"{p}max_lr",
    f"must be > 0, got {max_lr}",
  )
  _check(
    0 < pct_start < 1, f"{p}pct_start", f"must be in (0, 1), got {pct_start}"
  )
  _check(
    anneal_strategy in ANNEAL_STRATEGIES,
    f"{p}anneal_strategy",
    f"unknown {anneal_strategy!r}; valid: {', '.join(ANNEAL_STRATEGIES)}",
  )
  _check(div_factor > 0, f"{p}div_factor", f"must be > 0, got {div_factor}")
  _check(
    final_div_factor > 0,
    f"{p}final_div_factor",
    f"must be > 0, got {final_div_factor}",
  )
  _check(
    pct_start * total_steps > 1,
    f"{p}pct_start",
    f"{pct_start} of {total_steps} steps leaves no rising phase"
    f" (pct_start * total_steps must be > 1)",
  )
  if three_phase:
    _check(
      2 * pct_start * total_steps - 2 < total_steps - 1,
      f"{p}pct_start",
      f"{pct_start} of {total_steps} steps leaves no third phase with"
      f" three_phase=True (need pct_start < (total_steps + 1) /"
      f" (2 total_steps) = {(total_steps + 1) / (2 * total_steps):.4f})",
    )
  if cycle_momentum:
    _check_momenta(base_momentum, max_momentum, p)


def _check_momenta(base_momentum, max_momentum, prefix: str) -> None:
  _check(
    0 <= base_momentum < 1,
    f"{prefix}base_momentum",
    f"must be in [0, 1), got {base_momentum}",
  )
  _check(
    0 <= max_momentum < 1,
    f"{prefix}max_momentum",
    f"must be in [0, 1), got {max_momentum}",
  )
  _check(
    base_momentum <= max_momentum,
    f"{prefix}base_momentum",
    f"{base_momentum} exceeds max_momentum {max_momentum}",
  )


def _one_cycle_length(
  total_steps,
  epochs,
  steps_per_epoch,
  *,
  prefix: str = "",
  mismatch: str = "",
) -> int:
  """OneCycleLR's cycle length: total_steps, or epochs * steps_per_epoch.

  As PyTorch, either form may be given; unlike PyTorch (which then ignores
  epochs), both given must agree. `mismatch` ends the message when they do
  not (default: for the function's total_steps argument).
  """
  p = prefix
  if epochs is None and steps_per_epoch is None:
    _check(
      total_steps is not None,
      f"{p}total_steps",
      "give total_steps, or epochs and steps_per_epoch (as OneCycleLR)",
    )
    return total_steps
  for key, value in (("epochs", epochs), ("steps_per_epoch", steps_per_epoch)):
    _check(
      isinstance(value, int) and not isinstance(value, bool) and value > 0,
      f"{p}{key}",
      f"must be a positive integer (OneCycleLR's epochs x steps_per_epoch"
      f" form), got {value!r}",
    )
  n = epochs * steps_per_epoch
  _check(
    total_steps is None or total_steps == n,
    f"{p}epochs",
    f"{epochs} epochs x {steps_per_epoch} steps_per_epoch = {n} steps, but "
    + (
      mismatch
      or f"total_steps is {total_steps}; give one form or make them agree"
    ),
  )
  return n


def _one_cycle_phases(total_steps: int, pct_start: float, three_phase: bool):
  """PyTorch's phase end steps (floats, inclusive ends)."""
  if three_phase:
    return [
      float(pct_start * total_steps) - 1,
      float(2 * pct_start * total_steps) - 2,
      total_steps - 1,
    ]
  return [float(pct_start * total_steps) - 1, total_steps - 1]


def _join_phases(
  values: Sequence[tuple[float, float]], ends: Sequence[float], strategy: str
) -> optax.Schedule:
  """optax.join_schedules over PyTorch phases (phase i holds step <= end_i)."""
  schedules, boundaries = [], []
  start = 0.0
  origin = 0
  for (v0, v1), end in zip(values, ends):
    schedules.append(_phase(v0, v1, start, end, strategy, origin))
    origin = math.floor(end) + 1  # First step past this phase.
    boundaries.append(origin)
    start = end
  return optax.join_schedules(schedules, boundaries[:-1])


def one_cycle(
  total_steps: int | None,
  max_lr: float,
  *,
  epochs: int | None = None,
  steps_per_epoch: int | None = None,
  pct_start: float = 0.3,
  anneal_strategy: str = "cos",
  div_factor: float = 25.0,
  final_div_factor: float = 1e4,
  three_phase: bool = False,
  cycle_momentum: bool = True,
  base_momentum: float = 0.85,
  max_momentum: float = 0.95,
) -> tuple[optax.Schedule, optax.Schedule | None]:
  """The 1cycle policy, exactly as PyTorch's `OneCycleLR`.

  Same argument names, defaults and values: `lr_schedule(i)` is the learning
  rate PyTorch's optimizer uses for the i-th batch (0-based), for i in
  [0, total_steps); likewise `momentum_schedule(i)`. As in PyTorch the
  length is `total_steps` or, with total_steps None, `epochs *
  steps_per_epoch`; both given must agree (ScheduleError naming `epochs`
  otherwise). Phase i covers the steps
  up to (inclusive) its end step, with PyTorch's end steps
  pct_start * total_steps - 1 [, 2 * pct_start * total_steps - 2],
  total_steps - 1; inside a phase pct = (step - start) / (end - start).

  * two-phase: initial_lr = max_lr / div_factor -> max_lr -> min_lr =
    initial_lr / final_div_factor; momentum max -> base -> max.
  * three_phase: initial_lr -> max_lr -> initial_lr -> min_lr; momentum
    max -> base -> max, then held at max_momentum.

  Past total_steps - 1 (where PyTorch raises) the values are held at the end
  point of the last phase.

  Returns:
    (lr_schedule, momentum_schedule); momentum_schedule is None when
    cycle_momentum is False (the optimizer's own momentum then applies).
  """
  total_steps = _one_cycle_length(total_steps, epochs, steps_per_epoch)
  _check_one_cycle(
    total_steps=total_steps,
    max_lr=max_lr,
    pct_start=pct_start,
    anneal_strategy=anneal_strategy,
    div_factor=div_factor,
    final_div_factor=final_div_factor,
    three_phase=three_phase,
    cycle_momentum=cycle_momentum,
    base_momentum=base_momentum,
    max_momentum=max_momentum,
  )
  initial_lr = max_lr / div_factor
  min_lr = initial_lr / final_div_factor
  ends = _one_cycle_phases(total_steps, pct_start, three_phase)
  if three_phase:
    lrs = [(initial_lr, max_lr), (max_lr, initial_lr), (initial_lr, min_lr)]
    moms = [
      (max_momentum, base_momentum),
      (base_momentum, max_momentum),
      (max_momentum, max_momentum),
    ]
  else:
    lrs = [(initial_lr, max_lr), (max_lr, min_lr)]
    moms = [(max_momentum, base_momentum), (base_momentum, max_momentum)]
  lr_schedule = _join_phases(lrs, ends, anneal_strategy)
  momentum_schedule = (
    _join_phases(moms, ends, anneal_strategy) if cycle_momentum else None
  )
  return lr_schedule, momentum_schedule


# ---------------------------------------------------------------------------
# Cyclical learning rate (Smith 2015) and its momentum counterpart.
# ---------------------------------------------------------------------------


def _check_cyclical(
  *, base_lr, max_lr, step_size, mode, gamma, prefix: str = ""
) -> None:
  p = prefix
  _check(
    max_lr > 0 and math.isfinite(max_lr),
    f"{p}max_lr",
    f"must be > 0, got {max_lr}",
  )
  _check(
    0 <= base_lr <= max_lr,
    f"{p}base_lr",
    f"must be in [0, max_lr={max_lr}], got {base_lr}",
  )
  _check(
    step_size > 0,
    f"{p}step_size",
    f"must be at least one step, got {step_size} steps",
  )
  _check(
    mode in CLR_MODES,
    f"{p}mode",
    f"unknown {mode!r}; valid: {', '.join(CLR_MODES)}",
  )
  _check(gamma > 0, f"{p}gamma", f"must be > 0, got {gamma}")


def _clr_height(step_size: float, mode: str, gamma: float):
  """h(i) = max(0, 1 - x) * scale(i) in [0, 1] (Smith 2015, Section 3.1).

  cycle = floor(1 + i / (2 step_size)), x = |i / step_size - 2 cycle + 1|;
  scale = 1 (triangular), 1 / 2**(cycle - 1) (triangular2), gamma**i
  (exp_range).
  """
  integral = float(step_size).is_integer()
  log_gamma = math.log(gamma) if gamma > 0 else 0.0
  ss = int(step_size) if integral else float(step_size)

  def height(step):
    step = jnp.asarray(step)
    if integral and jnp.issubdtype(step.dtype, jnp.integer):
      # Exact in int32: position inside the cycle, then one division.
      cycle = step // (2 * ss) + 1
      pos = step - (cycle - 1) * (2 * ss)  # in [0, 2 ss)
      x = jnp.abs(pos - ss).astype(jnp.float32) / jnp.float32(ss)
    else:
      i = step.astype(jnp.float32)
      cycle = jnp.floor(1 + i / (2 * ss))
      x = jnp.abs(i / ss - 2 * cycle + 1)
    h = jnp.maximum(0.0, 1.0 - x)
    if mode == "triangular2":
      h = h / jnp.exp2(cycle.astype(jnp.float32) - 1)
    elif mode == "exp_range":
      # gamma**i as exp(i log gamma), log taken in float64: float32 gamma
      # raised to a large i would amplify its rounding error i times.
      h = h * jnp.exp(step.astype(jnp.float32) * jnp.float32(log_gamma))
    return h

  return height


def cyclical(
  base_lr: float,
  max_lr: float,
  step_size: float,
  mode: str = "triangular",
  gamma: float = 1.0,
) -> optax.Schedule:
  """Smith's cyclical learning rate: base_lr + (max_lr - base_lr) * h(i).

  `step_size` is the half-cycle in steps (the LR rises for step_size steps,
  then falls for step_size steps). The paper's runs: triangular 0.1 -> 3.0
  with step_size 5,000 over 10,000 steps (peak 3.0 at step 5,000).
  """
  _check_cyclical(
    base_lr=base_lr, max_lr=max_lr, step_size=step_size, mode=mode, gamma=gamma
  )
  height = _clr_height(step_size, mode, gamma)
  lo, amp = jnp.float32(base_lr), jnp.float32(max_lr - base_lr)
  return lambda step: lo + amp * height(step)


def cyclical_momentum(
  base_momentum: float,
  max_momentum: float,
  step_size: float,
  mode: str = "triangular",
  gamma: float = 1.0,
) -> optax.Schedule:
  """Momentum cycled inversely to `cyclical`.

  max_momentum - (max - base) * h(i).

  As PyTorch's CyclicLR with cycle_momentum=True: max_momentum where the LR is
  at base_lr, base_momentum where it is at max_lr.
  """
  _check_momenta(base_momentum, max_momentum, "")
  _check(step_size > 0, "step_size", f"must be > 0, got {step_size}")
  _check(
    mode in CLR_MODES,
    "mode",
    f"unknown {mode!r}; valid: {', '.join(CLR_MODES)}",
  )
  _check(gamma > 0, "gamma", f"must be > 0, got {gamma}")
  height = _clr_height(step_size, mode, gamma)
  hi, amp = jnp.float32(max_momentum), jnp.float32(max_momentum - base_momentum)
  return lambda step: hi - amp * height(step)


# ---------------------------------------------------------------------------
# Baselines: linear warm-up joined to piecewise-constant, cosine or constant.
# ---------------------------------------------------------------------------


def _with_warmup(
  main: optax.Schedule,
  peak_lr: float,
  warmup_steps: int,
  warmup_start_factor: float,
) -> optax.Schedule:
  """Linear from warmup_start_factor * peak (step 0) to peak (step
  warmup_steps), then `main` evaluated at step - warmup_steps."""
  if warmup_steps <= 0:
    return main
  warm = optax.linear_schedule(
    warmup_start_factor * peak_lr, peak_lr, warmup_steps
  )
  return optax.join_schedules([warm, main], [warmup_steps])


def _check_warmup(
  peak_lr,
  warmup_steps,
  warmup_start_factor,
  total_steps,
  prefix="",
  warmup_key="warmup_steps",
) -> None:
  p = prefix
  _check(
    peak_lr > 0 and math.isfinite(peak_lr),
    f"{p}max_lr",
    f"must be > 0, got {peak_lr}",
  )
  _check(
    warmup_steps >= 0,
    f"{p}{warmup_key}",
    f"must be >= 0, got {warmup_steps} steps",
  )
  if total_steps is not None:
    _check(
      warmup_steps < total_steps,
      f"{p}{warmup_key}",
      f"{warmup_steps} steps is not shorter than the run ({total_steps} steps)",
    )
  _check(
    0 <= warmup_start_factor <= 1,
    f"{p}warmup_start_factor",
    f"must be in [0, 1], got {warmup_start_factor}",
  )


def _check_boundaries(
  boundaries, decay_factors, warmup_steps, total_steps, prefix=""
) -> None:
  p = prefix
  _check(
    len(decay_factors) == len(boundaries),
    f"{p}decay_factors",
    f"has {len(decay_factors)} entries for {len(boundaries)} boundaries;"
    " give one factor per boundary",
  )
  previous = None
  for b in boundaries:
    if total_steps is not None:
      _check(
        b < total_steps,
        f"{p}boundaries",
        f"{b} is past the end of the run ({total_steps} steps)"
        if b > total_steps
        else f"{b} is the end of the run ({total_steps} steps), so it never"
        " applies",
      )
    _check(
      b > warmup_steps,
      f"{p}boundaries",
      f"{b} is not after the warm-up ({warmup_steps} steps)"
      if warmup_steps
      else f"{b} must be > 0",
    )
    _check(
      previous is None or b > previous,
      f"{p}boundaries",
      f"must be strictly increasing, got {previous} then {b}",
    )
    previous = b
  for f in decay_factors:
    _check(f > 0, f"{p}decay_factors", f"must be > 0, got {f}")


def warmup_piecewise(
  peak_lr: float,
  boundaries: Sequence[int],
  decay_factors: Sequence[float],
  *,
  warmup_steps: int = 0,
  warmup_start_factor: float = 0.1,
  total_steps: int | None = None,
) -> optax.Schedule:
  """Linear warm-up, then piecewise constant: multiplied by decay_factors[k]
  from step boundaries[k] on (absolute steps of the run, as Caffe's multistep
  and PyTorch's MultiStepLR). He et al.: peak 0.1, boundaries (32000, 48000),
  factors (0.1, 0.1)."""
  boundaries = [int(b) for b in boundaries]
  _check_warmup(peak_lr, warmup_steps, warmup_start_factor, total_steps)
  _check_boundaries(boundaries, decay_factors, warmup_steps, total_steps)
  main = optax.piecewise_constant_schedule(
    peak_lr,
    {b - warmup_steps: float(f) for b, f in zip(boundaries, decay_factors)},
  )
  return _with_warmup(main, peak_lr, warmup_steps, warmup_start_factor)


# Baselines that decay to final_lr_factor x max_lr: schedule.name ->
# `_anneal_weights` strategy.
_DECAYS = {"cosine": "cos", "linear": "linear", "rex": "rex"}


def warmup_decay(
  peak_lr: float,
  total_steps: int,
  shape: str,
  *,
  warmup_steps: int = 0,
  warmup_start_factor: float = 0.1,
  final_lr_factor: float = 0.0,
) -> optax.Schedule:
  """Linear warm-up, then a decay to final_lr_factor * peak_lr.

  The warm-up rises linearly from warmup_start_factor * peak_lr (step 0) to
  peak_lr (step W = warmup_steps); the decay then runs along z = (t - W) /
  (T - W), the fraction of the decay done, T = total_steps, and reaches
  f = final_lr_factor * peak_lr at step T, the end of the run (the last
  batch, T - 1, is one step before it, as optax's
  warmup_cosine_decay_schedule and linear_schedule with transition_steps
  T - W): lr = f + (peak_lr - f) * profile(z), with `shape`

  * "cosine": (1 + cos(pi z)) / 2, optax.cosine_decay_schedule's.
  * "linear": 1 - z, the budget literature's baseline: Li, Yumer & Ramanan
    2020, "Budgeted Training: Rethinking Deep Neural Network Training Under
    Resource Constraints" (ICLR 2020), lr(t) = lr_0 (1 - t / T) for a
    budget of T steps, the schedule that did best under a fixed budget in
    their study.
  * "rex": (1 - z) / (1/2 + 1/2 (1 - z)), the reflected exponential (REX)
    profile of Chen, Wolfe & Kyrillidis 2021, "REX: Revisiting Budgeted
    Training with an Improved Schedule" (arXiv:2107.04197, MLSys 2022),
    sampled every iteration with z = t / T and decaying to 0 as in the
    paper when f = 0; it ranks above linear and one-cycle in most of their
    settings. It is 1/2 at z = 2/3 (linear: at z = 1/2), staying high for
    longer.
  """
  _check(
    shape in _DECAYS,
    "shape",
    f"unknown {shape!r}; valid: {', '.join(_DECAYS)}",
  )
  _check_warmup(peak_lr, warmup_steps, warmup_start_factor, total_steps)
  _check(
    0 <= final_lr_factor <= 1,
    "final_lr_factor",
    f"must be in [0, 1], got {final_lr_factor}",
  )
  # Evaluated as _phase does it, from the steps done and the steps left:
  # float32's 1 + cos(x) near x = pi (optax.cosine_decay_schedule) or
  # 1 - t / D near t = D (optax.linear_schedule) loses the last steps' tiny
  # values (15% off at the last step of a 10k-step cosine run); this keeps
  # them to float32 precision.
  main = _phase(
    peak_lr,
    final_lr_factor * peak_lr,
    0.0,
    float(total_steps - warmup_steps),
    _DECAYS[shape],
    0,
  )
  return _with_warmup(main, peak_lr, warmup_steps, warmup_start_factor)


def warmup_constant(
  peak_lr: float, *, warmup_steps: int = 0, warmup_start_factor: float = 0.1
) -> optax.Schedule:
  """Linear warm-up, then constant peak_lr."""
  _check_warmup(peak_lr, warmup_steps, warmup_start_factor, None)
  return _with_warmup(
    optax.constant_schedule(peak_lr), peak_lr, warmup_steps, warmup_start_factor
  )


def inverse_momentum(
  lr_schedule: optax.Schedule,
  lr_low: float,
  lr_high: float,
  base_momentum: float,
  max_momentum: float,
) -> optax.Schedule:
  """Momentum cycled inversely to any LR schedule.

  Linear in the LR: max_momentum where lr <= lr_low, base_momentum where
  lr >= lr_high (Smith 2018: decrease momentum while the LR rises).
  """
  _check_momenta(base_momentum, max_momentum, "")
  _check(
    lr_high > lr_low, "lr_high", f"must exceed lr_low ({lr_low}), got {lr_high}"
  )
  lo, span = jnp.float32(lr_low), jnp.float32(lr_high - lr_low)
  hi_m = jnp.float32(max_momentum)
  amp = jnp.float32(max_momentum - base_momentum)

  def schedule(step):
    t = jnp.clip((lr_schedule(step) - lo) / span, 0.0, 1.0)
    return hi_m - amp * t

  return schedule


# ---------------------------------------------------------------------------
# The config.schedule sub-config (its fields: config.default_schedule_config).
# ---------------------------------------------------------------------------


def _durations(s, *, steps_per_epoch: int, total_steps: int) -> dict:
  """The config's durations in steps (validated)."""
  _check(
    s.unit in UNITS,
    "schedule.unit",
    f"unknown {s.unit!r}; valid: {', '.join(UNITS)}",
  )

  def to_steps(value):
    return config_lib.steps(
      value, s.unit, steps_per_epoch=steps_per_epoch, total_steps=total_steps
    )

  try:
    boundaries = [to_steps(b) for b in s.boundaries]
  except TypeError:
    raise ScheduleError(
      f"schedule.boundaries: must be a sequence of numbers,"
      f" got {s.boundaries!r}"
    ) from None
  return dict(
    step_size=to_steps(s.step_size),
    warmup=to_steps(s.warmup),
    boundaries=boundaries,
  )


def cycles_momentum(s) -> bool:
  """Whether `config.schedule` cycles momentum: schedule.cycle_momentum, or
  when it is None (the default) True for one_cycle only, as OneCycleLR."""
  if s.cycle_momentum is None:
    return s.name == "one_cycle"
  return bool(s.cycle_momentum)


def _lr_range(s, warmup: int) -> tuple[float, float]:
  """(lowest, highest) LR of a baseline schedule, for inverse momentum."""
  values = [s.max_lr]
  if warmup > 0:
    values.append(s.warmup_start_factor * s.max_lr)
  if s.name == "piecewise":
    values.extend(s.max_lr * np.cumprod(list(s.decay_factors) or [1.0]))
  elif s.name in _DECAYS:
    values.append(s.final_lr_factor * s.max_lr)
  return float(min(values)), float(max(values))


def validate(s, *, steps_per_epoch: int, total_steps: int) -> None:
  """Raises ScheduleError (one line, naming the key) for a config that
  cannot work with this run length."""
  _check(
    s.name in SCHEDULE_NAMES,
    "schedule.name",
    f"unknown {s.name!r}; valid: {', '.join(SCHEDULE_NAMES)}",
  )
  _check(total_steps >= 1, "num_steps", f"gives {total_steps} steps")
  d = _durations(s, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  p = "schedule."
  cycle_m = cycles_momentum(s)
  if s.name == "one_cycle":
    if s.epochs or s.steps_per_epoch:
      spe = s.steps_per_epoch or steps_per_epoch
      _one_cycle_length(
        total_steps,
        s.epochs,
        spe,
        prefix=p,
        mismatch=f"the run lasts {total_steps} steps (num_steps, or"
        f" num_epochs x the data's {steps_per_epoch} steps per epoch); the"
        " cycle spans the run, so make them agree",
      )
    _check_one_cycle(
      total_steps=total_steps,
      max_lr=s.max_lr,
      pct_start=s.pct_start,
      anneal_strategy=s.anneal_strategy,
      div_factor=s.div_factor,
      final_div_factor=s.final_div_factor,
      three_phase=s.three_phase,
      cycle_momentum=cycle_m,
      base_momentum=s.base_momentum,
      max_momentum=s.max_momentum,
      prefix=p,
    )
    return
  if s.name == "cyclical":
    _check_cyclical(
      base_lr=s.base_lr,
      max_lr=s.max_lr,
      step_size=d["step_size"],
      mode=s.mode,
      gamma=s.gamma,
      prefix=p,
    )
    if cycle_m:
      _check_momenta(s.base_momentum, s.max_momentum, p)
    return
  _check_warmup(
    s.max_lr,
    d["warmup"],
    s.warmup_start_factor,
    total_steps,
    prefix=p,
    warmup_key="warmup",
  )
  if s.name == "piecewise":
    _check_boundaries(
      d["boundaries"], list(s.decay_factors), d["warmup"], total_steps, prefix=p
    )
  elif s.name in _DECAYS:
    _check(
      0 <= s.final_lr_factor <= 1,
      f"{p}final_lr_factor",
      f"must be in [0, 1], got {s.final_lr_factor}",
    )
  if cycle_m:
    _check_momenta(s.base_momentum, s.max_momentum, p)
    low, high = _lr_range(s, d["warmup"])
    _check(
      high > low,
      f"{p}cycle_momentum",
      f"the {s.name!r} LR never changes here, so there is nothing to"
      " cycle momentum against; set it to False",
    )


def create(
  s, *, momentum: float, steps_per_epoch: int, total_steps: int
) -> tuple[optax.Schedule, optax.Schedule]:
  """(lr_fn, momentum_fn) for `config.schedule`; `momentum` (config.momentum)
  is the constant momentum used when the schedule does not cycle it
  (`cycles_momentum`)."""
  validate(s, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  d = _durations(s, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  constant_m = optax.constant_schedule(momentum)
  cycle_m = cycles_momentum(s)
  if s.name == "one_cycle":
    lr_fn, m_fn = one_cycle(
      total_steps,
      s.max_lr,
      pct_start=s.pct_start,
      anneal_strategy=s.anneal_strategy,
      div_factor=s.div_factor,
      final_div_factor=s.final_div_factor,
      three_phase=s.three_phase,
      cycle_momentum=cycle_m,
      base_momentum=s.base_momentum,
      max_momentum=s.max_momentum,
    )
    return lr_fn, m_fn or constant_m
  if s.name == "cyclical":
    lr_fn = cyclical(s.base_lr, s.max_lr, d["step_size"], s.mode, s.gamma)
    if not cycle_m:
      return lr_fn, constant_m
    return lr_fn, cyclical_momentum(
      s.base_momentum, s.max_momentum, d["step_size"], s.mode, s.gamma
    )
  warm = dict(
    warmup_steps=d["warmup"], warmup_start_factor=s.warmup_start_factor
  )
  if s.name == "piecewise":
    lr_fn = warmup_piecewise(
      s.max_lr,
      d["boundaries"],
      list(s.decay_factors),
      total_steps=total_steps,
      **warm,
    )
  elif s.name in _DECAYS:
    lr_fn = warmup_decay(
      s.max_lr,
      total_steps,
      s.name,
      final_lr_factor=s.final_lr_factor,
      **warm,
    )
  else:
    lr_fn = warmup_constant(s.max_lr, **warm)
  if not cycle_m:
    return lr_fn, constant_m
  low, high = _lr_range(s, d["warmup"])
  return lr_fn, inverse_momentum(
    lr_fn, low, high, s.base_momentum, s.max_momentum
  )


# ---------------------------------------------------------------------------
# Key points and a one-line summary (for superconv.schedules_main's table
# and plot).
# ---------------------------------------------------------------------------

_MAX_CYCLE_POINTS = 8  # Cyclical: list at most this many half-cycle ends.


def key_points(
  s,
  *,
  steps_per_epoch: int,
  total_steps: int,
  lr_values: np.ndarray | None = None,
) -> list[tuple[str, int]]:
  """[(label, step)] of the schedule's key points, sorted by step: the first
  step, the peak (first step of highest LR), every phase end or boundary, and
  the last step."""
  d = _durations(s, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
  points: list[tuple[str, int]] = [("start", 0)]
  if lr_values is not None:
    points.append(("peak", int(np.argmax(lr_values))))
  if s.name == "one_cycle":
    ends = _one_cycle_phases(total_steps, s.pct_start, s.three_phase)
    for k, end in enumerate(ends[:-1], 1):
      points.append((f"phase {k} end", math.floor(end)))
  elif s.name == "cyclical":
    ss = d["step_size"]
    for k in range(1, _MAX_CYCLE_POINTS + 1):
      if k * ss >= total_steps:
        break
      cycle = (k + 1) // 2
      points.append((f"cycle {cycle} {'top' if k % 2 else 'end'}", k * ss))
  else:
    if d["warmup"] > 0:
      points.append(("warm-up end", d["warmup"]))
    if s.name == "piecewise":
      for k, b in enumerate(d["boundaries"], 1):
        points.append((f"boundary {k}", b))
  points.append(("last", total_steps - 1))
  merged: dict[int, list[str]] = {}
  for label, step in points:
    step = min(max(step, 0), total_steps - 1)
    merged.setdefault(step, [])
    if label not in merged[step]:
      merged[step].append(label)
  return [(", ".join(labels), step) for step, labels in sorted(merged.items())]


def describe(s) -> str:
  """One-line summary of a schedule config."""
  if s.name == "one_cycle":
    text = (
      f"one_cycle ({'three' if s.three_phase else 'two'}-phase,"
      f" {s.anneal_strategy}) max_lr {s.max_lr:g}, pct_start"
      f" {s.pct_start:.4g}, div {s.div_factor:g}, final_div"
      f" {s.final_div_factor:g}"
    )
  elif s.name == "cyclical":
    text = (
      f"cyclical ({s.mode}) {s.base_lr:g} -> {s.max_lr:g}, step_size"
      f" {s.step_size:g} {s.unit}"
    )
  else:
    text = f"{s.name} max_lr {s.max_lr:g}"
    if s.warmup:
      text += f", warm-up {s.warmup:g} {s.unit} from {s.warmup_start_factor:g}x"
    if s.name == "piecewise":
      text += (
        f", x{tuple(float(f) for f in s.decay_factors)} at"
        f" {tuple(s.boundaries)} {s.unit}"
      )
    if s.name in _DECAYS:
      text += f", to {s.final_lr_factor:g} x max_lr at the end"
  if cycles_momentum(s):
    text += f"; momentum {s.max_momentum:g} <-> {s.base_momentum:g}"
  return text


if __name__ == "__main__":
  # The command's old name: the program is superconv.schedules_main.
  import runpy

  runpy.run_module("superconv.schedules_main", run_name="__main__")
