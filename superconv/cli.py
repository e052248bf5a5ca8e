"""Command-line plumbing shared by the drivers (main, sweep, report, ...).

Bad input gives one line on stderr and exit status 2, before anything is
compiled or written: flag errors, unknown config keys (named, with
ml_collections' "did you mean" hint), a config file that does not load
(its file, line and error), a missing config file, an empty, broken or
unusable workdir. `disk_full` names a full disk behind a library's error.

Every driver parses absl flags with `parse_command` (`parse_flags`), in a
`flags.FlagValues` of its own per call, so that its `main(argv)` returns
the exit status and can run in-process. A flag whose name has an
underscore may also be spelled with hyphens (`--budget-steps` for
`--budget_steps`): `hyphen_aliases`.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
import tempfile
import traceback

# Exit statuses of every command.
EXIT_OK = 0
EXIT_FAILED = 1  # A run failed (sweep), or a bug: a traceback.
EXIT_BAD_INPUT = 2  # One line on stderr, nothing written.
EXIT_NONFINITE = 3  # NaN/Inf with nonfinite_policy="stop".
EXIT_SIGINT = 130  # 128 + SIGINT: stopped at a checkpoint; run it again.
EXIT_SIGTERM = 143  # 128 + SIGTERM: likewise.

_HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "--helpfull")


def error(message, *, prog: str = "superconv") -> int:
  """Writes `prog: error: message` as one line on stderr; returns
  EXIT_BAD_INPUT (for a `main(argv)` that returns its status)."""
  first = " ".join(str(message).split())
  sys.stderr.write(f"{prog}: error: {first}\n")
  return EXIT_BAD_INPUT


def fail(
  message: str, status: int = EXIT_BAD_INPUT, *, prog: str = "superconv"
):
  """One line on stderr, then exit."""
  error(message, prog=prog)
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


# ----------------------------------------------------------------------------
# Config files and --config.<key> overrides
# ----------------------------------------------------------------------------


class ConfigFileError(ValueError):
  """A config file that does not load; a one-line message."""


def _where(e: BaseException, path: str) -> str:
  """'file:line' of the config code that raised `e`.

  A SyntaxError names its own file and line; otherwise the innermost frame
  in the config file or a file beside it (configs that load other configs),
  else the innermost frame of all.
  """
  if isinstance(e, SyntaxError) and e.filename:
    return f"{e.filename}:{e.lineno}"
  frames = traceback.extract_tb(e.__traceback__)
  here = os.path.dirname(os.path.realpath(path))
  ours = [
    f for f in frames if os.path.dirname(os.path.realpath(f.filename)) == here
  ]
  frame = (ours or frames or [None])[-1]
  return f"{frame.filename}:{frame.lineno}" if frame else path


def load_config_file(spec: str):
  """get_config() of a config file spec 'configs/x.py[:arg]'.

  Raises ConfigFileError with one line: a ValueError's own message (a
  config refusing its argument says what is wrong), else the file, line
  and error (a SyntaxError, a NameError, an ImportError, ...).
  """
  import importlib.util  # pylint: disable=g-import-not-at-top

  path, arg = config_file(spec)
  try:
    module_spec = importlib.util.spec_from_file_location(
      "_superconv_config", path
    )
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)
  except ValueError as e:
    raise ConfigFileError(" ".join(str(e).split())) from None
  except Exception as e:  # pylint: disable=broad-except
    text = e.msg if isinstance(e, SyntaxError) else str(e)
    text = text.strip().splitlines()[0] if text.strip() else ""
    raise ConfigFileError(
      f"--config {_where(e, path)}: {type(e).__name__}: {text}"
    ) from None


def unknown_key(config, key: str) -> str | None:
  """Why config has no `key` ('schedule.max_lr'), or None if it has it.

  Keeps ml_collections' "Did you mean" hint; without one, lists the keys.
  """
  node, prefix = config, "config"
  for part in key.split("."):
    if not hasattr(node, "keys"):
      return (
        f"config.{key}: unknown key; {prefix} is a {type(node).__name__},"
        " not a group of keys"
      )
    if part not in node:
      hint = None
      try:
        node[part]
      except (KeyError, AttributeError) as e:  # With ml_collections' hint.
        hint = re.search(r'Did you mean "([^"]+)" instead of', str(e))
      if hint:
        where = prefix.partition(".")[2]
        guess = f"{where}.{hint.group(1)}" if where else hint.group(1)
        return f"config.{key}: unknown key; did you mean '{guess}'?"
      valid = ", ".join(sorted(node.keys()))
      return f"config.{key}: unknown key; valid keys of {prefix}: {valid}"
    node, prefix = node[part], f"{prefix}.{part}"
  return None


def _override_keys(argv) -> list[str]:
  return [
    arg[len("--config.") :].split("=", 1)[0]
    for arg in argv
    if arg.startswith("--config.")
  ]


_FLAG_ERRORS = (KeyError, AttributeError, TypeError, ValueError, OSError)


def _flags_error(e: Exception, argv, config) -> str:
  """One line for an error of absl/ml_collections flag parsing."""
  if config is not None and isinstance(
    e, (KeyError, AttributeError, TypeError)
  ):
    for key in _override_keys(argv):
      message = unknown_key(config, key)
      if message:
        return message
  message = str(e)
  missing = re.search(
    r"Flag --(\S+) must have a value other than None", message
  )
  if missing:
    return f"--{missing.group(1)}: required"
  if "Traceback (most recent call last)" in message:
    # ml_collections put a traceback in: keep its last line's message.
    last = [l for l in message.splitlines() if l.strip()][-1].strip()
    message = last.split(": ", 1)[1] if ": " in last else last
  return message


def _parse(flag_values, argv, config):
  """(parsed argv, None) or (None, one-line error)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  try:
    return flag_values(argv), None
  except (flags.Error,) + _FLAG_ERRORS as e:
    return None, _flags_error(e, argv, config)


