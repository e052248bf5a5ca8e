"""Several processes (hosts) train exactly like one.

The same tiny run (ResNet-8, 64 synthetic images, global batch 16, 6 steps)
trains twice on 4 simulated CPU devices: as one process with 4 devices, and
as 2 processes with 2 devices each, connected through
jax.distributed.initialize() on 127.0.0.1 (superconv.distributed reads the
SUPERCONV_* variables, as launch/gpu.sh exports them). Both must give the
same parameters, metrics and evaluation, and the 2-process run must write
its files once, in a form a single process restores. The 2-process run is
also the uninterrupted reference of a stopped and resumed one.

Every run is in float64 (JAX_ENABLE_X64=1), where 1 and 2 processes differ
only by float64 rounding. No persistent compilation cache: on CPU the two
processes' cache keys differ and only process 0 writes, so process 0 would
load what process 1 compiles, and the skew can exceed the 30 s in which
both must reach their first collective.
"""

import json
import os
import socket
import subprocess
import sys
import time

from conftest import tiny_config_source, without_compile_cache
import jax
import numpy as np
import pytest

from superconv import api, checkpoint, distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600  # A hung collective fails the test instead of CI.

_CONFIG = tiny_config_source(
  dtype="float64",  # JAX_ENABLE_X64=1 (see _start).
  num_steps=6,
  # Rises for 3 steps.
  schedule={"name": "one_cycle", "max_lr": 0.1, "pct_start": 0.5},
  log_every_steps=1,
  eval_every_epochs=0.5,  # Evaluates at steps 2, 4 and 6.
  checkpoint_every_steps=2,  # Checkpoints 2, 4 and 6.
  keep_checkpoints=5,
)

_OWN_ENV = (
  distributed.ADDRESS_ENV,
  distributed.NUM_PROCESSES_ENV,
  distributed.PROCESS_ID_ENV,
  distributed.SWITCH_ENV,
  "TPU_WORKER_HOSTNAMES",
  "JAX_COORDINATOR_ADDRESS",
  "JAX_COORDINATOR_BIND_ADDRESS",
  "SUPERCONV_DEBUG_SIGNAL_AT_STEP",
)


# ---------------------------------------------------------------------------
# When to initialize (no processes started)
# ---------------------------------------------------------------------------

_ADDR = {distributed.ADDRESS_ENV: "node0:1234"}


@pytest.mark.parametrize(
  "env, expected",
  [
    ({}, None),
    ({distributed.NUM_PROCESSES_ENV: "1"}, None),
    (
      {
        **_ADDR,
        distributed.NUM_PROCESSES_ENV: "2",
        distributed.PROCESS_ID_ENV: "1",
      },
      {
        "coordinator_address": "node0:1234",
        "num_processes": 2,
        "process_id": 1,
      },
    ),
    (
      {
        **_ADDR,
        distributed.NUM_PROCESSES_ENV: "2",
        distributed.PROCESS_ID_ENV: "1",
        distributed.SWITCH_ENV: "0",
      },
      None,
    ),
    ({"TPU_WORKER_HOSTNAMES": "w0"}, None),  # A single-host slice.
    ({"TPU_WORKER_HOSTNAMES": "w0,w1"}, {}),  # A pod slice: auto-detect.
    ({"TPU_WORKER_HOSTNAMES": "w0,w1", distributed.SWITCH_ENV: "0"}, None),
    ({distributed.SWITCH_ENV: "1"}, {}),
  ],
)
def test_settings_follow_the_environment(env, expected):
  assert distributed.settings(env) == expected


@pytest.mark.parametrize(
  "env, names",
  [
    (
      {distributed.NUM_PROCESSES_ENV: "2", distributed.PROCESS_ID_ENV: "0"},
      distributed.ADDRESS_ENV,
    ),
    ({**_ADDR, distributed.NUM_PROCESSES_ENV: "2"}, distributed.PROCESS_ID_ENV),
    (
      {
        **_ADDR,
        distributed.NUM_PROCESSES_ENV: "2",
        distributed.PROCESS_ID_ENV: "2",
      },
      distributed.PROCESS_ID_ENV,
    ),
    (
      {
        **_ADDR,
        distributed.NUM_PROCESSES_ENV: "two",
        distributed.PROCESS_ID_ENV: "0",
      },
      distributed.NUM_PROCESSES_ENV,
    ),
    ({distributed.SWITCH_ENV: "yes"}, distributed.SWITCH_ENV),
  ],
)
def test_bad_settings_name_the_variable(env, names):
  with pytest.raises(ValueError, match=names):
    distributed.settings(env)


