"""The Python API: what the command-line drivers do, as functions.

  import superconv
  config = superconv.configs.get("quick")
  result = superconv.train_and_evaluate(config, "runs/quick")
  result.final[0]["eval_accuracy"], len(result.history)

`train_and_evaluate` is the one code path of a training run: `python -m
superconv.main` is a thin layer over it that turns its errors into exit
statuses. `lr_range_test` runs a learning-rate range test and returns its
suggestions and figure; `load_checkpoint` gives a trained model beside its
variables and config. See docs/python_api.md.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import ml_collections
import numpy as np

from superconv import checkpoint as checkpoint_lib
from superconv import data as data_lib
from superconv import lr_range_test as range_test_lib
from superconv import metric_writer, models, storage, train

log = logging.getLogger("superconv")


@dataclasses.dataclass(frozen=True)
class Result:
  """What a training run leaves: its final metrics, history and state.

  Attributes:
    workdir: the run's directory (absolute).
    final: the last evaluation's metrics, one dict per replica (one for a
      single-seed run), each with its "seed", "eval_loss" and
      "eval_accuracy".
    history: the rows of metrics.jsonl (train and eval rows, in order);
      with several seeds, each replica's rows with its "seed" added.
    checkpoint_step: the step of the final checkpoint (None on processes
      that see none).
    checkpoint_dir: the directory of the run's checkpoints.
  """

  workdir: str
  final: list[dict]
  history: list[dict]
  checkpoint_step: int | None
  checkpoint_dir: str

  def load_checkpoint(self):
    """(model, variables, config) of the final checkpoint."""
    return load_checkpoint(self.workdir, self.checkpoint_step)


def prepare(config, workdir: str, program: str):
  """Everything a run does before training, as the CLI does it.

  Checks the config (`train.validate`, before any data is read), takes the
  workdir's lock for `program`, sets the schedule's learning rates from a
  saved range test (`schedule.lr_from_range_test`), loads the data set and
  checks the run's length and schedule against it. Returns (dataset, the
  held lock or None: release it, or let the process exit). Raises
  config.ConfigError, data.DataError, lock.LockError or range-test errors
  (all ValueError), each one line naming the key, flag or path; the lock
  is released then.
  """
  import jax  # pylint: disable=g-import-not-at-top

  train.validate(config, num_devices=jax.device_count())
  # One writer per workdir (lock.py): naming the holder otherwise.
  held = train.lock_workdir(workdir, program)
  try:
    if config.schedule.lr_from_range_test:
      provenance = range_test_lib.apply_to_config(
        config, config.schedule.lr_from_range_test
      )
      log.info(
        "Learning rates from the range test %s (rule %s): %s.",
        provenance["source"],
        provenance["rule"],
        ", ".join(f"{k} = {v:.4g}" for k, v in provenance["set"].items()),
      )
    dataset = data_lib.from_config(config)
    train.validate(
      config,
      num_devices=jax.device_count(),
      num_train_examples=dataset.train_images.shape[0],
    )
  except BaseException:
    release(held)
    raise
  return dataset, held


def release(held) -> None:
  """Releases a lock that `prepare` returned (None: nothing held)."""
  if held is not None:
    held.release()


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str,
  *,
  program: str = "superconv.train_and_evaluate",
) -> Result:
  """Trains `config` in `workdir` (resuming), evaluates, returns a Result.

  The same run as `python -m superconv.main --config ... --workdir
  workdir`: `prepare` (validation, the workdir lock, a saved range test,
  the data set), then `train.train_and_evaluate`. The lock is released on
  return. `config` is changed in place where a range test sets its
  learning rates. Several hosts: call `distributed.maybe_initialize()`
  first, on every host.

  Raises:
    ValueError (config.ConfigError, data.DataError, lock.LockError, ...):
      bad input, before anything is compiled or written; one line.
    train.NonFiniteError: NaN/Inf with nonfinite_policy="stop".
    train.Interrupted: SIGTERM/SIGINT, after saving a checkpoint.
  """
  workdir = storage.absolute(os.fspath(workdir))
  dataset, held = prepare(config, workdir, program)
  try:
    final = train.train_and_evaluate(config, workdir, dataset)
  finally:
    release(held)
  steps, _ = checkpoint_lib.scan(workdir)
  return Result(
    workdir=workdir,
    final=final,
    history=_history(config, workdir),
    checkpoint_step=steps[-1] if steps else None,
    checkpoint_dir=checkpoint_lib.checkpoint_dir(workdir),
  )


def _history(config, workdir: str) -> list[dict]:
  """The rows of a run's metrics.jsonl (each replica's, seed added)."""
  seeds = train.replica_seeds(config)
  if len(seeds) == 1:
    return metric_writer.read_jsonl(storage.join(workdir, "metrics.jsonl"))
  return [
    {"seed": seed, **row}
    for seed in seeds
    for row in metric_writer.read_jsonl(
      storage.join(train.replica_workdir(workdir, seed), "metrics.jsonl")
    )
  ]


# In lr_range_test.py, whose module is callable as this function too.
RangeTestResult = range_test_lib.RangeTestResult
lr_range_test = range_test_lib.range_test


def load_checkpoint(workdir: str, step: int | None = None):
  """(model, variables, config) of a checkpoint, for notebooks and tools.

  Args:
    workdir: a run's directory.
    step: the checkpoint step (default: the latest complete one).

  Returns:
    model: the Flax module (no pmap axis: call it directly, e.g.
      `model.apply(variables, x, train=False)` on images normalized with
      the train split's mean/std, which the checkpoint's meta records).
    variables: {'params', 'batch_stats'} as numpy arrays.
    config: the run's resolved config (an ml_collections.ConfigDict).

  Raises:
    checkpoint.CheckpointError: no complete checkpoint (the message names
      the path).
  """
  restored = checkpoint_lib.restore(workdir, step)
  state = restored.state
  config = ml_collections.ConfigDict(restored.config)
  num_classes = restored.meta.get("num_classes")
  if num_classes is None:  # Checkpoints without meta: the head's width.
    num_classes = np.asarray(state["params"]["head"]["bias"]).shape[-1]
  model = models.from_config(config, int(num_classes))
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  return model, variables, config
