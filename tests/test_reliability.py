"""Checkpoints and reliability: exact resume, preemption, incomplete
checkpoints, non-finite steps, changed configs, bad input, evaluation.

Every training run is a subprocess on 8 simulated CPU devices (ResNet-8 on
64 synthetic images, batch 16: 4 steps per epoch, 8 steps). Compilation
dominates, so the runs share a persistent JAX compilation cache, are started
once per module by the `runs` fixture, two or three at a time where they do
not depend on each other, and each test asserts on their results:

  phase 1  R   reference: 8 uninterrupted steps
           NS  NaN injected at step 3, nonfinite_policy="stop"
  phase 2  K   like R, stopped (SIGSTOP) once a checkpoint is complete,
               then kill -9
           L2  a second superconv.main on K's workdir while K is stopped
               (refused: the workdir is locked)
           T   like R, SIGTERM right after step 3 (testing hook)
           X   T's workdir with a changed schedule and seed (refused)
           NK  NaN injected at step 3, nonfinite_policy="skip" (the same
               program as NS: the policy only changes the host's reaction)
           E   superconv.evaluate of R's final checkpoint on 1 device
           EV  superconv.evaluate of V: a copy of R whose checkpoint 8 has
               one bit flipped and checkpoint 6 a NaN, and whose
               metrics.jsonl ends in a torn line
  phase 3  K2  K again, after planting incomplete checkpoints
           T2  T again, with a changed log cadence and duration spelling
           V2  V again: resumes from checkpoint 4
"""

import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

from conftest import tiny_config_source
import jax
import numpy as np
import pytest

from superconv import api, checkpoint, lock, metric_writer, train
from superconv import evaluate as evaluate_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every field that matters is set here, so edits to configs/ cannot break
# these tests. A one-cycle schedule: a wrong step count after a resume
# would change the learning rate and so the parameters.
_CONFIG = tiny_config_source(
  num_steps=8,  # Two epochs.
  weight_decay=5e-4,
  schedule={
    "name": "one_cycle",
    "max_lr": 0.1,
    "pct_start": 0.25,
    "cycle_momentum": True,
  },
  log_every_steps=2,
  eval_every_epochs=1.0,
  checkpoint_every_steps=2,
  keep_checkpoints=3,
)


@dataclasses.dataclass
class Result:
  returncode: int
  stdout: str
  stderr: str

  @property
  def errors(self) -> list[str]:
    return [
      l for l in self.stderr.splitlines() if l.startswith("superconv: error:")
    ]


class _Proc:
  """A superconv subprocess with its output in files (no pipe deadlock)."""

  def __init__(
    self,
    logs,
    name,
    args,
    *,
    cache,
    devices=8,
    env=None,
    module="superconv.main",
  ):
    self.out, self.err = logs / f"{name}.out", logs / f"{name}.err"
    full_env = {
      k: v for k, v in os.environ.items() if k != train.DEBUG_SIGNAL_ENV
    }
    full_env.update(
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
      JAX_COMPILATION_CACHE_DIR=str(cache),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
      **(env or {}),
    )
    with open(self.out, "w") as out, open(self.err, "w") as err:
      self.popen = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env=full_env,
        stdout=out,
        stderr=err,
      )

  def wait(self, timeout=400) -> Result:
    try:
      returncode = self.popen.wait(timeout)
    except subprocess.TimeoutExpired:
      self.popen.kill()
      raise
    return Result(returncode, self.out.read_text(), self.err.read_text())


def _complete_steps(workdir) -> list[int]:
  return checkpoint.scan(str(workdir))[0]


