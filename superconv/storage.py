"""Workdir files on a local disk or in a bucket (gs://, s3://, ...).

Every file of a run that is not an Orbax checkpoint (metrics.jsonl,
config.json, the TensorBoard events, the checkpoint directory listing)
goes through these helpers, built on `etils.epath` as Orbax itself is, so
that `--workdir gs://bucket/run` works like a local directory. Local paths
keep the plain `os` calls (and their symlink semantics); remote paths go to
epath, which uses `tf.io.gfile` when TensorFlow is installed and fsspec
(`gcsfs` for gs://: `pip install 'superconv[gcs]'`) otherwise.
"""

from __future__ import annotations

import os
import re
import shutil

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str) -> bool:
  """True for a URL such as gs://bucket/run (not a local path)."""
  return bool(_SCHEME.match(str(path)))


def _epath(path: str):
  from etils import epath  # pylint: disable=g-import-not-at-top

  return epath.Path(path)


def absolute(path: str) -> str:
  """os.path.abspath for local paths; URLs unchanged (abspath would turn
  gs://b/r into a local directory ./gs:/b/r)."""
  return str(path).rstrip("/") if is_remote(path) else os.path.abspath(path)


def join(path: str, *names: str) -> str:
  if is_remote(path):
    return "/".join([str(path).rstrip("/"), *names])
  return os.path.join(path, *names)


def basename(path: str) -> str:
  return (
    str(path).rstrip("/").rsplit("/", 1)[-1]
    if is_remote(path)
    else os.path.basename(path)
  )


def exists(path: str) -> bool:
  """Whether anything is at `path` (a broken local symlink counts)."""
  return _epath(path).exists() if is_remote(path) else os.path.lexists(path)


def isdir(path: str) -> bool:
  return _epath(path).is_dir() if is_remote(path) else os.path.isdir(path)


def listdir(path: str) -> list[str]:
  if is_remote(path):
    return sorted(p.name for p in _epath(path).iterdir())
  return sorted(os.listdir(path))


def makedirs(path: str) -> None:
  if is_remote(path):
    _epath(path).mkdir(parents=True, exist_ok=True)
  else:
    os.makedirs(path, exist_ok=True)


def move(src: str, dst: str) -> None:
  if is_remote(src) or is_remote(dst):
    _epath(src).rename(dst)
  else:
    shutil.move(src, dst)


def remove(path: str) -> None:
  if is_remote(path):
    _epath(path).unlink()
  else:
    os.remove(path)


def read_text(path: str) -> str:
  if is_remote(path):
    return _epath(path).read_text()
  with open(path) as f:
    return f.read()


def write_text(path: str, text: str) -> None:
  """Replaces the file at once: readers see the old or the new content.

  Local: a temporary file renamed over the target. Remote: one object
  write, which object stores make visible atomically.
  """
  if is_remote(path):
    _epath(path).write_text(text)
    return
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
