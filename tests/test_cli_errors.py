"""Bad input and hard stops end with one line, not a traceback.

Each case asserts the exit status, the one line on stderr (naming the key,
flag, file or path) and that nothing was written. Most cases fail before
JAX compiles anything: they run as subprocesses, four at a time, in the
module's `refusals` fixture, each in an empty directory of its own that
must still be empty afterwards. The rest: a second SIGINT during XLA
compilation, a full disk (a real tmpfs where mounting is allowed, and an
injected ENOSPC), and the stray asyncio tracebacks of a checkpoint whose
restore fails.
"""

from __future__ import annotations

import concurrent.futures
import errno
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

from conftest import without_compile_cache
import numpy as np
import pytest

from superconv import checkpoint, cli, report, sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICK = os.path.join(REPO, "configs", "quick.py")
ENV = dict(os.environ, JAX_PLATFORMS="cpu")
# A run that reaches the train step quickly: 32 synthetic images.
TINY = [
  "--config.dataset=synthetic",
  "--config.synthetic_train_size=32",
  "--config.synthetic_test_size=16",
  "--config.batch_size=16",
  "--config.eval_batch_size=16",
  "--config.num_steps=3",
  "--config.log_every_steps=1",
  "--config.eval_every_epochs=100",
  "--config.schedule.name=constant",
  "--config.schedule.cycle_momentum=False",
]

BAD_CONFIGS = {
  "syntax.py": "def get_config(:\n  return None\n",
  "name.py": "def get_config():\n  x = 1\n  return undefined_name + x\n",
  "import.py": "import no_such_module_for_superconv\n\n\ndef get_config():\n"
  "  return None\n",
}


