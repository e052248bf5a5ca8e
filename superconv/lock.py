"""One writer per workdir: a lock file taken before anything is written.

`acquire(workdir, program)` creates `workdir/.superconv.lock`, holds an
exclusive `fcntl.flock` on it and writes its holder into it as JSON (pid,
host, program, since). A second writer (`superconv.main`,
`superconv.lr_range_test`, `superconv.sweep`) on the same directory gets a
`LockError` naming the holder, before it writes anything; the drivers turn
it into one line on stderr and exit status 2.

- The kernel drops a flock when its holder dies, however it dies (kill -9
  included), so a lock file left by a dead process of this host is taken
  over (with a log line naming the old holder).
- A lock file that names another host is never taken over: flock does not
  reach across the hosts of every network file system, so a run on another
  machine may still be using the directory. The error names the holder and
  the `rm` command that clears the lock once that run is known to be gone.
- The holder removes the lock file when it releases it (at process exit at
  the latest: an `atexit` hook releases every lock still held), and also the
  directories that it created for it if they are still empty, so that a run
  refused for bad input leaves nothing behind.
- URLs (gs://bucket/run) are not locked: object stores have no flock (see
  the README, "Reliability", for what protects such workdirs).
- Within one process the lock is reentrant (a sweep's `tune` holds it
  around the `run_sweep` it calls); child processes never inherit it.

No JAX here: the drivers call this before JAX starts anything.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import errno
import fcntl
import json
import logging
import os
import shlex
import socket

from superconv import storage

log = logging.getLogger("superconv")

LOCK_NAME = ".superconv.lock"


class LockError(ValueError):
  """The workdir is in use by another writer (one line, bad input: exit 2)."""


@dataclasses.dataclass(frozen=True)
class Holder:
  """Who holds a lock: what its lock file says."""

  pid: int
  host: str
  program: str
  since: str

  @classmethod
  def current(cls, program: str) -> Holder:
    return cls(
      pid=os.getpid(),
      host=socket.gethostname(),
      program=program,
      since=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    )

  @classmethod
  def parse(cls, text: str) -> Holder | None:
    """The holder a lock file names, or None (empty, torn, not ours)."""
    try:
      d = json.loads(text)
      return cls(
        int(d["pid"]), str(d["host"]), str(d["program"]), str(d["since"])
      )
    except (ValueError, TypeError, KeyError):
      return None

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n"

  def __str__(self) -> str:
    return f"{self.program} (pid {self.pid} on {self.host}, since {self.since})"


def lock_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), LOCK_NAME)


def _read(fd: int) -> str:
  chunks = []
  offset = 0
  while chunk := os.pread(fd, 65536, offset):
    chunks.append(chunk)
    offset += len(chunk)
  return b"".join(chunks).decode("utf-8", errors="replace")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # Someone else's live process.
    return True
  return True


def _first_missing(path: str) -> str | None:
  """The topmost directory of `path` that does not exist yet (or None)."""
  missing = None
  while not os.path.lexists(path):
    missing = path
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return missing


class WorkdirLock:
  """The lock of one workdir, held by this process (see `acquire`)."""

  def __init__(self, workdir: str, program: str):
    self.workdir = os.path.abspath(workdir)
    self.path = lock_path(workdir)
    self.program = program
    self._fd: int | None = None
    self._created: str | None = None  # Topmost directory made for the lock.
    self._count = 0

  @property
  def held(self) -> bool:
    return self._fd is not None

  def _open_locked(self) -> tuple[int, bool]:
    """(fd of the lock file, whether flock holds it); raises LockError."""
    while True:
      if os.path.lexists(self.workdir) and not os.path.isdir(self.workdir):
        raise LockError(
          f"--workdir: {self.workdir} exists and is not a directory"
        )
      missing = _first_missing(self.workdir)
      os.makedirs(self.workdir, exist_ok=True)
      self._created = self._created or missing
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
      except FileNotFoundError:  # A releasing holder removed the directory.
        continue
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        locked = True
      except BlockingIOError:
        holder = Holder.parse(_read(fd))
        os.close(fd)
        raise LockError(
          f"--workdir: {self.workdir} is in use by"
          f" {holder or 'another process (no details in its lock file yet)'};"
          " one writer per workdir: wait for it to finish, stop it, or use"
          " another --workdir"
        ) from None
      except OSError as e:
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
          os.close(fd)
          raise
        log.warning(
          "%s: this file system has no flock (%s); the lock relies on the"
          " pid and host recorded in it.",
          self.path,
          e.strerror,
        )
        locked = False
      # A holder that released the lock removed the file we may have opened
      # before: then lock the file that is there now.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        return fd, locked
      os.close(fd)

  def acquire(self) -> WorkdirLock:
    if self._count:
      self._count += 1
      return self
    fd, locked = self._open_locked()
    previous = Holder.parse(_read(fd))
    me = Holder.current(self.program)
    if previous is not None and previous.host != me.host:
      os.close(fd)  # Writes nothing: the lock file stays as it is.
      raise LockError(
        f"--workdir: {self.workdir} is locked by {previous}, a run on"
        " another host that cannot be checked from here; if it is not"
        " running any more, clear the lock with:"
        f" rm {shlex.quote(self.path)}"
      )
    if previous is not None and previous.pid != me.pid:
      if not locked and _pid_alive(previous.pid):
        os.close(fd)
        raise LockError(
          f"--workdir: {self.workdir} is in use by {previous}; one writer"
          " per workdir: wait for it to finish, stop it, or use another"
          " --workdir"
        )
      log.info(
        "Took over the lock %s of %s: that process is gone.",
        self.path,
        previous,
      )
    data = me.to_json().encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    self._fd = fd
    self._count = 1
    _HELD[self.path] = self
    return self

  def release(self) -> None:
    """Releases one hold; the last removes the lock file (and the
    directories created for it, if still empty)."""
    if self._count > 1:
      self._count -= 1
      return
    if self._fd is None:
      return
    try:  # Unlink while holding the lock (see _open_locked).
      if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
        os.remove(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd, self._count = None, 0
    _HELD.pop(self.path, None)
    if self._created is not None:
      path = self.workdir
      while True:  # Empty directories made for the lock only.
        try:
          os.rmdir(path)
        except OSError:
          break
        if path == self._created:
          break
        path = os.path.dirname(path)
      self._created = None

  def __enter__(self) -> WorkdirLock:
    return self

  def __exit__(self, *exc_info) -> None:
    self.release()


class _NoLock:
  """What `acquire` gives for a URL workdir: nothing is locked."""

  held = False

  def release(self) -> None:
    pass

  def __enter__(self):
    return self

  def __exit__(self, *exc_info) -> None:
    pass


_HELD: dict[str, WorkdirLock] = {}


def _release_all() -> None:
  for held in list(_HELD.values()):
    held._count = 1  # pylint: disable=protected-access
    held.release()


atexit.register(_release_all)


def acquire(workdir: str, program: str) -> WorkdirLock | _NoLock:
  """Locks `workdir` for this process (creating it), or raises LockError.

  Use as a context manager, or call `.release()`; drivers that exit with
  the lock held leave its release to the atexit hook. `program` names the
  holder in other writers' errors (e.g. "superconv.main"). URLs are not
  locked (a no-op, logged).
  """
  if storage.is_remote(workdir):
    log.info(
      "%s: a bucket workdir is not locked; run one writer at a time on it.",
      workdir,
    )
    return _NoLock()
  path = lock_path(workdir)
  held = _HELD.get(path) or WorkdirLock(workdir, program)
  return held.acquire()
