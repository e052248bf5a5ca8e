r"""Throughput benchmark: images/s, TFLOP/s, MFU and memory of the train step.

  python -m superconv.bench --model resnet56 --batch 1000 --dtype bfloat16
  python -m superconv.bench --model resnet20,resnet56,resnet18 \
      --batch 512,1024 --dtype bfloat16,float32 --json bench.json
  python -m superconv.bench --model resnet56 --compare-pytorch \
      --torch-python /path/to/torch/venv/bin/python
  python -m superconv.bench --model resnet56 --find-max-batch

One row per (model, global batch, dtype, parallel seeds, convolution), on
all local devices (pmap, as `superconv.main` runs). Each row measures, on
the synthetic data set (same shapes as CIFAR-10: 32x32x3 uint8, 10 classes,
`--train-size` images, all on device):

* step: the bare SGD step (`train.step_on_batch`: forward, backward, gradient
  pmean, optimizer update and non-finite guard, a copy of
  `train.train_step` after its input pipeline) on one FIXED pre-augmented,
  normalized device batch.
  Nothing but the model's compute and the update: the number the FLOPs,
  TFLOP/s and MFU columns use.
* aug: the real pmapped step of `train.make_train_step`, which also selects
  the step's batch from the device-resident data set (a permutation of the
  whole train split each step) and crops/flips/normalizes it on device.
* loop: `train.train_and_evaluate` itself, in a temporary workdir, with
  evaluation and checkpoints beyond the run (so only the final ones happen,
  after the last timed interval) and `log_every_steps` as in real runs
  (`--log-every`, default 50). Images/s comes from its own metrics.jsonl
  `steps_per_sec` rows, excluding the first interval: total steps / total
  time over the remaining intervals. It therefore includes the host loop,
  dispatch and the metrics fetch at every log step, not compilation.

step and aug are timed device-synchronized (`jax.block_until_ready` after
each block of `--steps` steps). Rows of the same (model, batch, dtype) are
measured together, and with `--compare-pytorch` so are the PyTorch
settings of that key (`superconv.bench_common` has the rules):

* warm-up: blocks of `--warmup` steps (default: `--steps`) until two
  consecutive blocks agree within `--warmup-tolerance` and, for PyTorch,
  `torch.compile` compiled nothing during them; at most
  `--max-warmup-blocks` blocks, else the row is flagged;
* then `--repeats` timed blocks of each row in turn (J P J P ...), so that
  the machine's drift hits every row alike; a rate is the median block, its
  spread (max - min) / median of the block rates;
* a figure whose spread is over 10%, or rates out of the order that the
  figures' definitions impose (step >= aug >= loop, 10% slack), is flagged:
  '!' in the tables, a `flags` list in the JSON and a warning on stderr.

Compile time is the AOT `lower().compile()` time of the bare
step (timing runs share a fresh persistent compilation cache, deleted at
exit, so the loop does not compile again what the steps compiled; see
`fresh_compile_cache`). Training FLOPs per image are analytic: 3 x forward
MACs x 2 (`models.forward_macs`: convolutions and the classifier; ResNet-56 is
125.5 M MACs, so 0.753 GFLOP). MFU = achieved FLOP/s / (peak FLOP/s of one
device x devices), the peak from `PEAK_TFLOPS` (dense, no sparsity) or
`--peak-tflops`; unknown devices (CPUs) print '-'. Peak memory is the
largest `device.memory_stats()['peak_bytes_in_use']` over the local
devices, a high-water mark of the whole process: with several rows, order
them by increasing size (or run one row per process) for per-row numbers.
The backend may not report it (CPU): '-'.

`--find-max-batch` searches, per (model, dtype), for the largest global
batch whose real training step (data set on device, on-device augmentation)
compiles and runs: doubling from the first `--batch`, then bisection,
treating XLA's RESOURCE_EXHAUSTED errors as "does not fit". On GPUs, JAX
preallocates 75% of the memory by default: set
XLA_PYTHON_CLIENT_MEM_FRACTION=.95 to search (nearly) all of it.
`--max-batch-limit` caps the search (CPUs never run out).

`--compare-pytorch` runs benchmarks/pytorch_reference.py (same models,
same step, same timing) as a server process with `--torch-python` (default
$SUPERCONV_TORCH_PYTHON, else the checkout's .torchvenv/bin/python if
present, else `python`), in the settings `--torch-settings` (default eager
NCHW, eager channels_last and torch.compile channels_last), and prints the
JAX/PyTorch ratio of each rate against the fastest setting.

Never assert on these numbers in tests: they depend on the machine and its
load. See benchmarks/README.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import contextlib
import functools
import gc
import itertools
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from superconv import batchnorm as bn_lib
from superconv import bench_common as common
from superconv import cli, input_pipeline, metric_writer, models, storage, train
from superconv import config as config_lib
from superconv import conv as conv_lib
from superconv import data as data_lib

log = logging.getLogger("superconv")
AXIS = input_pipeline.AXIS
GIB = common.GIB

# ============================================================================
# Analytic FLOPs, device peaks, MFU
# ============================================================================

# Peak TFLOP/s of one device (`bench_common`, shared with the PyTorch
# reference).
PEAK_TFLOPS = common.PEAK_TFLOPS
peak_tflops = common.peak_tflops


def train_gflops_per_image(
  model: str,
  *,
  num_classes: int = 10,
  image_size: int = 32,
  shortcut: str = "A",
) -> float:
  """Analytic training GFLOPs of one image: 3 passes x MACs x 2 FLOPs.

  The backward pass costs about twice the forward (gradients with respect
  to activations and to weights), hence 3 x forward; BN, relu, adds and
  the optimizer update are not counted (as in the usual MFU convention).
  """
  macs = models.forward_macs(
    model, num_classes=num_classes, image_size=image_size, shortcut=shortcut
  )
  return 3 * macs * 2 / 1e9


achieved_tflops = common.achieved_tflops
mfu = common.mfu


# ============================================================================
# The bare step and timing
# ============================================================================


def make_bare_step(config, num_classes: int):
  """The pmapped bare step (state donated, like train.make_train_step).

  With config.num_parallel_seeds = K > 1 the step is vmapped over the
  replica axis of the state, as in training; the replicas share the fixed
  batch (the cost does not depend on which images they see).
  """
  step = functools.partial(
    train.step_on_batch,
    num_classes=num_classes,
    label_smoothing=config.label_smoothing,
  )
  if len(train.replica_seeds(config)) > 1:
    step = jax.vmap(step, in_axes=(0, None, None))
  # As train maps its steps: over the local devices, axis AXIS (the BN
  # statistics and gradient means), the state donated.
  return jax.pmap(step, axis_name=AXIS, donate_argnums=(0,))


def fixed_batch(dataset: data_lib.Dataset, aug, *, seed: int, step: int = 0):
  """The augmented global batch of `step`, laid out [devices, local, ...].

  Exactly what the real step would train on at `step`: the same
  `input_pipeline.train_batch`, one shard per local device.
  """
  n = jax.local_device_count()
  images = jnp.asarray(dataset.train_images)
  labels = jnp.asarray(dataset.train_labels.astype(np.int32))
  select = jax.jit(
    functools.partial(
      input_pipeline.train_batch, seed=seed, aug=aug, num_shards=n
    )
  )
  xs, ys = zip(
    *[
      select(images, labels, jnp.int32(step), shard_index=jnp.int32(i))
      for i in range(n)
    ]
  )
  x, y = jax.device_get((jnp.stack(xs), jnp.stack(ys)))
  return input_pipeline.shard(np.asarray(x)), input_pipeline.shard(y)


def loop_intervals(
  rows: Sequence[dict], images_per_step: int
) -> list[tuple[float, float]]:
  """(images, seconds) of each logged interval of a run, the first one
  excluded, from its metrics.jsonl rows.

  Each train row after the first covers (its step - the previous row's
  step) steps at `steps_per_sec`.
  """
  train_rows = [r for r in rows if "steps_per_sec" in r]
  out = []
  for prev, row in zip(train_rows, train_rows[1:]):
    n = row["step"] - prev["step"]
    if n > 0 and row["steps_per_sec"] > 0:
      out.append((images_per_step * n, n / row["steps_per_sec"]))
  return out


def loop_images_per_sec(rows: Sequence[dict], batch_size: int) -> float | None:
  """Images/s of a run from its metrics.jsonl rows, first interval excluded:
  total images / total time over the intervals of `loop_intervals`. None
  with fewer than two train rows."""
  intervals = loop_intervals(rows, batch_size)
  if not intervals:
    return None
  return sum(n for n, _ in intervals) / sum(s for _, s in intervals)


# ============================================================================
# Memory and the largest batch
# ============================================================================


def peak_memory_bytes() -> int | None:
  """Largest peak_bytes_in_use over the local devices (None: not reported)."""
  peaks = []
  for d in jax.local_devices():
    try:
      stats = d.memory_stats()
    except Exception:  # pylint: disable=broad-except
      stats = None
    if stats and "peak_bytes_in_use" in stats:
      peaks.append(int(stats["peak_bytes_in_use"]))
  return max(peaks) if peaks else None


def compiled_memory_bytes(compiled) -> int | None:
  """XLA's static estimate for one device: arguments + outputs + temporaries
  - aliased (donated) buffers; None when the backend gives no analysis."""
  try:
    m = compiled.memory_analysis()
    if isinstance(m, (list, tuple)):
      m = m[0]
    return int(
      m.argument_size_in_bytes
      + m.output_size_in_bytes
      + m.temp_size_in_bytes
      - m.alias_size_in_bytes
    )
  except Exception:  # pylint: disable=broad-except
    return None


_OOM_MARKERS = (
  "RESOURCE_EXHAUSTED",
  "out of memory",
  "Out of memory",
  "OutOfMemory",
  "Resource exhausted",
  "CUDA_ERROR_OUT_OF_MEMORY",
)


def is_out_of_memory(error: BaseException) -> bool:
  """Whether `error` is XLA running out of device memory (at compile or
  run time), as opposed to a bug."""
  if isinstance(error, MemoryError):
    return True
  text = f"{type(error).__name__}: {error}"
  return any(m in text for m in _OOM_MARKERS)


def find_max_batch(
  fits: Callable[[int], bool], *, start: int, limit: int, multiple: int = 1
) -> tuple[int, list[tuple[int, bool]]]:
  """Largest batch (a multiple of `multiple`, <= limit) for which fits().

  Doubles from `start` (rounded up to a multiple) while it fits, then
  bisects between the last batch that fit and the first that did not.
  Assumes fits() is monotone (true up to a threshold). Returns (batch,
  trials), batch 0 when not even `multiple` fits; trials lists every
  (batch, fits) tried, in order.
  """
  if multiple < 1 or limit < multiple:
    raise ValueError(
      f"need 1 <= multiple <= limit, got multiple={multiple}, limit={limit}"
    )
  trials: list[tuple[int, bool]] = []
  tried: dict[int, bool] = {}

  def check(k: int) -> bool:  # k: batch in units of `multiple`.
    if k not in tried:
      tried[k] = bool(fits(k * multiple))
      trials.append((k * multiple, tried[k]))
    return tried[k]

  top = limit // multiple
  k = min(max(1, -(-start // multiple)), top)
  lo, hi = 0, None  # Largest known fit, smallest known failure (units).
  while True:
    if check(k):
      lo = k
      if k == top:
        break
      k = min(2 * k, top)
    else:
      hi = k
      break
  if hi is not None:
    while hi - lo > 1:
      mid = (lo + hi) // 2
      if check(mid):
        lo = mid
      else:
        hi = mid
  return lo * multiple, trials


# ============================================================================
# One row
# ============================================================================

# Every row (JAX here, PyTorch in benchmarks/pytorch_reference.py) has these
# keys (`bench_common.ROW_KEYS`); None where a value is unknown or was not
# measured.
ROW_KEYS = common.ROW_KEYS


def empty_row(**values) -> dict:
  row = dict.fromkeys(ROW_KEYS)
  row.update(values)
  unknown = set(row) - set(ROW_KEYS)
  if unknown:
    raise KeyError(f"not in ROW_KEYS: {sorted(unknown)}")
  return row


def bench_config(
  model: str,
  batch: int,
  dtype: str,
  *,
  train_size: int,
  loop_steps: int,
  log_every: int,
  weight_decay: float = 5e-4,
  seed: int = 0,
  parallel_seeds: int = 1,
  conv_impl: str = "auto",
  bn_impl: str = "auto",
):
  """A training config for the benchmark (synthetic data).

  The schedule is constant (a scalar per step: its shape costs nothing and
  a constant one is valid for any number of steps).

  Evaluation and checkpoints are set beyond the run, so the loop only
  evaluates and saves once, after its last logged interval.
  """
  c = config_lib.base_config()
  c.seed = seed
  c.num_parallel_seeds = parallel_seeds
  c.conv_impl = conv_impl
  c.bn_impl = bn_impl
  c.dataset = "synthetic"
  c.synthetic_train_size = max(train_size, batch)
  c.model = model
  c.dtype = dtype
  c.batch_size = batch
  c.num_steps = loop_steps
  c.eval_batch_size = batch
  c.synthetic_test_size = batch
  c.weight_decay = weight_decay
  c.schedule.name = "constant"
  c.schedule.max_lr = 0.1
  c.nonfinite_policy = "skip"  # Random data must not stop a benchmark.
  c.log_every_steps = log_every
  c.eval_every_epochs = 1e9
  c.checkpoint_every_steps = loop_steps + 1
  c.keep_checkpoints = 1
  train.validate(c, num_devices=jax.device_count())
  return c


def count_params(model: str, num_classes: int = 10) -> int:
  """Number of parameters of `model` (BatchNorm statistics excluded)."""
  module = models.create_model(model, num_classes=num_classes)
  shapes = jax.eval_shape(
    lambda: module.init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False
    )
  )
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))


@contextlib.contextmanager
def _stdout_to_stderr():
  """Sends file descriptor 1 to stderr (the loop's progress lines), so that
  stdout carries only the table."""
  sys.stdout.flush()
  saved = os.dup(1)
  try:
    os.dup2(2, 1)
    yield
  finally:
    sys.stdout.flush()
    os.dup2(saved, 1)
    os.close(saved)


_CACHE_OPTIONS = {
  "jax_compilation_cache_dir": None,  # Set to a fresh temporary directory.
  "jax_persistent_cache_min_compile_time_secs": 0.0,
  "jax_persistent_cache_min_entry_size_bytes": -1,
}


@contextlib.contextmanager
def fresh_compile_cache(enabled: bool = True):
  """JAX's persistent compilation cache in a new temporary directory, for
  the duration of the block (the previous settings come back after it).

  The cache starts empty, so every first compilation is real (compile_s
  measures one); what it saves are the compilations that
  train.train_and_evaluate repeats (the initial state, the train step).
  """
  if not enabled:
    yield None
    return
  from jax.experimental.compilation_cache import compilation_cache  # pylint: disable=g-import-not-at-top

  old = {name: getattr(jax.config, name) for name in _CACHE_OPTIONS}
  with tempfile.TemporaryDirectory(prefix="superconv-bench-xla-") as cache:
    compilation_cache.reset_cache()  # The cache is set up once per process.
    for name, value in _CACHE_OPTIONS.items():
      jax.config.update(name, cache if value is None else value)
    try:
      yield cache
    finally:
      for name, value in old.items():
        jax.config.update(name, value)
      compilation_cache.reset_cache()


def _synthetic(config) -> data_lib.Dataset:
  return data_lib.load(
    "synthetic",
    synthetic_train_size=config.synthetic_train_size,
    synthetic_test_size=config.synthetic_test_size,
  )


def initial_state(config, run, dataset):
  """The initial train state (config.seed), in host memory."""
  return jax.device_get(
    train.create_train_state(config, run.model, dataset.image_shape, run.tx)
  )


def measure_loop(config, dataset) -> list[tuple[float, float]]:
  """(images, seconds) of each timed interval of train.train_and_evaluate."""
  with tempfile.TemporaryDirectory(prefix="superconv-bench-") as workdir:
    with _stdout_to_stderr():
      train.train_and_evaluate(config, workdir, dataset)
    seeds = train.replica_seeds(config)
    logs = (
      workdir if len(seeds) == 1 else train.replica_workdir(workdir, seeds[0])
    )
    rows = metric_writer.read_jsonl(os.path.join(logs, "metrics.jsonl"))
  # Every replica trains a global batch per step.
  return loop_intervals(rows, config.batch_size * len(seeds))


class JaxCase:
  """One JAX row being measured (a `bench_common.Participant`).

  `start('step')` compiles the bare step ahead of time on the fixed batch
  (compile_s); `start('aug_step')` builds the real step and runs its first
  (compiling) step untimed. `block` runs steps on the state it holds
  (donated, as in training) and waits for the device.
  """

  def __init__(
    self,
    model: str,
    batch: int,
    dtype: str,
    *,
    steps: int,
    repeats: int,
    warmup: int,
    train_size: int,
    log_every: int,
    loop_intervals: int,
    peak_override: float | None = None,
    dataset: data_lib.Dataset | None = None,
    parallel_seeds: int = 1,
    conv_impl: str = "auto",
    bn_impl: str = "auto",
  ):
    devices = jax.local_devices()
    n = len(devices)
    if batch % n:
      raise ValueError(f"--batch: {batch} is not divisible by the {n} devices")
    gflops = train_gflops_per_image(model)
    self.row = empty_row(
      framework="jax",
      model=model,
      params=count_params(model),
      global_batch=batch,
      dtype=dtype,
      parallel_seeds=parallel_seeds,
      devices=n,
      conv_impl=conv_lib.resolve(conv_impl),
      bn_impl=bn_lib.resolve(bn_impl),
      device_kind=devices[0].device_kind,
      backend=jax.default_backend(),
      settings=f"XLA, pmap over {n} device(s), jax {jax.__version__}"
      + (
        ", Eigen conv"
        if conv_lib.EIGEN_CONV_FLAG in os.environ.get("XLA_FLAGS", "")
        else ""
      ),
      forward_macs=models.forward_macs(model),
      train_gflops_per_image=gflops,
      peak_tflops=peak_tflops(devices[0].device_kind, dtype, peak_override),
      steps=steps,
      repeats=repeats,
      warmup=warmup,
      flags=[],
    )
    self.name = (
      f"jax {self.row['conv_impl']} conv, {self.row['bn_impl']} bn,"
      f" {parallel_seeds} seed(s)"
    )
    self.config = bench_config(
      model,
      batch,
      dtype,
      train_size=train_size,
      loop_steps=log_every * (loop_intervals + 1),
      log_every=log_every,
      parallel_seeds=parallel_seeds,
      conv_impl=conv_impl,
      bn_impl=bn_impl,
    )
    self.images_per_step = batch * parallel_seeds
    if dataset is None or len(dataset.train_images) < batch:
      dataset = _synthetic(self.config)
    train.validate(
      self.config,
      num_devices=jax.device_count(),
      num_train_examples=dataset.train_images.shape[0],
    )
    self.dataset = dataset
    self.run = train.setup(self.config, dataset)
    self.init = initial_state(self.config, self.run, dataset)
    self._live = {}  # figure -> [step function, state, arguments].

  def _out_of_memory(self, e: BaseException) -> None:
    if not is_out_of_memory(e):
      raise e
    self.row["error"] = "out of memory"
    self._live.clear()
    gc.collect()
    log.warning(
      "%s: out of memory (%s)",
      common.row_label(self.row),
      str(e).splitlines()[0][:200],
    )

  def start(self, figure: str) -> bool:
    config, dataset = self.config, self.dataset
    try:
      state = input_pipeline.replicate_tree(self.init)
      if figure == "step":
        x, y = fixed_batch(dataset, self.run.aug, seed=config.seed)
        t0 = time.perf_counter()
        compiled = (
          make_bare_step(config, dataset.num_classes)
          .lower(state, x, y)
          .compile()
        )
        self.row["compile_s"] = time.perf_counter() - t0
        self.row["compiled_memory_bytes"] = compiled_memory_bytes(compiled)
        self._live[figure] = [compiled, state, (x, y)]
      else:
        args = (
          input_pipeline.replicate(dataset.train_images),
          input_pipeline.replicate(dataset.train_labels.astype(np.int32)),
        )
        p_step = train.make_train_step(config, dataset, self.run.aug)
        state, metrics = p_step(state, *args)  # Compiles.
        jax.block_until_ready((state, metrics))
        self._live[figure] = [p_step, state, args]
      return True
    except Exception as e:  # pylint: disable=broad-except
      self._out_of_memory(e)
      return False

  def block(self, figure: str, steps: int) -> common.Block | None:
    live = self._live[figure]
    step_fn, state, args = live
    try:
      out = None
      t0 = time.perf_counter()
      for _ in range(steps):
        state, out = step_fn(state, *args)
      jax.block_until_ready((state, out))
      seconds = time.perf_counter() - t0
    except Exception as e:  # pylint: disable=broad-except
      self._out_of_memory(e)
      return None
    live[1] = state
    return seconds, 0  # Compiled ahead of the timed blocks.

  def stop(self, figure: str) -> None:
    self._live.pop(figure, None)
    gc.collect()

  def loop(self) -> list[tuple[float, float]] | None:
    gc.collect()
    try:
      return measure_loop(self.config, self.dataset)
    except Exception as e:  # pylint: disable=broad-except
      self._out_of_memory(e)
      return None


# Fills the derived fields (loop/step, TFLOP/s, MFU, flags) of a row.
finish_row = common.finish_row


# ============================================================================
# Tables and the comparison
# ============================================================================

TABLE_COLUMNS = common.TABLE_COLUMNS
format_table = common.format_table
_num, _pct = common.num, common.pct


def compare_rows(
  jax_rows: Sequence[dict], torch_rows: Sequence[dict]
) -> list[dict]:
  """JAX / PyTorch ratios of each rate, matched by (model, batch, dtype).

  Every PyTorch setting of the key is kept (`torch`: setting -> its rates
  and spreads); a ratio is against the fastest setting of that figure
  (`{figure}_fastest_torch`), since a user would pick it. A ratio is
  flagged (`{figure}_flagged`) when the JAX figure or the figure of ANY
  setting is: a flagged setting may be the one that is really fastest.
  `flags` lists the flags behind it, as 'jax:flag' and 'setting:flag'. A
  JAX row with K parallel seeds counts the images of all K replicas, so its
  ratio is K seeds in one program against one PyTorch run.
  """
  out = []
  for j in jax_rows:
    key = (j["model"], j["global_batch"], j["dtype"])
    ts = [
      t
      for t in torch_rows
      if (t["model"], t["global_batch"], t["dtype"]) == key
    ]
    if not ts:
      continue
    row = {
      "model": j["model"],
      "global_batch": j["global_batch"],
      "dtype": j["dtype"],
      "parallel_seeds": j.get("parallel_seeds"),
      "conv_impl": j.get("conv_impl"),
      "bn_impl": j.get("bn_impl"),
      "torch_settings": {t.get("setting"): t.get("settings") for t in ts},
      "torch": {},
      "flags": [f"jax:{f}" for f in j.get("flags") or ()]
      + [f"{t.get('setting')}:{f}" for t in ts for f in t.get("flags") or ()],
    }
    for t in ts:
      row["torch"][t.get("setting")] = {
        f"{what}_{field}": t.get(f"{what}_{field}")
        for what in common.FIGURES
        for field in ("images_per_sec", "spread")
      }
    for what in common.FIGURES:
      a = j.get(f"{what}_images_per_sec")
      rates = {
        t.get("setting"): t[f"{what}_images_per_sec"]
        for t in ts
        if t.get(f"{what}_images_per_sec")
      }
      best = max(rates, key=rates.get) if rates else None
      row[f"jax_{what}_images_per_sec"] = a
      row[f"jax_{what}_spread"] = j.get(f"{what}_spread")
      row[f"torch_{what}_images_per_sec"] = rates.get(best)
      row[f"{what}_fastest_torch"] = best
      row[f"{what}_ratio"] = a / rates[best] if a and best else None
      row[f"{what}_flagged"] = any(
        common.figure_flagged(r, what) for r in [j, *ts]
      )
    out.append(row)
  return out


def _rate_and_spread(rate, spread, flagged: bool) -> str | None:
  """'1,234 ±5%' ('!' at the end when flagged)."""
  if rate is None:
    return None
  text = f"{rate:,.0f}"
  if spread is not None:
    text += f" ±{100 * spread:.0f}%"
  return text + ("!" if flagged else "")


def _ratio(row: dict, what: str) -> str | None:
  ratio = row.get(f"{what}_ratio")
  if ratio is None:
    return None
  return f"{ratio:.2f}" + ("!" if row.get(f"{what}_flagged") else "")


def _torch_step(setting: str):
  def cell(row):
    t = row["torch"].get(setting)
    if t is None:
      return None
    flagged = any(
      f.startswith(f"{setting}:")
      and "step" in common.flag_figures(f.split(":", 1)[1])
      for f in row["flags"]
    )
    return _rate_and_spread(t["step_images_per_sec"], t["step_spread"], flagged)

  return cell


def compare_columns(comparison: Sequence[dict]):
  """Columns of the comparison table: the JAX step and each PyTorch
  setting's (median ±spread), the step ratio against the fastest setting,
  then the aug and loop ratios."""
  settings = list(dict.fromkeys(s for row in comparison for s in row["torch"]))
  jax_step = lambda r: _rate_and_spread(
    r["jax_step_images_per_sec"],
    r["jax_step_spread"],
    any(
      f.startswith("jax:") and "step" in common.flag_figures(f[4:])
      for f in r["flags"]
    ),
  )
  return (
    ("model", "model", str, -15),
    ("batch", "global_batch", str, 6),
    ("dtype", "dtype", str, -8),
    ("seeds", "parallel_seeds", str, 5),
    ("conv", "conv_impl", str, -7),
    ("bn", "bn_impl", str, -5),
    ("jax step", jax_step, str, 12),
    *((f"{s} step", _torch_step(s), str, 12) for s in settings),
    ("ratio", lambda r: _ratio(r, "step"), str, 6),
    ("vs", "step_fastest_torch", str, -10),
    ("aug ratio", lambda r: _ratio(r, "aug_step"), str, 9),
    ("vs", "aug_step_fastest_torch", str, -10),
    ("loop ratio", lambda r: _ratio(r, "loop"), str, 10),
    ("vs", "loop_fastest_torch", str, -10),
  )


MAX_BATCH_COLUMNS = (
  ("model", "model", str, -15),
  ("dtype", "dtype", str, -8),
  ("dev", "devices", str, 3),
  ("max batch", "max_batch", str, 9),
  ("limit", "limit", str, 6),
  ("trials", "trials_text", str, -5),
)


# ============================================================================
# The largest batch, for real
# ============================================================================


def _tiled(dataset: data_lib.Dataset, size: int) -> data_lib.Dataset:
  """`dataset` with its train split repeated up to `size` images."""
  if len(dataset.train_images) >= size:
    return dataset
  reps = -(-size // len(dataset.train_images))
  return data_lib.Dataset(
    dataset.name,
    np.concatenate([dataset.train_images] * reps)[:size],
    np.concatenate([dataset.train_labels] * reps)[:size],
    dataset.test_images,
    dataset.test_labels,
    dataset.class_names,
  )


def train_step_fits(
  model: str, dtype: str, batch: int, *, base: data_lib.Dataset, train_size: int
) -> bool:
  """Whether the real training step (data set on device, on-device
  augmentation) compiles and runs two steps at global `batch`."""
  try:
    config = bench_config(
      model, batch, dtype, train_size=train_size, loop_steps=2, log_every=1
    )
    dataset = _tiled(base, max(train_size, batch))
    run = train.setup(config, dataset)
    images = input_pipeline.replicate(dataset.train_images)
    labels = input_pipeline.replicate(dataset.train_labels.astype(np.int32))
    state = input_pipeline.replicate_tree(initial_state(config, run, dataset))
    p_step = train.make_train_step(config, dataset, run.aug)
    for _ in range(2):
      state, metrics = p_step(state, images, labels)
    jax.block_until_ready((state, metrics))
    return True
  except Exception as e:  # pylint: disable=broad-except
    if is_out_of_memory(e):
      return False
    raise
  finally:
    state = images = labels = p_step = metrics = None  # Free device memory.
    gc.collect()


def max_batch_row(
  model: str, dtype: str, *, start: int, limit: int, train_size: int
) -> dict:
  n = jax.local_device_count()
  base = data_lib.load(
    "synthetic",
    synthetic_train_size=min(train_size, 50_000),
    synthetic_test_size=n,
  )
  best, trials = find_max_batch(
    lambda b: train_step_fits(
      model, dtype, b, base=base, train_size=train_size
    ),
    start=start,
    limit=limit,
    multiple=n,
  )
  return {
    "model": model,
    "dtype": dtype,
    "devices": n,
    "device_kind": jax.local_devices()[0].device_kind,
    "max_batch": best,
    "limit": limit,
    "trials": trials,
    "trials_text": " ".join(f"{b}{'+' if ok else 'x'}" for b, ok in trials),
    "peak_memory_bytes": peak_memory_bytes(),
  }


# ============================================================================
# PyTorch reference
# ============================================================================

TORCH_PYTHON_ENV = "SUPERCONV_TORCH_PYTHON"


def _repo() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def default_torch_script() -> str:
  return os.path.join(_repo(), "benchmarks", "pytorch_reference.py")


def default_torch_python() -> str:
  """$SUPERCONV_TORCH_PYTHON, else the checkout's .torchvenv, else
  'python'."""
  if os.environ.get(TORCH_PYTHON_ENV):
    return os.environ[TORCH_PYTHON_ENV]
  venv = os.path.join(_repo(), ".torchvenv", "bin", "python")
  return venv if os.path.exists(venv) else "python"


class TorchWorkerError(RuntimeError):
  """The PyTorch reference could not run or stopped."""


class TorchWorker:
  """benchmarks/pytorch_reference.py --serve, alive for the whole run, so
  that its blocks can be interleaved with JAX's.

  One JSON request per line on its stdin, one JSON reply per line on its
  stdout; its progress goes to our stderr.
  """

  def __init__(self, args):
    python = args.torch_python or default_torch_python()
    script = args.torch_script or default_torch_script()
    self.what = (
      f"{script} (interpreter {python!r}: set --torch-python or"
      f" ${TORCH_PYTHON_ENV} to one with torch installed)"
    )
    if not os.path.isfile(script):
      raise TorchWorkerError(f"--torch-script: no such file: {script}")
    cmd = [
      python,
      script,
      "--serve",
      "--train-size",
      str(args.train_size),
      "--log-every",
      str(args.log_every),
      "--loop-intervals",
      str(args.loop_intervals),
      "--settings",
      ",".join(args.torch_settings),
    ]
    if args.peak_tflops is not None:
      cmd += ["--peak-tflops", str(args.peak_tflops)]
    cmd += shlex.split(args.torch_args or "")
    log.info("Running %s", " ".join(cmd))
    sys.stdout.flush()
    try:
      self.proc = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
      )
    except OSError as e:
      raise TorchWorkerError(
        f"--torch-python: cannot run {python!r} ({e}); set --torch-python"
        f" or ${TORCH_PYTHON_ENV} to an interpreter with torch"
      ) from None
    self.hello = self.call(op="hello")
    log.info("PyTorch reference: %s", self.hello.get("torch"))

  def call(self, **request) -> dict:
    """Sends one request, returns its reply."""
    try:
      self.proc.stdin.write(json.dumps(request) + "\n")
      self.proc.stdin.flush()
    except (BrokenPipeError, OSError):
      pass  # It stopped: the read below says so.
    line = self.proc.stdout.readline()
    if not line:
      status = self.proc.wait()
      raise TorchWorkerError(f"{self.what} exited with status {status}")
    reply = json.loads(line)
    if reply.get("fatal"):
      raise TorchWorkerError(f"{self.what} failed: {reply['fatal']}")
    return reply

  def close(self) -> None:
    if self.proc.poll() is None:
      try:
        self.proc.stdin.write(json.dumps({"op": "quit"}) + "\n")
        self.proc.stdin.close()
      except (BrokenPipeError, OSError):
        pass
      try:
        self.proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self.proc.stdout.close()

  def participants(
    self, model: str, batch: int, dtype: str, **timing
  ) -> dict[str, TorchSetting]:
    """One participant per setting, for (model, batch, dtype); `timing`
    (steps, repeats, warmup) goes into their rows, since bench times them."""
    reply = self.call(op="setup", model=model, batch=batch, dtype=dtype)
    return {
      f"pytorch {s}": TorchSetting(self, s, {**row, **timing})
      for s, row in reply["rows"].items()
    }

  def finish(self, participants: dict[str, TorchSetting]) -> None:
    """Frees the worker's models; gets their last fields (peak memory)."""
    reply = self.call(op="finish")
    for p in participants.values():
      p.merge(reply["rows"].get(p.setting, {}))


class TorchSetting:
  """A `bench_common.Participant` that runs one PyTorch setting in the
  worker."""

  # The fields the worker fills; bench fills the timing fields.
  WORKER_KEYS = ("compile_s", "settings", "error", "peak_memory_bytes")

  def __init__(self, worker: TorchWorker, setting: str, row: dict):
    self.worker, self.setting = worker, setting
    self.row = empty_row(**row)
    self.row["flags"] = list(self.row["flags"] or [])
    self.images_per_step = row["global_batch"]

  def merge(self, fields: dict) -> None:
    for key in self.WORKER_KEYS:
      if key in fields:
        self.row[key] = fields[key]

  def _call(self, **request) -> dict:
    reply = self.worker.call(setting=self.setting, **request)
    self.merge(reply.get("row", {}))
    return reply

  def start(self, figure: str) -> bool:
    return bool(self._call(op="start", figure=figure)["ok"])

  def block(self, figure: str, steps: int) -> common.Block | None:
    block = self._call(op="block", figure=figure, steps=steps)["block"]
    return None if block is None else (block[0], block[1])

  def stop(self, figure: str) -> None:
    del figure  # The worker keeps its models until `finish`.

  def loop(self) -> list[tuple[float, float]] | None:
    loop = self._call(op="loop")["loop"]
    return None if loop is None else [(n, s) for n, s in loop]


# ============================================================================
# Command line
# ============================================================================

PROG = "superconv.bench"


class _IntListParser(flags.ListParser):
  """A comma list of integers: "512,1024" -> [512, 1024]."""

  def parse(self, argument):
    values = super().parse(argument)
    try:
      return [int(v) for v in values]
    except ValueError:
      raise ValueError(
        f"expected a comma list of int, got {argument!r}"
      ) from None

  def flag_type(self) -> str:
    return "comma separated list of integers"


def _define_int_list(name: str, default: list, help_text: str, fv) -> None:
  flags.DEFINE(
    _IntListParser(),
    name,
    default,
    help_text,
    fv,
    flags.CsvListSerializer(","),
  )


def _define_flags(fv) -> None:
  """Every flag, in `fv`; each with_underscores also as with-hyphens."""
  _define_row_flags(fv)
  _define_timing_flags(fv)
  _define_pytorch_flags(fv)
  flags.DEFINE_float(
    "peak_tflops",
    None,
    "Peak TFLOP/s of ONE device for MFU (default: from the device table;"
    " unknown devices get no MFU).",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "json",
    None,
    "Write the rows (and comparison) to this JSON file.",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "find_max_batch",
    False,
    "Instead of timing, find the largest global batch that fits, per model"
    " and dtype.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "max_batch_limit",
    None,
    "Upper bound of --find-max-batch (default 4096 on CPU, 1048576 elsewhere).",
    flag_values=fv,
  )
  cli.hyphen_aliases(fv)


def _define_row_flags(fv) -> None:
  """What the rows are: models, batches, dtypes, replicas, convolutions."""
  flags.DEFINE_list(
    "model",
    ["resnet56"],
    "Models; one of: " + ", ".join(models.MODEL_NAMES) + ".",
    flag_values=fv,
  )
  _define_int_list("batch", [1000], "GLOBAL batch sizes.", fv)
  _define_int_list(
    "parallel_seeds",
    [1],
    "Replica counts K trained in one program (config.num_parallel_seeds);"
    " images/s count every replica.",
    fv,
  )
  flags.DEFINE_list(
    "conv_impl",
    ["auto"],
    "Convolution implementations (config.conv_impl): auto, xla, chunked;"
    " auto = chunked weight gradients on CPU, xla elsewhere.",
    flag_values=fv,
  )
  flags.DEFINE_list(
    "bn_impl",
    ["auto"],
    "BatchNorm implementations (config.bn_impl): auto, flax, fused;"
    " auto = fused backward on CPU, flax elsewhere.",
    flag_values=fv,
  )
  flags.DEFINE_bool(
    "eigen_conv",
    False,
    "XLA:CPU convolutions with Eigen instead of YNNPACK, for the whole"
    " process (superconv.conv.use_eigen_convolutions; jaxlib 0.10 only).",
    flag_values=fv,
  )
  flags.DEFINE_list(
    "dtype",
    ["bfloat16"],
    "Compute dtypes: bfloat16, float32.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "train_size",
    50_000,
    "Synthetic train images on device (as CIFAR; raised to the batch if"
    " smaller).",
    flag_values=fv,
  )


def _define_timing_flags(fv) -> None:
  """How each row is timed: blocks, warm-up, the loop, the cache."""
  flags.DEFINE_integer("steps", 20, "Steps per timed block.", flag_values=fv)
  flags.DEFINE_integer(
    "repeats",
    5,
    "Timed blocks of each row, interleaved with the other rows of the same"
    " model, batch and dtype; rates use the median.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "warmup",
    None,
    "Steps per warm-up block (default: --steps); warm-up blocks run until"
    " two in a row agree within --warmup-tolerance and nothing compiled"
    " during them; 0: no warm-up.",
    flag_values=fv,
  )
  flags.DEFINE_float(
    "warmup_tolerance",
    common.WARMUP_TOLERANCE,
    "How far two warm-up blocks may differ, as a fraction.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "max_warmup_blocks",
    common.MAX_WARMUP_BLOCKS,
    "Warm-up blocks at most; a row still unsettled then is flagged.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "log_every",
    50,
    "loop: log_every_steps, as in real runs.",
    flag_values=fv,
  )
  flags.DEFINE_integer(
    "loop_intervals",
    5,
    "loop: timed log intervals after the first: the loop runs log_every x"
    " (intervals + 1) steps.",
    flag_values=fv,
  )
  for name, what in (
    ("no_aug", "Skip the step with on-device augmentation."),
    ("no_loop", "Skip the training loop."),
    (
      "no_compile_cache",
      "Compile everything the loop repeats again (by default a fresh"
      " persistent cache, deleted at exit, lets the loop reuse the timed"
      " steps' compilations).",
    ),
  ):
    flags.DEFINE_bool(name, False, what, flag_values=fv)


def _define_pytorch_flags(fv) -> None:
  """--compare-pytorch and the reference it runs."""
  flags.DEFINE_bool(
    "compare_pytorch",
    False,
    "Also run benchmarks/pytorch_reference.py, interleaved with the JAX"
    " rows, and print JAX/PyTorch ratios.",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "torch_python",
    None,
    f"Interpreter with torch (default ${TORCH_PYTHON_ENV}, else the"
    " checkout's .torchvenv/bin/python if present, else 'python').",
    flag_values=fv,
  )
  flags.DEFINE_list(
    "torch_settings",
    list(common.DEFAULT_TORCH_SETTINGS),
    "PyTorch settings to run: "
    + ", ".join(common.TORCH_SETTINGS)
    + " (_cl: channels_last); ratios are against the fastest.",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "torch_args",
    None,
    "More arguments for the reference, e.g. '--compile-mode max-autotune'"
    " or '--no-compile'.",
    flag_values=fv,
  )
  flags.DEFINE_string(
    "torch_script",
    None,
    "Path of pytorch_reference.py (default: the checkout's benchmarks/).",
    flag_values=fv,
  )


def _meta(argv) -> dict:
  return {
    "argv": list(argv),
    "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "devices": jax.local_device_count(),
    "device_kind": jax.local_devices()[0].device_kind,
    "host": platform.node(),
    "python": platform.python_version(),
    "xla_env": {
      k: v for k, v in os.environ.items() if k.startswith(("XLA_", "JAX_"))
    },
  }


def _write_json(path: str | None, payload: dict) -> None:
  if not path:
    return
  storage.write_text(path, json.dumps(payload, indent=2) + "\n")


def _validate(args) -> None:
  """Refuses impossible flag values: one line, exit status 2."""
  error = functools.partial(cli.fail, prog=PROG)
  for m in args.model:
    if m not in models.MODEL_NAMES:
      error(f"--model: unknown {m!r}; valid: {', '.join(models.MODEL_NAMES)}")
  for d in args.dtype:
    if d not in ("bfloat16", "float32"):
      error(f"--dtype: must be bfloat16 or float32, got {d!r}")
  n = jax.local_device_count()
  for b in args.batch:
    if b <= 0 or b % n:
      error(f"--batch: {b} must be a positive multiple of the {n} devices")
  for name in ("steps", "repeats", "log_every", "train_size"):
    if getattr(args, name) < 1:
      error(f"--{name.replace('_', '-')}: must be >= 1")
  for impl in args.conv_impl:
    if impl not in conv_lib.CONV_IMPLS:
      valid = ", ".join(conv_lib.CONV_IMPLS)
      error(f"--conv-impl: unknown {impl!r}; valid: {valid}")
  for impl in args.bn_impl:
    if impl not in bn_lib.BN_IMPLS:
      valid = ", ".join(bn_lib.BN_IMPLS)
      error(f"--bn-impl: unknown {impl!r}; valid: {valid}")
  if not args.parallel_seeds or min(args.parallel_seeds) < 1:
    error("--parallel-seeds: every K must be >= 1")
  if (args.warmup is not None and args.warmup < 0) or args.loop_intervals < 1:
    error("--warmup must be >= 0 and --loop-intervals >= 1")
  if args.max_warmup_blocks < 2:
    error("--max-warmup-blocks: must be >= 2 (two blocks must agree)")
  if not args.warmup_tolerance > 0:
    error("--warmup-tolerance: must be > 0")
  for s in args.torch_settings:
    if s not in common.TORCH_SETTINGS:
      valid = ", ".join(common.TORCH_SETTINGS)
      error(f"--torch-settings: unknown {s!r}; valid: {valid}")
  if not args.torch_settings:
    error("--torch-settings: name at least one setting")


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status (2: bad input or the PyTorch
  reference could not run)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  args, _ = cli.parse_command(argv, _define_flags, prog=PROG, doc=__doc__)
  if args.eigen_conv:
    try:
      if not conv_lib.use_eigen_convolutions():
        cli.fail(
          "--eigen-conv: this jaxlib is not known to accept it", prog=PROG
        )
    except RuntimeError as e:
      cli.fail(f"--eigen-conv: {e}", prog=PROG)
  _validate(args)
  payload = {"meta": _meta(argv), "rows": []}
  with fresh_compile_cache(not args.no_compile_cache):
    if args.find_max_batch:
      return _max_batch_table(args, payload)
    worker = None
    try:
      if args.compare_pytorch:
        worker = TorchWorker(args)
        payload["meta"]["torch"] = worker.hello
      _timing_table(args, payload, worker)
    except TorchWorkerError as e:
      return cli.error(e, prog=PROG)
    finally:
      if worker is not None:
        worker.close()
  _print_tables(payload)
  return cli.EXIT_OK


def _max_batch_table(args, payload: dict) -> int:
  limit = args.max_batch_limit or (
    4096 if jax.default_backend() == "cpu" else 1 << 20
  )
  payload["max_batch"] = []
  for model in args.model:
    for dtype in args.dtype:
      log.info("Largest batch of %s %s (limit %d)...", model, dtype, limit)
      payload["max_batch"].append(
        max_batch_row(
          model,
          dtype,
          start=args.batch[0],
          limit=limit,
          train_size=args.train_size,
        )
      )
      _write_json(args.json, payload)
  print(format_table(payload["max_batch"], MAX_BATCH_COLUMNS))
  return cli.EXIT_OK


def _timing_table(args, payload: dict, worker: TorchWorker | None) -> None:
  """Measures every (model, batch, dtype) group: its JAX rows and, with a
  worker, its PyTorch settings, interleaved (`bench_common.measure_group`).
  """
  warmup = args.steps if args.warmup is None else args.warmup
  base = None
  for model, batch, dtype in itertools.product(
    args.model, args.batch, args.dtype
  ):
    size = max(batch, args.train_size)
    if base is None or len(base.train_images) < size:
      base = data_lib.load(
        "synthetic",
        synthetic_train_size=size,
        synthetic_test_size=max(args.batch),
      )
    timing = dict(steps=args.steps, repeats=args.repeats, warmup=warmup)
    cases: dict[str, JaxCase] = {}
    for k, impl, bn in itertools.product(
      args.parallel_seeds, args.conv_impl, args.bn_impl
    ):
      case = JaxCase(
        model,
        batch,
        dtype,
        **timing,
        train_size=args.train_size,
        log_every=args.log_every,
        loop_intervals=args.loop_intervals,
        peak_override=args.peak_tflops,
        dataset=_sized(base, batch, args.train_size),
        parallel_seeds=k,
        conv_impl=impl,
        bn_impl=bn,
      )
      name = case.name
      if name in cases:
        name += f" #{len(cases) + 1}"
      cases[name] = case
    torch = worker.participants(model, batch, dtype, **timing) if worker else {}
    log.info(
      "Benchmarking %s, global batch %d, %s: %s",
      model,
      batch,
      dtype,
      "; ".join([*cases, *torch]),
    )
    common.measure_group(
      {**cases, **torch},
      common.Plan(
        args.steps,
        args.repeats,
        warmup,
        args.warmup_tolerance,
        args.max_warmup_blocks,
      ),
      figures=("step",) if args.no_aug else ("step", "aug_step"),
      loop=not args.no_loop,
      progress=log.info,
    )
    peak = peak_memory_bytes()
    for case in cases.values():
      case.row["peak_memory_bytes"] = peak
      payload["rows"].append(finish_row(case.row))
    if worker:
      worker.finish(torch)
      for p in torch.values():
        payload["rows"].append(finish_row(p.row))
    del cases, torch
    gc.collect()
    _write_json(args.json, payload)
  jax_rows = [r for r in payload["rows"] if r["framework"] == "jax"]
  torch_rows = [r for r in payload["rows"] if r["framework"] == "pytorch"]
  if worker:
    _check_macs(jax_rows, torch_rows)
    payload["comparison"] = compare_rows(jax_rows, torch_rows)
    _write_json(args.json, payload)


def _check_macs(jax_rows: Sequence[dict], torch_rows: Sequence[dict]) -> None:
  ours = {r["model"]: r["forward_macs"] for r in jax_rows}
  for t in torch_rows:  # Its MACs come from hooks on the torch modules.
    if t["forward_macs"] is not None and t["forward_macs"] != ours.get(
      t["model"]
    ):
      log.warning(
        "%s: PyTorch counts %s forward MACs, superconv %s",
        t["model"],
        t["forward_macs"],
        ours.get(t["model"]),
      )


def _print_tables(payload: dict) -> None:
  """The JAX table, the PyTorch table and the comparison on stdout; one
  warning on stderr per flagged row."""
  rows = payload["rows"]
  jax_rows = [r for r in rows if r["framework"] == "jax"]
  torch_rows = [r for r in rows if r["framework"] == "pytorch"]
  print(format_table(jax_rows))
  if torch_rows:
    print()
    print(format_table(torch_rows, settings=True))
  comparison = payload.get("comparison")
  if comparison:
    print()
    print(format_table(comparison, compare_columns(comparison)))
  sys.stdout.flush()
  for line in common.flag_warnings(rows):
    log.warning("warning: %s", line)
  doubtful = [
    c
    for c in comparison or ()
    if any(c[f"{w}_flagged"] for w in common.FIGURES)
  ]
  if doubtful:
    log.warning(
      "warning: %d of %d comparison rows have a ratio marked '!': a figure"
      " behind it is flagged (above); rerun on a quieter machine before"
      " quoting it",
      len(doubtful),
      len(comparison),
    )


def _sized(
  base: data_lib.Dataset, batch: int, train_size: int
) -> data_lib.Dataset:
  """`base` cut to max(batch, train_size) train images (same test split)."""
  size = max(batch, train_size)
  if len(base.train_images) == size:
    return base
  return data_lib.Dataset(
    base.name,
    base.train_images[:size],
    base.train_labels[:size],
    base.test_images[:batch],
    base.test_labels[:batch],
    base.class_names,
  )


if __name__ == "__main__":
  cli.setup_logging()
  sys.exit(main())
