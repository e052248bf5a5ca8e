"""The training loop's pieces, alone: the step rule (train.Cadence)."""

import pytest

from superconv import config as config_lib
from superconv import train

# total 10, log every 3, eval every 4, checkpoint every 5 (0 = never).
CADENCE = train.Cadence(total=10, log_every=3, eval_every=4, checkpoint_every=5)

# step, stopping -> (syncs, logs, evaluates, saves)
TABLE = [
  (1, False, (False, False, False, False)),
  (2, False, (False, False, False, False)),
  (3, False, (True, True, False, False)),  # Log.
  (4, False, (True, True, True, False)),  # Eval (its row is flushed first).
  (5, False, (True, True, False, True)),  # Checkpoint.
  (6, False, (True, True, False, False)),
  (7, False, (False, False, False, False)),
  (7, True, (False, True, False, True)),  # A signal: save and log now.
  (8, False, (True, True, True, False)),
  (9, False, (True, True, False, False)),
  (10, False, (True, True, True, True)),  # The last step does everything.
]


@pytest.mark.parametrize("step,stopping,expected", TABLE)
def test_the_step_rule(step, stopping, expected):
  got = (
    CADENCE.syncs(step),
    CADENCE.logs(step, stopping),
    CADENCE.evaluates(step),
    CADENCE.saves(step, stopping),
  )
  assert got == expected


def test_period_zero_means_never_but_the_last_step_still_acts():
  never = train.Cadence(total=4, log_every=0, eval_every=0, checkpoint_every=0)
  assert [never.syncs(s) for s in range(1, 5)] == [False] * 3 + [True]
  assert [never.saves(s, False) for s in range(1, 5)] == [False] * 3 + [True]
  assert never.is_last(4) and not never.is_last(3)


@pytest.mark.parametrize(
  "eval_every_epochs,steps_per_epoch,expected",
  [(1.0, 390, 390), (0.5, 390, 195), (0.25, 10, 2), (0.01, 10, 1)],
)
def test_eval_every_goes_through_the_config_duration_helper(
  eval_every_epochs, steps_per_epoch, expected
):
  config = config_lib.base_config()
  config.eval_every_epochs = eval_every_epochs
  # round(0.25 * 10) = 2 (banker's rounding of 2.5); never below 1.
  assert config_lib.eval_every_steps(config, steps_per_epoch) == expected