def _load_named_config(argv, prog: str):
  """The config that argv's --config names (None if none); exits on errors."""
  spec = _flag_value(argv, "config")
  if spec is None:
    return None
  if not os.path.isfile(config_file(spec)[0]):
    fail(f"--config: no such file: {config_file(spec)[0]}", prog=prog)
  try:
    return load_config_file(spec)
  except ConfigFileError as e:
    fail(str(e), prog=prog)


def parse_flags(argv, flag_values, *, prog: str = "superconv", doc=""):
  """absl flag parsing into a driver's own `FlagValues`, but bad flags give
  one line and status 2.

  `argv[0]` is the program; returns the arguments that are not flags.
  --help prints `doc` and the flags, then exits 0. A `--config` file is
  loaded first, so that a bad one, or an unknown `--config.<key>`, is named
  in one line.
  """
  if _wants_help(argv):
    sys.stdout.write(help_text(flag_values, doc))
    sys.exit(EXIT_OK)
  config = _load_named_config(argv, prog) if "config" in flag_values else None
  parsed, message = _parse(flag_values, argv, config)
  if message is not None:
    fail(message, prog=prog)
  return parsed


def parse_command(
  argv,
  define,
  *,
  prog: str,
  doc: str,
  config_help: str | None = None,
  takes_args: bool = False,
):
  """A driver's command line: (its `FlagValues`, the other arguments).

  `argv` is without the program. `define(flag_values)` defines the
  driver's flags; with `config_help`, an ml_collections `--config` file
  flag (`--config.KEY=VALUE` overrides) is defined first. Bad flags, and
  arguments when not `takes_args`, give one line and exit status 2.
  """
  # pylint: disable=g-import-not-at-top
  from absl import flags
  from ml_collections import config_flags
  # pylint: enable=g-import-not-at-top

  flag_values = flags.FlagValues()
  if config_help is not None:
    config_flags.DEFINE_config_file(
      "config",
      None,
      config_help,
      flag_values=flag_values,
      lock_config=True,
      sys_argv=[prog, *argv],
    )
  define(flag_values)
  args = parse_flags([prog, *argv], flag_values, prog=prog, doc=doc)[1:]
  if args and not takes_args:
    fail(f"unexpected arguments: {' '.join(args)}", prog=prog)
  return flag_values, args


def _wants_help(argv) -> bool:
  flags_part = argv[1 : argv.index("--")] if "--" in argv else argv[1:]
  return any(arg in _HELP_FLAGS for arg in flags_part)


def help_text(flag_values, doc: str = "") -> str:
  """`doc`, then every flag of `flag_values` with its help and default."""
  text = flag_values.get_help(prefix="  ", include_special_flags=False)
  return (doc.strip() + "\n\nflags:\n" if doc else "") + text + "\n"


