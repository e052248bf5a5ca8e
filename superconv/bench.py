r"""Throughput benchmark: images/s, TFLOP/s, MFU and memory of the train step.

  python -m superconv.bench --model resnet56 --batch 1000 --dtype bfloat16
  python -m superconv.bench --model resnet20,resnet56,resnet18 \
      --batch 512,1024 --dtype bfloat16,float32 --json bench.json
  python -m superconv.bench --model resnet56 --compare-pytorch \
      --torch-python /path/to/torch/venv/bin/python
  python -m superconv.bench --model resnet56 --find-max-batch

One row per (model, global batch, dtype), on all local devices (pmap, as
`superconv.main` runs). Each row measures, on the synthetic data set (same
shapes as CIFAR-10: 32x32x3 uint8, 10 classes, `--train-size` images, all
on device):

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
`--steps` steps), `--repeats` times after `--warmup` steps; a rate is the
median repeat. Compile time is the AOT `lower().compile()` time of the bare
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
same step, same timing) with `--torch-python` (or $SUPERCONV_TORCH_PYTHON,
default `python`) and prints the JAX/PyTorch ratio of each rate.

Never assert on these numbers in tests: they depend on the machine and its
load. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
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
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from superconv import config as config_lib
from superconv import conv as conv_lib
from superconv import data as data_lib
from superconv import input_pipeline, metric_writer, models, storage, train

log = logging.getLogger("superconv")
AXIS = input_pipeline.AXIS
GIB = 2.0**30

# ============================================================================
# Analytic FLOPs, device peaks, MFU
# ============================================================================

# Dense (no 2:4 sparsity) peak TFLOP/s of ONE device, matched in order by a
# lower-case substring of `device.device_kind`. float32: the rate XLA and
# cuDNN use for float32 convolutions by default on NVIDIA Ampere and later
# (TF32 tensor cores); TPUs run float32 matmuls as several bfloat16 passes
# and publish no float32 peak (None = unknown).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float | None]], ...] = (
  ("h100 pcie", {"bfloat16": 756.0, "float32": 378.0}),
  ("h100", {"bfloat16": 989.0, "float32": 494.7}),  # SXM
  ("h200", {"bfloat16": 989.0, "float32": 494.7}),  # SXM
  ("a100", {"bfloat16": 312.0, "float32": 156.0}),  # SXM/PCIe
  ("tpu v4", {"bfloat16": 275.0, "float32": None}),
  ("tpu v5 lite", {"bfloat16": 197.0, "float32": None}),  # v5e
  ("tpu v5e", {"bfloat16": 197.0, "float32": None}),
  ("tpu v5p", {"bfloat16": 459.0, "float32": None}),
  ("tpu v5", {"bfloat16": 459.0, "float32": None}),  # v5p reports "TPU v5"
  ("tpu v6 lite", {"bfloat16": 918.0, "float32": None}),  # v6e (Trillium)
  ("tpu v6e", {"bfloat16": 918.0, "float32": None}),
)


def peak_tflops(
  device_kind: str, dtype: str, override: float | None = None
) -> float | None:
  """Peak dense TFLOP/s of one device of `device_kind` in `dtype`.

  `override` (--peak-tflops) wins; None when the device is not in
  PEAK_TFLOPS (e.g. CPUs) or has no published peak for `dtype`.
  """
  if override is not None:
    return float(override)
  kind = device_kind.lower()
  for key, peaks in PEAK_TFLOPS:
    if key in kind:
      return peaks.get(dtype)
  return None


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


def achieved_tflops(
  images_per_sec: float | None, gflops_per_image: float
) -> float | None:
  """Model TFLOP/s achieved at `images_per_sec` (all devices together)."""
  if images_per_sec is None:
    return None
  return images_per_sec * gflops_per_image / 1e3


def mfu(
  images_per_sec: float | None,
  gflops_per_image: float,
  peak_tflops_per_device: float | None,
  num_devices: int,
) -> float | None:
  """Model FLOPs utilization in [0, 1]: achieved / (peak x devices)."""
  tflops = achieved_tflops(images_per_sec, gflops_per_image)
  if tflops is None or not peak_tflops_per_device:
    return None
  return tflops / (peak_tflops_per_device * num_devices)


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
  return train._pmap(step, donate_state=True)  # pylint: disable=protected-access


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


def time_steps(
  step_fn: Callable,
  state,
  args: Sequence,
  *,
  steps: int,
  repeats: int,
  warmup: int,
):
  """Runs `warmup` steps, then `repeats` timed blocks of `steps` steps.

  Each block ends with `jax.block_until_ready` on the state and metrics,
  so it measures device time, not dispatch. Returns (state, seconds of
  each block).
  """
  out = None
  for _ in range(warmup):
    state, out = step_fn(state, *args)
  jax.block_until_ready((state, out))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    for _ in range(steps):
      state, out = step_fn(state, *args)
    jax.block_until_ready((state, out))
    times.append(time.perf_counter() - t0)
  return state, times


def rate(images_per_step: int, steps: int, times: Sequence[float]) -> float:
  """Images/s of the median block."""
  return images_per_step * steps / statistics.median(times)


def loop_images_per_sec(rows: Sequence[dict], batch_size: int) -> float | None:
  """Images/s of a run from its metrics.jsonl rows, first interval excluded.

  Each train row after the first covers (its step - the previous row's
  step) steps at `steps_per_sec`; the result is total images / total time
  over those intervals. None with fewer than two train rows.
  """
  train_rows = [r for r in rows if "steps_per_sec" in r]
  steps, seconds = 0, 0.0
  for prev, row in zip(train_rows, train_rows[1:]):
    n = row["step"] - prev["step"]
    if n > 0 and row["steps_per_sec"] > 0:
      steps += n
      seconds += n / row["steps_per_sec"]
  if steps == 0:
    return None
  return batch_size * steps / seconds


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
# keys; None where a value is unknown or was not measured.
ROW_KEYS = (
  "framework",  # "jax" | "pytorch"
  "model",
  "params",
  "global_batch",
  "dtype",
  # Replicas trained in one program (config.num_parallel_seeds); every
  # images/s below counts all of them (K x global_batch per step).
  "parallel_seeds",
  "devices",
  "device_kind",
  "backend",
  "conv_impl",  # superconv.conv implementation, resolved ('xla' | 'chunked').
  "settings",  # How the step was built (compiler, layout, ...).
  "compile_s",  # Seconds to compile the bare step.
  "step_images_per_sec",
  "step_times_s",  # Bare step.
  "aug_step_images_per_sec",
  "aug_step_times_s",  # Step with augmentation.
  "loop_images_per_sec",
  "loop_intervals",  # Training loop.
  "loop_step_ratio",  # loop / step images/s.
  "forward_macs",
  "train_gflops_per_image",
  "achieved_tflops",
  "peak_tflops",
  "mfu",  # From the bare step.
  "loop_mfu",  # From the loop.
  "peak_memory_bytes",
  "compiled_memory_bytes",
  "steps",
  "repeats",
  "warmup",
  "error",  # None, or why the row has no numbers (e.g. out of memory).
)


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
  config_lib.validate_static(c, num_devices=jax.device_count())
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


def measure_loop(config, dataset) -> tuple[float | None, int]:
  """(images/s, timed intervals) of train.train_and_evaluate."""
  with tempfile.TemporaryDirectory(prefix="superconv-bench-") as workdir:
    with _stdout_to_stderr():
      train.train_and_evaluate(config, workdir, dataset)
    seeds = train.replica_seeds(config)
    logs = (
      workdir if len(seeds) == 1 else train.replica_workdir(workdir, seeds[0])
    )
    rows = metric_writer.read_jsonl(os.path.join(logs, "metrics.jsonl"))
  train_rows = [r for r in rows if "steps_per_sec" in r]
  # Every replica trains a global batch per step.
  return (
    loop_images_per_sec(rows, config.batch_size * len(seeds)),
    max(0, len(train_rows) - 1),
  )


def bench_row(
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
  run_aug: bool = True,
  run_loop: bool = True,
  dataset: data_lib.Dataset | None = None,
  parallel_seeds: int = 1,
  conv_impl: str = "auto",
) -> dict:
  """Measures one (model, global batch, dtype) row; see the module doc."""
  devices = jax.local_devices()
  n = len(devices)
  if batch % n:
    raise ValueError(f"--batch: {batch} is not divisible by the {n} devices")
  gflops = train_gflops_per_image(model)
  peak = peak_tflops(devices[0].device_kind, dtype, peak_override)
  row = empty_row(
    framework="jax",
    model=model,
    params=count_params(model),
    global_batch=batch,
    dtype=dtype,
    parallel_seeds=parallel_seeds,
    devices=n,
    conv_impl=conv_lib.resolve(conv_impl),
    device_kind=devices[0].device_kind,
    backend=jax.default_backend(),
    settings=f"XLA, pmap over {n} device(s), jax {jax.__version__}",
    forward_macs=models.forward_macs(model),
    train_gflops_per_image=gflops,
    peak_tflops=peak,
    steps=steps,
    repeats=repeats,
    warmup=warmup,
  )
  loop_steps = log_every * (loop_intervals + 1)
  config = bench_config(
    model,
    batch,
    dtype,
    train_size=train_size,
    loop_steps=loop_steps,
    log_every=log_every,
    parallel_seeds=parallel_seeds,
    conv_impl=conv_impl,
  )
  images_per_step = batch * parallel_seeds
  if dataset is None or len(dataset.train_images) < batch:
    dataset = _synthetic(config)
  config_lib.validate_with_data(
    config, num_train_examples=dataset.train_images.shape[0]
  )
  run = train.setup(config, dataset)
  try:
    init = initial_state(config, run, dataset)
    # --- Bare step on a fixed device batch ----------------------------------
    x, y = fixed_batch(dataset, run.aug, seed=config.seed)
    state = input_pipeline.replicate_tree(init)
    t0 = time.perf_counter()
    compiled = (
      make_bare_step(config, dataset.num_classes).lower(state, x, y).compile()
    )
    row["compile_s"] = time.perf_counter() - t0
    row["compiled_memory_bytes"] = compiled_memory_bytes(compiled)
    state, times = time_steps(
      compiled, state, (x, y), steps=steps, repeats=repeats, warmup=warmup
    )
    row["step_times_s"] = times
    row["step_images_per_sec"] = rate(images_per_step, steps, times)
    del state, x, y, compiled
    # --- The real step: batch selection + augmentation on device ------------
    if run_aug:
      images = input_pipeline.replicate(dataset.train_images)
      labels = input_pipeline.replicate(dataset.train_labels.astype(np.int32))
      state = input_pipeline.replicate_tree(init)
      p_step = train.make_train_step(config, dataset, run.aug)
      state, times = time_steps(
        p_step,
        state,
        (images, labels),
        steps=steps,
        repeats=repeats,
        warmup=max(1, warmup),
      )
      row["aug_step_times_s"] = times
      row["aug_step_images_per_sec"] = rate(images_per_step, steps, times)
      del state, images, labels, p_step
    # --- The training loop ---------------------------------------------------
    if run_loop:
      gc.collect()
      row["loop_images_per_sec"], row["loop_intervals"] = measure_loop(
        config, dataset
      )
  except Exception as e:  # pylint: disable=broad-except
    if not is_out_of_memory(e):
      raise
    row["error"] = "out of memory"
    log.warning(
      "%s batch %d %s: out of memory (%s)",
      model,
      batch,
      dtype,
      str(e).splitlines()[0][:200],
    )
  finally:
    gc.collect()
  row["peak_memory_bytes"] = peak_memory_bytes()
  finish_row(row)
  return row


def finish_row(row: dict) -> dict:
  """Fills the derived fields (ratio, TFLOP/s, MFU) of a measured row."""
  step, loop = row["step_images_per_sec"], row["loop_images_per_sec"]
  gflops, peak, n = (
    row["train_gflops_per_image"],
    row["peak_tflops"],
    row["devices"],
  )
  row["loop_step_ratio"] = loop / step if step and loop else None
  row["achieved_tflops"] = achieved_tflops(step, gflops)
  row["mfu"] = mfu(step, gflops, peak, n)
  row["loop_mfu"] = mfu(loop, gflops, peak, n)
  return row


# ============================================================================
# Tables
# ============================================================================


def _num(fmt: str):
  return lambda v: "-" if v is None else format(v, fmt)


def _pct(v):
  return "-" if v is None else f"{100 * v:.1f}%"


def _gib(v):
  return "-" if v is None else f"{v / GIB:.2f}"


# (header, row key, formatter, width).
TABLE_COLUMNS = (
  ("model", "model", str, -15),
  ("batch", "global_batch", str, 6),
  ("dtype", "dtype", str, -8),
  ("seeds", "parallel_seeds", str, 5),
  ("dev", "devices", str, 3),
  ("conv", "conv_impl", str, -7),
  ("compile s", "compile_s", _num(".1f"), 9),
  ("step img/s", "step_images_per_sec", _num(",.0f"), 10),
  ("aug img/s", "aug_step_images_per_sec", _num(",.0f"), 10),
  ("loop img/s", "loop_images_per_sec", _num(",.0f"), 10),
  ("loop/step", "loop_step_ratio", _num(".2f"), 9),
  ("GFLOP/img", "train_gflops_per_image", _num(".3f"), 9),
  ("TFLOP/s", "achieved_tflops", _num(".2f"), 8),
  ("MFU", "mfu", _pct, 6),
  ("peak GiB", "peak_memory_bytes", _gib, 8),
)


def _cell(text: str, width: int) -> str:
  return text.ljust(-width) if width < 0 else text.rjust(width)


def format_table(rows: Sequence[dict], columns=TABLE_COLUMNS) -> str:
  """Fixed-width table of rows, one line per row, '-' for unknown values.

  A row with an `error` shows it after the columns.
  """
  lines = ["  ".join(_cell(h, w) for h, _, _, w in columns)]
  lines.append(
    "  ".join(
      "-" * abs(w) if abs(w) >= len(h) else "-" * len(h)
      for h, _, _, w in columns
    )
  )
  for row in rows:
    cells = []
    for header, key, fmt, width in columns:
      value = row.get(key)
      text = "-" if value is None else fmt(value)
      cells.append(
        _cell(text, max(abs(width), len(header)) * (1 if width > 0 else -1))
      )
    line = "  ".join(cells)
    if row.get("error"):
      line += f"  ({row['error']})"
    lines.append(line.rstrip())
  return "\n".join(lines)


def compare_rows(
  jax_rows: Sequence[dict], torch_rows: Sequence[dict]
) -> list[dict]:
  """JAX / PyTorch ratios of each rate, matched by (model, batch, dtype).

  A JAX row with K parallel seeds counts the images of all K replicas, so
  its ratio is K seeds in one program against one PyTorch run.
  """
  by_key = {(r["model"], r["global_batch"], r["dtype"]): r for r in torch_rows}
  out = []
  for j in jax_rows:
    t = by_key.get((j["model"], j["global_batch"], j["dtype"]))
    if t is None:
      continue
    row = {
      "model": j["model"],
      "global_batch": j["global_batch"],
      "dtype": j["dtype"],
      "parallel_seeds": j.get("parallel_seeds"),
      "conv_impl": j.get("conv_impl"),
      "torch_settings": t.get("settings"),
    }
    for what in ("step", "aug_step", "loop"):
      a, b = j.get(f"{what}_images_per_sec"), t.get(f"{what}_images_per_sec")
      row[f"jax_{what}_images_per_sec"] = a
      row[f"torch_{what}_images_per_sec"] = b
      row[f"{what}_ratio"] = a / b if a and b else None
    out.append(row)
  return out


COMPARE_COLUMNS = (
  ("model", "model", str, -15),
  ("batch", "global_batch", str, 6),
  ("dtype", "dtype", str, -8),
  ("seeds", "parallel_seeds", str, 5),
  ("conv", "conv_impl", str, -7),
  ("jax step", "jax_step_images_per_sec", _num(",.0f"), 9),
  ("torch step", "torch_step_images_per_sec", _num(",.0f"), 10),
  ("ratio", "step_ratio", _num(".2f"), 5),
  ("jax aug", "jax_aug_step_images_per_sec", _num(",.0f"), 9),
  ("torch aug", "torch_aug_step_images_per_sec", _num(",.0f"), 9),
  ("ratio", "aug_step_ratio", _num(".2f"), 5),
  ("jax loop", "jax_loop_images_per_sec", _num(",.0f"), 9),
  ("torch loop", "torch_loop_images_per_sec", _num(",.0f"), 10),
  ("ratio", "loop_ratio", _num(".2f"), 5),
  ("torch settings", "torch_settings", str, -14),
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


def default_torch_script() -> str:
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  return os.path.join(repo, "benchmarks", "pytorch_reference.py")


def run_pytorch(
  args, models_: Sequence[str], batches: Sequence[int], dtypes: Sequence[str]
) -> list[dict]:
  """Runs the PyTorch reference in a subprocess; returns its rows."""
  python = args.torch_python or os.environ.get(TORCH_PYTHON_ENV) or "python"
  script = args.torch_script or default_torch_script()
  if not os.path.isfile(script):
    raise RuntimeError(f"--torch-script: no such file: {script}")
  with tempfile.TemporaryDirectory(prefix="superconv-torch-") as tmp:
    out = os.path.join(tmp, "torch.json")
    cmd = [
      python,
      script,
      "--model",
      ",".join(models_),
      "--batch",
      ",".join(map(str, batches)),
      "--dtype",
      ",".join(dtypes),
      "--steps",
      str(args.steps),
      "--repeats",
      str(args.repeats),
      "--warmup",
      str(args.warmup),
      "--train-size",
      str(args.train_size),
      "--log-every",
      str(args.log_every),
      "--loop-intervals",
      str(args.loop_intervals),
      "--json",
      out,
    ]
    if args.peak_tflops is not None:
      cmd += ["--peak-tflops", str(args.peak_tflops)]
    if args.no_loop:
      cmd.append("--no-loop")
    if args.no_aug:
      cmd.append("--no-aug")
    cmd += shlex.split(args.torch_args or "")
    log.info("Running %s", " ".join(cmd))
    sys.stdout.flush()
    try:
      # Its table goes to our stderr: stdout keeps only our tables.
      done = subprocess.run(cmd, stdout=sys.stderr, check=False)
    except OSError as e:
      raise RuntimeError(
        f"--torch-python: cannot run {python!r} ({e}); set --torch-python"
        f" or ${TORCH_PYTHON_ENV} to an interpreter with torch"
      ) from None
    if done.returncode != 0:
      raise RuntimeError(
        f"{script} exited with status {done.returncode} (interpreter"
        f" {python!r}: set --torch-python or ${TORCH_PYTHON_ENV} to one"
        " with torch installed)"
      )
    with open(out) as f:
      return json.load(f)["rows"]


# ============================================================================
# Command line
# ============================================================================


def _csv(kind):
  def parse(text: str):
    try:
      return [kind(v) for v in text.split(",") if v.strip()]
    except ValueError:
      raise argparse.ArgumentTypeError(
        f"expected a comma list of {kind.__name__}, got {text!r}"
      ) from None

  return parse


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m superconv.bench",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    "--model",
    type=_csv(str),
    default=["resnet56"],
    help="comma list of models (default resnet56); one of: "
    + ", ".join(models.MODEL_NAMES),
  )
  p.add_argument(
    "--batch",
    type=_csv(int),
    default=[1000],
    help="comma list of GLOBAL batch sizes (default 1000)",
  )
  p.add_argument(
    "--parallel-seeds",
    type=_csv(int),
    default=[1],
    metavar="K",
    help="comma list of replica counts trained in"
    " one program (config.num_parallel_seeds; default 1);"
    " images/s count every replica",
  )
  p.add_argument(
    "--conv-impl",
    type=_csv(str),
    default=["auto"],
    help="comma list of convolution implementations"
    " (config.conv_impl): auto, xla, chunked; default auto ="
    " chunked weight gradients on CPU, xla elsewhere",
  )
  p.add_argument(
    "--dtype",
    type=_csv(str),
    default=["bfloat16"],
    help="comma list of compute dtypes: bfloat16, float32",
  )
  p.add_argument(
    "--steps", type=int, default=20, help="steps per timed block (default 20)"
  )
  p.add_argument(
    "--repeats",
    type=int,
    default=5,
    help="timed blocks; rates use the median (default 5)",
  )
  p.add_argument(
    "--warmup",
    type=int,
    default=3,
    help="untimed steps after compilation (default 3)",
  )
  p.add_argument(
    "--train-size",
    type=int,
    default=50_000,
    help="synthetic train images on device (default 50000, as"
    " CIFAR; raised to the batch if smaller)",
  )
  p.add_argument(
    "--log-every",
    type=int,
    default=50,
    help="loop: log_every_steps, as in real runs (default 50)",
  )
  p.add_argument(
    "--loop-intervals",
    type=int,
    default=5,
    help="loop: timed log intervals after the first (default"
    " 5): the loop runs log_every x (intervals + 1) steps",
  )
  p.add_argument(
    "--no-aug",
    action="store_true",
    help="skip the step with on-device augmentation",
  )
  p.add_argument(
    "--no-loop", action="store_true", help="skip the training loop"
  )
  p.add_argument(
    "--no-compile-cache",
    action="store_true",
    help="compile everything the loop repeats again (by"
    " default a fresh persistent cache, deleted at exit, lets"
    " the loop reuse the timed steps' compilations)",
  )
  p.add_argument(
    "--peak-tflops",
    type=float,
    default=None,
    help="peak TFLOP/s of ONE device for MFU (default: from"
    " the device table; unknown devices get no MFU)",
  )
  p.add_argument(
    "--json",
    default=None,
    help="write the rows (and comparison) to this JSON file",
  )
  p.add_argument(
    "--compare-pytorch",
    action="store_true",
    help="also run benchmarks/pytorch_reference.py and print"
    " JAX/PyTorch ratios",
  )
  p.add_argument(
    "--torch-python",
    default=None,
    help=f"interpreter with torch (default ${TORCH_PYTHON_ENV} or 'python')",
  )
  p.add_argument(
    "--torch-args",
    default=None,
    help="more arguments for the reference, e.g."
    " '--compile-mode max-autotune' or '--no-compile'",
  )
  p.add_argument(
    "--torch-script",
    default=None,
    help="path of pytorch_reference.py (default: the checkout's benchmarks/)",
  )
  p.add_argument(
    "--find-max-batch",
    action="store_true",
    help="instead of timing, find the largest global batch"
    " that fits, per model and dtype",
  )
  p.add_argument(
    "--max-batch-limit",
    type=int,
    default=None,
    help="upper bound of --find-max-batch (default 4096 on CPU,"
    " 1048576 elsewhere)",
  )
  return p


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


def _validate(args, p: argparse.ArgumentParser) -> None:
  for m in args.model:
    if m not in models.MODEL_NAMES:
      p.error(f"--model: unknown {m!r}; valid: {', '.join(models.MODEL_NAMES)}")
  for d in args.dtype:
    if d not in ("bfloat16", "float32"):
      p.error(f"--dtype: must be bfloat16 or float32, got {d!r}")
  n = jax.local_device_count()
  for b in args.batch:
    if b <= 0 or b % n:
      p.error(f"--batch: {b} must be a positive multiple of the {n} devices")
  for name in ("steps", "repeats", "log_every", "train_size"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')}: must be >= 1")
  for impl in args.conv_impl:
    if impl not in conv_lib.CONV_IMPLS:
      valid = ", ".join(conv_lib.CONV_IMPLS)
      p.error(f"--conv-impl: unknown {impl!r}; valid: {valid}")
  if not args.parallel_seeds or min(args.parallel_seeds) < 1:
    p.error("--parallel-seeds: every K must be >= 1")
  if args.warmup < 0 or args.loop_intervals < 1:
    p.error("--warmup must be >= 0 and --loop-intervals >= 1")


def main(argv: Sequence[str] | None = None) -> int:
  """The command line; returns the exit status (2: bad input or the PyTorch
  reference could not run)."""
  argv = sys.argv[1:] if argv is None else list(argv)
  p = parser()
  args = p.parse_args(argv)
  _validate(args, p)
  payload = {"meta": _meta(argv), "rows": []}
  with fresh_compile_cache(not args.no_compile_cache):
    if args.find_max_batch:
      return _max_batch_table(args, payload)
    _timing_table(args, payload)
  if args.compare_pytorch:
    return _compare_pytorch(args, payload)
  return 0


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
  return 0


def _timing_table(args, payload: dict) -> None:
  base = None
  for model in args.model:
    for batch in args.batch:
      for dtype in args.dtype:
        for k, impl in itertools.product(args.parallel_seeds, args.conv_impl):
          log.info(
            "Benchmarking %s, global batch %d, %s, %d replica(s),"
            " %s convolution...",
            model,
            batch,
            dtype,
            k,
            conv_lib.resolve(impl),
          )
          size = max(batch, args.train_size)
          if base is None or len(base.train_images) < size:
            base = data_lib.load(
              "synthetic",
              synthetic_train_size=size,
              synthetic_test_size=max(args.batch),
            )
          row = bench_row(
            model,
            batch,
            dtype,
            steps=args.steps,
            repeats=args.repeats,
            warmup=args.warmup,
            train_size=args.train_size,
            log_every=args.log_every,
            loop_intervals=args.loop_intervals,
            peak_override=args.peak_tflops,
            run_aug=not args.no_aug,
            run_loop=not args.no_loop,
            dataset=_sized(base, batch, args.train_size),
            parallel_seeds=k,
            conv_impl=impl,
          )
          payload["rows"].append(row)
          _write_json(args.json, payload)
  print(format_table(payload["rows"]))


def _compare_pytorch(args, payload: dict) -> int:
  jax_rows = list(payload["rows"])
  try:
    torch_rows = run_pytorch(args, args.model, args.batch, args.dtype)
  except RuntimeError as e:
    sys.stderr.write(f"superconv.bench: error: {e}\n")
    return 2
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
  payload["rows"].extend(torch_rows)
  payload["comparison"] = compare_rows(jax_rows, torch_rows)
  _write_json(args.json, payload)
  print()
  print(format_table(torch_rows))
  print()
  print(format_table(payload["comparison"], COMPARE_COLUMNS))
  return 0


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


def setup_logging() -> None:
  """Progress lines of superconv's loggers on stderr (command line only)."""
  if not log.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
      logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    )
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


if __name__ == "__main__":
  setup_logging()
  sys.exit(main())