# ---------------------------------------------------------------------------
# 2 processes x 2 devices == 1 process x 4 devices
# ---------------------------------------------------------------------------


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(logs, name, config_path, workdir, *, devices, env=None, args=()):
  full_env = {
    k: v
    for k, v in without_compile_cache(os.environ).items()
    if k not in _OWN_ENV
  }
  full_env.update(
    JAX_PLATFORMS="cpu",
    JAX_ENABLE_X64="1",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    **(env or {}),
  )
  out, err = open(logs / f"{name}.out", "w"), open(logs / f"{name}.err", "w")
  with out, err:
    return subprocess.Popen(
      [
        sys.executable,
        "-m",
        "superconv.main",
        "--config",
        str(config_path),
        "--workdir",
        str(workdir),
        *args,
      ],
      cwd=REPO,
      env=full_env,
      stdout=out,
      stderr=err,
    )


def _wait_all(procs: dict, logs, expected: int = 0) -> None:
  """Waits for every process, which must exit with `expected`; kills all of
  them on a failure or timeout."""
  deadline = time.time() + TIMEOUT_S
  try:
    for name, proc in procs.items():
      try:
        code = proc.wait(max(1.0, deadline - time.time()))
      except subprocess.TimeoutExpired:
        pytest.fail(
          f"{name} still running after {TIMEOUT_S}s (hung"
          f" collective?):\n{(logs / f'{name}.err').read_text()[-3000:]}"
        )
      assert code == expected, (
        name,
        code,
        (logs / f"{name}.err").read_text()[-3000:],
      )
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()


def _two_processes(logs, prefix, config_path, workdir, *, args=(), env1=None):
  """Processes <prefix>0 and <prefix>1, 2 devices each, one job."""
  address = f"127.0.0.1:{_free_port()}"
  procs = {}
  for pid in range(2):
    env = {
      distributed.ADDRESS_ENV: address,
      distributed.NUM_PROCESSES_ENV: "2",
      distributed.PROCESS_ID_ENV: str(pid),
      # The coordinator listens on loopback only.
      "JAX_COORDINATOR_BIND_ADDRESS": address,
    }
    if pid == 1:
      env.update(env1 or {})
    procs[f"{prefix}{pid}"] = _start(
      logs,
      f"{prefix}{pid}",
      config_path,
      workdir,
      devices=2,
      env=env,
      args=args,
    )
  return procs


