r"""Learning-rate range test: how to pick the LRs of a one-cycle run.

  python -m superconv.lr_range_test --config configs/lr_range_test.py \
      --workdir runs/lr_range_test \
      --config.dataset=folder:../shared/data/cifar10-jpeg.tar.xz
  python -m superconv.lr_range_test \
      --config configs/lr_range_test.py:exponential --workdir runs/lr_find

Trains a fresh model (the same initialization, data order, augmentation,
optimizer and train step as `superconv.main` with the same config and seed)
while the learning rate rises every step from `range_test.min_lr` (first
step, exactly) to `range_test.max_lr` (last step, exactly):

* `linear` (Smith, "Cyclical Learning Rates", arXiv:1506.01186, and
  "Super-Convergence", arXiv:1708.07120): the LR rises linearly; test
  accuracy and loss are measured every `range_test.eval_every` steps on a
  fixed held-out subset of the test split (of the validation split when
  config.validation_size > 0, as in training), training loss every step.
* `exponential` (fastai `lr_find`, pytorch-lr-finder): the LR rises
  geometrically; training loss every step.

The training loss is smoothed with fastai's bias-corrected EMA; the test
stops early when the smoothed loss exceeds `diverge_factor` times its
minimum ('diverged') or a loss is NaN/Inf ('nonfinite'); otherwise it runs
all steps ('completed').

Suggestions (pure functions of (lrs, losses) arrays, see `suggest`):
`steepest`, `min_loss_div_10`, `valley` (fastai) and, when accuracy was
measured, `smith`; `recommend` turns one of them into the (min_lr, max_lr)
pair of a one-cycle/cyclical run. `apply_to_config` copies a saved
recommendation into a training config.

Outputs in the workdir (no checkpoint is written): `lr_range_test.jsonl`
(one row per step), `lr_range_test.json` (settings, stop reason,
suggestions, recommendation) and `lr_range_test.png`.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import json
import logging
import math
import os
import sys
import tempfile
import time
import types
from typing import Any

import ml_collections
import numpy as np

from superconv import storage

log = logging.getLogger("superconv")

MODES = ("linear", "exponential")
STOP_REASONS = ("completed", "diverged", "nonfinite")
EVAL_SUBSETS = ("first", "random")
SUGGESTIONS = ("steepest", "min_loss_div_10", "valley", "smith")
JSONL_NAME = "lr_range_test.jsonl"
JSON_NAME = "lr_range_test.json"
PNG_NAME = "lr_range_test.png"

# min_lr = max_lr / DIV_FACTOR[mode] when range_test.div_factor is 0:
# linear follows Smith's CLR rule of thumb (base_lr = 1/3 or 1/4 of max_lr),
# exponential follows fastai / PyTorch OneCycleLR (div_factor = 25).
DIV_FACTOR = {"linear": 4.0, "exponential": 25.0}
# The suggestion a mode recommends when range_test.recommend is "".
DEFAULT_RULE = {"linear": "smith", "exponential": "min_loss_div_10"}


class RangeTestError(ValueError):
  """A range-test setting or file that cannot work; one line naming the key."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


def _check(condition: bool, key: str, message: str) -> None:
  if not condition:
    raise RangeTestError(f"{key}: {message}")


# ============================================================================
# The config.range_test sub-config
# ============================================================================


def default_config(mode: str = "linear") -> ml_collections.ConfigDict:
  """The `config.range_test` sub-config with the presets of `mode`.

  linear: Smith's accuracy test, 0.01 -> 1.5 over 300 steps with 1000
  held-out test images every 25 steps (sized for ResNet-20 on a CPU; the
  paper's ResNet-56 tests went to 3.0 over many more steps).
  exponential: fastai's loss test, 1e-4 -> 10 over 400 steps, no evaluation.
  """
  _check(
    mode in MODES,
    "range_test.mode",
    f"unknown {mode!r}; valid: {', '.join(MODES)}",
  )
  r = ml_collections.ConfigDict()
  # linear (Smith: LR rises linearly, test accuracy measured) | exponential
  # (fastai lr_find: LR rises geometrically, training loss only).
  r.mode = mode
  # LR of the first step (exactly). linear: >= 0; exponential: > 0.
  r.min_lr = 0.01 if mode == "linear" else 1e-4
  r.max_lr = 1.5 if mode == "linear" else 10.0  # LR of the last step (exactly).
  r.num_steps = (
    300 if mode == "linear" else 400
  )  # Test length; overrides num_epochs when > 0.
  r.num_epochs = 0.0  # Test length in epochs (used when num_steps == 0).
  # Test accuracy/loss every N steps and at the last step (0 = never; then
  # only the loss-based suggestions exist).
  r.eval_every = 25 if mode == "linear" else 0
  # Held-out images per evaluation (0 = the whole test/validation split).
  r.eval_size = 1000
  # random: a fixed random subset (eval_subset_seed) | first: the first
  # eval_size test images (only for a shuffled test split: an image folder's
  # is sorted by class, so its first 1000 CIFAR-10 images are all airplanes).
  r.eval_subset = "random"
  # Seed of the 'random' subset (independent of config.seed).
  r.eval_subset_seed = 0
  r.beta = 0.98  # EMA factor of the smoothed loss (bias-corrected, as fastai).
  # Stop when the smoothed loss exceeds diverge_factor x its minimum so far
  # (0 = never stop for divergence; NaN/Inf always stops).
  r.diverge_factor = 4.0
  # Loss-based suggestions ignore the first skip_start of the planned steps
  # (a fraction) and the last skip_end recorded steps, as fastai (0.1, 5).
  r.skip_start = 0.1
  r.skip_end = 5
  # Smith's rule: an accuracy within this of the peak counts as "stopped
  # rising" (0 = one binomial standard error of the peak accuracy on
  # eval_size images, sqrt(p (1 - p) / n)).
  r.plateau_tolerance = 0.0
  # Rule of the recommended (min_lr, max_lr): "" = the mode's (linear: smith,
  # exponential: min_loss_div_10) | steepest | min_loss_div_10 | valley | smith.
  r.recommend = ""
  # Recommended min_lr = max_lr / div_factor (0 = the mode's: linear 4,
  # Smith's rule of thumb; exponential 25, OneCycleLR's default).
  r.div_factor = 0.0
  return r


