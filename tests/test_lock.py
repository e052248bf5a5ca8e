"""One writer per workdir: superconv/lock.py and the drivers that use it.

flock conflicts between processes (within one process the lock is
reentrant), so the other writer is a separate process: `_holder` starts one
that takes the lock and waits. The drivers' refusals are real subprocesses
that stop before any training; the end-to-end cases (a second
`superconv.main` beside a running one, a new run after kill -9) are in
test_reliability.py.
"""

import contextlib
import json
import os
import shlex
import signal
import socket
import subprocess
import sys

import pytest

from superconv import lock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOST = socket.gethostname()

_HOLD = """
import sys
from superconv import lock
lock.acquire(sys.argv[1], "holder")
print("held", flush=True)
sys.stdin.read()
"""


@contextlib.contextmanager
def _holder(workdir):
  """A process holding the lock of `workdir` until the block ends."""
  process = subprocess.Popen(
    [sys.executable, "-c", _HOLD, str(workdir)],
    cwd=REPO,
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )
  try:
    assert process.stdout.readline().strip() == "held"
    yield process
  finally:
    if process.poll() is None:
      process.kill()
    process.wait()


def test_the_lock_file_names_its_holder_and_goes_with_the_lock(tmp_path):
  workdir = tmp_path / "a" / "run"  # Neither exists yet.
  held = lock.acquire(str(workdir), "superconv.main")
  path = workdir / lock.LOCK_NAME
  holder = json.loads(path.read_text())
  assert holder["pid"] == os.getpid() and holder["host"] == HOST
  assert holder["program"] == "superconv.main" and holder["since"]
  # Reentrant within the process (a tune around its run_sweep).
  assert lock.acquire(str(workdir), "superconv.sweep") is held
  held.release()
  assert path.exists()
  held.release()
  # The lock file goes, and so do the directories made for it: a run
  # refused for bad input leaves nothing.
  assert os.listdir(tmp_path) == []
  # In a directory with other files, only the lock file goes.
  workdir.mkdir(parents=True)
  (workdir / "metrics.jsonl").write_text("{}\n")
  with lock.acquire(str(workdir), "superconv.main"):
    assert path.exists()
  assert os.listdir(workdir) == ["metrics.jsonl"]


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, file_bytes):
  with _holder(tmp_path) as process:
    before = file_bytes(tmp_path)
    with pytest.raises(lock.LockError) as error:
      lock.acquire(str(tmp_path), "superconv.main")
    assert file_bytes(tmp_path) == before  # The holder's file, byte for byte.
  message = str(error.value)
  assert message.startswith(f"--workdir: {tmp_path} is in use by holder")
  assert f"(pid {process.pid} on {HOST}, since " in message
  assert "\n" not in message


def test_a_killed_holder_leaves_a_lock_that_is_taken_over(
  tmp_path, superconv_log
):
  with _holder(tmp_path) as process:
    process.send_signal(signal.SIGKILL)
    process.wait()
  path = tmp_path / lock.LOCK_NAME
  assert json.loads(path.read_text())["pid"] == process.pid  # Left behind.
  with lock.acquire(str(tmp_path), "superconv.main"):
    assert json.loads(path.read_text())["pid"] == os.getpid()
  took_over = [r.getMessage() for r in superconv_log if "Took over" in r.msg]
  assert len(took_over) == 1 and f"pid {process.pid}" in took_over[0]
  assert not path.exists()


def test_a_lock_from_another_host_is_reported_with_how_to_clear_it(
  tmp_path, file_bytes
):
  workdir = tmp_path / "run dir"  # A space: the rm command quotes it.
  workdir.mkdir()
  path = workdir / lock.LOCK_NAME
  path.write_text(
    json.dumps(
      {
        "pid": 4321,
        "host": "elsewhere.example",
        "program": "superconv.main",
        "since": "2026-12-01T10:00:00+00:00",
      }
    )
  )
  before = file_bytes(workdir)
  with pytest.raises(lock.LockError) as error:
    lock.acquire(str(workdir), "superconv.main")
  assert file_bytes(workdir) == before
  message = str(error.value)
  assert (
    "locked by superconv.main (pid 4321 on elsewhere.example, since"
    " 2026-12-01T10:00:00+00:00), a run on another host" in message
  )
  assert message.endswith(f"rm {shlex.quote(str(path))}")
  subprocess.run(shlex.split(message.rsplit(": ", 1)[1]), check=True)
  with lock.acquire(str(workdir), "superconv.main"):
    pass


def test_bucket_workdirs_are_not_locked(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with lock.acquire("gs://bucket/run", "superconv.main") as held:
    assert not held.held
  assert os.listdir(tmp_path) == []  # Nothing local, e.g. ./gs:/bucket.


def _driver(module, workdir, *extra):
  args = {
    "superconv.main": ["--config", "configs/quick.py"],
    "superconv.lr_range_test": ["--config", "configs/lr_range_test.py"],
    "superconv.sweep": ["--config", "configs/quick.py", "--sweep", "seed=0,1"],
  }[module]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run(
    [
      sys.executable,
      "-m",
      module,
      *args,
      "--workdir",
      str(workdir),
      "--config.dataset=synthetic",
      *extra,
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.mark.parametrize(
  "module", ["superconv.lr_range_test", "superconv.sweep"]
)
def test_drivers_refuse_a_workdir_in_use_and_write_nothing(
  module, tmp_path, file_bytes
):
  # superconv.main: test_reliability.py, beside a running run.
  with _holder(tmp_path) as process:
    before = file_bytes(tmp_path)
    result = _driver(module, tmp_path)
    after = file_bytes(tmp_path)
  assert result.returncode == 2, result.stderr
  errors = [l for l in result.stderr.splitlines() if ": error: " in l]
  assert len(errors) == 1, result.stderr
  assert errors[0].startswith("superconv")
  assert f": error: --workdir: {tmp_path} is in use by holder" in errors[0]
  assert f"in use by holder (pid {process.pid} on {HOST}, since" in errors[0]
  assert after == before


def test_main_reports_a_lock_from_another_host_in_one_line(
  tmp_path, file_bytes
):
  path = tmp_path / lock.LOCK_NAME
  path.write_text(
    json.dumps(
      {"pid": 1, "host": "elsewhere", "program": "superconv.main", "since": "x"}
    )
  )
  before = file_bytes(tmp_path)
  result = _driver("superconv.main", tmp_path)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith(f"superconv: error: --workdir: {tmp_path} is")
  assert lines[0].endswith(f"rm {shlex.quote(str(path))}")
  assert file_bytes(tmp_path) == before