def _listing(workdir) -> list[str]:
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def _tree(path) -> dict:
  """Every file under `path` with its size and mtime (to see writes)."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(path):
    for name in dirnames + filenames:
      full = os.path.join(dirpath, name)
      st = os.stat(full)
      out[os.path.relpath(full, path)] = (st.st_size, st.st_mtime_ns)
  return out


def _change_stored_value(step_dir, leaf: str, change) -> None:
  """Changes the stored values of `leaf` (e.g. "params.head.kernel") of a
  checkpoint in place on disk, as storage corruption would: through
  TensorStore, which Orbax writes the arrays with (zarr arrays in an OCDBT
  database; the data itself is zstd-compressed, so flipping a file's bytes
  cannot aim at one value)."""
  import tensorstore as ts  # pylint: disable=g-import-not-at-top

  spec = {
    "driver": "zarr",
    "kvstore": {
      "driver": "ocdbt",
      "base": f"file://{step_dir}/state/",
      "path": leaf,
    },
  }
  array = ts.open(spec).result()
  values = np.array(array.read().result())
  change(values)
  array.write(values).result()


def _flip_lowest_bit(values) -> None:
  values.view(np.uint32).flat[0] ^= 1  # float32: one ulp, still finite.


def _make_nan(values) -> None:
  values.flat[0] = np.nan


def _stopped(pid: int) -> bool:
  with open(f"/proc/{pid}/stat") as f:
    return f.read().rsplit(")", 1)[1].split()[0] == "T"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, file_bytes):
  root = tmp_path_factory.mktemp("reliability")
  logs, cache = root / "logs", root / "jax_cache"
  logs.mkdir()
  config_path = root / "tiny.py"
  config_path.write_text(_CONFIG)
  wd = {name: root / name for name in ("R", "NS", "NK", "K", "T")}
  base = ["--config", str(config_path)]

  def start(name, workdir, *extra, **kwargs):
    return _Proc(
      logs,
      name,
      base + ["--workdir", str(workdir), *extra],
      cache=cache,
      **kwargs,
    )

  wd["V"] = root / "V"
  results, info = {}, {}
  # --- Phase 1: the two train programs (plain; NaN injected at step 3) ---
  r = start("R", wd["R"])
  # NS starts once R has compiled (and cached) the initialization.
  deadline = time.time() + 400
  while "Compiled and ran" not in r.err.read_text() and r.popen.poll() is None:
    assert time.time() < deadline, "R never ran a step"
    time.sleep(0.05)
  ns = start("NS", wd["NS"], "--config.debug_nan_at_step=3")
  results["R"] = r.wait()
  assert results["R"].returncode == 0, results["R"].stderr[-3000:]
  results["NS"] = ns.wait()

  # V: R's finished run, corrupted: one bit of checkpoint 8's data flipped,
  # a NaN in checkpoint 6's, the last line of metrics.jsonl torn.
  shutil.copytree(wd["R"], wd["V"])
  ckpts = wd["V"] / "checkpoints"
  _change_stored_value(ckpts / "8", "params.head.kernel", _flip_lowest_bit)
  _change_stored_value(ckpts / "6", "batch_stats.stem_bn.var", _make_nan)
  metrics = wd["V"] / "metrics.jsonl"
  info["V_lines"] = len(metrics.read_text().splitlines())
  metrics.write_bytes(metrics.read_bytes()[:-40])
  try:  # Asked for by step: refused, naming why (nothing compiled).
    evaluate_lib.evaluate(str(wd["V"]), 8)
  except checkpoint.CheckpointError as e:
    info["V_step8_error"] = str(e)

  # --- Phase 2: kill -9 after a checkpoint; SIGTERM after step 3; skip ----
  k = start("K", wd["K"])
  t = start("T", wd["T"], env={train.DEBUG_SIGNAL_ENV: "3"})
  nk = start(
    "NK",
    wd["NK"],
    "--config.debug_nan_at_step=3",
    "--config.nonfinite_policy=skip",
  )
  e, ev = (
    _Proc(
      logs,
      name,
      ["--workdir", str(wd[run]), "--json"],
      cache=cache,
      devices=1,
      module="superconv.evaluate",
    )
    for name, run in (("E", "R"), ("EV", "V"))
  )
  deadline = time.time() + 400
  while not _complete_steps(wd["K"]) and k.popen.poll() is None:
    assert time.time() < deadline, "K never wrote a checkpoint"
    time.sleep(0.01)
  # A second run on K's workdir while K holds it (frozen, so that its files
  # stay as they are): refused, and K's files are untouched.
  k.popen.send_signal(signal.SIGSTOP)
  while k.popen.poll() is None and not _stopped(k.popen.pid):
    time.sleep(0.01)
  info["K_pid"] = k.popen.pid
  info["K_files"] = file_bytes(wd["K"])
  results["L2"] = start("L2", wd["K"]).wait()
  info["K_files_after_L2"] = file_bytes(wd["K"])
  k.popen.send_signal(signal.SIGKILL)
  results["T"] = t.wait()
  info["T_listing"] = _listing(wd["T"])
  info["T_metrics"] = (wd["T"] / "metrics.jsonl").read_text()
  info["T_state3"] = checkpoint.restore(str(wd["T"]), 3).state
  # A trajectory-changing resume: refused before anything is written.
  before = _tree(wd["T"])
  x = start("X", wd["T"], "--config.schedule.max_lr=0.2", "--config.seed=1")
  results["X"] = x.wait()
  info["T_unchanged"] = _tree(wd["T"]) == before
  results["K"] = k.wait()
  info["K_lock"] = (wd["K"] / lock.LOCK_NAME).read_text()  # Left by kill -9.
  results["NK"] = nk.wait()
  results["E"] = e.wait()
  results["EV"] = ev.wait()
  info["V_listing"] = _listing(wd["V"])  # Evaluation wrote nothing.

  # --- Phase 3: resume K over planted incomplete checkpoints, resume T ----
  info["K_latest"] = max(_complete_steps(wd["K"]))
  ckpts = wd["K"] / "checkpoints"
  latest = ckpts / str(info["K_latest"])
  planted = {
    "97.orbax-checkpoint-tmp-1700000000": "temporary directory",
    "98": "missing commit_success.txt",
    "99": "unreadable",
  }
  (ckpts / "97.orbax-checkpoint-tmp-1700000000").mkdir()
  shutil.copytree(latest, ckpts / "98")
  os.remove(ckpts / "98" / checkpoint.COMMIT_MARKER)
  shutil.copytree(latest, ckpts / "99")
  shutil.rmtree(ckpts / "99" / "state")
  (ckpts / "99" / "state").mkdir()  # Present, but holds nothing.
  info["planted"] = planted
  procs = {
    "K2": start("K2", wd["K"]),
    "T2": start(
      "T2",
      wd["T"],
      "--config.log_every_steps=1",
      "--config.num_steps=0",
      "--config.num_epochs=2.0",
    ),
    "V2": start("V2", wd["V"]),
  }
  for name, proc in procs.items():
    results[name] = proc.wait()
  return {"results": results, "workdirs": wd, "info": info}


def test_torn_metrics_lines_are_reported_and_repaired(tmp_path, superconv_log):
  path = tmp_path / "metrics.jsonl"
  rows = [{"step": s, "train_loss": 1.0 / s} for s in (10, 20, 30)]
  lines = [json.dumps(row) + "\n" for row in rows]
  # Row 20 torn and glued to row 30 (appended onto the torn bytes).
  path.write_text(lines[0] + lines[1][:-25] + lines[2] + lines[2])
  assert metric_writer.read_jsonl(str(path)) == [rows[0], rows[2]]
  assert [r.getMessage() for r in superconv_log] == [
    f"{path}: line 2 not valid JSON (a torn write): skipped."
  ]
  # A torn last line, even the row of the restored step itself (rows are
  # synced before each checkpoint, but a file can be cut by other means):
  # dropped before the first new row.
  path.write_text(lines[0] + lines[1] + lines[2][:-25])
  writer = metric_writer.MetricWriter(str(tmp_path), resume_from_step=30)
  assert writer.previous_rows == rows[:2]
  writer.write({"step": 40, "train_loss": 0.25})
  writer.close()
  assert metric_writer.scan_jsonl(str(path)) == (
    rows[:2] + [{"step": 40, "train_loss": 0.25}],
    [],
  )
  assert superconv_log[-1].getMessage() == (
    f"{path}: line 3 not valid JSON (a torn write): dropped it on resume."
  )


def _full_state(workdir):
  restored = checkpoint.restore(str(workdir))
  return restored.step, restored.state


def _assert_bit_exact(workdir_a, workdir_b):
  step_a, a = _full_state(workdir_a)
  step_b, b = _full_state(workdir_b)
  assert step_a == step_b == 8
  leaves_a = jax.tree_util.tree_leaves_with_path(a)
  leaves_b = jax.tree_util.tree_leaves_with_path(b)
  assert [p for p, _ in leaves_a] == [p for p, _ in leaves_b]
  assert len(leaves_a) > 60  # params, batch_stats, optimizer state, step.
  for (path, x), (_, y) in zip(leaves_a, leaves_b):
    assert np.array_equal(x, y), jax.tree_util.keystr(path)
  # The same through the notebook API.
  _, va, ca = api.load_checkpoint(str(workdir_a))
  _, vb, _ = api.load_checkpoint(str(workdir_b))
  assert ca.model == "resnet8"
  for x, y in zip(jax.tree.leaves(va), jax.tree.leaves(vb)):
    assert np.array_equal(x, y)


def _rows(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  return [json.loads(l) for l in open(path)]


def _all_finite(workdir) -> bool:
  for step in _complete_steps(workdir):
    state = checkpoint.restore(str(workdir), step).state
    if checkpoint.nonfinite_leaves(state):
      return False
  return bool(_complete_steps(workdir))


# --- Resume ------------------------------------------------------------------


def test_resume_after_kill_9_is_bit_exact(runs):
  r, wd = runs["results"], runs["workdirs"]
  assert r["K"].returncode == -signal.SIGKILL, (
    "K finished before it was killed:\n" + r["K"].stderr[-2000:]
  )
  assert r["K2"].returncode == 0, r["K2"].stderr[-3000:]
  latest = runs["info"]["K_latest"]
  assert latest < 8
  assert f"Resumed from checkpoint {latest}." in r["K2"].stderr
  _assert_bit_exact(wd["R"], wd["K"])
  # Every step is logged once, although K logged some before dying.
  steps = [row["step"] for row in _rows(wd["K"]) if "train_loss" in row]
  assert steps == [2, 4, 6, 8]


def test_split_training_across_an_epoch_boundary_is_bit_exact(runs):
  # T stopped after step 3 (epoch 0); T2 ran steps 4-8 (epochs 0 and 1).
  r, wd = runs["results"], runs["workdirs"]
  assert r["T2"].returncode == 0, r["T2"].stderr[-3000:]
  assert "Resumed from checkpoint 3." in r["T2"].stderr
  _assert_bit_exact(wd["R"], wd["T"])
  evals_r = [row for row in _rows(wd["R"]) if "eval_loss" in row]
  evals_t = [row for row in _rows(wd["T"]) if "eval_loss" in row]
  assert [e["step"] for e in evals_t] == [4, 8]
  for a, b in zip(evals_r, evals_t):
    assert (a["eval_loss"], a["eval_accuracy"]) == (
      b["eval_loss"],
      b["eval_accuracy"],
    )


def test_sigterm_saves_exactly_one_extra_checkpoint_and_exits_143(runs):
  r, info = runs["results"], runs["info"]
  t = r["T"]
  assert t.returncode == 143, t.stderr[-3000:]
  assert "Received SIGTERM: saved checkpoint 3; stopping." in t.stderr
  assert "(exit status 143)" in t.stderr
  # Regular checkpoints every 2 steps, plus the one of the stopping step.
  assert info["T_listing"] == ["2", "3"]
  state = info["T_state3"]
  assert int(state["step"]) == 3
  assert not checkpoint.nonfinite_leaves(state)
  rows = [json.loads(l) for l in info["T_metrics"].splitlines()]
  assert [row["step"] for row in rows if "train_loss" in row] == [2, 3]


def test_sigint_requests_a_stop_and_maps_to_status_130():
  with train._StopSignals() as stop:  # pylint: disable=protected-access
    os.kill(os.getpid(), signal.SIGINT)  # No KeyboardInterrupt: recorded.
    assert stop.signum == signal.SIGINT
  # Python's own handler is back once the run is over.
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  assert train.Interrupted(signal.SIGINT, 5).exit_status == 130


def test_incomplete_checkpoints_are_never_restored(runs):
  r, wd, info = runs["results"], runs["workdirs"], runs["info"]
  err = r["K2"].stderr
  latest = info["K_latest"]
  for name, reason in info["planted"].items():
    line = [
      l
      for l in err.splitlines()
      if f"Incomplete checkpoint {wd['K']}/checkpoints/{name} (" in l
    ]
    assert line, (name, err[-3000:])
    assert reason in line[0]
    assert (
      f"never restored; using step {latest}, the latest complete" in line[0]
    )
    assert (wd["K"] / "checkpoints_incomplete" / name).is_dir()
  # The resumed run only ever saw complete checkpoints (bit-exact above).
  assert _listing(wd["K"]) == ["4", "6", "8"]


def _warnings(stderr: str, what: str) -> list[str]:
  return [l for l in stderr.splitlines() if what in l]


def test_corrupt_checkpoints_are_set_aside_and_the_run_ends_bit_exact(runs):
  r, wd = runs["results"], runs["workdirs"]
  v2 = r["V2"]
  assert v2.returncode == 0, v2.stderr[-3000:]
  ckpts = f"{wd['V']}/checkpoints"
  bit = _warnings(v2.stderr, f"Incomplete checkpoint {ckpts}/8 (")
  nan = _warnings(v2.stderr, f"Incomplete checkpoint {ckpts}/6 (")
  assert len(bit) == 1 and len(nan) == 1, v2.stderr[-3000:]
  assert "(checksum mismatch in params/head/kernel: its data changed" in bit[0]
  assert "(non-finite values in batch_stats/stem_bn/var" in nan[0]
  for line in bit + nan:
    assert "never restored; using step 4, the latest complete one" in line
  assert "Resumed from checkpoint 4." in v2.stderr
  assert sorted(os.listdir(wd["V"] / checkpoint.INCOMPLETE_DIR)) == ["6", "8"]
  _assert_bit_exact(wd["R"], wd["V"])


def test_evaluate_verifies_checkpoints_the_same_way(runs):
  r, wd, info = runs["results"], runs["workdirs"], runs["info"]
  ev = r["EV"]
  assert ev.returncode == 0, ev.stderr[-3000:]
  # The latest usable checkpoint, after one warning for each corrupt one.
  assert json.loads(ev.stdout.strip().splitlines()[-1])["step"] == 4
  ckpts = f"{wd['V']}/checkpoints"
  for step, reason in ((8, "checksum mismatch"), (6, "non-finite values")):
    line = _warnings(ev.stderr, f"Incomplete checkpoint {ckpts}/{step} (")
    assert len(line) == 1 and f"({reason} in " in line[0], ev.stderr
  assert info["V_listing"] == ["4", "6", "8"]  # Evaluation moves nothing.
  # Asked for by --step: refused, naming why.
  assert info["V_step8_error"] == (
    f"{ckpts}/8: unusable checkpoint, checksum mismatch in"
    " params/head/kernel: its data changed after it was saved"
  )


def test_a_torn_metrics_line_is_dropped_on_resume(runs):
  r, wd, info = runs["results"], runs["workdirs"], runs["info"]
  v2 = r["V2"]
  assert v2.returncode == 0, v2.stderr[-3000:]
  torn = _warnings(v2.stderr, "not valid JSON (a torn write)")
  assert torn == [
    l
    for l in v2.stderr.splitlines()
    if l.endswith(
      f"{wd['V']}/metrics.jsonl: line {info['V_lines']} not valid JSON (a"
      " torn write): dropped it on resume."
    )
  ]
  assert len(torn) == 1
  # Every step once (rows after checkpoint 4 logged again), the same values.
  rows, bad = metric_writer.scan_jsonl(str(wd["V"] / "metrics.jsonl"))
  assert bad == []
  kinds = [(row["step"], "eval_loss" in row) for row in rows]
  assert kinds == [(row["step"], "eval_loss" in row) for row in _rows(wd["R"])]
  assert kinds == [
    (2, False),
    (4, False),
    (4, True),
    (6, False),
    (8, False),
    (8, True),
  ]
  for a, b in zip(rows, _rows(wd["R"])):
    for key in ("train_loss", "grad_norm", "eval_loss", "eval_accuracy"):
      assert a.get(key) == b.get(key), (a["step"], key)


def test_checkpoints_without_checksums_restore_after_the_finite_check(
  runs, tmp_path, superconv_log
):
  # As saved before checksums existed: checkpoint 4 of R without the item.
  old = tmp_path / "old" / "checkpoints" / "4"
  shutil.copytree(runs["workdirs"]["R"] / "checkpoints" / "4", old)
  shutil.rmtree(old / "checksums")
  restored = checkpoint.restore(str(tmp_path / "old"))
  expected = checkpoint.restore(str(runs["workdirs"]["R"]), 4).state
  assert restored.step == 4
  for x, y in zip(jax.tree.leaves(restored.state), jax.tree.leaves(expected)):
    assert np.array_equal(x, y)
  warned = [r.getMessage() for r in superconv_log if "no checksums" in r.msg]
  assert warned == [
    f"Checkpoint {old} has no checksums (saved by an older version): its"
    " values are finite, but whether its data changed since it was saved"
    " cannot be checked."
  ]
  # Values that are not finite: never restored, checksums or not.
  _change_stored_value(old, "params.head.bias", _make_nan)
  restored, skipped = checkpoint.restore_latest(str(tmp_path / "old"))
  assert restored is None
  assert [s.reason for s in skipped] == [
    "non-finite values in params/head/bias"
  ]


def test_flipped_file_bytes_are_never_restored_as_data(runs, tmp_path):
  # Two bytes in the middle of the largest data file of checkpoint 8. Where
  # they land depends on the file's layout: the compressed stream decodes to
  # other values (a checksum mismatch, NaNs too perhaps) or not at all
  # (unreadable), or they were not read. Other values never come back.
  saved = runs["workdirs"]["R"] / "checkpoints" / "8"
  ckpt = tmp_path / "flip" / "checkpoints" / "8"
  shutil.copytree(saved, ckpt)
  files = [p for p in (ckpt / "state").rglob("*") if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  data = bytearray(largest.read_bytes())
  data[len(data) // 2] ^= 0xFF
  data[len(data) // 2 + 1] ^= 0xFF
  largest.write_bytes(bytes(data))
  restored, skipped = checkpoint.restore_latest(str(tmp_path / "flip"))
  if restored is None:
    assert len(skipped) == 1
    assert skipped[0].reason.startswith(
      ("checksum mismatch in ", "non-finite values in ", "unreadable")
    )
  else:
    expected = checkpoint.restore(str(runs["workdirs"]["R"]), 8).state
    for x, y in zip(jax.tree.leaves(restored.state), jax.tree.leaves(expected)):
      assert np.array_equal(x, y)


def test_retention_keeps_the_last_k_checkpoints(runs):
  wd = runs["workdirs"]
  for name in ("R", "K", "T"):  # keep_checkpoints = 3, final step kept.
    assert _listing(wd[name]) == ["4", "6", "8"], name
    assert _complete_steps(wd[name]) == [4, 6, 8]
  # Any kept step loads; a deleted one is named in a one-line error.
  _, at_6, _ = api.load_checkpoint(str(wd["R"]), step=6)
  _, at_8, _ = api.load_checkpoint(str(wd["R"]))
  assert not np.array_equal(
    at_6["params"]["head"]["kernel"], at_8["params"]["head"]["kernel"]
  )
  with pytest.raises(
    checkpoint.CheckpointError,
    match="--step: no complete checkpoint 2 .* 4, 6, 8",
  ):
    api.load_checkpoint(str(wd["R"]), step=2)


# --- One writer per workdir --------------------------------------------------


def test_a_second_run_on_a_workdir_in_use_exits_2_and_changes_nothing(runs):
  r, info = runs["results"], runs["info"]
  l2 = r["L2"]
  assert l2.returncode == 2, l2.stderr[-3000:]
  lines = l2.stderr.strip().splitlines()
  assert len(lines) == 1 and lines == l2.errors, l2.stderr
  assert (
    f"is in use by superconv.main (pid {info['K_pid']} on"
    f" {socket.gethostname()}, since " in lines[0]
  )
  assert "Compiled" not in l2.stderr
  # K's files (stopped mid-run), byte for byte.
  assert info["K_files_after_L2"] == info["K_files"]
  assert "metrics.jsonl" in info["K_files"]


def test_a_run_killed_with_its_lock_held_is_resumed(runs):
  r, wd, info = runs["results"], runs["workdirs"], runs["info"]
  assert r["K"].returncode == -signal.SIGKILL
  # kill -9 left K's lock file; the kernel released its flock.
  assert json.loads(info["K_lock"])["pid"] == info["K_pid"]
  assert r["K2"].returncode == 0, r["K2"].stderr[-3000:]
  took_over = _warnings(r["K2"].stderr, "Took over the lock")
  assert len(took_over) == 1
  assert f"superconv.main (pid {info['K_pid']} on" in took_over[0]
  for name in ("R", "K", "T", "NK", "V"):  # Released at every exit.
    assert not (wd[name] / lock.LOCK_NAME).exists(), name


# --- Changed config on resume ------------------------------------------------


def test_trajectory_changes_are_refused_and_safe_changes_accepted(runs):
  r, wd, info = runs["results"], runs["workdirs"], runs["info"]
  x = r["X"]
  assert x.returncode == 2, x.stderr[-3000:]
  assert len(x.errors) == 1, x.stderr
  assert "schedule.max_lr (0.1 -> 0.2)" in x.errors[0]
  assert "seed (0 -> 1)" in x.errors[0]
  assert "Compiled" not in x.stderr
  assert info["T_unchanged"]  # Refused before anything was written.
  # T2 changed log_every_steps and spelled 8 steps as 2 epochs: accepted.
  assert r["T2"].returncode == 0, r["T2"].stderr[-3000:]
  steps = [row["step"] for row in _rows(wd["T"]) if "train_loss" in row]
  assert steps == [2, 3, 4, 5, 6, 7, 8]
  saved = json.loads((wd["T"] / "config.json").read_text())
  assert saved["log_every_steps"] == 1 and saved["num_epochs"] == 2.0


def test_config_changes_uses_an_allow_list():
  base = {
    "seed": 0,
    "log_every_steps": 5,
    "num_steps": 8,
    "num_epochs": 0.0,
    "schedule": {"max_lr": 0.1},
  }
  same = dict(base, log_every_steps=1, num_steps=0, num_epochs=2.0)
  assert (
    checkpoint.config_changes(
      base, same, saved_total_steps=8, current_total_steps=8
    )
    == []
  )
  changed = dict(base, schedule={"max_lr": 0.2}, new_field=1)
  assert checkpoint.config_changes(
    base, changed, saved_total_steps=8, current_total_steps=16
  ) == [
    "new_field ('<absent>' -> 1)",
    "schedule.max_lr (0.1 -> 0.2)",
    "num_steps/num_epochs (total steps 8 -> 16)",
  ]


# --- Non-finite loss ---------------------------------------------------------


def test_nan_with_policy_stop_exits_3_and_keeps_finite_checkpoints(runs):
  r, wd = runs["results"], runs["workdirs"]
  ns = r["NS"]
  assert ns.returncode == 3, ns.stderr[-3000:]
  assert len(ns.errors) == 1, ns.stderr
  message = ns.errors[0]
  assert "non-finite loss at step 3 (learning_rate=" in message
  lr_3 = float(re.search(r"learning_rate=([0-9.e+-]+)", message).group(1))
  t_rows = [json.loads(l) for l in runs["info"]["T_metrics"].splitlines()]
  assert t_rows[-1]["step"] == 3  # T logged step 3 alone.
  assert lr_3 == pytest.approx(t_rows[-1]["learning_rate"], rel=1e-5)
  assert "checkpoint 2 is the last one kept" in message
  assert _listing(wd["NS"]) == ["2"]
  assert _all_finite(wd["NS"])


def test_nan_with_policy_skip_counts_the_step_and_finishes(runs):
  r, wd = runs["results"], runs["workdirs"]
  assert r["NK"].returncode == 0, r["NK"].stderr[-3000:]
  rows = [row for row in _rows(wd["NK"]) if "train_loss" in row]
  assert {row["step"]: row["nonfinite_steps"] for row in rows} == {
    2: 0,
    4: 1,
    6: 0,
    8: 0,
  }
  # The skipped step still moved the schedule on: same rates as R.
  lr_r = [row["learning_rate"] for row in _rows(wd["R"]) if "train_loss" in row]
  assert [row["learning_rate"] for row in rows] == lr_r
  assert _all_finite(wd["NK"])
  _, state = _full_state(wd["NK"])
  _, ref = _full_state(wd["R"])
  assert int(state["step"]) == 8
  assert not np.array_equal(
    state["params"]["head"]["kernel"], ref["params"]["head"]["kernel"]
  )


def test_the_step_guard_covers_batchnorm_statistics():
  """An infinite BatchNorm variance leaves loss and gradients finite: the
  step's guard must still keep the state (and report the step)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top

  class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x, train):
      x = nn.BatchNorm(use_running_average=not train)(x)
      return nn.Dense(3)(x)

  model = Tiny()
  x = jnp.arange(24, dtype=jnp.float32).reshape(4, 6) / 24
  y = jnp.array([0, 1, 2, 0], jnp.int32)
  variables = model.init(jax.random.key(0), x, train=False)

  def run(poison: bool):
    def apply_fn(variables, x, train, mutable):
      logits, updates = model.apply(variables, x, train=train, mutable=mutable)
      if poison:  # The running variance overflows; the batch's does not.
        stats = updates["batch_stats"]["BatchNorm_0"]
        updates = {
          "batch_stats": {
            "BatchNorm_0": {
              **stats,
              "var": jnp.full_like(stats["var"], jnp.inf),
            }
          }
        }
      return logits, updates

    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    state = train.TrainState.create(
      apply_fn=apply_fn,
      params=variables["params"],
      batch_stats=variables["batch_stats"],
      tx=tx,
    )
    step = jax.pmap(
      lambda s, x, y: train.step_on_batch(
        s, x, y, num_classes=3, label_smoothing=0.0
      ),
      axis_name=train.AXIS,
      devices=jax.local_devices()[:1],
    )
    new, metrics = step(
      *jax.tree.map(lambda a: jnp.asarray(a)[None], (state, x, y))
    )
    return (
      state,
      train.unreplicate(new),
      jax.device_get(train.unreplicate(metrics)),
    )

  for poison in (True, False):
    old, new, metrics = run(poison)
    assert np.isfinite(metrics["train_loss"]), poison
    assert np.isfinite(metrics["grad_norm"]), poison
    assert int(metrics["nonfinite"]) == int(poison)
    assert int(new.step) == 1
    kept = [
      np.array_equal(a, b)
      for a, b in zip(
        jax.tree.leaves((old.params, old.batch_stats)),
        jax.tree.leaves((new.params, new.batch_stats)),
      )
    ]
    assert all(kept) == poison, poison
  assert train.nonfinite_quantity(metrics | {"grad_norm": 1.0}) == (
    "BatchNorm statistics"
  )
  assert train.nonfinite_quantity({"train_loss": np.nan, "grad_norm": 1.0}) == (
    "loss"
  )
  assert train.nonfinite_quantity({"train_loss": 1.0, "grad_norm": np.inf}) == (
    "gradients"
  )


