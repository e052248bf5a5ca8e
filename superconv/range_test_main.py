r"""Learning-rate range test from the command line.

  python -m superconv.lr_range_test --config configs/lr_range_test.py \
      --workdir runs/lr_range_test \
      --config.dataset=folder:../shared/data/cifar10-jpeg.tar.xz
  python -m superconv.lr_range_test \
      --config configs/lr_range_test.py:exponential --workdir runs/lr_find

(`python -m superconv.range_test_main` is the same program.) It checks the
config and the workdir, runs `superconv.lr_range_test.run` and prints its
summary; the test itself, its suggestions and its plot are library functions
of `superconv.lr_range_test`. Bad input: one line on stderr, exit status 2.
"""

from __future__ import annotations

from collections.abc import Sequence
import os
import sys

from absl import flags

from superconv import cli, storage
from superconv import lr_range_test as rt

PROG = "superconv.lr_range_test"


def _define_flags(fv) -> None:
  flags.DEFINE_string(
    "workdir",
    None,
    "Directory for lr_range_test.{jsonl,json,png}.",
    flag_values=fv,
  )
  flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)


def _local_workdir(workdir: str) -> str:
  """The checked workdir; a bucket is refused (ValueError)."""
  if storage.is_remote(workdir):
    raise ValueError(
      f"--workdir: {workdir}: the range test writes to a local directory"
      " (it runs for minutes and keeps no checkpoint); copy its three files"
      " to the bucket afterwards"
    )
  return cli.check_workdir(workdir)


def _prepare(config, workdir_flag: str):
  """Checks everything before the test: (workdir, dataset); raises
  ValueError (ConfigError, DataError, RangeTestError) on bad input."""
  # pylint: disable=g-import-not-at-top
  import jax

  from superconv import config as config_lib
  from superconv import train
  # pylint: enable=g-import-not-at-top

  workdir = _local_workdir(workdir_flag)
  rt.validate(config)
  view = rt.training_view(config)
  config_lib.validate_static(view, num_devices=jax.device_count())
  # One writer per workdir (lock.py): exit 2 naming the holder otherwise.
  train.lock_workdir(workdir, PROG)
  # As training: with config.validation_size > 0 the held-out images come
  # from a validation split of the train images, not from the test set.
  dataset = train.load_dataset(view)
  config_lib.validate_with_data(
    view, num_train_examples=dataset.train_images.shape[0]
  )
  if rt.num_steps(config, dataset.train_images.shape[0]) < 2:
    raise rt.RangeTestError(
      "range_test.num_steps: the test needs at least 2 steps"
    )
  return workdir, dataset


def main(argv: Sequence[str]) -> int:
  """Command line (argv without the program); returns the exit status."""
  fv, _ = cli.parse_command(
    argv,
    _define_flags,
    prog=PROG,
    doc=__doc__,
    config_help="Range-test config (configs/lr_range_test.py[:mode]);"
    " --config.KEY=VALUE overrides after it.",
  )
  cli.setup_logging()
  # pylint: disable=g-import-not-at-top
  import jax

  from superconv import distributed
  # pylint: enable=g-import-not-at-top

  try:
    distributed.maybe_initialize()
    workdir, dataset = _prepare(fv.config, fv.workdir)
  except ValueError as e:
    return cli.error(e, prog=PROG)
  summary = rt.run(fv.config, workdir, dataset)
  if jax.process_index() == 0:
    print(rt.format_summary(summary))
    print(
      f"wrote {os.path.join(workdir, rt.JSON_NAME)}, {rt.JSONL_NAME},"
      f" {rt.PNG_NAME}"
    )
  return cli.EXIT_OK


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