def _cases(tmp):
  """name -> (argv after `python -m`, the error line's expected parts)."""
  bad = {name: str(tmp / "configs" / name) for name in BAD_CONFIGS}
  link = tmp / "links" / "run"  # A broken symbolic link.
  dangling = tmp / "links" / "gone"  # A broken link as a parent.
  return {
    "main_empty_workdir": (
      ["superconv.main", "--config", QUICK, "--workdir", ""],
      ["superconv: error: --workdir: empty"],
    ),
    "lr_range_test_empty_workdir": (
      ["superconv.lr_range_test", "--config", QUICK, "--workdir", " "],
      ["superconv.lr_range_test: error: --workdir: empty"],
    ),
    "evaluate_empty_workdir": (
      ["superconv.evaluate", "--workdir="],
      ["superconv.evaluate: error: --workdir: empty"],
    ),
    "sweep_empty_workdir": (
      ["superconv.sweep", "--config", QUICK, "--workdir", "", "--sweep",
       "seed=0,1"],
      ["superconv.sweep: error: --workdir: empty"],
    ),
    "tune_empty_workdir": (
      ["superconv.sweep", "tune", "--config", QUICK, "--workdir", "",
       "--budget-steps", "4", "--sweep", "schedule.max_lr=0.1,0.2"],
      ["superconv.sweep: error: --workdir: empty"],
    ),
    "main_syntax_error": (
      ["superconv.main", "--config", bad["syntax.py"], "--workdir", "w"],
      [f"--config {bad['syntax.py']}:1: SyntaxError: invalid syntax"],
    ),
    "main_name_error": (
      ["superconv.main", "--config", bad["name.py"], "--workdir", "w"],
      [
        f"--config {bad['name.py']}:3: NameError: name 'undefined_name'"
        " is not defined"
      ],
    ),
    "main_import_error": (
      ["superconv.main", "--config", bad["import.py"], "--workdir", "w"],
      [
        f"--config {bad['import.py']}:1: ModuleNotFoundError: No module"
        " named 'no_such_module_for_superconv'"
      ],
    ),
    "lr_range_test_name_error": (
      ["superconv.lr_range_test", "--config", bad["name.py"], "--workdir",
       "w"],
      [f"--config {bad['name.py']}:3: NameError"],
    ),
    "sweep_name_error": (
      ["superconv.sweep", "--config", bad["name.py"], "--workdir", "w",
       "--sweep", "seed=0,1", "--dry-run"],
      [f"superconv.sweep: error: --config {bad['name.py']}:3: NameError"],
    ),
    "main_broken_link_workdir": (
      ["superconv.main", "--config", QUICK, "--workdir", str(link), *TINY],
      [f"--workdir: {link} is a broken symbolic link"],
    ),
    "main_under_broken_link": (
      ["superconv.main", "--config", QUICK, "--workdir",
       str(dangling / "run"), *TINY],
      [f"--workdir: cannot create {dangling}/run ({dangling} is a broken"],
    ),
    "evaluate_negative_batch": (
      ["superconv.evaluate", "--workdir", "w", "--eval_batch_size=-5"],
      ["superconv.evaluate: error: flag --eval_batch_size=-5:"],
    ),
    "evaluate_zero_batch": (
      ["superconv.evaluate", "--workdir", "w", "--eval_batch_size=0"],
      ["superconv.evaluate: error: flag --eval_batch_size=0:"],
    ),
    "sweep_bad_value": (
      ["superconv.sweep", "--config", QUICK, "--workdir", "w", "--sweep",
       "batch_size=abc,2", "--dry-run"],
      [
        "superconv.sweep: error: run batch_size=abc: flag"
        " --config.batch_size=abc: invalid literal for int()"
      ],
    ),
    "sweep_impossible_value": (
      ["superconv.sweep", "--config", QUICK, "--workdir", "w", "--sweep",
       "batch_size=64,-3", "--dry-run"],
      ["run batch_size=-3: batch_size: must be positive, got -3"],
    ),
    "main_misspelled_key": (
      ["superconv.main", "--config", QUICK, "--workdir", "w",
       "--config.bach_size=8"],
      [
        "superconv: error: config.bach_size: unknown key; did you mean"
        " 'batch_size'?"
      ],
    ),
    "main_misspelled_nested_key": (
      ["superconv.main", "--config", QUICK, "--workdir", "w",
       "--config.schedule.max_rl=1"],
      ["config.schedule.max_rl: unknown key; did you mean 'schedule.max_lr'?"],
    ),
    "main_unknown_key_lists_keys": (
      ["superconv.main", "--config", QUICK, "--workdir", "w",
       "--config.zzz=1"],
      ["config.zzz: unknown key; valid keys of config: ", " batch_size,"],
    ),
    "schedules_unknown_flag": (
      ["superconv.schedules", "--config", QUICK, "--bogus=1"],
      ["superconv.schedules: error: Unknown command line flag 'bogus'"],
    ),
    "schedules_name_error": (
      ["superconv.schedules_main", "--config", bad["name.py"]],
      [f"--config {bad['name.py']}:3: NameError"],
    ),
    "report_no_out": (
      ["superconv.report", "runs"],
      ["superconv.report: error: --out: required"],
    ),
    "report_bad_budget_analysis": (
      ["superconv.report", "runs", "--out", "r", "--budget-analysis=maybe"],
      ["superconv.report: error:", "--budget_analysis", "maybe"],
    ),
    "bench_batch_not_a_list_of_ints": (
      ["superconv.bench", "--batch", "64,x"],
      ["superconv.bench: error:", "--batch", "'64,x'"],
    ),
    "evaluate_unexpected_argument": (
      ["superconv.evaluate", "--workdir", "w", "extra"],
      ["superconv.evaluate: error: unexpected arguments: extra"],
    ),
  }  # fmt: skip


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
  """Runs every case; name -> (returncode, stderr, stdout, cwd)."""
  tmp = tmp_path_factory.mktemp("refusals")
  (tmp / "configs").mkdir()
  for name, text in BAD_CONFIGS.items():
    (tmp / "configs" / name).write_text(text)
  (tmp / "links").mkdir()
  os.symlink(tmp / "links" / "missing-target", tmp / "links" / "run")
  os.symlink(tmp / "links" / "missing-parent", tmp / "links" / "gone")

  def run(name, argv):
    cwd = tmp / "cwd" / name
    cwd.mkdir(parents=True)
    r = subprocess.run(
      [sys.executable, "-m", *argv],
      cwd=cwd,
      env=ENV,
      capture_output=True,
      text=True,
      timeout=300,
    )
    return name, (r.returncode, r.stderr, r.stdout, cwd)

  # Four at a time: each may import JAX (memory), none compiles.
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    cases = [(name, argv) for name, (argv, _) in _cases(tmp).items()]
    results = dict(pool.map(lambda case: run(*case), cases))
  links = sorted(os.listdir(tmp / "links"))
  return {"tmp": tmp, "results": results, "links": links}


@pytest.mark.parametrize("name", sorted(_cases(pathlib.Path("names"))))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(refusals, name):
  returncode, err, out, cwd = refusals["results"][name]
  expected = _cases(refusals["tmp"])[name][1]
  assert returncode == 2, err
  lines = err.strip().splitlines()
  assert len(lines) == 1, err
  for part in expected:
    assert part in lines[0]
  assert lines[0].split(": error: ")[0] in (
    "superconv",
    "superconv.bench",
    "superconv.evaluate",
    "superconv.lr_range_test",
    "superconv.report",
    "superconv.schedules",
    "superconv.sweep",
  )
  assert out == ""  # A dry run prints no run before refusing.
  assert os.listdir(cwd) == []  # Nothing written where it ran.


