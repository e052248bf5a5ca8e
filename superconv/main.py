r"""Entry point: train (or resume) one run.

  python -m superconv.main --config configs/quick.py --workdir runs/quick \
      --config.dataset=folder:../shared/data/cifar10-jpeg.tar.xz

Running the same command again resumes from the latest checkpoint. Bad input
(an unknown config key, a wrong type, an impossible value, a missing data
set) exits with status 2 and one line naming the key, before anything is
compiled or written.
"""

from __future__ import annotations

import logging
import os
import sys

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


def check_workdir(workdir: str) -> str:
  """Rejects a workdir that is a file or cannot be created/written."""
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir):
    if not os.path.isdir(workdir):
      raise ValueError(f"--workdir: {workdir} exists and is not a directory")
    if not os.access(workdir, os.W_OK | os.X_OK):
      raise ValueError(f"--workdir: {workdir} is not writable")
    return workdir
  parent = workdir
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent) or not os.access(parent, os.W_OK | os.X_OK):
    raise ValueError(f"--workdir: cannot create {workdir} ({parent} is not"
                     " a writable directory)")
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
  # Imported here so that `--help` and flag errors need no JAX start-up.
  import jax  # pylint: disable=g-import-not-at-top
  from superconv import config as config_lib  # pylint: disable=g-import-not-at-top
  from superconv import data as data_lib  # pylint: disable=g-import-not-at-top
  from superconv import train  # pylint: disable=g-import-not-at-top

  config = FLAGS.config
  try:
    workdir = check_workdir(FLAGS.workdir)
    config_lib.validate_static(config, num_devices=jax.device_count())
    dataset = data_lib.load(
        config.dataset, data_dir=config.data_dir or None,
        cache_dir=config.cache_dir or None,
        synthetic_train_size=config.synthetic_train_size,
        synthetic_test_size=config.synthetic_test_size,
        download=config.tfds_download)
    config_lib.validate_with_data(
        config, num_train_examples=dataset.train_images.shape[0])
  except (config_lib.ConfigError, data_lib.DataError, ValueError) as e:
    fail(str(e))

  os.makedirs(workdir, exist_ok=True)
  train.write_config(config, workdir)
  try:
    result = train.train_and_evaluate(config, workdir, dataset)
  except train.NonFiniteError as e:
    fail(str(e), status=3)
  if result and jax.process_index() == 0:
    print(f"final: test accuracy {result['eval_accuracy']:.4f},"
          f" test loss {result['eval_loss']:.4f}")


def run():
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
