"""Schedules: values against the published formulas, resume, errors, CLI.

Expected values never come from the code under test: they are written out
from the formulas (PyTorch OneCycleLR's phase arithmetic, Smith's CLR, He et
al.'s step decay, cosine with warm-up, Li et al.'s linear decay, Chen et
al.'s REX profile), either as numbers in the tables below or from
`ref_one_cycle`, a plain-Python transcription of PyTorch's OneCycleLR
algorithm.
"""

from __future__ import annotations

import inspect
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from superconv import cli, schedules, schedules_main
from superconv import config as config_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
RTOL = 1e-5  # The bound on relative error (float32 schedules).


def values(fn, steps):
  """fn over int32 steps, jitted and vmapped as the trainer would see it."""
  steps = jnp.asarray(np.asarray(steps, dtype=np.int32))
  return np.asarray(jax.jit(jax.vmap(fn))(steps), dtype=np.float64)


def load_config(name: str, *args):
  return cli.load_config_file(":".join([str(REPO / "configs" / name), *args]))


# ---------------------------------------------------------------------------
# Reference: PyTorch OneCycleLR, transcribed from its algorithm in plain Python.
# Phase k holds the steps with step <= end_step_k (the last phase takes the
# rest); pct = (step - start_step) / (end_step - start_step) where start_step
# is the previous phase's end_step (0.0 for the first phase).
# ---------------------------------------------------------------------------


def ref_one_cycle(
  total_steps,
  max_lr,
  pct_start=0.3,
  anneal_strategy="cos",
  div_factor=25.0,
  final_div_factor=1e4,
  three_phase=False,
  base_momentum=0.85,
  max_momentum=0.95,
):
  initial_lr = max_lr / div_factor
  min_lr = initial_lr / final_div_factor
  if three_phase:
    phases = [
      (
        float(pct_start * total_steps) - 1,
        initial_lr,
        max_lr,
        max_momentum,
        base_momentum,
      ),
      (
        float(2 * pct_start * total_steps) - 2,
        max_lr,
        initial_lr,
        base_momentum,
        max_momentum,
      ),
      (total_steps - 1, initial_lr, min_lr, max_momentum, max_momentum),
    ]
  else:
    phases = [
      (
        float(pct_start * total_steps) - 1,
        initial_lr,
        max_lr,
        max_momentum,
        base_momentum,
      ),
      (total_steps - 1, max_lr, min_lr, base_momentum, max_momentum),
    ]

  def anneal(start, end, pct):
    if anneal_strategy == "cos":
      return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start

  lrs, moms = [], []
  for step in range(total_steps):
    start_step = 0.0
    for i, (end_step, lr0, lr1, m0, m1) in enumerate(phases):
      if step <= end_step or i == len(phases) - 1:
        pct = (step - start_step) / (end_step - start_step)
        lrs.append(anneal(lr0, lr1, pct))
        moms.append(anneal(m0, m1, pct))
        break
      start_step = end_step
  return np.array(lrs), np.array(moms)


# ---------------------------------------------------------------------------
# One-cycle: table of hand-computed points.
# ---------------------------------------------------------------------------

_C = lambda a, b, pct: (
  b + (a - b) / 2 * (1 + math.cos(math.pi * pct))
)  # cos anneal
_L = lambda a, b, pct: a + (b - a) * pct  # linear anneal

# Two-phase cos, T=100, max_lr 1: initial 0.04, min 4e-6; phase ends 29, 99.
OC_COS = dict(total_steps=100, max_lr=1.0)
# Three-phase linear, T=1000, max 0.8, div 10, final_div 1000, pct 0.25:
# initial 0.08, min 8e-5; phase ends 249, 498, 999.
OC_LIN3 = dict(
  total_steps=1000,
  max_lr=0.8,
  pct_start=0.25,
  anneal_strategy="linear",
  div_factor=10.0,
  final_div_factor=1000.0,
  three_phase=True,
)
# Fractional phase end: T=1234, pct 0.3 -> end 0.3 * 1234 - 1 = 369.2.
OC_FRAC = dict(total_steps=1234, max_lr=2.0, pct_start=0.3)
# Three-phase cos, T=10, pct 0.4: ends 3, 6, 9.
OC_COS3 = dict(total_steps=10, max_lr=1.0, pct_start=0.4, three_phase=True)
# Two-phase linear, T=10, pct 0.5: ends 4, 9; initial 0.04, min 4e-6.
OC_LIN = dict(
  total_steps=10, max_lr=1.0, pct_start=0.5, anneal_strategy="linear"
)

ONE_CYCLE_ROWS = [
  # (kwargs, step, expected lr, expected momentum)
  (OC_COS, 0, 0.04, 0.95),  # start: max_lr / div_factor, max_momentum
  (OC_COS, 14, _C(0.04, 1.0, 14 / 29), _C(0.95, 0.85, 14 / 29)),
  (OC_COS, 29, 1.0, 0.85),  # peak: end of phase 1
  (OC_COS, 30, _C(1.0, 4e-6, 1 / 70), _C(0.85, 0.95, 1 / 70)),
  (OC_COS, 64, (1.0 + 4e-6) / 2, 0.90),  # middle of phase 2
  (OC_COS, 98, _C(1.0, 4e-6, 69 / 70), _C(0.85, 0.95, 69 / 70)),
  (OC_COS, 99, 4e-6, 0.95),  # last: initial / final_div_factor
  (OC_LIN3, 0, 0.08, 0.95),
  (OC_LIN3, 124, 0.08 + 0.72 * 124 / 249, 0.95 - 0.1 * 124 / 249),
  (OC_LIN3, 249, 0.8, 0.85),  # peak, phase 1 end
  (OC_LIN3, 373, 0.8 - 0.72 * 124 / 249, 0.85 + 0.1 * 124 / 249),
  (OC_LIN3, 498, 0.08, 0.95),  # phase 2 end: back to initial
  (OC_LIN3, 750, 0.08 + (8e-5 - 0.08) * 252 / 501, 0.95),  # phase 3: m flat
  (OC_LIN3, 999, 8e-5, 0.95),  # last
  (OC_FRAC, 0, 0.08, 0.95),
  (OC_FRAC, 369, _C(0.08, 2.0, 369 / 369.2), _C(0.95, 0.85, 369 / 369.2)),
  (OC_FRAC, 370, _C(2.0, 8e-6, 0.8 / 863.8), _C(0.85, 0.95, 0.8 / 863.8)),
  (OC_FRAC, 1233, 8e-6, 0.95),
  (OC_COS3, 0, 0.04, 0.95),
  (OC_COS3, 3, 1.0, 0.85),
  (OC_COS3, 5, _C(1.0, 0.04, 2 / 3), _C(0.85, 0.95, 2 / 3)),
  (OC_COS3, 6, 0.04, 0.95),
  (OC_COS3, 7, _C(0.04, 4e-6, 1 / 3), 0.95),
  (OC_COS3, 9, 4e-6, 0.95),
  (OC_LIN, 0, 0.04, 0.95),
  (OC_LIN, 2, 0.04 + 0.96 / 2, 0.90),
  (OC_LIN, 4, 1.0, 0.85),
  (OC_LIN, 7, 1.0 + (4e-6 - 1.0) * 3 / 5, 0.85 + 0.1 * 3 / 5),
  (OC_LIN, 9, 4e-6, 0.95),
]