def test_save_refuses_a_nonfinite_state(tmp_path):
  mngr = checkpoint.manager(str(tmp_path), keep=2, async_save=False)
  state = {"w": np.array([1.0, np.inf], np.float32), "step": np.int32(1)}
  with pytest.raises(checkpoint.NonFiniteStateError, match=r"\['w'\]"):
    checkpoint.save(mngr, 1, state, {"seed": 0})
  mngr.close()
  assert checkpoint.scan(str(tmp_path)) == ([], [])


# --- Evaluation on another device count --------------------------------------


def test_eight_device_checkpoint_evaluates_identically_on_one_device(runs):
  r, wd = runs["results"], runs["workdirs"]
  e = r["E"]
  assert e.returncode == 0, e.stderr[-3000:]
  result = json.loads(e.stdout.strip().splitlines()[-1])
  final = [row for row in _rows(wd["R"]) if "eval_loss" in row][-1]
  assert result["step"] == final["step"] == 8
  assert result["num_devices"] == 1
  assert result["eval_examples"] == final["eval_examples"] == 40
  # Same images and parameters, in float32 (the run's dtype). What differs:
  # a device evaluates 16 images a batch instead of 2, so XLA may tile and
  # order each convolution's sums of k <= 576 products differently, and the
  # 40 losses are summed in another order. Rounding moves such a sum by
  # about sqrt(k) * 2^-24 = 1.4e-6 of its magnitude; over 20 layers, at
  # most 3e-5 of a logit's (a few units). A loss moves by at most twice
  # the largest change of a logit, so the mean (about 2.3) by 1e-4
  # relative, plus 39 * 2^-24 = 2.3e-6 for the order of the sum. A lost,
  # doubled or padding image moves it by 1e-2. The accuracy changes only
  # if an image's top two logits are within that noise (3e-5) of each
  # other.
  assert result["eval_accuracy"] == final["eval_accuracy"]
  assert result["eval_loss"] == pytest.approx(final["eval_loss"], rel=1e-4)