def validate(config) -> None:
  """Checks config.range_test (needs no data); errors name the key."""
  _check(
    "range_test" in config,
    "range_test",
    "missing; start from configs/lr_range_test.py",
  )
  r = config.range_test
  # In the order of default_config's keys: the first bad one is named.
  _check_lrs(r)
  _check_length(r)
  _check_evaluation(r)
  _check_stopping(r)
  _check_suggestion_keys(r)


_P = "range_test."  # The prefix of every key checked below.


def _check_lrs(r) -> None:
  """range_test.mode, max_lr and min_lr (whose bound depends on the mode)."""
  _check(
    r.mode in MODES,
    _P + "mode",
    f"unknown {r.mode!r}; valid: {', '.join(MODES)}",
  )
  _check(
    math.isfinite(r.max_lr) and r.max_lr > 0,
    _P + "max_lr",
    f"must be > 0, got {r.max_lr}",
  )
  if r.mode == "exponential":
    _check(
      math.isfinite(r.min_lr) and r.min_lr > 0,
      _P + "min_lr",
      f"must be > 0 in exponential mode, got {r.min_lr}",
    )
  else:
    _check(
      math.isfinite(r.min_lr) and r.min_lr >= 0,
      _P + "min_lr",
      f"must be >= 0, got {r.min_lr}",
    )
  _check(
    r.min_lr < r.max_lr,
    _P + "min_lr",
    f"{r.min_lr} must be below range_test.max_lr ({r.max_lr})",
  )


def _check_length(r) -> None:
  """range_test.num_steps and num_epochs."""
  _check(r.num_steps >= 0, _P + "num_steps", f"must be >= 0, got {r.num_steps}")
  _check(
    r.num_epochs >= 0, _P + "num_epochs", f"must be >= 0, got {r.num_epochs}"
  )
  _check(
    r.num_steps > 0 or r.num_epochs > 0,
    _P + "num_steps",
    "set range_test.num_steps > 0 or range_test.num_epochs > 0",
  )


def _check_evaluation(r) -> None:
  """range_test.eval_every, eval_size and eval_subset."""
  _check(
    r.eval_every >= 0,
    _P + "eval_every",
    f"must be >= 0 steps, got {r.eval_every}",
  )
  _check(r.eval_size >= 0, _P + "eval_size", f"must be >= 0, got {r.eval_size}")
  _check(
    r.eval_subset in EVAL_SUBSETS,
    _P + "eval_subset",
    f"unknown {r.eval_subset!r}; valid: {', '.join(EVAL_SUBSETS)}",
  )


def _check_stopping(r) -> None:
  """range_test.beta (the smoothing) and diverge_factor (the stop)."""
  _check(0 <= r.beta < 1, _P + "beta", f"must be in [0, 1), got {r.beta}")
  _check(
    r.diverge_factor == 0 or r.diverge_factor > 1,
    _P + "diverge_factor",
    f"must be > 1 (or 0 = never), got {r.diverge_factor}",
  )


def _check_suggestion_keys(r) -> None:
  """The keys of the suggestions and the recommendation."""
  _check(
    0 <= r.skip_start < 1,
    _P + "skip_start",
    f"must be a fraction in [0, 1), got {r.skip_start}",
  )
  _check(r.skip_end >= 0, _P + "skip_end", f"must be >= 0, got {r.skip_end}")
  _check(
    r.plateau_tolerance >= 0,
    _P + "plateau_tolerance",
    f"must be >= 0, got {r.plateau_tolerance}",
  )
  _check(
    r.recommend in ("",) + SUGGESTIONS,
    _P + "recommend",
    f"unknown {r.recommend!r}; valid: '', {', '.join(SUGGESTIONS)}",
  )
  _check(
    r.div_factor == 0 or r.div_factor >= 1,
    _P + "div_factor",
    f"must be >= 1 (or 0 = the mode's), got {r.div_factor}",
  )