@pytest.mark.parametrize("kwargs,step,lr,momentum", ONE_CYCLE_ROWS)
def test_one_cycle_table(kwargs, step, lr, momentum):
  kwargs = dict(kwargs)
  lr_fn, m_fn = schedules.one_cycle(
    kwargs.pop("total_steps"), kwargs.pop("max_lr"), **kwargs
  )
  np.testing.assert_allclose(values(lr_fn, [step])[0], lr, rtol=RTOL)
  np.testing.assert_allclose(values(m_fn, [step])[0], momentum, rtol=RTOL)


@pytest.mark.parametrize(
  "kwargs",
  [
    dict(total_steps=10_000, max_lr=3.0),
    dict(total_steps=12_345, max_lr=3.0, pct_start=0.25),
    dict(total_steps=12_345, max_lr=0.8, anneal_strategy="linear"),
    dict(
      total_steps=9_215,
      max_lr=0.8,
      pct_start=41 / 95,
      div_factor=10.0,
      final_div_factor=1000.0,
      three_phase=True,
      anneal_strategy="linear",
    ),
    dict(total_steps=10_001, max_lr=1.0, pct_start=0.123, three_phase=True),
    dict(total_steps=64_000, max_lr=0.4, base_momentum=0.8, max_momentum=0.9),
  ],
  ids=[
    "cos-10k",
    "cos-12345",
    "linear-12345",
    "lin3-smith",
    "cos3-10001",
    "cos-64k",
  ],
)
def test_one_cycle_every_step_matches_pytorch_formula(kwargs):
  """Every step i in [0, total_steps): within 1e-5 of OneCycleLR's value."""
  ref_lr, ref_m = ref_one_cycle(**kwargs)
  kwargs = dict(kwargs)
  lr_fn, m_fn = schedules.one_cycle(
    kwargs.pop("total_steps"), kwargs.pop("max_lr"), **kwargs
  )
  steps = np.arange(len(ref_lr))
  np.testing.assert_allclose(values(lr_fn, steps), ref_lr, rtol=RTOL, atol=0)
  np.testing.assert_allclose(values(m_fn, steps), ref_m, rtol=RTOL, atol=0)


def test_one_cycle_without_momentum_and_past_the_end():
  lr_fn, m_fn = schedules.one_cycle(100, 1.0, cycle_momentum=False)
  assert m_fn is None
  # Past the last step the value is held at min_lr (PyTorch would raise).
  np.testing.assert_allclose(
    values(lr_fn, [99, 100, 5000]), [4e-6] * 3, rtol=RTOL
  )
  # Jittable on a scalar step, as inside inject_hyperparams.
  np.testing.assert_allclose(
    float(jax.jit(lr_fn)(jnp.int32(29))), 1.0, rtol=RTOL
  )


# ---------------------------------------------------------------------------
# Cyclical (Smith 2015): lr = base + (max - base) * max(0, 1 - x) * scale,
# cycle = floor(1 + i / (2 ss)), x = |i / ss - 2 cycle + 1|.
# ---------------------------------------------------------------------------

PAPER = dict(base_lr=0.1, max_lr=3.0, step_size=5000)
TRI2 = dict(base_lr=0.0, max_lr=1.0, step_size=100, mode="triangular2")
EXP = dict(
  base_lr=0.1, max_lr=1.1, step_size=100, mode="exp_range", gamma=0.999
)

CYCLICAL_ROWS = [
  # (kwargs, step, lr, h = max(0, 1 - x) * scale)
  (PAPER, 0, 0.1, 0.0),
  (PAPER, 2500, 1.55, 0.5),
  (PAPER, 5000, 3.0, 1.0),  # the paper's peak
  (PAPER, 7500, 1.55, 0.5),
  (PAPER, 9999, 0.1 + 2.9 / 5000, 1 / 5000),  # last step of the 10k run
  (PAPER, 10_000, 0.1, 0.0),  # a second cycle would start here
  (TRI2, 100, 1.0, 1.0),  # cycle 1 top
  (TRI2, 250, 0.25, 0.25),  # cycle 2: x = 0.5, scale 1/2
  (TRI2, 300, 0.5, 0.5),  # cycle 2 top: halved
  (TRI2, 500, 0.25, 0.25),  # cycle 3 top: quartered
  (TRI2, 399, 0.5 / 100, 0.5 / 100),
  (EXP, 0, 0.1, 0.0),
  (EXP, 100, 0.1 + 0.999**100, 0.999**100),
  (EXP, 150, 0.1 + 0.5 * 0.999**150, 0.5 * 0.999**150),
  (EXP, 2100, 0.1 + 0.999**2100, 0.999**2100),
]


