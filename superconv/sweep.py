r"""Grid sweeps, and baseline tuning at an equal step budget.

Sweep: the cartesian product of `--sweep key=v1,v2,...` grids, one run each,
trained one after another by `python -m superconv.main` in a subprocess:

  python -m superconv.sweep --config configs/onecycle_resnet56.py \
      --workdir runs/onecycle --sweep seed=0,1,2 \
      --sweep schedule.max_lr=0.8,1.6,3.0 [--config.key=value ...]

Each run gets its own directory `DIR/<name>`, the name made of its swept
values in key order (`schedule.max_lr=0.8,seed=0`), and so its own
config.json, metrics.jsonl and checkpoints. Runs go in product order, the
last --sweep varying fastest. A run whose subprocess exited 0 gets
`done.json` and is skipped by later invocations; an interrupted run is
resumed by running the same command again (main resumes from its latest
checkpoint). The grid may grow between invocations (more seeds); the config
file and the common overrides may not (`DIR/sweep.json` records them).
One sweep at a time per DIR: a sweep (or tune) holds `DIR/.superconv.lock`
(superconv/lock.py) while it runs, and each run's trainer locks its own
`DIR/<name>`, so a second sweep on DIR exits 2 naming the first, and a
sweep never locks out its own runs.
Values holding commas go in brackets: `--sweep
schedule.boundaries=(25,37.5),(30,40)`. Before anything runs (also with
--dry-run), every run's overrides are parsed and checked as on main's
command line: an unknown key, a value of the wrong type or an impossible
one is refused with one line naming it.

Parallel runs (`--parallel N|auto`): N trainers at once, each pinned to its
own len(cores) // N CPU cores (`os.sched_setaffinity`), with one XLA thread
when that is one core (XLA:CPU sizes its thread pool from the affinity;
`--xla_cpu_multi_thread_eigen=false` is added once a probe shows the
installed jaxlib accepts it). Small CPU models train faster this way: on a
2-core CPU two ResNet-20 runs pinned to one core each trained 535 img/s
together against 438 img/s for one run on both cores. The default, auto,
runs as many at once as there are CPU cores (and pending runs, and memory
for MEMORY_PER_RUN each) when the runs use CPU devices, in whole waves,
the few runs left over then sharing all the cores (one left: it gets them
all); one at a time with every core otherwise (GPU/TPU: a run uses all
local devices through pmap). Use --parallel 1 to time a single run or
when memory is short. Runs trained with other thread counts agree up to
float summation order; two runs with the same settings agree bit for bit,
at once or one after the other. Skipping, resuming and Ctrl-C work as for
one run at a time: a Ctrl-C stops every running trainer at a checkpoint.

Tune: pick a baseline's peak LR (and warm-up) at a fixed step budget by
accuracy on a validation split carved from the training set, never the test
set:

  python -m superconv.sweep tune --config configs/cosine_resnet56.py \
      --workdir runs/tune_cosine --budget-steps 10000 --validation-size 5000 \
      --sweep schedule.max_lr=0.4,0.8,1.6,3.2 --sweep schedule.warmup=0,2,5

runs the grid with `--config.num_steps=<budget> --config.validation_size=N`,
writes `DIR/tuning.json` (every candidate, the winner) and prints the command
that trains the winner on the full training set, evaluated on the test set,
over several seeds.

`superconv.data.split_validation` is the held-out split those runs train
and evaluate on: the last N images of a fixed seed-0 permutation of the train
split, applied by main right after loading the data when
config.validation_size > 0.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
import dataclasses
import datetime
import functools
import itertools
import json
import math
import os
import re
import selectors
import shlex
import signal
import statistics
import subprocess
import sys
import time

from absl import flags

from superconv import cli, lock, metric_writer, storage

DONE_FILE = "done.json"
# What done.json keeps of a run's result (and a skipped run reports).
_DONE_KEYS = (
  "returncode",
  "final_accuracy",
  "final_step",
  "eval_examples",
  "seconds",
)
SWEEP_FILE = "sweep.json"
TUNING_FILE = "tuning.json"
LOG_FILE = "train.log"
_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._=,+-]")


class SweepError(ValueError):
  """Bad sweep input; a one-line message naming the flag or path."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))


# ============================================================================
# Validation split (to be applied by main right after data loading)
# ============================================================================


# ============================================================================
# Grid expansion and naming
# ============================================================================


def split_values(text: str) -> list[str]:
  """Splits 'a,(b,c),[d,e]' on the commas outside brackets."""
  values, depth, current = [], 0, []
  for ch in text:
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    if ch == "," and depth == 0:
      values.append("".join(current).strip())
      current = []
    else:
      current.append(ch)
  values.append("".join(current).strip())
  return values


def parse_sweep(spec: str) -> tuple[str, list[str]]:
  """'key=v1,v2' -> ('key', ['v1', 'v2'])."""
  key, sep, rest = spec.partition("=")
  key = key.strip()
  if key.startswith("config."):
    key = key[len("config.") :]
  if not sep or not _KEY_RE.match(key):
    raise SweepError(
      f"--sweep {spec!r}: expected key=v1,v2,... with a config"
      " key such as seed or schedule.max_lr"
    )
  values = split_values(rest)
  if any(not v for v in values):
    raise SweepError(f"--sweep {spec!r}: empty value")
  if len(set(values)) != len(values):
    raise SweepError(f"--sweep {spec!r}: repeated value")
  return key, values


def expand_grid(sweeps: Sequence[tuple[str, Sequence[str]]]) -> list[dict]:
  """Cartesian product of the grids, the last one varying fastest."""
  keys = [k for k, _ in sweeps]
  if len(set(keys)) != len(keys):
    duplicate = next(k for k in keys if keys.count(k) > 1)
    raise SweepError(
      f"--sweep {duplicate}: given twice; list all its values in one --sweep"
    )
  return [
    dict(zip(keys, combo))
    for combo in itertools.product(*[v for _, v in sweeps])
  ]