def test_broken_links_are_left_as_they_were(refusals):
  tmp = refusals["tmp"]
  assert refusals["links"] == ["gone", "run"]
  for name in refusals["links"]:
    assert os.path.islink(tmp / "links" / name)
    assert not os.path.exists(tmp / "links" / name)


def test_report_refuses_an_existing_file_as_out(tmp_path, capsys):
  out = tmp_path / "report.txt"
  out.write_text("keep me\n")
  assert report.main([str(tmp_path), "--out", str(out)]) == 2
  err = capsys.readouterr().err
  assert err == (
    f"superconv.report: error: --out: {out} exists and is not a directory\n"
  )
  assert out.read_text() == "keep me\n"
  assert sorted(os.listdir(tmp_path)) == ["report.txt"]


def test_report_refuses_an_empty_out(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert report.main([str(tmp_path), "--out", ""]) == 2
  assert capsys.readouterr().err.startswith(
    "superconv.report: error: --out: empty"
  )
  assert os.listdir(tmp_path) == []


def test_sweep_checks_every_run_as_main_would(tmp_path):
  # The same parsing as main's --config.* flags, per run: a common
  # override and a swept value that are each fine but not together.
  assert cli.check_overrides(QUICK, {"batch_size": "8"}) is None
  assert cli.check_overrides(QUICK, {"num_steps": "0", "num_epochs": "0"}) == (
    "num_epochs: set num_epochs > 0 or num_steps > 0"
  )
  with pytest.raises(sweep.SweepError, match="run num_epochs=0: num_epochs"):
    sweep.run_sweep(
      QUICK,
      str(tmp_path / "s"),
      [("num_epochs", ["1", "0"])],
      common={"num_steps": "0"},
      dry_run=True,
    )
  assert not (tmp_path / "s").exists()


def test_disk_full_is_recognised_behind_library_errors():
  # TensorStore's text (an Orbax array write) and a chained OSError.
  tensorstore = ValueError(
    'RESOURCE_EXHAUSTED: Error writing "x": Failed to write 94093 bytes'
    " to file 8: No space left on device [os_error_code='28']"
  )
  assert cli.disk_full(tensorstore) == "ENOSPC"
  try:
    try:
      raise OSError(errno.EDQUOT, "Disk quota exceeded")
    except OSError as e:
      raise RuntimeError("save failed") from e
  except RuntimeError as e:
    assert cli.disk_full(e) == "EDQUOT"
  assert cli.disk_full(OSError(errno.EACCES, "Permission denied")) is None
  assert cli.disk_full(ValueError("os_error_code='13'")) is None


# ---------------------------------------------------------------------------
# A second SIGINT during compilation
# ---------------------------------------------------------------------------


def _stderr_lines(proc) -> queue.Queue:
  lines = queue.Queue()

  def read():
    for line in proc.stderr:
      lines.put(line)
    lines.put(None)

  threading.Thread(target=read, daemon=True).start()
  return lines


def test_second_sigint_during_compilation_stops_at_once(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(
    [sys.executable, "-m", "superconv.main", "--config", QUICK,
     "--workdir", str(workdir), *TINY],
    # A line before each compilation, and no cache: a cache hit would
    # skip the compilation this test interrupts.
    env=dict(without_compile_cache(ENV), JAX_LOG_COMPILES="1"),
    stderr=subprocess.PIPE,
    text=True,
  )  # fmt: skip
  lines, seen = _stderr_lines(proc), []
  compiling_since = None
  deadline = time.time() + 300
  try:
    # Inside XLA's compiler: its "MLIR" line is out, its "Finished XLA
    # compilation" not yet after half a second.
    while compiling_since is None or time.time() - compiling_since < 0.5:
      assert time.time() < deadline, "".join(seen)
      try:
        line = lines.get(timeout=0.05)
      except queue.Empty:
        continue
      assert line is not None, "".join(seen)
      seen.append(line)
      if "Finished jaxpr to MLIR module conversion" in line:
        compiling_since = time.time()
      elif "Finished XLA compilation" in line:
        compiling_since = None
    proc.send_signal(signal.SIGINT)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    returncode = proc.wait(timeout=60)
  finally:
    proc.kill()
  while (line := lines.get(timeout=10)) is not None:
    seen.append(line)
  err = "".join(seen)
  assert returncode == 128 + signal.SIGINT, err
  assert err.endswith(
    "superconv: SIGINT again: stopped at once; run the same command to"
    " resume from the last complete checkpoint\n"
  )
  assert "Traceback" not in err
  # It stopped inside that compilation: no later line, no step trained.
  last_mlir = max(
    i for i, l in enumerate(seen) if "MLIR module conversion" in l
  )
  assert len(seen) == last_mlir + 2, err
  assert not (workdir / "checkpoints").exists()


# ---------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------


def _run(argv, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run(
    argv, env=ENV, capture_output=True, text=True, timeout=timeout
  )


def _can_mount_tmpfs(directory) -> str | None:
  """Why a private tmpfs cannot be mounted here, or None if it can."""
  if shutil.which("unshare") is None:
    return "no unshare command"
  probe = _run(
    ["unshare", "--mount", "--propagation", "private", "mount", "-t",
     "tmpfs", "-o", "size=64k", "tmpfs", str(directory)],
  )  # fmt: skip
  if probe.returncode != 0:
    return f"cannot mount a tmpfs: {probe.stderr.strip()}"
  return None


def _assert_ends_with_disk_full(result, workdir):
  """Exit 2, one summary line last; tracebacks at debug level only."""
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines()[-1] == (
    f"superconv: error: --workdir {workdir}: no space left on device"
    " (ENOSPC); no checkpoint is complete yet; free space and run the same"
    " command to start again"
  ), result.stderr[-6000:]
  for noise in ("Traceback", "Event loop is closed", "never retrieved"):
    assert noise not in result.stderr, result.stderr[-6000:]


def test_full_disk_during_a_checkpoint_ends_with_one_summary_line(tmp_path):
  """A real 1 MiB tmpfs: config.json and metrics fit, a checkpoint not."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  why = _can_mount_tmpfs(mount_point)
  if why:
    pytest.skip(why)
  workdir = mount_point / "run"
  # A private mount namespace: the tmpfs vanishes with the process.
  result = _run(
    ["unshare", "--mount", "--propagation", "private", "sh", "-c",
     'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"', str(mount_point),
     sys.executable, "-m", "superconv.main", "--config", QUICK,
     "--workdir", str(workdir), *TINY, "--config.checkpoint_every_steps=1"],
  )  # fmt: skip
  _assert_ends_with_disk_full(result, workdir)
  assert os.listdir(mount_point) == []  # The tmpfs is gone with it.


_INJECT_ENOSPC = """
import errno, sys
from superconv import main, train

def write_config(config, workdir):
  raise OSError(errno.ENOSPC, "No space left on device", workdir)

train.write_config = write_config
sys.argv = ["superconv.main", *sys.argv[1:]]
main.run()
"""


def test_injected_enospc_ends_with_one_summary_line(tmp_path):
  workdir = tmp_path / "run"
  result = _run(
    [sys.executable, "-c", _INJECT_ENOSPC, "--config", QUICK,
     "--workdir", str(workdir), *TINY]
  )  # fmt: skip
  _assert_ends_with_disk_full(result, workdir)


# ---------------------------------------------------------------------------
# Skipping an unreadable checkpoint
# ---------------------------------------------------------------------------


_RESTORE_FIVE_TIMES = """
import gc, sys, time
from superconv import checkpoint, cli
cli.setup_logging()
for _ in range(5):
  restored, skipped = checkpoint.restore_latest(sys.argv[1])
  gc.collect()  # Unretrieved futures are reported when collected.
  time.sleep(0.2)  # TensorStore's late completions arrive meanwhile.
print(restored.step, len(skipped))
"""


def test_skipping_an_unreadable_checkpoint_prints_only_its_warning(tmp_path):
  workdir = str(tmp_path / "run")
  state = {
    "params": {f"w{i}": np.full((32, 32), i, np.float32) for i in range(40)},
    "step": np.int32(0),
  }
  mngr = checkpoint.manager(workdir, keep=3, async_save=False)
  for step in (1, 2):
    checkpoint.save(mngr, step, state, {"seed": 0})
  mngr.close()
  # Empty every data file of the newest: each array's read fails.
  data = os.path.join(checkpoint.checkpoint_dir(workdir), "2", "state")
  emptied = 0
  for root, _, files in os.walk(data):
    if os.path.basename(root) == "d":
      for name in files:
        open(os.path.join(root, name), "w").close()
        emptied += 1
  assert emptied
  result = _run([sys.executable, "-c", _RESTORE_FIVE_TIMES, workdir])
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout == "1 1\n"
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 5, result.stderr[-3000:]
  for line in lines:
    assert "WARNING Incomplete checkpoint" in line, result.stderr[-6000:]
    assert f"{workdir}/checkpoints/2 (unreadable (" in line, line
    assert "using step 1, the latest complete one" in line, line