@pytest.mark.parametrize("kwargs,step,lr,height", CYCLICAL_ROWS)
def test_cyclical_table(kwargs, step, lr, height):
  lr_fn = schedules.cyclical(**kwargs)
  np.testing.assert_allclose(values(lr_fn, [step])[0], lr, rtol=RTOL)
  # Momentum cycled inversely: 0.95 at the LR's bottom, 0.85 at its top.
  m_kwargs = {k: v for k, v in kwargs.items() if k not in ("base_lr", "max_lr")}
  m_fn = schedules.cyclical_momentum(0.85, 0.95, **m_kwargs)
  np.testing.assert_allclose(
    values(m_fn, [step])[0], 0.95 - 0.1 * height, rtol=RTOL
  )


# ---------------------------------------------------------------------------
# Baselines through the config, as the trainer builds them.
# ---------------------------------------------------------------------------


def he_config(**schedule):
  s = config_lib.default_schedule_config()
  s.name = "piecewise"
  s.max_lr = 0.1
  s.boundaries = (32_000, 48_000)
  s.decay_factors = (0.1, 0.1)
  for k, v in schedule.items():
    setattr(s, k, v)
  return s


def cosine_config(**schedule):
  s = config_lib.default_schedule_config()
  s.name = "cosine"
  s.max_lr = 1.0
  s.warmup = 100
  s.warmup_start_factor = 0.1
  for k, v in schedule.items():
    setattr(s, k, v)
  return s


_cos = lambda t, d: 0.5 * (1 + math.cos(math.pi * t / d))

BASELINE_ROWS = [
  # (name, config, total_steps, steps_per_epoch, step, lr, momentum)
  # He et al.: 0.1, /10 at 32k and 48k of 64k steps.
  ("he", he_config(), 64_000, 390, 0, 0.1, 0.9),
  ("he", he_config(), 64_000, 390, 31_999, 0.1, 0.9),
  ("he", he_config(), 64_000, 390, 32_000, 0.01, 0.9),
  ("he", he_config(), 64_000, 390, 47_999, 0.01, 0.9),
  ("he", he_config(), 64_000, 390, 48_000, 0.001, 0.9),
  ("he", he_config(), 64_000, 390, 63_999, 0.001, 0.9),
  # ...with a 500-step warm-up from 0.1 x 0.1 (boundaries stay absolute).
  ("he+warmup", he_config(warmup=500), 64_000, 390, 0, 0.01, 0.9),
  ("he+warmup", he_config(warmup=500), 64_000, 390, 250, 0.055, 0.9),
  ("he+warmup", he_config(warmup=500), 64_000, 390, 500, 0.1, 0.9),
  ("he+warmup", he_config(warmup=500), 64_000, 390, 31_999, 0.1, 0.9),
  ("he+warmup", he_config(warmup=500), 64_000, 390, 32_000, 0.01, 0.9),
  ("he+warmup", he_config(warmup=500), 64_000, 390, 48_000, 0.001, 0.9),
  ("he+warmup", he_config(warmup=500), 64_000, 390, 63_999, 0.001, 0.9),
  # Same in epochs (390 steps/epoch): warm-up 2 ep, boundaries 25, 37.5 ep.
  (
    "epochs",
    he_config(unit="epochs", warmup=2.0, boundaries=(25.0, 37.5)),
    19_500,
    390,
    780,
    0.1,
    0.9,
  ),
  (
    "epochs",
    he_config(unit="epochs", warmup=2.0, boundaries=(25.0, 37.5)),
    19_500,
    390,
    9_749,
    0.1,
    0.9,
  ),
  (
    "epochs",
    he_config(unit="epochs", warmup=2.0, boundaries=(25.0, 37.5)),
    19_500,
    390,
    9_750,
    0.01,
    0.9,
  ),
  (
    "epochs",
    he_config(unit="epochs", warmup=2.0, boundaries=(25.0, 37.5)),
    19_500,
    390,
    14_625,
    0.001,
    0.9,
  ),
  # Fractions of the run: boundaries at 50% and 75% of 1000 steps.
  (
    "fraction",
    he_config(unit="fraction", boundaries=(0.5, 0.75)),
    1000,
    10,
    499,
    0.1,
    0.9,
  ),
  (
    "fraction",
    he_config(unit="fraction", boundaries=(0.5, 0.75)),
    1000,
    10,
    500,
    0.01,
    0.9,
  ),
  (
    "fraction",
    he_config(unit="fraction", boundaries=(0.5, 0.75)),
    1000,
    10,
    750,
    0.001,
    0.9,
  ),
  # Cosine, warm-up 100 of 1000 steps from 0.1, peak 1, to 0 at step 1000.
  ("cosine", cosine_config(), 1000, 10, 0, 0.1, 0.9),
  ("cosine", cosine_config(), 1000, 10, 50, 0.55, 0.9),
  ("cosine", cosine_config(), 1000, 10, 100, 1.0, 0.9),
  ("cosine", cosine_config(), 1000, 10, 550, 0.5, 0.9),
  ("cosine", cosine_config(), 1000, 10, 999, _cos(899, 900), 0.9),
  (
    "cosine",
    cosine_config(final_lr_factor=0.1),
    1000,
    10,
    999,
    0.1 + 0.9 * _cos(899, 900),
    0.9,
  ),
  # Cosine with momentum cycled inversely (LR range [0, 1] -> m .95..0.85).
  ("cosine+cm", cosine_config(cycle_momentum=True), 1000, 10, 0, 0.1, 0.94),
  ("cosine+cm", cosine_config(cycle_momentum=True), 1000, 10, 100, 1.0, 0.85),
  ("cosine+cm", cosine_config(cycle_momentum=True), 1000, 10, 550, 0.5, 0.90),
  # Constant with warm-up.
  (
    "constant",
    cosine_config(name="constant", warmup=10),
    100,
    10,
    5,
    0.55,
    0.9,
  ),
  (
    "constant",
    cosine_config(name="constant", warmup=10),
    100,
    10,
    99,
    1.0,
    0.9,
  ),
]


