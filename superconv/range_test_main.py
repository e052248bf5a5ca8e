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
    workdir = fv.workdir
    if not storage.is_remote(workdir):  # prepare refuses a URL, unprobed.
      workdir = cli.check_workdir(workdir)
    dataset, _ = rt.prepare(fv.config, workdir, PROG)
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