def _root(tmp_path_factory, name):
  """(root, logs, config path) of a fresh directory."""
  root = tmp_path_factory.mktemp(name)
  logs = root / "logs"
  logs.mkdir()
  config_path = root / "tiny.py"
  config_path.write_text(_CONFIG)
  return root, logs, config_path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Workdirs of the 1-process (W1) and 2-process (W2) runs, and logs."""
  root, logs, config_path = _root(tmp_path_factory, "multihost")
  w1, w2 = root / "W1", root / "W2"
  procs = {"single": _start(logs, "single", config_path, w1, devices=4)}
  procs.update(_two_processes(logs, "p", config_path, w2))
  _wait_all(procs, logs)
  return w1, w2, logs


def _rows(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


# 1 and 2 processes differ only in how the all-reduces sum over devices
# (gloo across processes, in-process otherwise): float64 rounding (1e-16),
# grown over 6 steps to about 1e-15 relative to a leaf's norm (measured on 1
# and 2 threads). Float32 noise is 1e-6 to 1e-4 and a wrong batch or shard
# 1e-1, so 1e-10 keeps margins of 1e3 on either side.
_PROCESSES_TOLERANCE = 1e-10


def test_two_processes_train_the_same_parameters(runs):
  w1, w2, _ = runs
  _, v1, _ = api.load_checkpoint(str(w1))
  _, v2, _ = api.load_checkpoint(str(w2))  # One process restores 2 processes'.
  leaves1 = jax.tree_util.tree_leaves_with_path(v1)
  leaves2 = jax.tree.leaves(v2)
  assert len(leaves1) == len(leaves2) > 0
  for (path, a), b in zip(leaves1, leaves2):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape, jax.tree_util.keystr(path)
    assert a.dtype == b.dtype == np.float64, jax.tree_util.keystr(path)
    rel = np.linalg.norm(a - b) / np.linalg.norm(a)
    assert rel <= _PROCESSES_TOLERANCE, (jax.tree_util.keystr(path), rel)
  assert checkpoint.restore(str(w2)).meta["num_devices"] == 4


def test_metrics_and_evaluation_match_and_are_written_once(runs):
  w1, w2, _ = runs
  rows1, rows2 = _rows(w1), _rows(w2)
  kinds = [(r["step"], "eval_loss" in r) for r in rows2]
  assert kinds == [
    (1, False),
    (2, False),
    (2, True),
    (3, False),
    (4, False),
    (4, True),
    (5, False),
    (6, False),
    (6, True),
  ]
  assert [(r["step"], "eval_loss" in r) for r in rows1] == kinds
  for r1, r2 in zip(rows1, rows2):
    for key in (
      "train_loss",
      "train_accuracy",
      "grad_norm",
      "eval_loss",
      "eval_accuracy",
      "learning_rate",
    ):
      if key in r1:
        assert r2[key] == pytest.approx(r1[key], rel=_PROCESSES_TOLERANCE), key
    if "eval_examples" in r1:  # Every test image counted once, globally.
      assert r1["eval_examples"] == r2["eval_examples"] == 40


def test_files_are_written_once_by_process_0(runs):
  w1, w2, logs = runs
  with open(os.path.join(w2, "config.json")) as f:
    assert json.load(f) == json.load(open(os.path.join(w1, "config.json")))
  assert sorted(os.listdir(os.path.join(w2, "checkpoints"))) == ["2", "4", "6"]
  assert checkpoint.scan(str(w2)) == ([2, 4, 6], [])
  assert not os.path.exists(os.path.join(w2, checkpoint.INCOMPLETE_DIR))
  final = [
    l
    for l in (logs / "p0.out").read_text().splitlines()
    if l.startswith("final:")
  ]
  assert len(final) == 1
  assert "final:" not in (logs / "p1.out").read_text()
  assert final == [
    l
    for l in (logs / "single.out").read_text().splitlines()
    if l.startswith("final:")
  ]


# ---------------------------------------------------------------------------
# A signal to one process stops all of them at the same step
# ---------------------------------------------------------------------------

# The processes sync (and so agree on stopping) every 2 steps; neither
# evaluations nor checkpoints before the end. Only when the run logs,
# evaluates and saves differs from the `runs` fixture's 2-process run.
_SYNC_EVERY_2_STEPS = (
  "--config.log_every_steps=2",
  "--config.checkpoint_every_steps=100",
  "--config.eval_every_epochs=100",
)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, runs):
  """SIGTERM to process 1 only, at step 3; then the same command resumes.

  Returns the workdir of the uninterrupted 2-process run (`runs`: the same
  trajectory, logged, evaluated and saved more often), the workdir of the
  stopped and resumed run, (checkpoint steps, metrics rows) right after the
  stop, and the logs. The reference has 2 processes too: resuming is
  bit-exact, whereas 1 and 2 processes differ by float summation order.
  """
  reference = runs[1]
  root, logs, config_path = _root(tmp_path_factory, "multihost_stop")
  workdir = root / "STOP"
  _wait_all(
    _two_processes(
      logs,
      "s",
      config_path,
      workdir,
      args=_SYNC_EVERY_2_STEPS,
      env1={"SUPERCONV_DEBUG_SIGNAL_AT_STEP": "3"},
    ),
    logs,
    expected=128 + 15,
  )  # Both: stopped by SIGTERM.
  after_stop = (checkpoint.scan(str(workdir)), _rows(workdir))
  _wait_all(
    _two_processes(logs, "r", config_path, workdir, args=_SYNC_EVERY_2_STEPS),
    logs,
  )
  return reference, workdir, after_stop, logs


def test_a_signal_to_one_process_stops_all_at_the_same_step(stopped):
  _, _, (scanned, rows), logs = stopped
  # Process 1 got SIGTERM at step 3; both stopped at the next sync, step 4,
  # after saving checkpoint 4 together.
  assert scanned == ([4], [])
  assert [r["step"] for r in rows] == [2, 4]
  assert "Received SIGTERM: saved checkpoint 4" in (logs / "s1.err").read_text()
  assert (
    "Another process received SIGTERM: saved checkpoint 4"
    in (logs / "s0.err").read_text()
  )


def test_the_stopped_processes_resume_to_the_uninterrupted_result(stopped):
  reference, workdir, _, logs = stopped
  assert "Resumed from checkpoint 4." in (logs / "r0.err").read_text()
  assert checkpoint.scan(str(workdir)) == ([4, 6], [])
  _, v1, _ = api.load_checkpoint(str(reference))
  _, v2, _ = api.load_checkpoint(str(workdir))
  leaves1 = jax.tree_util.tree_leaves_with_path(v1)
  leaves2 = jax.tree.leaves(v2)
  assert len(leaves1) == len(leaves2) > 0
  for (path, a), b in zip(leaves1, leaves2):  # Bit-exact.
    assert np.array_equal(np.asarray(a), np.asarray(b)), jax.tree_util.keystr(
      path
    )
  rows = _rows(workdir)
  steps = [(r["step"], "eval_loss" in r) for r in rows]
  assert steps == [(2, False), (4, False), (6, False), (6, True)]
  # The same steps' gradient norms, learning rates and final evaluation as
  # the reference's rows, bit for bit (train_loss averages over each row's
  # steps, which the two cadences group differently).
  ref = {(r["step"], "eval_loss" in r): r for r in _rows(reference)}
  for row, kind in zip(rows, steps):
    if kind[1]:
      keys = ("eval_loss", "eval_accuracy", "eval_examples")
    else:
      keys = ("grad_norm", "learning_rate", "momentum")
    for key in keys:
      assert row[key] == ref[kind][key], (kind, key)