@pytest.mark.parametrize(
  "name,s,total,spe,step,lr,momentum",
  BASELINE_ROWS,
  ids=[f"{r[0]}-{r[4]}" for r in BASELINE_ROWS],
)
def test_baseline_table(name, s, total, spe, step, lr, momentum):
  lr_fn, m_fn = schedules.create(
    s, momentum=0.9, steps_per_epoch=spe, total_steps=total
  )
  np.testing.assert_allclose(values(lr_fn, [step])[0], lr, rtol=RTOL)
  np.testing.assert_allclose(values(m_fn, [step])[0], momentum, rtol=RTOL)


def test_create_one_cycle_and_cyclical_from_config():
  s = config_lib.default_schedule_config()  # The paper's CLR run.
  lr_fn, m_fn = schedules.create(
    s, momentum=0.9, steps_per_epoch=50, total_steps=10_000
  )
  np.testing.assert_allclose(
    values(lr_fn, [0, 5000, 9999]), [0.1, 3.0, 0.1 + 2.9 / 5000], rtol=RTOL
  )
  np.testing.assert_allclose(values(m_fn, [0, 5000]), [0.9, 0.9], rtol=RTOL)
  s.step_size = 100.0  # epochs: 100 x 50 steps = 5000 steps, same schedule
  s.unit = "epochs"
  lr_fn, _ = schedules.create(
    s, momentum=0.9, steps_per_epoch=50, total_steps=10_000
  )
  np.testing.assert_allclose(values(lr_fn, [5000]), [3.0], rtol=RTOL)

  s = config_lib.default_schedule_config()
  s.name = "one_cycle"
  s.max_lr = 1.0
  # cycle_momentum left at its default: one_cycle cycles 0.95 -> 0.85 -> 0.95
  # as OneCycleLR (cycle_momentum=True, base 0.85, max 0.95).
  assert s.cycle_momentum is None
  lr_fn, m_fn = schedules.create(
    s, momentum=0.9, steps_per_epoch=10, total_steps=100
  )
  ref_lr, ref_m = ref_one_cycle(100, 1.0)
  np.testing.assert_allclose(values(lr_fn, range(100)), ref_lr, rtol=RTOL)
  np.testing.assert_allclose(values(m_fn, range(100)), ref_m, rtol=RTOL)
  s.cycle_momentum = False
  _, m_fn = schedules.create(
    s, momentum=0.9, steps_per_epoch=10, total_steps=100
  )
  np.testing.assert_allclose(values(m_fn, [0, 29, 99]), [0.9] * 3, rtol=RTOL)


# ---------------------------------------------------------------------------
# Default momentum: one_cycle cycles it (OneCycleLR), the others keep it.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,overrides,steps,momenta",
  [
    # OneCycleLR defaults over 100 steps: 0.95 at 0, 0.85 at the peak (29).
    ("one_cycle", {}, [0, 29, 99], [0.95, 0.85, 0.95]),
    ("one_cycle", dict(cycle_momentum=False), [0, 29, 99], [0.9] * 3),
    # The paper's CLR runs (configs/default.py): constant 0.9.
    ("cyclical", dict(step_size=50.0), [0, 50, 99], [0.9] * 3),
    (
      "cyclical",
      dict(step_size=50.0, cycle_momentum=True),
      [0, 50],
      [0.95, 0.85],
    ),
    (
      "piecewise",
      dict(boundaries=(50,), decay_factors=(0.1,)),
      [0, 99],
      [0.9] * 2,
    ),
    ("cosine", {}, [0, 99], [0.9] * 2),
    ("constant", {}, [0, 99], [0.9] * 2),
    ("linear", {}, [0, 99], [0.9] * 2),
    ("rex", {}, [0, 99], [0.9] * 2),
  ],
  ids=lambda v: v if isinstance(v, str) else None,
)
def test_default_momentum(name, overrides, steps, momenta):
  s = config_lib.default_schedule_config()
  s.name = name
  s.max_lr = 1.0
  for k, v in overrides.items():
    setattr(s, k, v)
  _, m_fn = schedules.create(
    s, momentum=0.9, steps_per_epoch=10, total_steps=100
  )
  np.testing.assert_allclose(values(m_fn, steps), momenta, rtol=RTOL)


# ---------------------------------------------------------------------------
# OneCycleLR's epochs + steps_per_epoch form: total_steps = epochs * spe.
# ---------------------------------------------------------------------------


def test_one_cycle_epochs_form_equals_total_steps():
  ref_lr, ref_m = ref_one_cycle(120, 1.0)  # 12 epochs x 10 steps
  lr_fn, m_fn = schedules.one_cycle(None, 1.0, epochs=12, steps_per_epoch=10)
  np.testing.assert_allclose(values(lr_fn, range(120)), ref_lr, rtol=RTOL)
  np.testing.assert_allclose(values(m_fn, range(120)), ref_m, rtol=RTOL)
  # Both forms, consistent: the same schedule.
  lr_fn, _ = schedules.one_cycle(120, 1.0, epochs=12, steps_per_epoch=10)
  np.testing.assert_allclose(values(lr_fn, range(120)), ref_lr, rtol=RTOL)


@pytest.mark.parametrize(
  "epochs,spe,total",
  [
    (12, 0, 120),  # steps_per_epoch 0 = the data's 10.
    (12, 10, 120),
    (4, 30, 120),  # Another split of the same 120 steps.
  ],
)
def test_one_cycle_epochs_form_in_the_config(epochs, spe, total):
  s = config_lib.default_schedule_config()
  s.name = "one_cycle"
  s.max_lr = 1.0
  s.epochs = epochs
  s.steps_per_epoch = spe
  lr_fn, m_fn = schedules.create(
    s, momentum=0.9, steps_per_epoch=10, total_steps=total
  )
  ref_lr, ref_m = ref_one_cycle(total, 1.0)
  np.testing.assert_allclose(values(lr_fn, range(total)), ref_lr, rtol=RTOL)
  np.testing.assert_allclose(values(m_fn, range(total)), ref_m, rtol=RTOL)


