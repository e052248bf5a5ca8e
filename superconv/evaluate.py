r"""Evaluates a checkpoint on the whole test set.

  python -m superconv.evaluate --workdir runs/quick [--step 400] [--json]

Restores a checkpoint (the latest complete one, or --step) with the config
saved in it, loads the test set that config names, and prints the test loss
and accuracy with the same evaluation code as training (train.Evaluator).
Works with any number of devices, not only the training run's: the eval
batch is rounded up to a multiple of the device count (padding images are
masked, so only float summation order can differ). On another machine,
--dataset / --data_dir point at the data set's copy there. Writes nothing.
Checkpoints are verified as on resume (checkpoint.verify: checksums, finite
values): a corrupt one is skipped with a warning naming why, or, asked for
by --step, refused.

Exit status: 0, or 2 with one line naming the flag or path (an empty
--workdir, no complete checkpoint, a corrupt --step checkpoint, a missing
data set, a bad flag such as an --eval_batch_size below 1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sys

from absl import flags

from superconv import cli

PROG = "superconv.evaluate"


def _define_flags(fv) -> None:
  """The command line's flags, in a `FlagValues` of its own."""
  flags.DEFINE_string(
    "workdir", None, "A training run's directory.", flag_values=fv
  )
  flags.DEFINE_integer(
    "step",
    None,
    "Checkpoint step (default: the latest complete one).",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "eval_batch_size",
    None,
    "Global eval batch (default: the run's config), rounded up"
    " to a multiple of the device count.",
    lower_bound=1,
    flag_values=fv,
  )
  flags.DEFINE_string(
    "dataset",
    "",
    "Data set spec overriding the run's (same data,"
    " another location), e.g."
    " folder:/data/cifar10.tar.xz.",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "data_dir", "", "TFDS data directory overriding the run's.", flag_values=fv
  )
  flags.DEFINE_bool(
    "json", False, "Print the result as one JSON object.", flag_values=fv
  )
  flags.mark_flags_as_required(["workdir"], flag_values=fv)
  cli.hyphen_aliases(fv)


log = logging.getLogger("superconv")


def round_to_devices(batch_size: int, num_devices: int) -> int:
  """The smallest multiple of num_devices that is >= batch_size (>= 1)."""
  return max(1, -(-batch_size // num_devices)) * num_devices


def evaluate(
  workdir: str,
  step: int | None = None,
  *,
  eval_batch_size: int = 0,
  dataset: str = "",
  data_dir: str = "",
) -> dict:
  """Test metrics of a checkpoint (see the module docstring).

  `eval_batch_size` 0 means the run's config. Returns {"step",
  "eval_loss", "eval_accuracy", "eval_examples", "eval_batch_size",
  "num_devices"}. Raises checkpoint.CheckpointError or data.DataError
  with a one-line message, ValueError for a negative eval_batch_size.
  """
  if eval_batch_size < 0:
    raise ValueError(
      f"eval_batch_size: must be >= 1 (0: the run's), got {eval_batch_size}"
    )
  # pylint: disable=g-import-not-at-top
  import jax
  import ml_collections

  from superconv import checkpoint as checkpoint_lib
  from superconv import data as data_lib
  from superconv import input_pipeline, train
  # pylint: enable=g-import-not-at-top

  restored = checkpoint_lib.restore(workdir, step)
  config = ml_collections.ConfigDict(restored.config)
  if dataset:
    config.dataset = dataset
  if data_dir:
    config.data_dir = data_dir
  ds = data_lib.from_config(config)
  run = train.setup(config, ds)
  aug = _saved_normalization(run.aug, restored.meta, config.dataset)
  num_devices = jax.device_count()
  batch = _device_batch(eval_batch_size or config.eval_batch_size, num_devices)
  state = train.TrainState(
    # Per replica (a vector) in a config.num_parallel_seeds run.
    step=restored.state.get("step", restored.step),
    apply_fn=run.model.apply,
    params=restored.state["params"],
    batch_stats=restored.state["batch_stats"],
    tx=None,
    opt_state=None,
  )
  evaluator = train.Evaluator(config, ds, aug, eval_batch_size=batch)
  results = evaluator.replicas(input_pipeline.replicate_tree(state))
  common = {"eval_batch_size": batch, "num_devices": num_devices}
  if len(results) == 1:
    return {"step": restored.step, **results[0], **common}
  # A config.num_parallel_seeds run: one result per replica.
  return {
    "step": restored.step,
    **common,
    "replicas": [
      {"seed": seed, **r}
      for seed, r in zip(train.replica_seeds(config), results)
    ],
  }


def _saved_normalization(aug, meta: dict, dataset: str):
  """`aug` with the run's saved mean/std (normalize exactly as in training);
  warns when the data set's own differ (another data set?)."""
  if "mean" not in meta:
    return aug
  saved = (tuple(meta["mean"]), tuple(meta["std"]))
  if (
    max(abs(a - b) for a, b in zip(saved[0] + saved[1], aug.mean + aug.std))
    > 1e-6
  ):
    log.warning(
      "The train split's mean/std differ from the run's: is %s"
      " the data set it trained on? Using the run's.",
      dataset,
    )
  return dataclasses.replace(aug, mean=saved[0], std=saved[1])


def _device_batch(requested: int, num_devices: int) -> int:
  """`requested` rounded up to a multiple of the devices (logged if so)."""
  batch = round_to_devices(requested, num_devices)
  if batch != requested:
    log.info(
      "eval_batch_size %d -> %d (a multiple of the %d devices).",
      requested,
      batch,
      num_devices,
    )
  return batch


def main(argv) -> int:
  """Command line (argv without the program); returns the exit status."""
  fv, _ = cli.parse_command(argv, _define_flags, prog=PROG, doc=__doc__)
  try:
    cli.check_workdir_name(fv.workdir)
  except ValueError as e:
    return cli.error(e, prog=PROG)
  cli.setup_logging()
  # pylint: disable=g-import-not-at-top
  from superconv import checkpoint as checkpoint_lib
  from superconv import data as data_lib

  # pylint: enable=g-import-not-at-top
  try:
    result = evaluate(
      fv.workdir,
      fv.step,
      eval_batch_size=fv.eval_batch_size or 0,
      dataset=fv.dataset,
      data_dir=fv.data_dir,
    )
  except (checkpoint_lib.CheckpointError, data_lib.DataError) as e:
    return cli.error(e, prog=PROG)
  if fv.json:
    print(json.dumps(result))
  else:
    _print_result(result)
  return cli.EXIT_OK


def _print_result(result: dict) -> None:
  for r in result.get("replicas", [result]):
    seed = f" seed {r['seed']}" if "seed" in r else ""
    print(
      f"step {result['step']}{seed}: test loss {r['eval_loss']:.6f}"
      f" test accuracy {r['eval_accuracy']:.4f}"
      f" ({r['eval_examples']} images, {result['num_devices']}"
      f" devices, eval batch {result['eval_batch_size']})"
    )


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
