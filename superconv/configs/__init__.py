"""The shipped experiment configs, by name, from any install.

  from superconv import configs
  config = configs.get("quick")                 # superconv/configs/quick.py
  config = configs.get("study_cpu:onecycle")    # get_config("onecycle")

The files are the ones the command line takes as `--config
configs/<name>.py[:arg]` (`configs/` at the repository root points here),
installed with the package, so a non-editable install has them too.
"""

from __future__ import annotations

import os

from superconv import cli

DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
  """The shipped configs' names (file names without `.py`)."""
  return sorted(
    f[: -len(".py")]
    for f in os.listdir(DIR)
    if f.endswith(".py") and not f.startswith("_")
  )


def path(name: str) -> str:
  """The file of shipped config `name`; ValueError naming the valid ones."""
  if name not in names():
    raise ValueError(
      f"config {name!r}: no shipped config of that name; valid:"
      f" {', '.join(names())}"
    )
  return os.path.join(DIR, f"{name}.py")


def get(spec: str):
  """The ConfigDict of shipped config `spec`: 'name' or 'name:arg'.

  Raises ValueError with one line: an unknown name (listing the valid
  ones) or a config that does not load (`cli.load_config_file`).
  """
  name, sep, arg = spec.partition(":")
  file = path(name)
  return cli.load_config_file(f"{file}:{arg}" if sep else file)