def test_one_cycle_epochs_form_errors_name_the_argument():
  with pytest.raises(
    schedules.ScheduleError,
    match=r"^epochs: 12 epochs x 9 steps_per_epoch = 108 steps, but"
    r" total_steps is 120;",
  ):
    schedules.one_cycle(120, 1.0, epochs=12, steps_per_epoch=9)
  with pytest.raises(schedules.ScheduleError, match=r"^total_steps: give"):
    schedules.one_cycle(None, 1.0)
  with pytest.raises(
    schedules.ScheduleError, match=r"^steps_per_epoch: must be a positive"
  ):
    schedules.one_cycle(None, 1.0, epochs=12)


# ---------------------------------------------------------------------------
# Budget baselines: linear decay (Li, Yumer & Ramanan 2020) and REX (Chen,
# Wolfe & Kyrillidis 2021), each after an optional linear warm-up of W steps:
#   z = (t - W) / (T - W), linear: 1 - z, REX: (1 - z) / (1/2 + (1 - z) / 2),
#   lr = f max_lr + (1 - f) max_lr profile(z), f = final_lr_factor.
# ---------------------------------------------------------------------------

_lin = lambda z: 1 - z
_rex = lambda z: (1 - z) / (0.5 + 0.5 * (1 - z))


def budget_config(name, **schedule):
  s = config_lib.default_schedule_config()
  s.name = name
  s.max_lr = 1.0
  for k, v in schedule.items():
    setattr(s, k, v)
  return s


LIN = budget_config("linear")
LIN_W = budget_config("linear", warmup=100)
LIN_W_EP = budget_config("linear", unit="epochs", warmup=2.0)  # 2 x 50 steps.
LIN_F = budget_config("linear", warmup=100, final_lr_factor=0.1)
LIN_CM = budget_config("linear", warmup=100, cycle_momentum=True)
REX = budget_config("rex", max_lr=2.0)
REX_W = budget_config("rex", warmup=100)
REX_F = budget_config("rex", final_lr_factor=0.2)
REX_CM = budget_config("rex", warmup=100, cycle_momentum=True)

BUDGET_ROWS = [
  # (name, config, total_steps, step, lr, momentum); 50 steps per epoch.
  # Linear, no warm-up: the peak is step 0; 0 would come at step T = 1000.
  ("linear", LIN, 1000, 0, 1.0, 0.9),
  ("linear", LIN, 1000, 250, _lin(0.25), 0.9),
  ("linear", LIN, 1000, 500, 0.5, 0.9),
  ("linear", LIN, 1000, 999, _lin(999 / 1000), 0.9),  # last step: 0.001
  # Warm-up 100 steps from 0.1 x max_lr, then decay over 900 steps.
  ("linear+warmup", LIN_W, 1000, 0, 0.1, 0.9),
  ("linear+warmup", LIN_W, 1000, 50, 0.55, 0.9),
  ("linear+warmup", LIN_W, 1000, 100, 1.0, 0.9),  # peak
  ("linear+warmup", LIN_W, 1000, 550, 0.5, 0.9),
  ("linear+warmup", LIN_W, 1000, 999, _lin(899 / 900), 0.9),
  # Same in epochs.
  ("linear+warmup-epochs", LIN_W_EP, 1000, 50, 0.55, 0.9),
  ("linear+warmup-epochs", LIN_W_EP, 1000, 100, 1.0, 0.9),
  ("linear+warmup-epochs", LIN_W_EP, 1000, 999, _lin(899 / 900), 0.9),
  # To 0.1 x max_lr instead of 0.
  ("linear+final", LIN_F, 1000, 550, 0.1 + 0.9 * 0.5, 0.9),
  ("linear+final", LIN_F, 1000, 999, 0.1 + 0.9 * _lin(899 / 900), 0.9),
  # Momentum cycled inversely: LR range [0, 1] -> 0.95 - 0.1 lr.
  ("linear+cm", LIN_CM, 1000, 0, 0.1, 0.94),
  ("linear+cm", LIN_CM, 1000, 100, 1.0, 0.85),
  ("linear+cm", LIN_CM, 1000, 550, 0.5, 0.90),
  # REX, no warm-up, max_lr 2 over 900 steps: half the peak at z = 2/3.
  ("rex", REX, 900, 0, 2.0, 0.9),
  ("rex", REX, 900, 300, 2 * _rex(1 / 3), 0.9),  # 2 * 0.8
  ("rex", REX, 900, 450, 2 * _rex(0.5), 0.9),  # 2 * 2/3
  ("rex", REX, 900, 600, 1.0, 0.9),
  ("rex", REX, 900, 899, 2 * _rex(899 / 900), 0.9),
  # Warm-up 100 steps from 0.1, then REX over 900 steps.
  ("rex+warmup", REX_W, 1000, 0, 0.1, 0.9),
  ("rex+warmup", REX_W, 1000, 50, 0.55, 0.9),
  ("rex+warmup", REX_W, 1000, 100, 1.0, 0.9),  # peak
  ("rex+warmup", REX_W, 1000, 550, _rex(0.5), 0.9),
  ("rex+warmup", REX_W, 1000, 700, 0.5, 0.9),  # z = 2/3
  ("rex+warmup", REX_W, 1000, 999, _rex(899 / 900), 0.9),
  ("rex+final", REX_F, 1000, 500, 0.2 + 0.8 * _rex(0.5), 0.9),
  ("rex+final", REX_F, 1000, 999, 0.2 + 0.8 * _rex(0.999), 0.9),
  ("rex+cm", REX_CM, 1000, 100, 1.0, 0.85),
  ("rex+cm", REX_CM, 1000, 700, 0.5, 0.90),
]


@pytest.mark.parametrize(
  "name,s,total,step,lr,momentum",
  BUDGET_ROWS,
  ids=[f"{r[0]}-{r[3]}" for r in BUDGET_ROWS],
)
def test_budget_schedule_table(name, s, total, step, lr, momentum):
  lr_fn, m_fn = schedules.create(
    s, momentum=0.9, steps_per_epoch=50, total_steps=total
  )
  np.testing.assert_allclose(values(lr_fn, [step])[0], lr, rtol=RTOL)
  np.testing.assert_allclose(values(m_fn, [step])[0], momentum, rtol=RTOL)