def run_name(overrides: dict) -> str:
  """'k1=v1,k2=v2' in key order; characters unsafe in paths become '_'."""
  if not overrides:
    return "run"
  name = ",".join(f"{k}={overrides[k]}" for k in sorted(overrides))
  return _UNSAFE_NAME_CHARS.sub("_", name)


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep."""

  name: str
  overrides: dict  # Swept key -> value (as given on the command line).
  workdir: str


def plan(
  sweeps: Sequence[tuple[str, Sequence[str]]], workdir: str
) -> list[Run]:
  """The runs of a grid, in order, each with its own directory."""
  runs = []
  for overrides in expand_grid(sweeps):
    name = run_name(overrides)
    runs.append(Run(name, overrides, os.path.join(workdir, name)))
  names = [r.name for r in runs]
  if len(set(names)) != len(names):
    clash = next(n for n in names if names.count(n) > 1)
    raise SweepError(
      f"--sweep: two runs would share the directory {clash};"
      " make the values differ in letters, digits or ._=,+-"
    )
  return runs


def override_args(overrides: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in overrides.items()]


def parse_overrides(args: Sequence[str]) -> tuple[dict, list[str]]:
  """Splits argv into ({key: value} of --config.key=value, the rest)."""
  overrides, rest, i = {}, [], 0
  args = list(args)
  while i < len(args):
    arg = args[i]
    if arg.startswith("--config."):
      key, sep, value = arg[len("--config.") :].partition("=")
      if not sep:
        if i + 1 >= len(args):
          raise SweepError(f"{arg}: needs a value")
        value, i = args[i + 1], i + 1
      if not _KEY_RE.match(key):
        raise SweepError(f"{arg}: not a config key")
      overrides[key] = value
    else:
      rest.append(arg)
    i += 1
  return overrides, rest


# ============================================================================
# Run directories
# ============================================================================


def _read_json(path: str):
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _write_json(path: str, value) -> None:
  storage.write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def is_complete(workdir: str) -> bool:
  """True when the sweep saw this run's trainer exit 0 (done.json)."""
  done = _read_json(os.path.join(workdir, DONE_FILE))
  return isinstance(done, dict) and done.get("returncode") == 0


def final_eval(workdir: str) -> dict | None:
  """The last evaluation row of a run's metrics.jsonl (None if none)."""
  rows = metric_writer.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  evals = [r for r in rows if "eval_accuracy" in r]
  return evals[-1] if evals else None


def _accuracy(row: dict | None) -> float | None:
  if not row:
    return None
  try:
    return float(row["eval_accuracy"])
  except (TypeError, ValueError):
    return None


def default_trainer() -> list[str]:
  return [sys.executable, "-m", "superconv.main"]


def _now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


# What a trainer's exit status (superconv.main's) means.
_STATUS_NAMES = {
  cli.EXIT_BAD_INPUT: "bad input",
  cli.EXIT_NONFINITE: "diverged",
  cli.EXIT_SIGINT: "interrupted",
  cli.EXIT_SIGTERM: "terminated",
}


def _status_for(returncode: int) -> str:
  if returncode == cli.EXIT_OK:
    return "completed"
  if returncode in _STATUS_NAMES:
    return f"{_STATUS_NAMES[returncode]} (rc={returncode})"
  if returncode < 0:
    return f"killed (signal {-returncode})"
  return f"failed (rc={returncode})"


class Terminated(BaseException):
  """The sweep got SIGTERM (raised by the handler main() installs)."""


def _stop(process: subprocess.Popen, sig: int, log) -> None:
  """Forwards one signal to the trainer and waits while it exits.

  superconv.main stops at the next step boundary after saving a checkpoint;
  its output keeps going to the log meanwhile. A second interrupt of the
  sweep kills the trainer at once (it resumes from its last checkpoint).
  """
  process.send_signal(sig)
  try:
    for line in process.stdout:
      log.write(line)
    process.wait()
  except BaseException:
    process.kill()
    process.wait()
    raise


