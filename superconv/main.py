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
       key, a wrong type or impossible value, a missing config file or
       --workdir, a workdir that is a file or not writable, a data set that
       cannot be found, a resume whose config changes the trajectory, or
       incomplete SUPERCONV_* multi-process settings.
       One line on stderr names the key, flag or path.
  3    NaN/Inf loss or gradients with nonfinite_policy="stop": the message
       names the step, the learning rate and the quantity; the checkpoints
       written before it (all finite) are kept.
  143  SIGTERM (128 + 15), or
  130  SIGINT / Ctrl-C (128 + 2): the run stopped at the next step boundary
       after saving a checkpoint of that step; run the same command to
       resume. A second signal stops at once, like kill -9: the run loses
       the steps since the last complete checkpoint, never more.
  1    anything else (a bug or an environment failure: a traceback).
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

from absl import app
from absl import flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/<x>.py).",
    lock_config=True)
flags.DEFINE_string("workdir", None,
                    "Directory for checkpoints, metrics and config.json.")
flags.mark_flags_as_required(["config", "workdir"])

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
# Stopped by a signal after saving a checkpoint: 128 + the signal number.
EXIT_SIGTERM = 143
EXIT_SIGINT = 130


def fail(message: str, status: int = EXIT_BAD_INPUT):
  """One line on stderr, then exit."""
  first = " ".join(str(message).split())
  sys.stderr.write(f"superconv: error: {first}\n")
  sys.exit(status)


def _flag_value(argv, name: str):
  """Value of --name=value or --name value in argv (None if absent)."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _unknown_override(argv) -> str | None:
  """Names the first --config.<key> override that the config lacks."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  path = _flag_value(argv, "config")
  spec = importlib.util.spec_from_file_location("_superconv_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config."):].split("=", 1)[0]
    node, prefix = config, "config"
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else ""
        return (f"config.{key}: unknown key; valid keys of {prefix}:"
                f" {valid}")
      node, prefix = node[part], f"{prefix}.{part}"
  return None


def parse_flags(argv):
  """absl flag parsing, but bad flags give one line and status 2."""
  config_path = _flag_value(argv, "config")
  if config_path is not None and not os.path.isfile(config_path):
    fail(f"--config: no such file: {config_path}")
  try:
    return FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError,
          OSError) as e:
    unknown = None
    if isinstance(e, (KeyError, AttributeError)):
      unknown = _unknown_override(argv)
    fail(unknown or str(e))


def _write_probe(directory: str) -> str | None:
  """Why no file can be created in `directory`, or None if one can.

  Really creates (and removes) a temporary file: os.access() says yes to
  root for any directory, even a read-only mount, /proc or an immutable
  (chattr +i) one. Leaves nothing behind.
  """
  try:
    fd, path = tempfile.mkstemp(prefix=".superconv-write-probe-",
                                dir=directory)
  except OSError as e:
    return e.strerror or type(e).__name__
  os.close(fd)
  os.remove(path)
  return None


def check_workdir(workdir: str) -> str:
  """Rejects a workdir that is a file or cannot be created/written.

  Writes nothing: a missing workdir is created only once every check has
  passed.
  """
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir):
    if not os.path.isdir(workdir):
      raise ValueError(f"--workdir: {workdir} exists and is not a directory")
    why = _write_probe(workdir)
    if why:
      raise ValueError(f"--workdir: {workdir} is not writable ({why})")
    return workdir
  parent = workdir
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise ValueError(f"--workdir: cannot create {workdir} ({parent} is not"
                     " a directory)")
  why = _write_probe(parent)
  if why:
    raise ValueError(f"--workdir: cannot create {workdir} ({parent} is not"
                     f" writable: {why})")
  return workdir


def setup_logging() -> None:
  """Our INFO lines on stderr; libraries (Orbax, JAX) only from WARNING."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  log = logging.getLogger("superconv")
  if not log.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
  log.setLevel(logging.INFO)
  log.propagate = False


def main(argv):
  del argv
  setup_logging()
  try:
    workdir = check_workdir(FLAGS.workdir)
  except ValueError as e:
    fail(str(e))
  # Imported here so that `--help`, flag and workdir errors need no JAX.
  import jax  # pylint: disable=g-import-not-at-top
  from superconv import distributed  # pylint: disable=g-import-not-at-top
  try:  # Before the first use of a JAX backend (jax.device_count()).
    distributed.maybe_initialize()
  except ValueError as e:
    fail(str(e))
  from superconv import config as config_lib  # pylint: disable=g-import-not-at-top
  from superconv import data as data_lib  # pylint: disable=g-import-not-at-top
  from superconv import train  # pylint: disable=g-import-not-at-top

  config = FLAGS.config
  try:
    config_lib.validate_static(config, num_devices=jax.device_count())
    dataset = train.load_dataset(config)
    config_lib.validate_with_data(
        config, num_train_examples=dataset.train_images.shape[0])
  except (config_lib.ConfigError, data_lib.DataError, ValueError) as e:
    fail(str(e))

  try:
    # Writes the workdir only after refusing a trajectory-changing resume.
    result = train.train_and_evaluate(config, workdir, dataset)
  except config_lib.ConfigError as e:
    fail(str(e))
  except train.NonFiniteError as e:
    fail(str(e), status=EXIT_NONFINITE)
  except train.Interrupted as e:
    logging.getLogger("superconv").warning("%s (exit status %d).", e,
                                           e.exit_status)
    sys.exit(e.exit_status)
  if result and jax.process_index() == 0:
    print(f"final: test accuracy {result['eval_accuracy']:.4f},"
          f" test loss {result['eval_loss']:.4f}")


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