@pytest.mark.parametrize(
  "shape,profile", [("linear", _lin), ("rex", _rex)], ids=["linear", "rex"]
)
@pytest.mark.parametrize("total,warmup", [(80_000, 0), (80_000, 2_000)])
def test_budget_schedules_every_step_match_the_formula(
  shape, profile, total, warmup
):
  """Every step of an 80k-step run within 1e-5 relative of the float64
  formula, the last steps' tiny values included (float32 `1 - t / T` near
  t = T, as optax.linear_schedule computes it, is up to 0.14% off there)."""
  lr_fn = schedules.warmup_decay(
    0.8, total, shape, warmup_steps=warmup, warmup_start_factor=0.1
  )
  t = np.arange(total, dtype=np.float64)
  z = (t - warmup) / (total - warmup)
  expected = np.where(
    t < warmup, 0.08 + 0.72 * t / max(warmup, 1), 0.8 * profile(z)
  )
  np.testing.assert_allclose(values(lr_fn, t), expected, rtol=RTOL, atol=0)
  # Held at the final value past the end of the run.
  np.testing.assert_allclose(
    values(lr_fn, [total, total + 500]), [0.0, 0.0], atol=0
  )


# ---------------------------------------------------------------------------
# Resume: the schedule continues exactly from a round-tripped optimizer state.
# ---------------------------------------------------------------------------


def _resume_schedules(name, total):
  if name == "one_cycle":
    return schedules.one_cycle(total, 1.0, pct_start=0.4, three_phase=True)
  s = config_lib.default_schedule_config()
  s.name = name
  s.max_lr = 1.0
  s.warmup = 5
  s.cycle_momentum = True
  return schedules.create(
    s, momentum=0.9, steps_per_epoch=10, total_steps=total
  )


@pytest.mark.parametrize("name", ["one_cycle", "linear", "rex"])
def test_resumed_optimizer_state_continues_schedule(name):
  total, k = 40, 17
  lr_fn, m_fn = _resume_schedules(name, total)
  tx = optax.inject_hyperparams(optax.sgd, static_args=("nesterov",))(
    learning_rate=lr_fn, momentum=m_fn, nesterov=True
  )
  params = {"w": jnp.arange(3, dtype=jnp.float32)}
  grads = {"w": jnp.ones(3, dtype=jnp.float32)}

  @jax.jit
  def step(params, state):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  expected_lr = values(lr_fn, range(total))
  expected_m = values(m_fn, range(total))
  assert len(set(expected_lr)) > total // 2  # a schedule that really moves

  def check(state, i):
    # After update i, the state holds the values that update used.
    assert int(state.count) == i + 1
    np.testing.assert_allclose(
      float(state.hyperparams["learning_rate"]), expected_lr[i], rtol=1e-6
    )
    np.testing.assert_allclose(
      float(state.hyperparams["momentum"]), expected_m[i], rtol=1e-6
    )

  # Uninterrupted run.
  p_ref, s_ref = params, tx.init(params)
  for i in range(total):
    p_ref, s_ref = step(p_ref, s_ref)
    check(s_ref, i)

  # k steps, then a host round trip (as a checkpoint would), then the rest.
  p, s = params, tx.init(params)
  for _ in range(k):
    p, s = step(p, s)
  saved = jax.tree.map(np.array, jax.device_get((p, s)))
  p, s = jax.tree.map(jnp.asarray, saved)
  for i in range(k, total):
    p, s = step(p, s)
    check(s, i)
  np.testing.assert_array_equal(np.asarray(p["w"]), np.asarray(p_ref["w"]))


# ---------------------------------------------------------------------------
# Errors: one line, naming the key.
# ---------------------------------------------------------------------------

