"""Command-line plumbing shared by the drivers (main, lr_range_test).

Bad input gives one line on stderr and exit status 2, before anything is
compiled or written: flag errors, unknown config keys (named, with the valid
keys beside them), a missing config file, an unusable workdir.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile

EXIT_BAD_INPUT = 2


def fail(
  message: str, status: int = EXIT_BAD_INPUT, *, prog: str = "superconv"
):
  """One line on stderr, then exit."""
  first = " ".join(str(message).split())
  sys.stderr.write(f"{prog}: error: {first}\n")
  sys.exit(status)


def _flag_value(argv, name: str):
  """Value of --name=value or --name value in argv (None if absent)."""
  for i, arg in enumerate(argv):
    if arg.startswith(f"--{name}="):
      return arg.split("=", 1)[1]
    if arg == f"--{name}" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def config_file(spec: str) -> tuple[str, str | None]:
  """'configs/x.py:arg' -> ('configs/x.py', 'arg')."""
  path, sep, arg = spec.partition(".py:")
  return (path + ".py", arg) if sep else (spec, None)


def _unknown_override(argv) -> str | None:
  """Names the first --config.<key> override that the config lacks."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  path, arg = config_file(_flag_value(argv, "config") or "")
  spec = importlib.util.spec_from_file_location("_superconv_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(arg) if arg is not None else module.get_config()
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    key = arg[len("--config.") :].split("=", 1)[0]
    node, prefix = config, "config"
    for part in key.split("."):
      if not hasattr(node, "keys") or part not in node:
        valid = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else ""
        return f"config.{key}: unknown key; valid keys of {prefix}: {valid}"
      node, prefix = node[part], f"{prefix}.{part}"
  return None


def parse_flags(argv):
  """absl flag parsing, but bad flags give one line and status 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  spec = _flag_value(argv, "config")
  if spec is not None and not os.path.isfile(config_file(spec)[0]):
    fail(f"--config: no such file: {config_file(spec)[0]}")
  try:
    return flags.FLAGS(argv)
  except (
    flags.Error,
    KeyError,
    AttributeError,
    TypeError,
    ValueError,
    OSError,
  ) as e:
    unknown = None
    if isinstance(e, (KeyError, AttributeError)):
      try:
        unknown = _unknown_override(argv)
      except Exception:  # pylint: disable=broad-except
        unknown = None
    message = str(e)
    if "Traceback (most recent call last)" in message:
      # The config file raised: keep its own message, not the traceback.
      last = [l for l in message.splitlines() if l.strip()][-1].strip()
      message = last.split(": ", 1)[1] if ": " in last else last
    fail(unknown or message)


def _write_probe(directory: str) -> str | None:
  """Why no file can be created in `directory`, or None if one can.

  Really creates (and removes) a temporary file: os.access() says yes to
  root for any directory, even a read-only mount, /proc or an immutable
  (chattr +i) one. Leaves nothing behind.
  """
  try:
    fd, path = tempfile.mkstemp(prefix=".superconv-write-probe-", dir=directory)
  except OSError as e:
    return e.strerror or type(e).__name__
  os.close(fd)
  os.remove(path)
  return None


def check_workdir(workdir: str) -> str:
  """Rejects a workdir that is a file or cannot be created/written.

  Writes nothing: a missing workdir is created only once every check has
  passed. A URL (gs://bucket/run) is checked by writing and removing a
  probe object, through the same file layer the run then uses.
  """
  from superconv import storage  # pylint: disable=g-import-not-at-top

  if storage.is_remote(workdir):
    return _check_remote_workdir(storage.absolute(workdir))
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
    raise ValueError(
      f"--workdir: cannot create {workdir} ({parent} is not a directory)"
    )
  why = _write_probe(parent)
  if why:
    raise ValueError(
      f"--workdir: cannot create {workdir} ({parent} is not writable: {why})"
    )
  return workdir


def _check_remote_workdir(workdir: str) -> str:
  from superconv import storage  # pylint: disable=g-import-not-at-top

  probe = storage.join(workdir, ".superconv-write-probe")
  try:
    if storage.exists(workdir) and not storage.isdir(workdir):
      raise ValueError(f"--workdir: {workdir} exists and is not a directory")
    storage.write_text(probe, "")
    storage.remove(probe)
  except ValueError:
    raise
  except ImportError as e:
    raise ValueError(
      f"--workdir: {workdir} needs a file system package for"
      f" {workdir.split('://')[0]}:// ({e}); for gs:// run"
      " pip install 'superconv[gcs]' (gcsfs)"
    ) from None
  except Exception as e:  # pylint: disable=broad-except
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise ValueError(
      f"--workdir: cannot write to {workdir} ({type(e).__name__}: {text})"
    ) from None
  return workdir


def setup_logging() -> None:
  """Our INFO lines on stderr; libraries (Orbax, JAX) only from WARNING."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  absl_logging.set_verbosity(absl_logging.WARNING)
  log = logging.getLogger("superconv")
  if not log.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
      logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    )
    log.addHandler(handler)
  log.setLevel(logging.INFO)
  log.propagate = False