def hyphen_aliases(flag_values) -> None:
  """Lets each flag_with_underscores be spelled --flag-with-underscores
  too (the spelling of sweep, report and bench before absl flags)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  for name in list(flag_values):
    alias = name.replace("_", "-")
    if alias != name and alias not in flag_values:
      flags.DEFINE_alias(
        alias,
        name,
        flag_values=flag_values,
        module_name=flag_values.find_module_defining_flag(name),
      )


def check_overrides(spec: str, overrides: dict) -> str | None:
  """Why `--config spec --config.k=v ...` would be refused, or None.

  Parses the overrides with the same ml_collections flag as the drivers
  (so a value of the wrong type fails exactly as on their command line),
  then checks the config as `superconv.main` does before loading data
  (any device count). Writes nothing; raises ConfigFileError if the file
  does not load.
  """
  # pylint: disable=g-import-not-at-top
  from absl import flags
  from ml_collections import config_flags

  from superconv import config as config_lib
  from superconv import train
  # pylint: enable=g-import-not-at-top

  config = load_config_file(spec)
  argv = ["superconv", "--config", spec]
  argv += [f"--config.{k}={v}" for k, v in overrides.items()]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config",
    None,
    "",
    flag_values=flag_values,
    lock_config=True,
    sys_argv=argv,
  )
  _, message = _parse(flag_values, argv, config)
  if message is not None:
    return message
  try:
    train.validate(flag_values.config, num_devices=1)
  except config_lib.ConfigError as e:
    return str(e)
  return None


# ----------------------------------------------------------------------------
# Workdirs and output directories
# ----------------------------------------------------------------------------


def check_workdir_name(path: str, flag: str = "--workdir") -> None:
  """Refuses an empty name, which would mean the current directory."""
  if not path or not path.strip():
    raise ValueError(
      f"{flag}: empty (an unset shell variable?); name a directory"
      " (use . for the current one)"
    )


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


def _broken_link(path: str) -> str | None:
  if os.path.islink(path) and not os.path.exists(path):
    return (
      f"{path} is a broken symbolic link (to {os.readlink(path)}, which"
      " does not exist)"
    )
  return None


def check_workdir(workdir: str, flag: str = "--workdir") -> str:
  """Rejects a workdir that is empty, a file, a broken symbolic link or
  cannot be created/written; returns its absolute path.

  Writes nothing: a missing workdir is created only once every check has
  passed. A URL (gs://bucket/run) is checked by writing and removing a
  probe object, through the same file layer the run then uses. `flag`
  names the option in the messages (`--out` for an output directory).
  """
  from superconv import storage  # pylint: disable=g-import-not-at-top

  check_workdir_name(workdir, flag)
  if storage.is_remote(workdir):
    return _check_remote_workdir(storage.absolute(workdir))
  workdir = os.path.abspath(workdir)
  if os.path.exists(workdir):
    if not os.path.isdir(workdir):
      raise ValueError(f"{flag}: {workdir} exists and is not a directory")
    why = _write_probe(workdir)
    if why:
      raise ValueError(f"{flag}: {workdir} is not writable ({why})")
    return workdir
  parent = workdir
  while not os.path.lexists(parent):
    parent = os.path.dirname(parent)
  broken = _broken_link(parent)
  if broken:
    raise ValueError(
      f"{flag}: {broken}"
      if parent == workdir
      else f"{flag}: cannot create {workdir} ({broken})"
    )
  if not os.path.isdir(parent):
    raise ValueError(
      f"{flag}: cannot create {workdir} ({parent} is not a directory)"
    )
  why = _write_probe(parent)
  if why:
    raise ValueError(
      f"{flag}: cannot create {workdir} ({parent} is not writable: {why})"
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


# ----------------------------------------------------------------------------
# A full disk
# ----------------------------------------------------------------------------

_DISK_FULL = {errno.ENOSPC: "ENOSPC", errno.EDQUOT: "EDQUOT"}
_DISK_FULL_TEXT = {
  "No space left on device": "ENOSPC",
  "Disk quota exceeded": "EDQUOT",
}


def disk_full(e: BaseException | None) -> str | None:
  """'ENOSPC' or 'EDQUOT' if `e` or an exception behind it says the disk
  is full, else None.

  Python writes raise OSError(errno); Orbax's array writes (TensorStore)
  raise a ValueError whose text carries the OS error ("No space left on
  device [os_error_code='28']").
  """
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in _DISK_FULL:
      return _DISK_FULL[e.errno]
    cause = _disk_full_text(str(e))
    if cause:
      return cause
    e = e.__cause__ or e.__context__
  return None


def _disk_full_text(text: str) -> str | None:
  code = re.search(r"os_error_code='(\d+)'", text)
  if code and int(code.group(1)) in _DISK_FULL:
    return _DISK_FULL[int(code.group(1))]
  for words, name in _DISK_FULL_TEXT.items():
    if words in text:
      return name
  return None


class _DiskFullToDebug(logging.Filter):
  """Moves a library's error records about a full disk to debug level.

  Orbax logs the failed background save (with tracebacks) from its own
  threads before the error reaches the driver, which then ends with one
  summary line; the records stay available at debug level.
  """

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    if record.levelno < logging.WARNING or not (
      disk_full(exc) or _disk_full_text(record.getMessage())
    ):
      return True
    logging.getLogger("superconv").debug(
      "%s", record.getMessage(), exc_info=record.exc_info
    )
    return False


def setup_logging() -> None:
  """Our INFO lines on stderr; libraries (Orbax, JAX) only from WARNING."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top

  absl_logging.set_verbosity(absl_logging.WARNING)
  for name in ("absl", "asyncio"):  # Orbax logs through absl.
    library = logging.getLogger(name)
    if not any(isinstance(f, _DiskFullToDebug) for f in library.filters):
      library.addFilter(_DiskFullToDebug())
  log = logging.getLogger("superconv")
  if not log.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
      logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    )
    log.addHandler(handler)
  log.setLevel(logging.INFO)
  log.propagate = False