def test_eval_batch_is_rounded_to_the_device_count():
  assert [evaluate_lib.round_to_devices(b, 8) for b in (1, 8, 1000, 1001)] == [
    8,
    8,
    1000,
    1008,
  ]
  assert evaluate_lib.round_to_devices(16, 3) == 18


# --- Bad input: one line, non-zero status, nothing written -------------------


def _immutable_dir(path):
  """A directory nobody, not even root, can write into (or None)."""
  path.mkdir()
  if os.geteuid() != 0:
    path.chmod(0o555)
    return path
  if (
    shutil.which("chattr")
    and subprocess.run(
      ["chattr", "+i", str(path)], capture_output=True
    ).returncode
    == 0
  ):
    return path
  return None


def _release(path):
  if os.geteuid() == 0:
    subprocess.run(["chattr", "-i", str(path)], capture_output=True)
  path.chmod(0o755)


@pytest.mark.parametrize(
  "case",
  [
    "missing_config",
    "missing_workdir_flag",
    "workdir_is_a_file",
    "unwritable_workdir",
    "uncreatable_workdir",
    "offline_dataset",
  ],
)
def test_bad_input_fails_in_one_line_and_writes_nothing(case, tmp_path):
  workdir = tmp_path / "run"
  args = [
    "--config",
    os.path.join(REPO, "configs", "quick.py"),
    "--workdir",
    str(workdir),
    "--config.dataset=synthetic",
  ]
  expected, created = "", None
  if case == "missing_config":
    args[1] = str(tmp_path / "no_such_config.py")
    expected = "no_such_config.py"
  elif case == "missing_workdir_flag":
    args = args[:2] + args[4:]
    expected = "--workdir"
  elif case == "workdir_is_a_file":
    workdir.write_text("not a directory")
    expected = "is not a directory"
  elif case == "unwritable_workdir":
    created = _immutable_dir(workdir)
    if created is None:
      pytest.skip("no way to make a directory read-only for root here")
    expected = "is not writable"
  elif case == "uncreatable_workdir":
    # /proc takes no new files, whoever asks; os.access() tells root yes.
    args[3] = "/proc/superconv-no-such-dir/run"
    expected = "cannot create /proc/superconv-no-such-dir/run"
  elif case == "offline_dataset":
    empty = tmp_path / "tfds"
    empty.mkdir()
    args += [
      "--config.dataset=tfds:cifar10",
      "--config.tfds_download=False",
      f"--config.data_dir={empty}",
    ]
    # Not prepared, or (without the tfds extra) not installed.
    expected = "dataset: tfds:cifar10 "
  before = _tree(tmp_path)
  try:
    env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=8",
    )
    result = subprocess.run(
      [sys.executable, "-m", "superconv.main", *args],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=120,
    )
    after = _tree(tmp_path)
  finally:
    if created is not None:
      _release(created)
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith("superconv: error:") and expected in lines[0]
  assert after == before  # Nothing written, not even an empty workdir.
  assert not os.path.exists("/proc/superconv-no-such-dir")