ERROR_ROWS = [
  # (overrides, total_steps, expected message prefix)
  (dict(name="sgdr"), 1000, "schedule.name: unknown 'sgdr'"),
  (dict(unit="minutes"), 1000, "schedule.unit: unknown 'minutes'"),
  (
    dict(name="one_cycle", pct_start=1.5),
    1000,
    "schedule.pct_start: must be in (0, 1), got 1.5",
  ),
  (
    dict(name="one_cycle", pct_start=0.0),
    1000,
    "schedule.pct_start: must be in (0, 1), got 0.0",
  ),
  (dict(name="one_cycle", pct_start=0.001), 500, "schedule.pct_start: 0.001"),
  (
    dict(name="one_cycle", pct_start=0.6, three_phase=True),
    1000,
    "schedule.pct_start: 0.6 of 1000 steps leaves no third phase",
  ),
  (
    dict(name="one_cycle", max_lr=0.0),
    1000,
    "schedule.max_lr: must be > 0, got 0.0",
  ),
  (
    dict(name="one_cycle", anneal_strategy="exp"),
    1000,
    "schedule.anneal_strategy: unknown 'exp'; valid: cos, linear",
  ),
  (dict(name="one_cycle", div_factor=0.0), 1000, "schedule.div_factor"),
  (
    dict(name="one_cycle", cycle_momentum=True, base_momentum=0.99),
    1000,
    "schedule.base_momentum: 0.99 exceeds max_momentum 0.95",
  ),
  (
    dict(name="one_cycle", cycle_momentum=True, max_momentum=1.0),
    1000,
    "schedule.max_momentum: must be in [0, 1)",
  ),
  (dict(max_lr=-1.0), 1000, "schedule.max_lr: must be > 0"),
  (dict(base_lr=5.0), 10_000, "schedule.base_lr: must be in [0, max_lr=3.0]"),
  (dict(mode="sine"), 10_000, "schedule.mode: unknown 'sine'"),
  (dict(step_size=0.0), 10_000, "schedule.step_size: must be at least one"),
  (dict(mode="exp_range", gamma=0.0), 10_000, "schedule.gamma"),
  (
    dict(
      name="piecewise",
      max_lr=0.1,
      boundaries=(32_000, 70_000),
      decay_factors=(0.1, 0.1),
    ),
    64_000,
    "schedule.boundaries: 70000 is past the end of the run (64000 steps)",
  ),
  (
    dict(
      name="piecewise",
      max_lr=0.1,
      boundaries=(48_000, 32_000),
      decay_factors=(0.1, 0.1),
    ),
    64_000,
    "schedule.boundaries: must be strictly increasing, got 48000 then 32000",
  ),
  (
    dict(
      name="piecewise",
      max_lr=0.1,
      boundaries=(32_000, 48_000),
      decay_factors=(0.1,),
    ),
    64_000,
    "schedule.decay_factors: has 1 entries for 2 boundaries",
  ),
  (
    dict(
      name="piecewise",
      max_lr=0.1,
      boundaries=(400,),
      decay_factors=(0.1,),
      warmup=500,
    ),
    64_000,
    "schedule.boundaries: 400 is not after the warm-up (500 steps)",
  ),
  (
    dict(
      name="piecewise", max_lr=0.1, boundaries=(32_000,), decay_factors=(-0.1,)
    ),
    64_000,
    "schedule.decay_factors: must be > 0",
  ),
  (
    dict(name="cosine", warmup=2000),
    1000,
    "schedule.warmup: 2000 steps is not shorter than the run (1000 steps)",
  ),
  (
    dict(name="cosine", warmup_start_factor=1.5),
    1000,
    "schedule.warmup_start_factor: must be in [0, 1]",
  ),
  (
    dict(name="cosine", final_lr_factor=2.0),
    1000,
    "schedule.final_lr_factor: must be in [0, 1]",
  ),
  (
    dict(name="constant", cycle_momentum=True),
    1000,
    "schedule.cycle_momentum:",
  ),
  (
    dict(name="linear", final_lr_factor=1.5),
    1000,
    "schedule.final_lr_factor: must be in [0, 1], got 1.5",
  ),
  (
    dict(name="rex", final_lr_factor=-0.1),
    1000,
    "schedule.final_lr_factor: must be in [0, 1], got -0.1",
  ),
  (
    dict(name="rex", warmup=1000),
    1000,
    "schedule.warmup: 1000 steps is not shorter than the run (1000 steps)",
  ),
  (dict(name="linear", max_lr=0.0), 1000, "schedule.max_lr: must be > 0"),
  (
    dict(name="linear", final_lr_factor=1.0, cycle_momentum=True),
    1000,
    "schedule.cycle_momentum: the 'linear' LR never changes here",
  ),
  # OneCycleLR's epochs x steps_per_epoch (0 = the data's 50) must be the
  # run's length.
  (
    dict(name="one_cycle", epochs=30),
    1000,
    "schedule.epochs: 30 epochs x 50 steps_per_epoch = 1500 steps, but the"
    " run lasts 1000 steps",
  ),
  (
    dict(name="one_cycle", epochs=20, steps_per_epoch=49),
    1000,
    "schedule.epochs: 20 epochs x 49 steps_per_epoch = 980 steps, but the"
    " run lasts 1000 steps",
  ),
  (
    dict(name="one_cycle", steps_per_epoch=50),
    1000,
    "schedule.epochs: must be a positive integer",
  ),
  (
    dict(name="one_cycle", epochs=-20),
    1000,
    "schedule.epochs: must be a positive integer",
  ),
]


@pytest.mark.parametrize(
  "overrides,total,message",
  ERROR_ROWS,
  ids=[r[2].split(":")[0] + f"-{i}" for i, r in enumerate(ERROR_ROWS)],
)
def test_schedule_errors_name_the_key(overrides, total, message):
  s = config_lib.default_schedule_config()
  for k, v in overrides.items():
    setattr(s, k, v)
  with pytest.raises(schedules.ScheduleError) as e:
    schedules.validate(s, steps_per_epoch=50, total_steps=total)
  assert str(e.value).startswith(message), str(e.value)
  assert "\n" not in str(e.value)
  with pytest.raises(schedules.ScheduleError):  # create validates too
    schedules.create(s, momentum=0.9, steps_per_epoch=50, total_steps=total)


def test_builder_errors_name_the_argument():
  with pytest.raises(schedules.ScheduleError, match=r"^pct_start: must be"):
    schedules.one_cycle(100, 1.0, pct_start=1.0)
  with pytest.raises(schedules.ScheduleError, match=r"^mode: unknown"):
    schedules.cyclical(0.1, 1.0, 10, mode="square")
  with pytest.raises(
    schedules.ScheduleError, match=r"^boundaries: 70000 is past the end"
  ):
    schedules.warmup_piecewise(0.1, [70_000], [0.1], total_steps=64_000)
  with pytest.raises(schedules.ScheduleError, match=r"^shape: unknown 'exp'"):
    schedules.warmup_decay(0.1, 1000, "exp")
  with pytest.raises(schedules.ScheduleError, match=r"^final_lr_factor: must"):
    schedules.warmup_decay(0.1, 1000, "rex", final_lr_factor=2.0)


def test_every_default_field_is_commented():
  source = inspect.getsource(config_lib.default_schedule_config).splitlines()
  fields = list(config_lib.default_schedule_config().keys())
  assert {
    "name",
    "unit",
    "max_lr",
    "base_lr",
    "step_size",
    "pct_start",
    "div_factor",
    "final_div_factor",
  } <= set(fields)
  for field in fields:
    ((i, line),) = [
      (i, l) for i, l in enumerate(source) if re.match(rf"\s*s\.{field} = ", l)
    ]
    assert "#" in line or source[i - 1].strip().startswith("#"), field


# ---------------------------------------------------------------------------
# Experiment configs: their schedules hit the numbers their docstrings cite.
# ---------------------------------------------------------------------------

