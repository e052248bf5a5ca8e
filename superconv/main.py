r"""Entry point: train (or resume) one run.

  python -m superconv.main --config configs/quick.py --workdir runs/quick \
      --config.dataset=folder:../shared/data/cifar10-jpeg.tar.xz

Running the same command again resumes from the latest complete checkpoint
(bit-exact on the same platform and device count). Fields that do not change
the training trajectory (checkpoint.RESUME_SAFE_KEYS: logging, evaluation
and checkpoint cadence, data locations, nonfinite_policy) may change on
resume; any other change is refused.

Several hosts: run the same command once per host, with
SUPERCONV_COORDINATOR_ADDRESS, SUPERCONV_NUM_PROCESSES and
SUPERCONV_PROCESS_ID set (launch/gpu.sh does that), or on a Cloud TPU pod
slice as it is (see superconv/distributed.py). Only process 0 writes logs,
metrics and config.json; all processes take part in checkpointing.

Exit status:
  0    the run is complete (or was already): final test metrics printed.
  2    bad input, before anything is compiled or written: an unknown config
       key, a wrong type or impossible value, a config file that is missing
       or does not load (its file, line and error), a missing or empty
       --workdir, a workdir that is a file, a broken symbolic link or not
       writable, a workdir in use by another run (named: pid, host, since
       when), a data set that cannot be found, a resume whose config
       changes the trajectory, or incomplete SUPERCONV_* multi-process
       settings. One line on stderr names the key, flag or path.
       Also a full disk (ENOSPC, or EDQUOT for a quota) while the run
       writes: one last line names the workdir and the cause, the
       libraries' tracebacks go to debug level only; free space and run
       the same command to resume from the last complete checkpoint.
  3    NaN/Inf loss, gradients or BatchNorm statistics with
       nonfinite_policy="stop": the message names the step, the learning
       rate and the quantity; the checkpoints written before it (all
       finite) are kept.
  143  SIGTERM (128 + 15), or
  130  SIGINT / Ctrl-C (128 + 2): the run stopped at the next step boundary
       after saving a checkpoint of that step; run the same command to
       resume. A second signal stops at once with the same status, even
       while XLA compiles, like kill -9: the run loses the steps since the
       last complete checkpoint, never more.
  1    anything else (a bug or an environment failure: a traceback).
"""

from __future__ import annotations

from collections.abc import Sequence
import faulthandler
import logging
import sys

from absl import flags

from superconv import cli

# The errors' prefix ("superconv: error: ..."), as the run's own lines; the
# workdir's lock names the program superconv.main.
PROG = "superconv"


def _define_flags(fv) -> None:
  """The command line's flags (after --config), in a `FlagValues` of its own."""
  flags.DEFINE_string(
    "workdir",
    None,
    "Directory for checkpoints, metrics and config.json.",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "eigen_conv",
    False,
    "XLA:CPU convolutions with Eigen instead of YNNPACK (faster for CIFAR"
    " ResNets, see BENCHMARKS.md); refused on jaxlib releases not known to"
    " accept the XLA flag.",
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
    config_help="Experiment config file (configs/<x>.py[:arg]);"
    " --config.KEY=VALUE overrides after it.",
  )
  cli.setup_logging()
  try:
    workdir = cli.check_workdir(fv.workdir)
  except ValueError as e:
    return cli.error(e, prog=PROG)
  # Imported here so that `--help`, flag and workdir errors need no JAX.
  import jax  # pylint: disable=g-import-not-at-top

  from superconv import distributed  # pylint: disable=g-import-not-at-top

  if fv.eigen_conv:  # Before the first use of a JAX backend too.
    from superconv import conv as conv_lib  # pylint: disable=g-import-not-at-top

    if not conv_lib.use_eigen_convolutions():
      return cli.error(
        f"--eigen_conv: jaxlib {jax.lib.__version__} is not known to accept it",
        prog=PROG,
      )
  try:  # Before the first use of a JAX backend (jax.device_count()).
    distributed.maybe_initialize()
  except ValueError as e:
    return cli.error(e, prog=PROG)
  from superconv import api  # pylint: disable=g-import-not-at-top

  try:  # Bad input, before anything is compiled or written.
    dataset, _ = api.prepare(fv.config, workdir, "superconv.main")
  except ValueError as e:  # ConfigError, DataError, LockError, ...
    return cli.error(e, prog=PROG)
  return _train(fv.config, workdir, dataset)


def _train(config, workdir: str, dataset) -> int:
  """superconv.train_and_evaluate's training step, each outcome with its
  exit status; prints the final test metrics."""
  import jax  # pylint: disable=g-import-not-at-top

  # pylint: disable=g-import-not-at-top
  from superconv import config as config_lib
  from superconv import train
  # pylint: enable=g-import-not-at-top

  try:
    # Writes the workdir only after refusing a trajectory-changing resume.
    result = train.train_and_evaluate(config, workdir, dataset)
  except config_lib.ConfigError as e:
    return cli.error(e, prog=PROG)
  except train.NonFiniteError as e:
    cli.error(e, prog=PROG)
    return cli.EXIT_NONFINITE
  except train.Interrupted as e:
    logging.getLogger("superconv").warning(
      "%s (exit status %d).", e, e.exit_status
    )
    return e.exit_status
  except Exception as e:  # pylint: disable=broad-except
    cause = cli.disk_full(e)
    if cause is None:
      raise
    return cli.error(_disk_full_message(workdir, cause, e), prog=PROG)
  if jax.process_index() == 0:
    for replica in result:
      which = f" (seed {replica['seed']})" if len(result) > 1 else ""
      print(
        f"final{which}: test accuracy {replica['eval_accuracy']:.4f},"
        f" test loss {replica['eval_loss']:.4f}"
      )
  return cli.EXIT_OK


def _disk_full_message(workdir: str, cause: str, error: Exception) -> str:
  """The one summary line of a full disk; the traceback goes to debug."""
  from superconv import checkpoint as checkpoint_lib  # pylint: disable=g-import-not-at-top

  logging.getLogger("superconv").debug("Disk full:", exc_info=error)
  try:
    steps, _ = checkpoint_lib.scan(workdir)
  except Exception:  # pylint: disable=broad-except
    steps = []
  then = (
    f"checkpoint {steps[-1]} is the last complete one; free space and run"
    " the same command to resume from it"
    if steps
    else "no checkpoint is complete yet; free space and run the same"
    " command to start again"
  )
  what = (
    "disk quota exceeded" if cause == "EDQUOT" else "no space left on device"
  )
  return f"--workdir {workdir}: {what} ({cause}); {then}"


def run() -> None:
  """The command line of this process (`sys.argv`); exits with its status.

  A crash (a fault in XLA, say) prints the Python stacks too, as under
  absl's `app.run`.
  """
  faulthandler.enable()
  sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
  run()