def training_view(config) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` as a training config of the test's length.

  Its duration is the range test's (num_steps/num_epochs) and its schedule a
  constant max_lr, so `superconv.config` validation and `train.setup` accept
  it whatever the (unused) training schedule of `config` says. The model,
  data, batch, seed, augmentation and optimizer fields are untouched.
  """
  view = ml_collections.ConfigDict(config.to_dict())
  r = view.range_test
  view.num_steps = int(r.num_steps)
  view.num_epochs = float(r.num_epochs)
  s = view.schedule
  s.name = "constant"
  s.max_lr = float(r.max_lr)
  s.warmup = 0.0
  s.cycle_momentum = False
  view.num_parallel_seeds = 1  # One test, from config.seed's initialization.
  return view


def num_steps(config, num_train_examples: int) -> int:
  """Steps of the test (the project's one epochs-to-steps helper)."""
  from superconv import config as config_lib  # pylint: disable=g-import-not-at-top

  return config_lib.total_steps(training_view(config), num_train_examples)


# ============================================================================
# The learning-rate sequence
# ============================================================================


def lr_values(
  mode: str, min_lr: float, max_lr: float, num_steps: int
) -> np.ndarray:
  """The LR of each step i = 0 .. num_steps - 1, in float64.

  linear: min_lr + (max_lr - min_lr) i / (num_steps - 1) (np.linspace);
  exponential: min_lr (max_lr / min_lr)^(i / (num_steps - 1)) (np.geomspace).
  Both return min_lr and max_lr exactly at the first and last step.
  """
  _check(
    mode in MODES,
    "range_test.mode",
    f"unknown {mode!r}; valid: {', '.join(MODES)}",
  )
  _check(
    num_steps >= 2,
    "range_test.num_steps",
    f"the test needs at least 2 steps, got {num_steps}",
  )
  if mode == "linear":
    return np.linspace(min_lr, max_lr, num_steps, dtype=np.float64)
  return np.geomspace(min_lr, max_lr, num_steps, dtype=np.float64)


def lr_schedule(mode: str, min_lr: float, max_lr: float, num_steps: int):
  """The test's LR as an optax schedule (held at max_lr past the end).

  A lookup into the float32 rounding of `lr_values`: optax.linear_schedule
  computes (min - max) + max, which misses min_lr by a rounding error at step
  0, and exponential_decay misses max_lr at the end; the table hits both
  exactly and every value in between to float32 precision.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  table = jnp.asarray(lr_values(mode, min_lr, max_lr, num_steps), jnp.float32)

  def schedule(count):
    return table[jnp.clip(count, 0, num_steps - 1)]

  return schedule


# ============================================================================
# Smoothing and stopping (pure; the run uses the same LossMonitor)
# ============================================================================


class LossMonitor:
  """fastai's smoothed loss and stop rule, one loss at a time.

  avg_t = beta avg_{t-1} + (1 - beta) loss_t, smoothed_t = avg_t /
  (1 - beta^t) (bias-corrected, so smoothed_1 = loss_1). `update` returns
  'nonfinite' for a NaN/Inf loss or smoothed loss, 'diverged' when
  smoothed_t > diverge_factor x min(smoothed_1..t) (diverge_factor > 0),
  else None.
  """

  def __init__(self, beta: float = 0.98, diverge_factor: float = 4.0):
    self.beta = float(beta)
    self.diverge_factor = float(diverge_factor)
    self.count = 0
    self.avg = 0.0
    self.best = math.inf
    self.smoothed = math.nan

  def update(self, loss: float) -> str | None:
    self.count += 1
    loss = float(loss)
    if not math.isfinite(loss):
      self.smoothed = math.nan
      return "nonfinite"
    self.avg = self.beta * self.avg + (1 - self.beta) * loss
    self.smoothed = self.avg / (1 - self.beta**self.count)
    if not math.isfinite(self.smoothed):
      return "nonfinite"
    self.best = min(self.best, self.smoothed)
    if (
      self.diverge_factor > 0
      and self.smoothed > self.diverge_factor * self.best
    ):
      return "diverged"
    return None


def smooth_and_stop(
  losses: Sequence[float], beta: float = 0.98, diverge_factor: float = 4.0
):
  """Runs `LossMonitor` over a loss sequence.

  Returns (reason, smoothed): reason in STOP_REASONS; smoothed holds one
  value per step up to and including the step that stopped the test (NaN for
  a non-finite one), so len(smoothed) is the number of recorded steps.
  """
  monitor = LossMonitor(beta, diverge_factor)
  smoothed = []
  for loss in losses:
    reason = monitor.update(loss)
    smoothed.append(monitor.smoothed)
    if reason:
      return reason, np.asarray(smoothed, np.float64)
  return "completed", np.asarray(smoothed, np.float64)


# ============================================================================
# Suggestions (pure functions of arrays)
# ============================================================================


def window(
  num_recorded: int,
  num_planned: int,
  skip_start: float = 0.1,
  skip_end: int = 5,
) -> slice:
  """The points the loss-based suggestions look at, as fastai:
  lrs[num_planned // 10 : -5] for skip_start = 0.1, skip_end = 5."""
  return slice(int(num_planned * skip_start), max(num_recorded - skip_end, 0))


def _point(name: str, lrs, losses, index: int, lr: float, **extra) -> dict:
  return {
    "name": name,
    "lr": float(lr),
    "index": int(index),
    "at_lr": float(lrs[index]),
    "smoothed_loss": float(losses[index]),
    **extra,
  }


def steepest(lrs, losses, *, log_x: bool) -> dict | None:
  """Steepest descent: the LR where the smoothed loss falls fastest.

  Forward differences d loss / d x with x = log(lr) (exponential mode, as
  fastai's `steep`) or x = lr (linear mode); the LR at the left end of the
  steepest segment. None when the loss never falls.
  """
  lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
  if len(lrs) < 2:
    return None
  x = np.log(lrs) if log_x else lrs
  slopes = np.diff(losses) / np.diff(x)
  i = int(np.nanargmin(slopes))
  if not slopes[i] < 0:
    return None
  return _point("steepest", lrs, losses, i, lrs[i], slope=float(slopes[i]))


def min_loss_div_10(lrs, losses) -> dict | None:
  """One tenth of the LR at the minimum of the smoothed loss (fastai's
  `minimum`): the minimum sits just before divergence, a tenth of it is
  still safely on the descending side."""
  lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
  if len(lrs) < 1:
    return None
  i = int(np.nanargmin(losses))
  return _point("min_loss_div_10", lrs, losses, i, lrs[i] / 10)


def valley(lrs, losses) -> dict | None:
  """fastai's `valley` (its `lr_find` default since v2.5).

  The "valley" is the longest strictly decreasing subsequence of the
  smoothed loss (lds[i] = length of the longest one ending at i, O(n^2));
  it ends at the first i with the largest lds and is taken to start
  lds points earlier. The suggestion is fastai's index start +
  int(len / 3) + int(len / 6), the middle of the valley's middle third
  (fastai's docs say "roughly 2/3 through"; we match its code, so numbers
  agree with fastai's).
  """
  lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
  n = len(losses)
  if n < 2:
    return None
  lds = np.ones(n, np.int64)
  for i in range(1, n):
    higher = losses[:i] > losses[i]
    if higher.any():
      lds[i] = lds[:i][higher].max() + 1
  end = int(np.argmax(lds))
  start = end - int(lds[end])
  if end == 0:
    return None
  sections = (end - start) / 3
  i = min(max(start + int(sections) + int(sections / 2), 0), n - 1)
  first = max(start + 1, 0)  # The valley's first point (if contiguous).
  return _point(
    "valley",
    lrs,
    losses,
    i,
    lrs[i],
    valley_start=first,
    valley_end=end,
    valley_start_lr=float(lrs[first]),
    valley_end_lr=float(lrs[end]),
  )


def binomial_se(accuracy: float, n: int) -> float:
  """Standard error of an accuracy measured on n images."""
  return math.sqrt(max(accuracy * (1 - accuracy), 0.0) / max(n, 1))


def smith(
  eval_lrs,
  eval_accuracies,
  *,
  eval_size: int,
  tolerance: float = 0.0,
  div_factor: float = 4.0,
  num_classes: int = 0,
) -> dict | None:
  """Smith's rule on test accuracy against LR (linear test).

  max_lr: the first LR at which the accuracy comes within `tolerance` of its
  peak, i.e. where it "stops rising" (Smith: "when the accuracy slows,
  becomes ragged, or starts to fall"); tolerance 0 means one binomial
  standard error of the peak accuracy on `eval_size` images, so a plateau
  within measurement noise counts as a plateau. min_lr = max_lr /
  div_factor (CLR paper: "set base_lr to 1/3 or 1/4 of max_lr").
  Also reported: `rise_lr`, the first LR at which the accuracy is clearly
  above chance (by 2 standard errors; Smith's other bound "when the
  accuracy starts to increase"), when `num_classes` is given.
  """
  lrs = np.asarray(eval_lrs, np.float64)
  acc = np.asarray(eval_accuracies, np.float64)
  ok = np.isfinite(acc)
  lrs, acc = lrs[ok], acc[ok]
  if len(acc) == 0:
    return None
  peak = int(np.argmax(acc))
  tol = tolerance or binomial_se(acc[peak], eval_size)
  i = int(np.argmax(acc >= acc[peak] - tol))  # First within tol (<= peak).
  out = {
    "name": "smith",
    "lr": float(lrs[i]),
    "max_lr": float(lrs[i]),
    "min_lr": float(lrs[i] / div_factor),
    "index": i,
    "accuracy": float(acc[i]),
    "peak_lr": float(lrs[peak]),
    "peak_accuracy": float(acc[peak]),
    "tolerance": float(tol),
    "still_rising": bool(peak == len(acc) - 1),
  }
  if num_classes:
    chance = 1.0 / num_classes
    above = acc > chance + 2 * binomial_se(chance, eval_size)
    out["rise_lr"] = float(lrs[int(np.argmax(above))]) if above.any() else None
  return out


def suggest(
  mode: str,
  lrs,
  smoothed,
  *,
  num_planned: int,
  skip_start: float = 0.1,
  skip_end: int = 5,
  eval_lrs=(),
  eval_accuracies=(),
  eval_size: int = 0,
  plateau_tolerance: float = 0.0,
  div_factor: float = 0.0,
  num_classes: int = 0,
) -> dict:
  """Every suggestion of a test: {name: dict or None}.

  The loss-based ones see the smoothed losses inside `window` (non-finite
  points dropped); indices in the results are into the full `lrs`.
  """
  lrs = np.asarray(lrs, np.float64)
  smoothed = np.asarray(smoothed, np.float64)
  w = window(len(lrs), num_planned, skip_start, skip_end)
  idx = np.arange(len(lrs))[w]
  idx = idx[np.isfinite(smoothed[idx])]
  out: dict[str, Any] = {}
  if len(idx) >= 3:
    wl, ws = lrs[idx], smoothed[idx]
    out["steepest"] = steepest(wl, ws, log_x=mode == "exponential")
    out["min_loss_div_10"] = min_loss_div_10(wl, ws)
    out["valley"] = valley(wl, ws)
    for s in out.values():
      if s is not None:
        for key in ("index", "valley_start", "valley_end"):
          if key in s:
            s[key] = int(idx[s[key]])
  else:
    out.update(steepest=None, min_loss_div_10=None, valley=None)
  out["smith"] = (
    smith(
      eval_lrs,
      eval_accuracies,
      eval_size=eval_size,
      tolerance=plateau_tolerance,
      div_factor=div_factor or DIV_FACTOR["linear"],
      num_classes=num_classes,
    )
    if len(eval_lrs)
    else None
  )
  return out


def recommend(
  mode: str, suggestions: dict, *, rule: str = "", div_factor: float = 0.0
) -> dict | None:
  """The recommended (min_lr, max_lr) and the rule that produced it.

  linear: Smith's rule (max_lr where test accuracy stops rising, min_lr =
  max_lr / 4). exponential: min_loss_div_10 as max_lr, min_lr = max_lr / 25
  (OneCycleLR's div_factor): the minimum of the smoothed loss is pinned by
  the onset of divergence, a property of the LR, whereas a network that
  learns from the smallest LR on (BatchNorm, momentum) makes the loss fall
  across the whole low-LR range, so `valley` and `steepest` land decades
  lower and move with range_test.min_lr. When the mode's rule has no value
  (no evaluation, too few points) the first available of smith,
  min_loss_div_10, valley, steepest is used and `fallback` says so. None
  when no suggestion exists.
  """
  wanted = rule or DEFAULT_RULE[mode]
  order = [wanted] + [
    r for r in ("smith", "min_loss_div_10", "valley", "steepest") if r != wanted
  ]
  for name in order:
    s = suggestions.get(name)
    if s is None:
      continue
    div = div_factor or DIV_FACTOR[mode]
    max_lr = float(s["max_lr"] if name == "smith" else s["lr"])
    return {
      "rule": name,
      "max_lr": max_lr,
      "min_lr": max_lr / div,
      "div_factor": float(div),
      "fallback": None
      if name == wanted
      else f"{wanted} gave no value; used {name}",
    }
  return None


# ============================================================================
# The run
# ============================================================================


def eval_subset(dataset, size: int, subset: str, seed: int):
  """The held-out Dataset: its test split cut to `size` images (the first
  ones, or a fixed random subset drawn with `seed`, in test-split order)."""
  n = dataset.test_images.shape[0]
  if size <= 0 or size >= n:
    return dataset
  if subset == "first":
    index = np.arange(size)
  else:
    index = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
  return dataclasses.replace(
    dataset,
    test_images=dataset.test_images[index],
    test_labels=dataset.test_labels[index],
  )


def _float32(value) -> float:
  """A float32 as the shortest decimal that round-trips it (0.001, not
  0.0010000000474974513)."""
  return float(str(np.float32(value)))


def _jsonable(value):
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # As metrics.jsonl: JSON has no NaN/Inf.
  return value


def prepare(config, workdir: str, program: str):
  """The checks, lock and data of a range test, before anything is written.

  As a training run's (`api.prepare`), on the training view of the config:
  the range-test keys (`validate`), the training keys, the workdir's lock
  for `program`, the data set (with config.validation_size > 0 the
  held-out images come from a validation split of the train images, not
  from the test set) and the test's length. Returns (dataset, the held
  lock or None). Raises ValueError subclasses with one line naming the
  key, flag or path (the lock is released then).
  """
  import jax  # pylint: disable=g-import-not-at-top

  from superconv import data as data_lib  # pylint: disable=g-import-not-at-top
  from superconv import train  # pylint: disable=g-import-not-at-top

  if storage.is_remote(workdir):
    raise ValueError(
      f"--workdir: {workdir}: the range test writes to a"
      " local directory (it runs for minutes and keeps no checkpoint);"
      " copy its three files to the bucket afterwards"
    )
  validate(config)
  view = training_view(config)
  train.validate(view, num_devices=jax.device_count())
  # One writer per workdir (lock.py): naming the holder otherwise.
  held = train.lock_workdir(workdir, program)
  try:
    dataset = data_lib.from_config(view)
    train.validate(
      view,
      num_devices=jax.device_count(),
      num_train_examples=dataset.train_images.shape[0],
    )
    _check(
      num_steps(config, dataset.train_images.shape[0]) >= 2,
      "range_test.num_steps",
      "the test needs at least 2 steps",
    )
  except BaseException:
    if held is not None:
      held.release()
    raise
  return dataset, held


def run(config, workdir: str, dataset) -> dict:
  """Runs the range test; writes the three outputs; returns the summary
  (the content of lr_range_test.json)."""
  import jax  # pylint: disable=g-import-not-at-top

  validate(config)
  r = config.range_test
  test = _build_test(config, dataset)
  _log_start(r, test)
  is_chief = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  jsonl = open(os.path.join(workdir, JSONL_NAME), "w") if is_chief else None
  recorder = _Recorder(r, test.num_steps, test.view.log_every_steps, jsonl)
  try:
    reason = _run_steps(test, recorder, r.eval_every)
  finally:
    if jsonl:
      jsonl.close()
  seconds = time.time() - recorder.start
  summary = summarize(
    config,
    recorder.rows,
    reason=reason,
    num_planned=test.num_steps,
    notes=_held_out_notes(test, dataset.num_classes),
    steps_per_epoch=test.setup.steps_per_epoch,
    num_classes=dataset.num_classes,
    eval_size=test.held_out.test_images.shape[0] if test.evaluate else 0,
    seconds=seconds,
    dataset=dataset.name,
  )
  if is_chief:
    write_json(os.path.join(workdir, JSON_NAME), summary)
    plot(recorder.rows, summary, os.path.join(workdir, PNG_NAME))
  return summary


@dataclasses.dataclass
class _Test:
  """What a range test steps through: the training view of its config, the
  trainer's setup, state and step, the train arrays on the devices, and the
  held-out data with its evaluator (None when range_test.eval_every is 0)."""

  view: ml_collections.ConfigDict
  setup: Any
  state: Any
  step: Any
  images: Any
  labels: Any
  held_out: Any
  evaluate: Any

  @property
  def num_steps(self) -> int:
    return self.setup.total_steps


def _build_test(config, dataset) -> _Test:
  """A training run's model, optimizer and step, at the test's LR sequence."""
  import optax  # pylint: disable=g-import-not-at-top

  from superconv import (
    input_pipeline,  # pylint: disable=g-import-not-at-top
    train,  # pylint: disable=g-import-not-at-top
  )

  r = config.range_test
  view = training_view(config)
  setup = train.setup(view, dataset)
  lr_fn = lr_schedule(r.mode, r.min_lr, r.max_lr, setup.total_steps)
  tx = train.make_optimizer(view, lr_fn, optax.constant_schedule(view.momentum))
  state = train.create_train_state(view, setup.model, dataset.image_shape, tx)
  state = input_pipeline.replicate_tree(state)
  images = input_pipeline.replicate(dataset.train_images)
  labels = input_pipeline.replicate(dataset.train_labels.astype(np.int32))
  p_step = train.make_train_step(view, dataset, setup.aug)
  held_out = eval_subset(
    dataset, r.eval_size, r.eval_subset, r.eval_subset_seed
  )
  evaluate = (
    train.Evaluator(view, held_out, setup.aug) if r.eval_every > 0 else None
  )
  return _Test(view, setup, state, p_step, images, labels, held_out, evaluate)


def _log_start(r, test: _Test) -> None:
  log.info(
    "LR range test (%s): %d steps of batch %d, lr %g -> %g%s.",
    r.mode,
    test.num_steps,
    test.view.batch_size,
    r.min_lr,
    r.max_lr,
    f", eval on {test.held_out.test_images.shape[0]} held-out images every"
    f" {r.eval_every} steps"
    if test.evaluate
    else "",
  )


class _Recorder:
  """The rows of the test: each step's fetched metrics (with the held-out
  evaluation of that step, if any) become a row of `rows` and of
  lr_range_test.jsonl (`jsonl`, None off the chief), a console line every
  config.log_every_steps steps, and a stop check (`LossMonitor`)."""

  def __init__(self, r, num_steps: int, log_every_steps: int, jsonl):
    self.monitor = LossMonitor(r.beta, r.diverge_factor)
    self.num_steps = num_steps
    self.log_every_steps = log_every_steps
    self.jsonl = jsonl
    self.rows: list[dict] = []
    self.evals: dict[int, dict] = {}  # Step -> its evaluation's metrics.
    self.start = time.time()

  def record(self, step: int, metrics) -> str | None:
    """Row for `step` (1-based) from its fetched metrics; the stop reason."""
    import jax  # pylint: disable=g-import-not-at-top

    from superconv import train  # pylint: disable=g-import-not-at-top

    m = jax.device_get(train.unreplicate(metrics))
    loss = float(m["train_loss"])
    stop = self.monitor.update(loss)
    row = {
      "step": step,
      "lr": _float32(m["learning_rate"]),
      "loss": loss,
      "smoothed_loss": self.monitor.smoothed,
      "train_accuracy": float(m["train_accuracy"]),
      "momentum": _float32(m["momentum"]),
      "grad_norm": float(m["grad_norm"]),
    }
    row.update(self.evals.pop(step, {}))
    self.rows.append(row)
    if self.jsonl:
      line = json.dumps({k: _jsonable(v) for k, v in row.items()})
      self.jsonl.write(line + "\n")
      self.jsonl.flush()
    if (
      step % max(self.log_every_steps, 1) == 0
      or "eval_accuracy" in row
      or stop
      or step == self.num_steps
    ):
      self._log(step, row)
    return stop

  def _log(self, step: int, row: dict) -> None:
    text = (
      f"step {step}/{self.num_steps} lr {row['lr']:.4g} loss"
      f" {row['loss']:.4f} smoothed {self.monitor.smoothed:.4f}"
    )
    if "eval_accuracy" in row:
      text += (
        f" | test acc {row['eval_accuracy']:.4f} loss {row['eval_loss']:.4f}"
      )
    log.info("%s (%.1fs)", text, time.time() - self.start)


def _run_steps(test: _Test, recorder: _Recorder, eval_every: int) -> str:
  """Trains until the last step or a stop; returns the stop reason.

  One step in flight: step k is dispatched before step k - 1's loss is
  fetched, so the device never waits for the host's stop check. A stop at
  k - 1 discards step k (nothing of it is recorded).
  """
  state, n = test.state, test.num_steps
  reason = "completed"
  previous = None
  for step in range(1, n + 1):
    state, metrics = test.step(state, test.images, test.labels)
    if previous is not None:
      reason = recorder.record(step - 1, previous) or reason
      if reason != "completed":
        break
    if test.evaluate and (step % eval_every == 0 or step == n):
      recorder.evals[step] = {
        k: v for k, v in test.evaluate(state).items() if k != "eval_examples"
      }
    previous = metrics
  else:
    reason = recorder.record(n, previous) or reason
  return reason


def _held_out_notes(test: _Test, num_classes: int) -> list[str]:
  """A note when the held-out images cover the classes unevenly."""
  if not test.evaluate:
    return []
  counts = np.bincount(test.held_out.test_labels, minlength=num_classes)
  if counts.min() < 0.5 * counts.mean():
    return [
      f"range_test.eval_subset: the {counts.sum()} held-out"
      f" images cover the classes unevenly ({counts.min()} to"
      f" {counts.max()} per class); use 'random' or a larger"
      " eval_size"
    ]
  return []


def summarize(
  config,
  rows: list[dict],
  *,
  reason: str,
  num_planned: int,
  steps_per_epoch: int,
  num_classes: int,
  eval_size: int,
  seconds: float = 0.0,
  dataset: str = "",
  notes: Sequence[str] = (),
) -> dict:
  """lr_range_test.json's content from the recorded rows."""
  r = config.range_test
  lrs = np.array([row["lr"] for row in rows], np.float64)
  smoothed = np.array([row["smoothed_loss"] for row in rows], np.float64)
  ev = [row for row in rows if "eval_accuracy" in row]
  suggestions = suggest(
    r.mode,
    lrs,
    smoothed,
    num_planned=num_planned,
    skip_start=r.skip_start,
    skip_end=r.skip_end,
    eval_lrs=[row["lr"] for row in ev],
    eval_accuracies=[row["eval_accuracy"] for row in ev],
    eval_size=eval_size,
    plateau_tolerance=r.plateau_tolerance,
    div_factor=r.div_factor,
    num_classes=num_classes,
  )
  rec = recommend(
    r.mode, suggestions, rule=r.recommend, div_factor=r.div_factor
  )
  notes = list(notes) + _summary_notes(
    r.mode, smoothed, suggestions, reason, len(rows), num_planned
  )
  min_loss, min_loss_lr = _smoothed_minimum(lrs, smoothed)
  return {
    "mode": r.mode,
    "settings": json.loads(r.to_json_best_effort()),
    "dataset": dataset,
    "model": config.model,
    "batch_size": config.batch_size,
    "seed": config.seed,
    "weight_decay": config.weight_decay,
    "momentum": config.momentum,
    "steps_planned": num_planned,
    "steps_run": len(rows),
    "steps_per_epoch": steps_per_epoch,
    "eval_size": eval_size,
    "stop_reason": reason,
    "stop_lr": float(lrs[-1]) if len(rows) else None,
    "min_smoothed_loss": min_loss,
    "min_smoothed_loss_lr": min_loss_lr,
    "seconds": round(seconds, 1),
    "suggestions": suggestions,
    "recommendation": rec,
    "notes": notes,
    "config": json.loads(config.to_json_best_effort()),
  }


def _summary_notes(
  mode: str,
  smoothed: np.ndarray,
  suggestions: dict,
  reason: str,
  steps_run: int,
  num_planned: int,
) -> list[str]:
  """What the test's outcome says to change (empty when nothing)."""
  notes = []
  finite = smoothed[np.isfinite(smoothed)]
  if (
    reason == "completed"
    and mode == "exponential"
    and len(finite)
    and (finite[-1] <= 1.5 * finite.min())
  ):
    notes.append(
      "the loss never rose: range_test.max_lr may be too low to"
      " show where training breaks down"
    )
  if (
    suggestions.get("smith")
    and suggestions["smith"]["still_rising"]
    and reason == "completed"
  ):
    notes.append(
      "test accuracy was still rising at the last evaluation:"
      " raise range_test.max_lr or run longer"
    )
  if steps_run and reason != "completed" and steps_run < 0.2 * num_planned:
    notes.append(
      f"stopped ({reason}) after {steps_run} of {num_planned}"
      " steps: lower range_test.max_lr or range_test.min_lr"
    )
  if suggestions["valley"] is None:
    notes.append(
      "too few finite points for the loss-based suggestions:"
      " lower range_test.skip_start/skip_end or run longer"
    )
  return notes


def _smoothed_minimum(lrs: np.ndarray, smoothed: np.ndarray):
  """(The smoothed loss's minimum, its LR), or (None, None) if none is
  finite."""
  if not np.isfinite(smoothed).any():
    return None, None
  i_min = int(np.nanargmin(smoothed))
  return float(smoothed[i_min]), float(lrs[i_min])


def write_json(path: str, data: dict) -> None:
  def clean(x):
    if isinstance(x, dict):
      return {k: clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return [clean(v) for v in x]
    return _jsonable(x)

  storage.write_text(path, json.dumps(clean(data), indent=2) + "\n")


# ============================================================================
# The plot
# ============================================================================

_COLORS = {
  "steepest": "tab:orange",
  "min_loss_div_10": "tab:purple",
  "valley": "tab:green",
  "smith": "tab:red",
}
_LABELS = {
  "steepest": "steepest",
  "min_loss_div_10": "min loss / 10",
  "valley": "valley",
  "smith": "Smith max_lr",
}


def plot(rows: list[dict], summary: dict, out: str, title: str = ""):
  """Writes `figure(rows, summary, title)` to the image file `out`; returns
  the figure."""
  fig = figure(rows, summary, title)
  fig.savefig(out)
  return fig


def figure(rows: list[dict], summary: dict, title: str = ""):
  """Loss (raw and smoothed) against LR with the suggestions as labelled
  vertical lines and the recommended range shaded; a second panel with the
  held-out test accuracy (and loss) when measured.

  A `matplotlib.figure.Figure` outside pyplot's state (nothing to close;
  a notebook shows it as the value of a cell).
  """
  from matplotlib import figure as mpl_figure  # pylint: disable=g-import-not-at-top

  mode = summary["mode"]
  ev = [row for row in rows if "eval_accuracy" in row]
  panels = 2 if ev else 1
  fig = mpl_figure.Figure(figsize=(10, 4.6 * panels), dpi=110)
  axes = fig.subplots(panels, 1, sharex=True, squeeze=False)
  axes = axes[:, 0]
  ax = axes[0]
  loss_lines = _plot_losses(ax, rows, summary["settings"]["beta"])
  if mode == "exponential":
    for a in axes:
      a.set_xscale("log")
  handles = _shade_recommendation(axes, summary.get("recommendation"))
  handles += _mark_suggestions(axes, summary)
  _loss_legends(ax, loss_lines, handles, mode)
  ax.set_title(_loss_title(summary), fontsize=9)
  if ev:
    _plot_accuracy(axes[1], ev, summary)
  axes[-1].set_xlabel(
    "learning rate" + (" (log scale)" if mode == "exponential" else "")
  )
  fig.suptitle(
    title
    or f"LR range test: {summary['model']},"
    f" {os.path.basename(summary['dataset'].split(':', 1)[-1])},"
    f" batch {summary['batch_size']}, wd"
    f" {summary['weight_decay']:g}, momentum"
    f" {summary['momentum']:g}",
    fontsize=11,
  )
  fig.tight_layout()
  return fig


def _plot_losses(ax, rows: list[dict], beta: float) -> list:
  """The loss panel's two curves (each step's loss, the smoothed one) and
  its y range; returns the curves (for their own legend)."""
  lrs = np.array([row["lr"] for row in rows], np.float64)
  loss = np.array([float(row["loss"]) for row in rows], np.float64)
  smoothed = np.array([float(row["smoothed_loss"]) for row in rows], np.float64)
  loss_lines = [
    ax.plot(lrs, loss, color="0.72", lw=0.7, label="training loss (each step)")[
      0
    ],
    ax.plot(
      lrs,
      smoothed,
      color="tab:blue",
      lw=2,
      label=f"smoothed: bias-corrected EMA, beta {beta:g}",
    )[0],
  ]
  finite = np.isfinite(smoothed)
  if finite.any():
    lo = float(np.nanmin(smoothed))
    i_min = int(np.nanargmin(smoothed))
    first = int(np.argmax(finite))
    hi = max(float(np.nanmax(smoothed[first : i_min + 1])), lo * 1.05)
    raw = loss[: i_min + 1][np.isfinite(loss[: i_min + 1])]
    if len(raw) > 10:  # Room for most of the per-step noise.
      lo = min(lo, float(np.percentile(raw, 2)))
      hi = max(hi, float(np.percentile(raw, 99)))
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.5 * (hi - lo))  # + legends.
  return loss_lines


def _shade_recommendation(axes, rec: dict | None) -> list:
  """The recommended (min_lr, max_lr) shaded on every panel; returns the
  legend handle ([] without a recommendation)."""
  if not rec:
    return []
  for a in axes:
    band = a.axvspan(
      rec["min_lr"],
      rec["max_lr"],
      color="tab:green",
      alpha=0.08,
      lw=0,
      label=f"recommended range: {rec['min_lr']:.3g} to {rec['max_lr']:.3g}",
    )
  return [band]


def _mark_suggestions(axes, summary: dict) -> list:
  """Each suggestion a vertical line on every panel (solid: the
  recommended one) and, for the loss-based ones, a dot where it was read
  on the smoothed loss; returns the lines' legend handles."""
  rec = summary.get("recommendation")
  handles = []
  for name in SUGGESTIONS:
    s = summary["suggestions"].get(name)
    if not s:
      continue
    lr = s["max_lr"] if name == "smith" else s["lr"]
    star = " *" if rec and rec["rule"] == name else ""
    for a in axes:
      line = a.axvline(
        lr,
        color=_COLORS[name],
        lw=1.4,
        ls="-" if star else "--",
        label=f"{_LABELS[name]}: {lr:.3g}{star}",
      )
    handles.append(line)
    if name != "smith":
      axes[0].plot(
        [s["at_lr"]],
        [s["smoothed_loss"]],
        "o",
        color=_COLORS[name],
        ms=5,
        zorder=5,
      )
  return handles


def _loss_legends(ax, loss_lines: list, handles: list, mode: str) -> None:
  """The loss panel's axis label, grid and two legends (curves at the
  right, suggestions at the left)."""
  ax.set_ylabel("training loss")
  ax.grid(alpha=0.3, which="both" if mode == "exponential" else "major")
  first_legend = ax.legend(
    handles=loss_lines, loc="upper right", fontsize=8, framealpha=0.85
  )
  ax.add_artist(first_legend)
  if handles:
    ax.legend(
      handles=handles,
      loc="upper left",
      fontsize=8,
      title="suggested LR (* = recommended max_lr)",
      title_fontsize=8,
      framealpha=0.85,
    )


def _loss_title(summary: dict) -> str:
  """One line: the test, its stop and the recommendation."""
  rec = summary.get("recommendation")
  text = (
    f"{summary['mode']} test, {summary['steps_run']}/"
    f"{summary['steps_planned']} steps, stop: {summary['stop_reason']}"
  )
  if rec:
    text += (
      f"; recommended: max_lr {rec['max_lr']:.3g},"
      f" min_lr {rec['min_lr']:.3g} ({rec['rule']},"
      f" / {rec['div_factor']:g})"
    )
  return text


def _plot_accuracy(a2, ev: list[dict], summary: dict) -> None:
  """The second panel: held-out test accuracy (left axis, with Smith's
  plateau band) and test loss (right axis) at each evaluation."""
  elr = np.array([row["lr"] for row in ev])
  acc = np.array([row["eval_accuracy"] for row in ev])
  a2.plot(
    elr,
    acc,
    "o-",
    color="tab:red",
    lw=1.6,
    ms=4,
    label=f"test accuracy ({summary['eval_size']} held-out images)",
  )
  sm = summary["suggestions"].get("smith")
  if sm:
    a2.axhspan(
      sm["peak_accuracy"] - sm["tolerance"],
      sm["peak_accuracy"],
      color="tab:red",
      alpha=0.08,
      lw=0,
      label=f"within {sm['tolerance']:.3f} of the peak",
    )
  a2.set_ylabel("test accuracy", color="tab:red")
  a2.grid(alpha=0.3)
  a3 = _plot_test_loss(a2.twinx(), elr, ev)
  h1, l1 = a2.get_legend_handles_labels()
  h3, l3 = a3.get_legend_handles_labels()
  keep = [
    (h, l)
    for h, l in zip(h1 + h3, l1 + l3)
    if l.split(":")[0] not in _LABELS.values()
  ]
  a2.legend(*zip(*keep), loc="upper left", fontsize=8, framealpha=0.85)


def _plot_test_loss(a3, elr: np.ndarray, ev: list[dict]):
  """The test loss on the accuracy panel's right axis `a3`; returns it."""
  eval_loss = np.array([float(row["eval_loss"]) for row in ev])
  a3.plot(
    elr,
    eval_loss,
    "s--",
    color="0.45",
    lw=1,
    ms=3,
    label="test loss (right axis)",
  )
  a3.set_ylabel("test loss", color="0.45")
  finite_loss = eval_loss[np.isfinite(eval_loss)]
  if len(finite_loss) > 2:  # Early evaluations (stale BN statistics) can
    top = 3 * float(np.median(finite_loss))  # be off the chart.
    if finite_loss.max() > top:
      a3.set_ylim(0, top)
  return a3


# ============================================================================
# Using a saved test in a training config
# ============================================================================


def apply_to_config(config, path: str) -> dict:
  """Sets config.schedule's LRs from a saved test's recommendation.

  `path`: a test's workdir or its lr_range_test.json. Sets
  schedule.max_lr = max_lr and makes the run's first LR min_lr:
  one_cycle: div_factor = max_lr / min_lr; cyclical: base_lr = min_lr;
  piecewise/cosine/constant with a warm-up: warmup_start_factor = min_lr /
  max_lr (without a warm-up min_lr is unused). When the config has the
  field schedule.lr_from_range_test, it is set to the absolute path of the
  json read, so the run's config.json records both the values used and
  their source. Works on a locked config (only existing fields change).
  Returns the provenance {"max_lr", "min_lr", "source", "rule", "mode",
  "set"} ("set": every key written).
  """
  key = "schedule.lr_from_range_test"
  source = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(source):
    source = os.path.join(source, JSON_NAME)
  _check(
    os.path.isfile(source),
    key,
    f"no such file: {source} (give a range test's workdir or its {JSON_NAME})",
  )
  try:
    with open(source) as f:
      data = json.load(f)
    rec = data["recommendation"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise RangeTestError(
      f"{key}: {source} is not a range-test result ({type(e).__name__}: {e})"
    ) from None
  _check(
    isinstance(rec, dict) and rec.get("max_lr"),
    key,
    f"{source} has no recommendation (notes: {data.get('notes')})",
  )
  max_lr, min_lr = float(rec["max_lr"]), float(rec["min_lr"])
  s = config.schedule
  written = {"schedule.max_lr": max_lr}
  if s.name == "one_cycle":
    written["schedule.div_factor"] = max_lr / min_lr
  elif s.name == "cyclical":
    written["schedule.base_lr"] = min_lr
  elif s.warmup > 0:
    written["schedule.warmup_start_factor"] = min_lr / max_lr
  for name, value in written.items():
    s[name.split(".", 1)[1]] = value
  if "lr_from_range_test" in s:
    s.lr_from_range_test = source
  return {
    "max_lr": max_lr,
    "min_lr": min_lr,
    "source": source,
    "rule": rec.get("rule"),
    "mode": data.get("mode"),
    "set": written,
  }


# ============================================================================
# The console report (superconv.range_test_main prints it)
# ============================================================================


def format_summary(summary: dict) -> str:
  """The console report: stop reason, suggestions, recommendation."""
  lines = [
    f"stopped: {summary['stop_reason']} after {summary['steps_run']}"
    f" of {summary['steps_planned']} steps"
    f" (lr {summary['stop_lr']:.4g})"
  ]
  for name in SUGGESTIONS:
    s = summary["suggestions"].get(name)
    if s is None:
      lines.append(f"  {name:<16} -")
    elif name == "smith":
      lines.append(
        f"  {name:<16} max_lr {s['max_lr']:.4g} (test acc"
        f" {s['accuracy']:.4f}; peak {s['peak_accuracy']:.4f} at lr"
        f" {s['peak_lr']:.4g})"
      )
    else:
      lines.append(f"  {name:<16} {s['lr']:.4g}")
  rec = summary["recommendation"]
  if rec:
    lines.append(
      f"recommended: max_lr {rec['max_lr']:.4g}, min_lr"
      f" {rec['min_lr']:.4g} (rule {rec['rule']}, max_lr /"
      f" {rec['div_factor']:g})"
    )
  lines += [f"note: {n}" for n in summary["notes"]]
  return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class RangeTestResult:
  """A learning-rate range test's outcome.

  Attributes:
    suggestions: {rule: suggestion or None} for every rule of
      `lr_range_test.SUGGESTIONS` (steepest, min_loss_div_10, valley,
      smith), as lr_range_test.json records them.
    recommendation: {"max_lr", "min_lr", "rule", ...} for a schedule, or
      None when no rule gave one (`summary["notes"]` says why).
    summary: the whole of lr_range_test.json.
    rows: the per-step rows of lr_range_test.jsonl.
    figure: the plot (a `matplotlib.figure.Figure`).
    workdir: where the three files were written; None when the test ran
      in a temporary directory that is gone.
  """

  suggestions: dict
  recommendation: dict | None
  summary: dict
  rows: list[dict]
  figure: Any
  workdir: str | None


def range_test(
  config: ml_collections.ConfigDict,
  workdir: str | None = None,
  *,
  program: str = "superconv.lr_range_test",
) -> RangeTestResult:
  """`superconv.lr_range_test`: a range test, as the command line runs it.

  `config`: a `configs/lr_range_test.py`-style config.

  As `python -m superconv.lr_range_test`: the same checks, lock and files.
  `workdir` None: a temporary directory, removed before returning (nothing
  is left behind; the result holds the figure and the rows).
  """
  if workdir is None:
    with tempfile.TemporaryDirectory(prefix="superconv_range_test_") as tmp:
      result = range_test(config, tmp, program=program)
    return dataclasses.replace(result, workdir=None)
  workdir = os.fspath(workdir)
  dataset, held = prepare(config, workdir, program)
  try:
    summary = run(config, workdir, dataset)
  finally:
    if held is not None:
      held.release()
  with open(os.path.join(workdir, JSONL_NAME)) as f:
    rows = [json.loads(line) for line in f]
  return RangeTestResult(
    suggestions=summary["suggestions"],
    recommendation=summary["recommendation"],
    summary=summary,
    rows=rows,
    figure=figure(rows, summary),
    workdir=workdir,
  )


class _CallableModule(types.ModuleType):
  """This module, callable as the API's `superconv.lr_range_test(...)`.

  Importing `superconv.lr_range_test` sets the package's attribute of that
  name to this module, over the API function of the same name; calling the
  module calls the function, so `superconv.lr_range_test(config)` means one
  thing whatever was imported before.
  """

  def __call__(self, config, workdir=None, **kwargs):
    return range_test(config, workdir, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
  # The command's name: the program is superconv.range_test_main.
  import runpy

  runpy.run_module("superconv.range_test_main", run_name="__main__")
