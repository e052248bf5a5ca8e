"""Fixtures and helpers shared by several test modules.

`tiny_config` and `tiny_config_source` are plain functions (test modules
import them: `from conftest import tiny_config`), since module-level
helpers and module-scoped fixtures of those modules build configs too.
"""

import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile

import pytest

from superconv import config as config_lib

# One persistent XLA compilation cache for the whole session, in a fresh
# temporary directory, for this process and every subprocess it starts
# (they inherit the environment). Most of the suite's time is compiling the
# same few tiny programs again in new processes; a cache hit loads the
# executable the first compilation produced, so results are the same as
# without it (a cached program is the same program). The cache key covers
# the HLO, the XLA flags, the devices and the jax version. A test that
# needs a real compilation (or no cache) removes these variables from its
# subprocess's environment (`without_compile_cache`).
COMPILE_CACHE_ENV = (
  "JAX_COMPILATION_CACHE_DIR",
  "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
  "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES",
)
_SESSION_CACHE = []


def pytest_configure(config):
  del config
  # A suite started in the background of a non-interactive shell (`cmd &`,
  # nohup) inherits SIGINT ignored, and so would every process it starts:
  # the Ctrl-C tests would then test the shell, not superconv. Python's own
  # handler, as at a terminal; a caught signal is reset to the default in
  # a child at exec, so the subprocesses start as from a terminal too.
  if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return  # The caller chose a cache (or none: set it to "").
  cache = tempfile.mkdtemp(prefix="superconv-tests-xla-")
  _SESSION_CACHE.append(cache)
  os.environ.update(
    JAX_COMPILATION_CACHE_DIR=cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
  )


def pytest_xdist_auto_num_workers(config):
  """`-n auto`: one worker per core this process may use, at most 4 (the
  heavier tests start several processes of their own)."""
  del config
  return max(1, min(4, len(os.sched_getaffinity(0))))


def pytest_unconfigure(config):
  del config
  for cache in _SESSION_CACHE:
    shutil.rmtree(cache, ignore_errors=True)


def without_compile_cache(env) -> dict:
  """`env` without the session's compilation cache."""
  return {k: v for k, v in env.items() if k not in COMPILE_CACHE_ENV}


# The tiny synthetic run the training tests share: ResNet-8 in float32 on
# 64 synthetic images (4 steps of 16 an epoch) and 40 test images (not a
# multiple of the eval batch, so evaluation pads), 3 steps at a constant
# LR 0.1. Every field that matters is set here, so edits to configs/ cannot
# change these tests.
TINY = {
  "dataset": "synthetic",
  "synthetic_train_size": 64,
  "synthetic_test_size": 40,
  "model": "resnet8",
  "dtype": "float32",
  "batch_size": 16,
  "eval_batch_size": 16,
  "num_steps": 3,
  "schedule": {"name": "constant", "max_lr": 0.1},
}


def _fields(overrides: dict) -> dict:
  """TINY with `overrides` (a dict value updates a sub-config)."""
  fields = {k: dict(v) if isinstance(v, dict) else v for k, v in TINY.items()}
  for key, value in overrides.items():
    if isinstance(value, dict) and isinstance(fields.get(key), dict):
      fields[key].update(value)
    else:
      fields[key] = value
  return fields


def tiny_config(**overrides):
  """The tiny run's ConfigDict; `schedule={...}` updates the schedule."""
  c = config_lib.base_config()
  for key, value in _fields(overrides).items():
    if isinstance(value, dict):
      c[key].update(value)
    else:
      c[key] = value
  return c


def tiny_config_source(**overrides) -> str:
  """A config file (Python source) of `tiny_config(**overrides)`, for runs
  in subprocesses."""
  lines = [
    "from superconv import config as config_lib",
    "",
    "",
    "def get_config():",
    "  c = config_lib.base_config()",
  ]
  for key, value in _fields(overrides).items():
    if isinstance(value, dict):
      lines.append(f"  c.{key}.update({value!r})")
    else:
      lines.append(f"  c.{key} = {value!r}")
  return "\n".join(lines + ["  return c", ""])


@pytest.fixture
def superconv_log():
  """The records of the "superconv" logger (INFO and up), whatever its
  propagation (the drivers' logging setup turns it off)."""
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger = logging.getLogger("superconv")
  previous = logger.level
  logger.addHandler(handler)
  logger.setLevel(logging.INFO)
  yield records
  logger.removeHandler(handler)
  logger.setLevel(previous)


def _file_bytes(path) -> dict:
  out = {}
  for dirpath, _, filenames in os.walk(path):
    for name in filenames:
      full = os.path.join(dirpath, name)
      with open(full, "rb") as f:
        out[os.path.relpath(full, path)] = f.read()
  return out


@pytest.fixture(scope="session")
def file_bytes():
  """file_bytes(path): every file under `path` with its bytes (to compare a
  directory byte for byte)."""
  return _file_bytes


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_script(script, *args, env=None, timeout=60):
  """`bash script args...` from the repository root, output captured."""
  return subprocess.run(
    ["bash", script, *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
    env={**os.environ, **(env or {})},
  )


def traced_commands(stdout):
  """argv of every '+ ' line a shell script printed for a command."""
  return [
    shlex.split(line[2:])
    for line in stdout.splitlines()
    if line.startswith("+ ")
  ]
