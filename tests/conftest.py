"""Fixtures shared by several test modules."""

import logging
import os

import pytest


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