CONFIG_ROWS = [
  # (file, steps_per_epoch, total_steps, [(step, lr, momentum)])
  ("default.py", 50, 10_000, [(0, 0.1, 0.9), (5000, 3.0, 0.9)]),
  (
    "paper_piecewise.py",
    50,
    80_000,
    [
      (0, 0.35, 0.9),
      (49_999, 0.35, 0.9),
      (50_000, 0.035, 0.9),
      (70_000, 0.0035, 0.9),
      (79_999, 0.0035, 0.9),
    ],
  ),
  (
    "he2016_resnet56.py",
    390,
    64_000,
    [(0, 0.1, 0.9), (32_000, 0.01, 0.9), (48_000, 0.001, 0.9)],
  ),
  (
    "onecycle_resnet56.py",
    97,
    9215,
    [
      (0, 0.08, 0.95),
      (3976, 0.8, 0.85),
      (7952, 0.08, 0.95),
      (9214, 8e-5, 0.95),
    ],
  ),
  (
    "tuned_resnet18.py",
    390,
    19_500,
    [(0, 0.01, 0.9), (780, 0.1, 0.9), (9750, 0.01, 0.9), (14_625, 0.001, 0.9)],
  ),
  (
    "cosine_resnet56.py",
    50,
    10_000,
    [(0, 0.08, 0.9), (250, 0.8, 0.9), (5125, 0.4, 0.9)],
  ),
]


@pytest.mark.parametrize(
  "name,spe,total,rows", CONFIG_ROWS, ids=[r[0] for r in CONFIG_ROWS]
)
def test_experiment_config_schedules(name, spe, total, rows):
  config = load_config(name)
  assert config_lib.steps_per_epoch(50_000, config.batch_size) == spe
  assert config_lib.total_steps(config, 50_000) == total
  lr_fn, m_fn = schedules.create(
    config.schedule,
    momentum=config.momentum,
    steps_per_epoch=spe,
    total_steps=total,
  )
  steps, lrs, moms = zip(*rows)
  np.testing.assert_allclose(values(lr_fn, steps), lrs, rtol=RTOL)
  np.testing.assert_allclose(values(m_fn, steps), moms, rtol=RTOL)


# The CPU study's arms (200 steps of batch 256, 195 steps per epoch), max_lr
# 0.4: one-cycle and piecewise as committed in results/study_cpu/, and the
# linear arm with piecewise's warm-up (20 steps from 0.04).
STUDY_ROWS = [
  # (arm, [(step, lr, momentum)])
  (
    "onecycle",
    [(0, 0.016, 0.95), (49, 0.4, 0.85), (199, 0.016 / 1e4, 0.95)],
  ),
  (
    "piecewise",
    [
      (0, 0.04, 0.9),
      (10, 0.22, 0.9),
      (20, 0.4, 0.9),
      (99, 0.4, 0.9),
      (100, 0.04, 0.9),
      (150, 0.004, 0.9),
      (199, 0.004, 0.9),
    ],
  ),
  (
    "linear",
    [
      (0, 0.04, 0.9),
      (10, 0.22, 0.9),
      (20, 0.4, 0.9),  # peak: end of the warm-up
      (110, 0.4 * (1 - 90 / 180), 0.9),
      (199, 0.4 * (1 - 179 / 180), 0.9),  # last step
    ],
  ),
]


@pytest.mark.parametrize("arm,rows", STUDY_ROWS, ids=[r[0] for r in STUDY_ROWS])
def test_study_cpu_arms(arm, rows):
  config = load_config("study_cpu.py", arm)
  lr_fn, m_fn = schedules.create(
    config.schedule,
    momentum=config.momentum,
    steps_per_epoch=195,
    total_steps=config.num_steps,
  )
  steps, lrs, moms = zip(*rows)
  np.testing.assert_allclose(values(lr_fn, steps), lrs, rtol=RTOL)
  np.testing.assert_allclose(values(m_fn, steps), moms, rtol=RTOL)


# ---------------------------------------------------------------------------
# The command-line program.
# ---------------------------------------------------------------------------


def _table_rows(text: str) -> dict[int, tuple[str, float, float, float]]:
  """{step: (point, epoch, lr, momentum)} parsed from the printed table."""
  rows = {}
  for line in text.splitlines():
    m = re.match(r"^(\S.*?)\s+(\d+)\s+([\d.]+)\s+(\S+)\s+([\d.]+)$", line)
    if m and m.group(1) != "point":
      rows[int(m.group(2))] = (
        m.group(1),
        float(m.group(3)),
        float(m.group(4)),
        float(m.group(5)),
      )
  return rows


def test_run_prints_key_points_and_plots(tmp_path):
  out = tmp_path / "schedule.png"
  text = schedules_main.run(
    load_config("onecycle_resnet56.py"), out=str(out), title="test"
  )
  rows = _table_rows(text)
  assert sorted(rows) == [0, 3976, 7952, 9214]
  assert rows[3976][0] == "peak, phase 1 end"
  np.testing.assert_allclose(rows[3976][1:], [3976 / 97, 0.8, 0.85], rtol=1e-4)
  np.testing.assert_allclose(rows[9214][2], 8e-5, rtol=1e-4)
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_prints_a_linear_schedule():
  text = schedules_main.run(load_config("study_cpu.py", "linear"), out=None)
  assert "linear max_lr 0.4, warm-up 0.1 fraction from 0.1x" in text
  assert "constant momentum 0.9" in text
  rows = _table_rows(text)
  assert sorted(rows) == [0, 20, 199]
  assert rows[20][0] == "peak, warm-up end"
  np.testing.assert_allclose(rows[20][2:], [0.4, 0.9], rtol=1e-4)
  np.testing.assert_allclose(rows[199][2], 0.4 / 180, rtol=1e-4)


def test_cli_on_default_config(tmp_path):
  out = tmp_path / "default.png"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "superconv.schedules",
      "--config",
      str(REPO / "configs" / "default.py"),
      "--out",
      str(out),
      "--config.schedule.base_lr=0.1",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=env,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  rows = _table_rows(result.stdout)
  point, epoch, lr, momentum = rows[5000]
  assert "peak" in point
  assert (epoch, lr, momentum) == (100.0, 3.0, 0.9)
  assert rows[0][2] == 0.1 and 9999 in rows
  assert "50 steps" in result.stdout  # floor(50000 / 1000) per epoch
  assert out.stat().st_size > 10_000
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_reports_config_error(tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "superconv.schedules",
      "--config",
      str(REPO / "configs" / "default.py"),
      "--out",
      "",
      "--config.schedule.mode=sine",
    ],
    capture_output=True,
    text=True,
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    timeout=120,
  )
  assert result.returncode != 0
  assert "schedule.mode: unknown 'sine'" in result.stderr