def _train(command: list[str], run: Run, echo: bool) -> int:
  """Runs the trainer; output appended to <run>/train.log (and echoed).

  The trainer runs in its own session, so a Ctrl-C in the terminal reaches
  only the sweep, which forwards exactly one SIGINT (SIGTERM for SIGTERM).
  """
  os.makedirs(run.workdir, exist_ok=True)
  with open(os.path.join(run.workdir, LOG_FILE), "a") as log:
    log.write(f"# {_now()} {shlex.join(command)}\n")
    log.flush()
    process = subprocess.Popen(
      command,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
      errors="replace",
      bufsize=1,
      start_new_session=True,
      env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
      for line in process.stdout:
        log.write(line)
        if echo:
          sys.stdout.write(f"[{run.name}] {line}")
          sys.stdout.flush()
      return process.wait()
    except KeyboardInterrupt:
      _stop(process, signal.SIGINT, log)
      raise
    except BaseException:
      _stop(process, signal.SIGTERM, log)
      raise


# ============================================================================
# Parallel runs: several trainers at once, each pinned to its own cores
# ============================================================================

# XLA:CPU sizes its intra-op (Eigen) thread pool from the process's CPU
# affinity, so a trainer pinned to one core has one XLA thread; this flag
# also keeps every Eigen operation on the thread that runs it. An XLA flag
# the installed jaxlib does not know stops the process, so it is used only
# after a probe has run JAX with it (`probe_platform`).
SINGLE_THREAD_XLA_FLAG = "--xla_cpu_multi_thread_eigen=false"
# Assumed peak memory of one CPU run (a CIFAR-sized data set in memory and
# the compiled steps): --parallel auto keeps N runs x this within the
# machine's available memory.
MEMORY_PER_RUN = 3 << 30
_PROBE = "import jax; print(jax.default_backend())"


@dataclasses.dataclass(frozen=True)
class Parallelism:
  """How many trainers run at once, and on which cores."""

  runs: int
  slots: tuple  # Per slot: the CPU cores its trainers are pinned to.
  xla_flag: str  # Added to every trainer's XLA_FLAGS ("" = none).
  reason: str
  cores: tuple = ()  # Every usable core (for re-planning a last wave).
  flag_ok: bool = False  # Whether the jaxlib accepts SINGLE_THREAD_XLA_FLAG.

  def describe(self) -> str:
    if self.runs == 1 and not self.slots[0]:
      return f"one run at a time ({self.reason})"
    cores = " | ".join(",".join(map(str, c)) for c in self.slots)
    threads = ", one XLA thread each" if self.xla_flag else ""
    runs = f"{self.runs} runs at once" if self.runs > 1 else "one run"
    return f"{runs}, pinned to cores {cores}{threads} ({self.reason})"


def parse_parallel(text: str) -> int | None:
  """'auto' -> None; a positive integer -> itself (else SweepError)."""
  if text == "auto":
    return None
  try:
    value = int(text)
  except ValueError:
    value = 0
  if value < 1:
    raise SweepError(
      f"--parallel {text!r}: expected a positive number of runs or auto"
    )
  return value


def _one(reason: str) -> Parallelism:
  return Parallelism(1, ((),), "", reason)


def choose_parallelism(
  requested: int | None,
  pending: int,
  *,
  cores: Sequence[int],
  platform: str,
  memory: int | None,
  flag_ok: bool,
) -> Parallelism:
  """How to run `pending` runs (pure: the machine comes as arguments).

  `requested` None (auto): as many runs as CPU cores, pending runs and
  memory (MEMORY_PER_RUN each) allow, when the runs use CPU devices and
  that is at least 2; else one at a time on every core, as without
  --parallel. A number N > 1 pins each run to len(cores) // N cores (equal
  slots: a run's thread count, and so its float summation order, does not
  depend on its slot; left-over cores stay idle). With one core per slot
  the trainers also get SINGLE_THREAD_XLA_FLAG when `flag_ok`.
  """
  cores = tuple(sorted(cores))
  if requested == 1:
    return _one("--parallel 1")
  if requested is None:
    if platform != "cpu":
      return _one(f"the runs use {platform} devices")
    n = min(len(cores), pending)
    if memory is not None:
      n = min(n, memory // MEMORY_PER_RUN)
    if n < 2:
      return _one(
        f"{len(cores)} CPU core(s), {pending} run(s) to train"
        + ("" if memory is None else f", {memory / 2**30:.1f} GiB available")
      )
    reason = f"auto: {len(cores)} CPU cores, {pending} runs to train"
  else:
    n = requested
    if n > len(cores):
      raise SweepError(
        f"--parallel {n}: only {len(cores)} CPU core(s) to pin runs to"
      )
    reason = f"--parallel {n}"
    if platform not in ("cpu", "unknown"):
      reason += f"; the runs share the {platform} devices"
  per = len(cores) // n
  slots = tuple(cores[i * per : (i + 1) * per] for i in range(n))
  flag = SINGLE_THREAD_XLA_FLAG if per == 1 and flag_ok else ""
  return Parallelism(n, slots, flag, reason, cores, flag_ok)


def waves(jobs: Sequence, parallelism: Parallelism, auto: bool) -> list:
  """[(jobs, Parallelism)]: the runs in waves that fill every slot.

  An explicit --parallel N trains every job on its N slots. Auto trains
  whole waves of N, then plans the rest again for fewer runs on all the
  cores: two runs pinned to one core each beat one run on two cores, but
  one run on two cores beats one pinned run with the other core idle.
  """
  jobs = list(jobs)
  if not auto or parallelism.runs == 1:
    return [(jobs, parallelism)] if jobs else []
  full = len(jobs) - len(jobs) % parallelism.runs
  out = [(jobs[:full], parallelism)] if full else []
  rest = jobs[full:]
  if rest:
    again = choose_parallelism(
      None,
      len(rest),
      cores=parallelism.cores,
      platform="cpu",
      memory=None,
      flag_ok=parallelism.flag_ok,
    )
    if again.runs == 1:  # The last run: every core, pinned to all.
      again = Parallelism(
        1,
        (parallelism.cores,),
        "",
        "the last run, on every core",
        parallelism.cores,
        parallelism.flag_ok,
      )
    out += waves(rest, again, auto=True)
  return out


@functools.cache
def _probe(python: str, xla_flags: str, platforms: str) -> str | None:
  """The probe's JAX backend, or None if JAX failed (memoized)."""
  env = {**os.environ, "XLA_FLAGS": xla_flags}
  del platforms  # In the environment; a part of the memo's key.
  try:
    proc = subprocess.run(
      [python, "-c", _PROBE],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      check=False,
    )
  except (OSError, subprocess.TimeoutExpired):
    return None
  lines = proc.stdout.split()
  return lines[-1] if proc.returncode == 0 and lines else None


def probe_platform(python: str = sys.executable) -> tuple[str, bool]:
  """(JAX platform the trainers get, whether SINGLE_THREAD_XLA_FLAG works).

  Runs JAX once in a subprocess with this environment (the parent never
  starts a JAX backend: on a GPU it would take the device's memory).
  """
  base = os.environ.get("XLA_FLAGS", "")
  platforms = os.environ.get("JAX_PLATFORMS", "")
  with_flag = f"{base} {SINGLE_THREAD_XLA_FLAG}".strip()
  platform = _probe(python, with_flag, platforms)
  if platform is not None:
    return platform, True
  return _probe(python, base, platforms) or "unknown", False


def _available_memory() -> int | None:
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def resolve_parallelism(
  requested: int | None, pending: int, trainer: Sequence[str]
) -> Parallelism:
  """`choose_parallelism` for this machine and these trainers.

  Auto with another --trainer than superconv.main: one at a time (what it
  runs on is unknown). Probes JAX only when more than one run could start.
  """
  if requested == 1 or pending == 0:
    return _one("--parallel 1" if requested == 1 else "nothing to train")
  if requested is None and list(trainer) != default_trainer():
    return _one("a --trainer other than superconv.main")
  if not hasattr(os, "sched_setaffinity"):
    if requested is None:
      return _one("no CPU pinning on this system")
    raise SweepError(f"--parallel {requested}: no CPU pinning on this system")
  cores = sorted(os.sched_getaffinity(0))
  if requested is None and (len(cores) < 2 or pending < 2):
    return _one(f"{len(cores)} CPU core(s), {pending} run(s) to train")
  platform, flag_ok = probe_platform()
  return choose_parallelism(
    requested,
    pending,
    cores=cores,
    platform=platform,
    memory=_available_memory(),
    flag_ok=flag_ok,
  )


def _slot_env(parallelism: Parallelism, slot: int) -> dict:
  env = {**os.environ, "PYTHONUNBUFFERED": "1"}
  env["OMP_NUM_THREADS"] = str(len(parallelism.slots[slot]))
  flags = env.get("XLA_FLAGS", "").split()
  if parallelism.xla_flag and parallelism.xla_flag not in flags:
    env["XLA_FLAGS"] = " ".join(flags + [parallelism.xla_flag])
  return env


@dataclasses.dataclass
class _Child:
  """A trainer that `_Trainers` runs."""

  job: _Job
  slot: int
  log: object
  process: subprocess.Popen
  start: float
  partial: bytes = b""


def _emit(child: _Child, data: bytes, echo: bool, final: bool = False):
  """Complete lines of a trainer's output to its log (and the console)."""
  child.partial += data
  *lines, child.partial = child.partial.split(b"\n")
  if final and child.partial:
    lines, child.partial = lines + [child.partial], b""
  for raw in lines:
    line = raw.decode("utf-8", "replace") + "\n"
    child.log.write(line)
    if echo:
      sys.stdout.write(f"[{child.job.run.name}] {line}")
  child.log.flush()
  if echo:
    sys.stdout.flush()


def _train_parallel(jobs, parallelism: Parallelism, echo: bool, save) -> None:
  """Trains `jobs` (`_Job`s), `parallelism.runs` at once.

  One thread: a selector reads every trainer's output. Each trainer runs
  in its own session, pinned to its slot's cores. A Ctrl-C (SIGTERM)
  forwards exactly one SIGINT (SIGTERM) to every running trainer, starts
  no new one and waits while each stops at a checkpoint; a second one
  kills them (they resume from their last checkpoint). Runs not started
  stay pending. Then the interrupt is raised again.
  """
  trainers = _Trainers(jobs, parallelism, echo, save)
  try:
    trainers.launch()
    while trainers.active:
      try:
        trainers.pump()
        trainers.launch()
      except (KeyboardInterrupt, Terminated) as e:
        trainers.interrupt(e)
  finally:
    trainers.kill_all()  # Only after an unexpected error.
  if trainers.stopping is not None:
    raise trainers.stopping


class _Trainers:
  """The trainers of `_train_parallel`: started into free slots, read by
  one selector, recorded as they finish."""

  def __init__(self, jobs, parallelism: Parallelism, echo: bool, save):
    self.queue = collections.deque(jobs)
    self.free = list(range(parallelism.runs))
    self.active: list[_Child] = []
    self.selector = selectors.DefaultSelector()
    self.parallelism = parallelism
    self.echo = echo
    self.save = save
    self.stopping = None  # The interrupt being handled.

  def launch(self) -> None:
    """Starts queued jobs in the free slots (none once stopping)."""
    while self.queue and self.free and self.stopping is None:
      self._start(self.queue.popleft(), self.free.pop(0))

  def _start(self, job: _Job, slot: int) -> None:
    run, command = job.run, job.command
    cores = self.parallelism.slots[slot]
    xla_flag = self.parallelism.xla_flag
    os.makedirs(run.workdir, exist_ok=True)
    log = open(os.path.join(run.workdir, LOG_FILE), "a")
    log.write(
      f"# {_now()} {shlex.join(command)}\n# pinned to cores"
      f" {','.join(map(str, cores))}"
      + (f", {xla_flag}" if xla_flag else "")
      + "\n"
    )
    log.flush()
    print(
      f"[{run.name}] cores {','.join(map(str, cores))}: {shlex.join(command)}",
      flush=True,
    )
    job.row["status"] = "running"
    self.save()
    process = subprocess.Popen(
      command,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      bufsize=0,
      start_new_session=True,
      env=_slot_env(self.parallelism, slot),
      # No other thread exists in this process: safe before exec.
      preexec_fn=functools.partial(os.sched_setaffinity, 0, cores),
    )
    child = _Child(job, slot, log, process, time.time())
    self.selector.register(process.stdout, selectors.EVENT_READ, child)
    self.active.append(child)

  def pump(self) -> None:
    """Copies the output that is ready; records the trainers that ended."""
    for key, _ in self.selector.select(timeout=1.0):
      data = os.read(key.fd, 1 << 16)
      if data:
        _emit(key.data, data, self.echo)
      else:
        self._finished(key.data)

  def _finished(self, child: _Child) -> None:
    _emit(child, b"", self.echo, final=True)
    self.selector.unregister(child.process.stdout)
    child.process.stdout.close()
    returncode = child.process.wait()
    child.log.close()
    self.active.remove(child)
    self.free.append(child.slot)
    self.free.sort()
    if self.stopping is not None and returncode != 0:
      child.job.row["status"] = (
        "interrupted"
        if isinstance(self.stopping, KeyboardInterrupt)
        else "terminated"
      )
    else:
      _record(child.job, returncode, child.start)
    self.save()

  def interrupt(self, e: BaseException) -> None:
    """The first interrupt: one signal to every trainer; then: kill them."""
    if self.stopping is None:
      self.stopping = e
      sig = (
        signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM
      )
      for child in self.active:
        child.process.send_signal(sig)
    else:
      for child in self.active:
        child.process.kill()

  def kill_all(self) -> None:
    for child in self.active:
      child.process.kill()
      child.process.wait()
      child.log.close()


def _images_trained(workdir: str, last: dict | None) -> int | None:
  """Images of the run's final step: steps x batch x parallel seeds."""
  config = _run_config(workdir)
  try:
    return (
      int(last["step"])
      * int(config["batch_size"])
      * int(config.get("num_parallel_seeds", 1))
    )
  except (KeyError, TypeError, ValueError):
    return None


def _train_rate(workdir: str) -> float | None:
  """Median train images/s of the logged intervals after the first.

  The first interval holds the compilation; a several-seed run counts
  the images of all its replicas.
  """
  rows = metric_writer.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  seeds = int(_run_config(workdir).get("num_parallel_seeds", 1) or 1)
  rates = []
  for row in rows:
    try:
      rates.append(float(row["steps_per_sec"]) * float(row["batch_size"]))
    except (KeyError, TypeError, ValueError):
      continue
  if len(rates) < 2:
    return None
  return statistics.median(rates[1:]) * seeds


def throughput_line(results: Sequence[dict]) -> str | None:
  """Images trained by this invocation's runs over its training wall time."""
  ran = [
    r
    for r in results
    if r.get("started") is not None and r.get("images") and r["seconds"]
  ]
  if not ran:
    return None
  start = min(r["started"] for r in ran)
  end = max(r["started"] + r["seconds"] for r in ran)
  images = sum(r["images"] for r in ran)
  return (
    f"throughput: {images} images in {end - start:.1f} s ="
    f" {images / (end - start):.1f} img/s over {len(ran)} run(s), start-up,"
    " compilation and evaluation included (resumed runs count their"
    " earlier steps too)"
  )


# ============================================================================
# The sweep
# ============================================================================


def _check_config(config_path: str, runs: Sequence[Run], common: dict) -> None:
  """Every run's --config.* overrides as superconv.main would take them.

  Each key must exist, and each run's values must parse to the config's
  types and pass its checks before any data is loaded, exactly as on
  main's command line; else SweepError naming the key or the run.
  """
  try:
    config = cli.load_config_file(config_path)
  except cli.ConfigFileError as e:
    raise SweepError(str(e)) from None
  keys = list(common) + list(runs[0].overrides)  # plan() gives >= 1 run.
  for key in keys:
    message = cli.unknown_key(config, key)
    if message:
      raise SweepError(message)
  for run in runs:
    message = cli.check_overrides(config_path, {**common, **run.overrides})
    if message:
      raise SweepError(f"run {run.name}: {message}")


def _sweep_header(config_path: str, common: dict, trainer: list[str]) -> dict:
  return {"config": config_path, "common_overrides": common, "trainer": trainer}


def _check_same_sweep(workdir: str, header: dict) -> dict:
  """Previous sweep.json of workdir (if any); it must match `header`."""
  previous = _read_json(os.path.join(workdir, SWEEP_FILE))
  if not isinstance(previous, dict):
    return {}
  for key, flag in (
    ("config", "--config"),
    ("common_overrides", "--config.* overrides"),
    ("trainer", "--trainer"),
  ):
    if previous.get(key) != header[key]:
      raise SweepError(
        f"--workdir {workdir}: holds a sweep with a different {flag}"
        f" ({previous.get(key)!r}, now {header[key]!r}); use another"
        " --workdir"
      )
  return previous


def _locked(fn):
  """Runs `fn(config_path, workdir, ...)` holding the lock of `workdir`
  (lock.LockError if another sweep holds it); a dry run takes none."""

  @functools.wraps(fn)
  def locked(config_path, workdir, *args, **kwargs):
    if kwargs.get("dry_run"):
      return fn(config_path, workdir, *args, **kwargs)
    with lock.acquire(workdir, "superconv.sweep"):
      return fn(config_path, workdir, *args, **kwargs)

  return locked


@_locked
def run_sweep(
  config_path: str,
  workdir: str,
  sweeps: Sequence[tuple[str, Sequence[str]]],
  *,
  common: dict | None = None,
  trainer: list[str] | None = None,
  echo: bool = True,
  dry_run: bool = False,
  parallel: int | None = 1,
) -> list[dict]:
  """Trains every run of the grid not yet complete; returns their results.

  Each result: name, overrides, workdir, status, final_accuracy,
  final_step, eval_examples, returncode, seconds (and, for runs trained
  now, images, images_per_sec, started). Writes workdir/sweep.json before
  the first run and after every run. `parallel`: trainers at once (None:
  chosen by the machine, see `resolve_parallelism`).
  """
  common = dict(common or {})
  config_path, workdir = _checked_paths(config_path, workdir)
  trainer = list(trainer or default_trainer())
  runs = _checked_plan(config_path, workdir, sweeps, common, trainer)
  header = _sweep_header(config_path, common, trainer)
  previous = {} if dry_run else _check_same_sweep(workdir, header)
  results = [_first_row(run, common) for run in runs]
  jobs = [
    _job(run, row, trainer, config_path, common)
    for run, row in zip(runs, results)
  ]
  parallelism = resolve_parallelism(
    parallel,
    sum(r["status"] == "pending" for r in results),
    trainer,
  )
  if dry_run:
    _print_dry_run(jobs, parallelism)
    return results
  os.makedirs(workdir, exist_ok=True)
  save = _saver(workdir, header, sweeps, previous, results)
  save()
  pending = []  # Runs for the parallel trainers.
  for job in jobs:
    if job.row["status"] != "pending":
      print(f"[{job.run.name}] complete, skipped", flush=True)
    elif parallelism.runs > 1:
      pending.append(job)
    else:
      _train_one(job, echo, save)
  for wave_jobs, wave in waves(pending, parallelism, auto=parallel is None):
    print(f"parallel: {wave.describe()}", flush=True)
    _train_parallel(wave_jobs, wave, echo, save)
  return results


def _checked_paths(config_path: str, workdir: str) -> tuple[str, str]:
  """(absolute config spec 'path[:arg]', absolute workdir), both checked."""
  path, arg = cli.config_file(config_path)
  config_path = os.path.abspath(path) + ("" if arg is None else f":{arg}")
  if not os.path.isfile(os.path.abspath(path)):
    raise SweepError(f"--config: no such file: {os.path.abspath(path)}")
  try:  # Empty, a file, a broken link, not writable: refused.
    workdir = cli.check_workdir(workdir)
  except ValueError as e:
    raise SweepError(str(e)) from None
  return config_path, workdir


def _checked_plan(config_path, workdir, sweeps, common, trainer) -> list[Run]:
  """The runs of the grid; with superconv.main as the trainer, every run's
  overrides checked as main would take them."""
  swept = [k for k, _ in sweeps]
  both = sorted(set(swept) & set(common))
  if both:
    raise SweepError(
      f"config.{both[0]}: both swept and overridden; drop one of them"
    )
  runs = plan(sweeps, workdir)
  if trainer == default_trainer():
    _check_config(config_path, runs, common)
  return runs


def _first_row(run: Run, common: dict) -> dict:
  """A run's result row before training: pending, or skipped (complete)."""
  done = _read_json(os.path.join(run.workdir, DONE_FILE))
  row = {
    "name": run.name,
    "overrides": run.overrides,
    "workdir": run.workdir,
    "status": "pending",
    "returncode": None,
    "final_accuracy": None,
    "final_step": None,
    "eval_examples": None,
    "seconds": None,
  }
  if is_complete(run.workdir):
    if done.get("overrides") != {**common, **run.overrides}:
      raise SweepError(
        f"{run.workdir}: completed with other overrides"
        f" ({done.get('overrides')!r}); use another --workdir"
      )
    row.update(
      status="skipped (complete)",
      **{k: done.get(k) for k in _DONE_KEYS},
    )
  return row


@dataclasses.dataclass(frozen=True)
class _Job:
  """A run of the sweep with its result row and its trainer command."""

  run: Run
  row: dict
  command: list
  overrides: dict  # The run's common and swept overrides.


def _job(run: Run, row: dict, trainer, config_path: str, common) -> _Job:
  overrides = {**common, **run.overrides}
  command = trainer + ["--config", config_path, "--workdir", run.workdir]
  return _Job(run, row, command + override_args(overrides), overrides)


def _print_dry_run(jobs: Sequence[_Job], parallelism: Parallelism) -> None:
  if parallelism.runs > 1:
    print(f"parallel: {parallelism.describe()}", flush=True)
  for job in jobs:
    print(f"{job.row['status']:<20} {shlex.join(job.command)}")


def _saver(workdir, header: dict, sweeps, previous: dict, results: list):
  """A function that writes workdir/sweep.json: `results` as they are now,
  then the rows of earlier invocations' runs not in this grid."""
  grid = {k: list(v) for k, v in sweeps}
  old_runs = {
    r["name"]: r
    for r in previous.get("runs", [])
    if isinstance(r, dict) and "name" in r
  }

  def save():
    current = {r["name"] for r in results}
    kept = [r for n, r in sorted(old_runs.items()) if n not in current]
    _write_json(
      os.path.join(workdir, SWEEP_FILE),
      {**header, "grid": grid, "runs": results + kept, "updated": _now()},
    )

  return save


def _train_one(job: _Job, echo: bool, save) -> None:
  """Trains one run on every core; an interrupt is noted, then raised."""
  print(f"[{job.run.name}] {shlex.join(job.command)}", flush=True)
  job.row["status"] = "running"
  save()
  start = time.time()
  try:
    returncode = _train(job.command, job.run, echo)
  except (KeyboardInterrupt, Terminated) as e:
    job.row["status"] = (
      "interrupted" if isinstance(e, KeyboardInterrupt) else "terminated"
    )
    save()
    raise
  _record(job, returncode, start)
  save()


def _record(job: _Job, returncode: int, start: float) -> None:
  """A finished trainer's row (and done.json when it exited 0)."""
  run, row = job.run, job.row
  last = final_eval(run.workdir)
  row.update(
    status=_status_for(returncode),
    returncode=returncode,
    seconds=round(time.time() - start, 3),
    final_accuracy=_accuracy(last) if returncode == 0 else None,
    final_step=last.get("step") if last else None,
    eval_examples=last.get("eval_examples") if last else None,
    started=start,
    images=_images_trained(run.workdir, last),
    images_per_sec=_train_rate(run.workdir),
  )
  if returncode == 0:
    _write_json(
      os.path.join(run.workdir, DONE_FILE),
      {
        "name": run.name,
        "overrides": job.overrides,
        "command": job.command,
        "finished": _now(),
        **{k: row[k] for k in _DONE_KEYS},
      },
    )


def _fmt_accuracy(value) -> str:
  return "-" if value is None else f"{value:.4f}"


def summary_table(results: Sequence[dict]) -> str:
  """Fixed-width table: run, status, final accuracy, final step, seconds,
  train images/s (median of the logged intervals after the first)."""
  width = max([len("run")] + [len(r["name"]) for r in results])
  lines = [
    f"{'run':<{width}}  {'status':<20}  {'final acc':>9}"
    f"  {'step':>7}  {'seconds':>8}  {'img/s':>7}"
  ]
  for r in results:
    seconds = "-" if r["seconds"] is None else f"{r['seconds']:.1f}"
    step = "-" if r["final_step"] is None else str(r["final_step"])
    rate = r.get("images_per_sec")
    rate = "-" if rate is None else f"{rate:.1f}"
    lines.append(
      f"{r['name']:<{width}}  {r['status']:<20}"
      f"  {_fmt_accuracy(r['final_accuracy']):>9}  {step:>7}"
      f"  {seconds:>8}  {rate:>7}"
    )
  return "\n".join(lines)


def _ok(result: dict) -> bool:
  return result["status"] in ("completed", "skipped (complete)")


# ============================================================================
# Tuning at an equal budget
# ============================================================================


def _run_config(workdir: str) -> dict:
  config = _read_json(os.path.join(workdir, "config.json"))
  return config if isinstance(config, dict) else {}


def _seed_free(overrides: dict) -> dict:
  return {k: v for k, v in overrides.items() if k != "seed"}


@_locked
def tune(
  config_path: str,
  workdir: str,
  sweeps: Sequence[tuple[str, Sequence[str]]],
  *,
  budget_steps: int,
  validation_size: int,
  common: dict | None = None,
  trainer: list[str] | None = None,
  test_seeds: str = "0,1,2,3,4",
  test_workdir: str | None = None,
  echo: bool = True,
  parallel: int | None = 1,
) -> dict:
  """Runs the grid on the validation split at `budget_steps`; picks the best.

  Candidates are the grid points without `seed` (a swept seed is averaged
  over); the winner has the highest mean final validation accuracy, ties
  going to the earlier grid point; candidates with a failed or diverged run
  cannot win. Every run's last evaluation must have used exactly
  `validation_size` images (the held-out split), else SweepError: a grid
  scored on the test set is never reported as tuned. Writes
  workdir/tuning.json and returns its content.
  """
  user_common = dict(common or {})
  _check_tune_args(budget_steps, validation_size, sweeps, user_common)
  results = run_sweep(
    config_path,
    workdir,
    sweeps,
    common={
      **user_common,
      "num_steps": str(budget_steps),
      "validation_size": str(validation_size),
    },
    trainer=trainer,
    echo=echo,
    parallel=parallel,
  )
  print(summary_table(results))
  candidates = _candidates(results, validation_size)
  eligible = [c for c in candidates.values() if c["eligible"]]
  winner = max(
    eligible, key=lambda c: c["mean_validation_accuracy"], default=None
  )
  close = _close_to_winner(winner, eligible, validation_size)
  notes = _tuning_notes(close, winner, validation_size, results)
  command = _test_command(
    config_path,
    test_workdir
    or os.path.join(os.path.relpath(os.path.abspath(workdir)), "test"),
    test_seeds,
    budget_steps,
    {**user_common, **winner["overrides"]} if winner else None,
  )
  report = {
    "config": os.path.abspath(config_path),
    "budget_steps": budget_steps,
    "validation_size": validation_size,
    "common_overrides": user_common,
    "grid": {k: list(v) for k, v in sweeps},
    "selection": "highest mean final validation accuracy (last"
    f" {validation_size} images of a seed-0 permutation of the"
    " train split); ties: earlier grid point",
    "candidates": list(candidates.values()),
    "winner": winner,
    "close_to_winner": close,
    "notes": notes,
    "test_command": command,
  }
  _write_json(os.path.join(workdir, TUNING_FILE), report)
  _print_tuning(report, test_seeds)
  return report


def _check_tune_args(budget_steps, validation_size, sweeps, common) -> None:
  if budget_steps < 1:
    raise SweepError(f"--budget-steps: must be >= 1, got {budget_steps}")
  if validation_size < 1:
    raise SweepError(f"--validation-size: must be >= 1, got {validation_size}")
  if not sweeps:
    raise SweepError(
      "tune: give the grid, e.g. --sweep"
      " schedule.max_lr=0.4,0.8,1.6 --sweep schedule.warmup=0,2"
    )
  for key in ("num_steps", "num_epochs", "validation_size"):
    if key in common or key in dict(sweeps):
      raise SweepError(
        f"config.{key}: set by tune (--budget-steps,"
        " --validation-size); do not override it"
      )


def _candidates(results: Sequence[dict], validation_size: int) -> dict:
  """name -> candidate: the runs of a grid point less `seed`, whether it
  may win (every run complete and finite) and its mean accuracy."""
  candidates: dict[str, dict] = {}
  for result in results:
    key_overrides = _seed_free(result["overrides"])
    name = run_name(key_overrides)
    candidate = candidates.setdefault(
      name, {"name": name, "overrides": key_overrides, "runs": []}
    )
    if _ok(result) and result["eval_examples"] != validation_size:
      raise SweepError(
        f"{result['workdir']}: evaluated on {result['eval_examples']}"
        f" images, not the {validation_size}-image validation split;"
        " wire config.validation_size into main (see superconv/sweep.py)"
      )
    candidate["runs"].append(
      {
        "name": result["name"],
        "seed": result["overrides"].get("seed"),
        "status": result["status"],
        "validation_accuracy": result["final_accuracy"],
      }
    )
  for candidate in candidates.values():
    accuracies = [r["validation_accuracy"] for r in candidate["runs"]]
    valid = all(
      r["status"] in ("completed", "skipped (complete)")
      and a is not None
      and math.isfinite(a)
      for r, a in zip(candidate["runs"], accuracies)
    )
    candidate["eligible"] = valid
    candidate["mean_validation_accuracy"] = (
      math.fsum(accuracies) / len(accuracies) if valid else None
    )
  return candidates


def _noise(winner: dict, validation_size: int) -> float:
  """Sampling noise of one evaluation on N images (binomial), for the
  difference of two candidates: sqrt(2 p (1 - p) / N)."""
  best = winner["mean_validation_accuracy"]
  return math.sqrt(2 * best * (1 - best) / validation_size)


def _close_to_winner(winner, eligible, validation_size: int) -> list[str]:
  """Candidates within 2 binomial standard errors of the winner."""
  if winner is None:
    return []
  best = winner["mean_validation_accuracy"]
  noise = _noise(winner, validation_size)
  return [
    c["name"]
    for c in eligible
    if c is not winner and best - c["mean_validation_accuracy"] <= 2 * noise
  ]


def _tuning_notes(close, winner, validation_size: int, results) -> list[str]:
  notes = []
  if close:
    notes.append(
      f"{len(close)} candidate(s) within 2 binomial standard"
      f" errors ({2 * _noise(winner, validation_size):.4f}) of the winner:"
      f" {', '.join(close)}; more tuning seeds would separate them"
    )
  units = {
    _run_config(r["workdir"]).get("schedule", {}).get("unit")
    for r in results
    if _ok(r)
  }
  if "epochs" in units:
    notes.append(
      "schedule.unit is epochs: with the held-out split an epoch"
      " has fewer steps, so warm-up and decay boundaries land on"
      " other steps than in the test runs; tune with"
      " --config.schedule.unit=steps (or fraction) to transfer"
      " them exactly"
    )
  return notes


def _test_command(
  config_path: str,
  test_dir: str,
  test_seeds: str,
  budget_steps: int,
  overrides: dict | None,
) -> str | None:
  """The command that trains the winner (its `overrides`) on the full
  train split over `test_seeds`; None without a winner."""
  if overrides is None:
    return None
  command = [
    "python",
    "-m",
    "superconv.sweep",
    "--config",
    os.path.relpath(os.path.abspath(config_path)),
    "--workdir",
    test_dir,
    "--sweep",
    f"seed={test_seeds}",
    f"--config.num_steps={budget_steps}",
  ]
  return shlex.join(command + override_args(overrides))


def _print_tuning(report: dict, test_seeds: str) -> None:
  """Every candidate's mean, the winner and its test command, the notes."""
  winner = report["winner"]
  print()
  for c in report["candidates"]:
    acc = c["mean_validation_accuracy"]
    mark = "*" if winner is c else " "
    print(
      f"{mark} {c['name']:<40} mean validation accuracy"
      f" {'-' if acc is None else f'{acc:.4f}'}"
      f" over {len(c['runs'])} run(s)"
    )
  if winner is None:
    print("no candidate finished; nothing selected")
  else:
    print(
      f"\nwinner: {winner['name']} (validation accuracy"
      f" {winner['mean_validation_accuracy']:.4f})"
    )
    print(f"train it on the full train split, test set, seeds {test_seeds}:")
    print(f"  {report['test_command']}")
  for note in report["notes"]:
    print(f"note: {note}")


# ============================================================================
# Command line
# ============================================================================

PROG = "superconv.sweep"
_TUNE_ONLY = ("budget_steps", "validation_size", "test_seeds")
_SWEEP_ONLY = ("dry_run",)


_CONFIG_HELP = (
  "Experiment config file, configs/<x>.py[:arg]; --config.KEY=VALUE"
  " overrides (after it) go to every run."
)


def _define_flags(fv) -> None:
  """The flags of both modes (and --config) in `fv`."""
  flags.DEFINE_string(
    "workdir",
    None,
    "Sweep directory (one subdirectory per run).",
    flag_values=fv,
  )
  flags.DEFINE_multi_string(
    "sweep",
    [],
    "KEY=V1,V2,...: a grid axis; repeat for a cartesian product",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "trainer",
    None,
    "Command that trains one run (default: python -m superconv.main); gets"
    " --config, --workdir and the --config.* overrides.",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "quiet",
    False,
    "Do not echo the runs' output (still in train.log).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "parallel",
    "auto",
    "N|auto: runs trained at once, each pinned to its own CPU cores (one"
    " XLA thread on one core); auto: as many as CPU cores when the runs"
    " use CPU devices (memory permitting), else 1.",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "dry_run",
    False,
    "Print the runs and their commands, run nothing.",
    flag_values=fv,
  )
  _define_tune_flags(fv)
  flags.mark_flags_as_required(["config", "workdir"], flag_values=fv)
  cli.hyphen_aliases(fv)


def _define_tune_flags(fv) -> None:
  flags.DEFINE_integer(
    "budget_steps",
    None,
    "tune (required): training steps of every candidate (config.num_steps).",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "validation_size",
    5000,
    "tune: train images held out for selection.",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "test_seeds",
    "0,1,2,3,4",
    "tune: seeds in the printed command for the winner.",
    flag_values=fv,
  )


def _tune_mode(args: Sequence[str], fv) -> bool:
  """True for `tune`; refuses other arguments and the other mode's flags."""
  tune_mode = bool(args) and args[0] == "tune"
  rest = args[1:] if tune_mode else args
  if rest:
    raise SweepError(f"unexpected arguments: {' '.join(rest)}")
  for name in _SWEEP_ONLY if tune_mode else _TUNE_ONLY:
    if fv[name].present:
      raise SweepError(
        f"--{name.replace('_', '-')}: only"
        + (" without tune" if tune_mode else " with tune")
      )
  if tune_mode and fv.budget_steps is None:
    raise SweepError("--budget-steps: tune needs the step budget")
  return tune_mode


def _trainer(text: str | None) -> list[str] | None:
  trainer = shlex.split(text) if text else None
  if text is not None and not trainer:
    raise SweepError("--trainer: empty command")
  return trainer


def _raise_terminated(signum, frame):
  del signum, frame
  raise Terminated()


def main(argv: Sequence[str]) -> int:
  """Command line (argv without the program); returns the exit status.

  0 every run complete, 1 a run failed, 2 bad input, 130 interrupted
  (SIGINT), 143 terminated (SIGTERM); after 130/143 the same command resumes.
  """
  try:
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
  except ValueError:  # Not the main thread: leave SIGTERM alone.
    return _main(list(argv))
  try:
    return _main(list(argv))
  finally:
    signal.signal(signal.SIGTERM, previous_handler)


def _main(argv: list) -> int:
  fv, args = cli.parse_command(
    argv,
    _define_flags,
    prog=PROG,
    doc=__doc__,
    config_help=_CONFIG_HELP,
    takes_args=True,
  )
  try:
    tune_mode = _tune_mode(args, fv)
    # The overrides as typed: each trainer gets them verbatim.
    common, _ = parse_overrides(argv)
    options = dict(
      common=common,
      trainer=_trainer(fv.trainer),
      echo=not fv.quiet,
      parallel=parse_parallel(fv.parallel),
    )
    sweeps = [parse_sweep(s) for s in fv.sweep]
    if tune_mode:
      report = tune(
        fv["config"].config_filename,
        fv.workdir,
        sweeps,
        budget_steps=fv.budget_steps,
        validation_size=fv.validation_size,
        test_seeds=fv.test_seeds,
        **options,
      )
      return cli.EXIT_OK if report["winner"] is not None else cli.EXIT_FAILED
    results = run_sweep(
      fv["config"].config_filename,
      fv.workdir,
      sweeps,
      dry_run=fv.dry_run,
      **options,
    )
  except (SweepError, lock.LockError) as e:
    return cli.error(e, prog=PROG)
  except (KeyboardInterrupt, Terminated) as e:
    sys.stderr.write(f"{PROG}: stopped; run the same command to resume\n")
    return (
      cli.EXIT_SIGINT if isinstance(e, KeyboardInterrupt) else cli.EXIT_SIGTERM
    )
  if fv.dry_run:
    return cli.EXIT_OK
  print()
  print(summary_table(results))
  if throughput_line(results):
    print(throughput_line(results))
  return cli.EXIT_OK if all(_ok(r) for r in results) else cli.EXIT_FAILED


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
