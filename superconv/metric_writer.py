"""Metrics out of the run: JSONL, TensorBoard and a console line.

Only process 0 writes. `metrics.jsonl` is the source of truth (one JSON
object per logged step, appended and flushed as it happens, so a killed run
keeps every row it logged; synced to disk before each checkpoint, so a
machine reset loses no row of a checkpointed step); TensorBoard event files
mirror it when tensorboardX is installed.

Self-healing on resume: a line that is not valid JSON (a write torn by a
kill or a machine reset) and rows past the restored step are dropped, with
a warning, before the first new row is written, so every step appears
once. `read_jsonl` skips such lines with a warning instead of stopping.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time

from superconv import storage

log = logging.getLogger("superconv")


def scan_jsonl(path: str) -> tuple[list[dict], list[int]]:
  """(rows of a JSONL file, 1-based numbers of the lines that are not a
  JSON object: torn writes); ([], []) when there is no file."""
  rows, torn = [], []
  if not storage.exists(path):
    return rows, torn
  for number, line in enumerate(storage.read_text(path).splitlines(), 1):
    line = line.strip()
    if not line:
      continue
    try:
      row = json.loads(line)
    except json.JSONDecodeError:
      row = None
    if isinstance(row, dict):
      rows.append(row)
    else:
      torn.append(number)
  return rows, torn


def _torn_lines(path: str, torn: list[int]) -> str:
  return (
    f"{path}: line{'s' if len(torn) > 1 else ''}"
    f" {', '.join(map(str, torn))} not valid JSON (a torn write)"
  )


def read_jsonl(path: str) -> list[dict]:
  """Rows of a JSONL file; torn lines (see `scan_jsonl`) are skipped with a
  warning naming them."""
  rows, torn = scan_jsonl(path)
  if torn:
    log.warning("%s: skipped.", _torn_lines(path, torn))
  return rows


def _jsonable(value):
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them visible as strings.
  return value


def _has_module(name: str) -> bool:
  import importlib.util  # pylint: disable=g-import-not-at-top

  try:
    return importlib.util.find_spec(name) is not None
  except ModuleNotFoundError:  # A missing parent package.
    return False


def _line(row: dict) -> str:
  return json.dumps({k: _jsonable(v) for k, v in row.items()}) + "\n"


class MetricWriter:
  """Appends metric rows to workdir/metrics.jsonl (+ TensorBoard).

  A local file is appended to and flushed row by row. Objects in a bucket
  cannot be appended to, so with a gs:// (or other URL) workdir the whole
  file is rewritten, in one object write, at every row: a few hundred small
  writes per run, and a preempted run keeps every row it logged.
  """

  def __init__(
    self,
    workdir: str,
    *,
    enabled: bool = True,
    filename: str = "metrics.jsonl",
    resume_from_step: int = 0,
  ):
    self.enabled = enabled
    self.path = storage.join(workdir, filename)
    self._tb = None
    self._file = None
    self._remote = storage.is_remote(self.path)
    self._lines: list[str] = []  # Remote: the file's content so far.
    self.previous_rows = []
    if not enabled:
      return
    # On resume, torn lines and rows past the restored step are dropped
    # before anything is appended: the resumed run logs those steps again,
    # so every step appears once.
    rows, torn = scan_jsonl(self.path)
    if torn:
      log.warning("%s: dropped it on resume.", _torn_lines(self.path, torn))
    self.previous_rows = [
      r for r in rows if r.get("step", 0) <= resume_from_step
    ]
    if resume_from_step == 0:
      self.previous_rows = []
    self._lines = [json.dumps(r) + "\n" for r in self.previous_rows]
    if self.previous_rows != rows or torn:
      storage.write_text(self.path, "".join(self._lines))
    if not self._remote:
      self._file = open(self.path, "a")
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    except ImportError:
      log.info("tensorboardX not installed: no TensorBoard event files.")
    else:
      tb_dir = storage.join(workdir, "tensorboard")
      try:
        if tb_dir.startswith("gs://") and not _has_module(
          "google.cloud.storage"
        ):
          # tensorboardX's own message, before it half-builds a writer.
          raise ImportError(
            "`google-cloud-storage` must be installed in"
            " order to use the 'gs://' protocol"
          )
        self._tb = SummaryWriter(tb_dir)
      except Exception as e:  # pylint: disable=broad-except
        # e.g. gs:// without google-cloud-storage: metrics.jsonl still
        # holds every row, so the run goes on.
        log.warning(
          "No TensorBoard event files in %s (%s: %s).",
          tb_dir,
          type(e).__name__,
          str(e).splitlines()[0] if str(e) else "",
        )

  def write(self, row: dict) -> None:
    if not self.enabled:
      return
    line = _line(row)
    if self._remote:
      self._lines.append(line)
      storage.write_text(self.path, "".join(self._lines))
    else:
      self._file.write(line)
      self._file.flush()
    if self._tb is not None:
      step = row["step"]
      for k, v in row.items():
        if k != "step" and isinstance(v, (int, float)):
          self._tb.add_scalar(k, v, step)

  def sync(self) -> None:
    """Makes every row written so far durable (local files: fsync; each
    bucket write is already a complete object)."""
    if self._file is not None:
      self._file.flush()
      os.fsync(self._file.fileno())

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def format_seconds(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Console:
  """One progress line per logged step: step/s and the ETA."""

  def __init__(
    self,
    total_steps: int,
    *,
    enabled: bool = True,
    stream=sys.stdout,
    label: str = "",
  ):
    self.total_steps = total_steps
    self.enabled = enabled
    self.stream = stream
    self.start = time.time()
    self.prefix = f"[{label}] " if label else ""  # e.g. one replica's seed.

  def train(self, row: dict) -> None:
    if not self.enabled:
      return
    step = row["step"]
    rate = row.get("steps_per_sec", 0.0)
    eta = (self.total_steps - step) / rate if rate > 0 else float("nan")
    self.stream.write(
      f"{self.prefix}step {step:>{len(str(self.total_steps))}}"
      f"/{self.total_steps}"
      f" ep {row['epoch']:6.2f} | loss {row['train_loss']:.4f}"
      f" acc {row['train_accuracy']:.4f} | lr {row['learning_rate']:.4g}"
      f" mom {row['momentum']:.3f} | {rate:6.2f} step/s"
      f" {rate * row.get('batch_size', 0):7.0f} img/s"
      f" | ETA {format_seconds(eta) if math.isfinite(eta) else '?'}\n"
    )
    self.stream.flush()

  def eval(self, row: dict) -> None:
    if not self.enabled:
      return
    self.stream.write(
      f"{self.prefix}eval step {row['step']} ep {row['epoch']:.2f}:"
      f" test loss {row['eval_loss']:.4f}"
      f" test acc {row['eval_accuracy']:.4f}"
      f" ({row['eval_examples']} images, {row['eval_seconds']:.1f}s)\n"
    )
    self.stream.flush()
