"""Training and evaluation: state, pmapped steps, and the loop.

Reads top to bottom: the train state and optimizer, the per-device train
and eval steps, then `train_and_evaluate(config, workdir)`. The one
`jax.pmap` call lives in `_pmap`, so a move to `jax.jit` + `shard_map` is a
local change.

Reliability (see also checkpoint.py):
- Resume: the latest complete checkpoint is restored, after checking that
  the config does not change the trajectory (ConfigError otherwise), before
  anything is compiled or written. Data order and augmentation are pure
  functions of (seed, step), so a resumed run is bit-exact on the same
  platform and device count.
- SIGTERM/SIGINT: the run stops at the next step boundary after saving a
  checkpoint of that step, and raises `Interrupted` (main.py exits with
  128 + the signal number). A second signal ends the process at once with
  the same status, even during compilation (see `_StopSignals`).
- Non-finite loss, gradients or BatchNorm statistics: such a step leaves
  parameters, BatchNorm statistics and momentum unchanged on device while the
  step (data order, schedule) moves on. `nonfinite_policy="stop"` then raises
  NonFiniteError at the next metrics flush, which always precedes a save;
  "skip" goes on and counts the step. `checkpoint.save` refuses a non-finite
  state as a last safety net.
- One writer per workdir: `lock_workdir` (lock.py) before anything is
  written; the drivers call it.
- Testing hooks: config.debug_nan_at_step (see config.py) and the
  environment variable SUPERCONV_DEBUG_SIGNAL_AT_STEP=N[:SIGNAME], which
  makes the process send itself SIGNAME (default SIGTERM) right after step
  N, to test preemption at a known step.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import threading
import time
from typing import Any

from flax.training import train_state as flax_train_state
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from superconv import checkpoint as checkpoint_lib
from superconv import config as config_lib
from superconv import data as data_lib
from superconv import (
  input_pipeline,
  lock,
  metric_writer,
  models,
  schedules,
  storage,
)

log = logging.getLogger("superconv")
AXIS = input_pipeline.AXIS


def validate(
  config, *, num_devices: int, num_train_examples: int | None = None
) -> None:
  """Checks a config before anything is compiled or written.

  The data set spec (data.check_spec), the model keys
  (models.validate_config), the config's own fields (config.check) and,
  given the number of training examples, the run's length and its schedule
  (config.check_durations, schedules.validate). Raises config.ConfigError
  with one line naming the key.
  """
  try:
    data_lib.check_spec(config.dataset, data_dir=config.data_dir or None)
  except data_lib.DataError as e:
    raise config_lib.ConfigError(str(e)) from None
  models.validate_config(config)
  config_lib.check(config, num_devices=num_devices)
  if num_train_examples is None:
    return
  config_lib.check_durations(config, num_train_examples=num_train_examples)
  try:
    schedules.validate(
      config.schedule,
      steps_per_epoch=config_lib.steps_per_epoch(
        num_train_examples, config.batch_size
      ),
      total_steps=config_lib.total_steps(config, num_train_examples),
    )
  except schedules.ScheduleError as e:
    raise config_lib.ConfigError(str(e)) from None


# ============================================================================
# Train state and optimizer
# ============================================================================


class TrainState(flax_train_state.TrainState):
  batch_stats: Any


def decay_mask(params):
  """True for the parameters that get weight decay.

  Convolution and dense kernels always decay; BatchNorm scales/offsets and
  biases decay only when config.decay_bn_and_bias (Caffe and PyTorch decay
  everything by default).
  """
  return jax.tree_util.tree_map_with_path(
    lambda path, _: path[-1].key == "kernel", params
  )


def make_optimizer(config, lr_fn, momentum_fn) -> optax.GradientTransformation:
  """The optimizer of config.optimizer, its lr and momentum scheduled.

  "sgd": L2 on the gradient (`weight_decay` x params added before the
  momentum, as Caffe and PyTorch's SGD), then SGD with momentum
  `momentum_fn` (Nesterov if config.nesterov).

  "adamw": `optax.adamw` (Loshchilov & Hutter) with beta1 = `momentum_fn`,
  so a schedule that cycles momentum cycles beta1 the same way, as
  PyTorch's OneCycleLR and fastai's `fit_one_cycle` do for Adam's first
  beta; otherwise beta1 = config.momentum. beta2 = config.adam_b2, eps =
  config.adam_eps (outside the square root, as PyTorch). Weight decay is
  decoupled: `weight_decay` x params goes past Adam's normalization and is
  scaled by the learning rate, p -= lr * (adam_update + weight_decay * p),
  exactly as PyTorch's AdamW and fastai (`decouple_wd=True`). Bias
  corrections use the current beta1 (1 - beta1_t ** t), as PyTorch's Adam
  under a momentum-cycling scheduler.

  Both decay only `decay_mask` when config.decay_bn_and_bias is False.
  `inject_hyperparams` keeps the hyperparameters of the current step in the
  optimizer state, where the train step reads them for logging.
  """
  mask = None if config.decay_bn_and_bias else decay_mask
  if config.get("optimizer", "sgd") == "adamw":
    return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
      learning_rate=lr_fn,
      b1=momentum_fn,
      b2=config.adam_b2,
      eps=config.adam_eps,
      weight_decay=config.weight_decay,
      mask=mask,
    )
  return optax.chain(
    optax.add_decayed_weights(config.weight_decay, mask=mask),
    optax.inject_hyperparams(optax.sgd, static_args=("nesterov",))(
      learning_rate=lr_fn, momentum=momentum_fn, nesterov=config.nesterov
    ),
  )


def hyperparams(opt_state) -> dict:
  """The injected hyperparameters of a state: learning_rate and momentum
  (for AdamW, "momentum" is beta1, also under its own name "b1"), and
  AdamW's others (b2, eps, eps_root, weight_decay)."""
  for s in jax.tree.leaves(
    opt_state, is_leaf=lambda x: hasattr(x, "hyperparams")
  ):
    if hasattr(s, "hyperparams"):
      hp = dict(s.hyperparams)
      if "momentum" not in hp and "b1" in hp:
        hp["momentum"] = hp["b1"]
      return hp
  raise ValueError("optimizer state has no injected hyperparameters")


def replica_seeds(config) -> list[int]:
  """Seeds of the replicas a run trains: seed .. seed + num_parallel_seeds-1."""
  return [
    config.seed + k for k in range(int(config.get("num_parallel_seeds", 1)))
  ]


def _init_fn(config, model, image_shape, tx):
  """A function of the replicas' seeds (an int32 vector, `init_seeds`)
  that builds the initial train state.

  With several replicas (config.num_parallel_seeds > 1) every leaf gets a
  leading replica axis; replica k is the state a run with seed
  config.seed + k starts from. The seeds are an argument, not constants, so
  that one program serves every seed.
  """

  def init_one(seed):
    init_key = jax.random.fold_in(jax.random.key(seed), 0)
    variables = model.init(
      init_key, jnp.zeros((1,) + tuple(image_shape), jnp.float32), train=False
    )
    # Flax starts BatchNorm statistics in float32 whatever the parameters'
    # dtype, and the step updates them in that dtype: start float64 ones
    # (x64 tests) as float64, so the state's dtypes never change.
    dtype = jax.tree.leaves(variables["params"])[0].dtype
    state = TrainState.create(
      apply_fn=model.apply,
      params=variables["params"],
      batch_stats=jax.tree.map(
        lambda s: s.astype(jnp.promote_types(s.dtype, dtype)),
        variables["batch_stats"],
      ),
      tx=tx,
    )
    # A strongly typed step, like a restored one: fresh and resumed runs
    # then trace (and compile) the same train step.
    return state.replace(step=jnp.zeros((), jnp.int32))

  def init(seeds):
    if len(seeds) == 1:  # Static: a single run's state has no replica axis.
      return init_one(seeds[0])
    return jax.vmap(init_one)(seeds)

  return init


def init_seeds(config):
  """The replicas' seeds as the int32 vector `_init_fn`'s function takes
  (the same key bits as the Python ints: config.check keeps them below
  2**31)."""
  return np.asarray(replica_seeds(config), np.int32)


# The initialization runs once but its program (the model's forward pass
# and one random draw per parameter) takes LLVM's -O2 about 9 s to compile
# on a CPU for ResNet-20; -O1 takes 2 s and gives the same bits (measured
# for ResNet-20, -56 and -18 in float32, bfloat16 and float64;
# tests/test_train.py checks ResNet-8 in float32). Only on the CPU, whose
# compiler reads this option.
_CPU_INIT_OPTIONS = {"xla_backend_optimization_level": 1}


def create_train_state(config, model, image_shape, tx) -> TrainState:
  """Initial state from config.seed (identical on every host and device);
  stacked over replicas when config.num_parallel_seeds > 1."""
  options = _CPU_INIT_OPTIONS if jax.default_backend() == "cpu" else None
  init = jax.jit(
    _init_fn(config, model, image_shape, tx), compiler_options=options
  )
  return init(init_seeds(config))


def abstract_train_state(config, model, image_shape, tx) -> TrainState:
  """Shapes and dtypes of the train state, without computing anything."""
  return jax.eval_shape(
    _init_fn(config, model, image_shape, tx), init_seeds(config)
  )


# ============================================================================
# Per-device steps (mapped over the AXIS device axis)
# ============================================================================


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float):
  """Mean softmax cross-entropy, in float32 (float64 for float64 logits)."""
  dtype = jnp.promote_types(logits.dtype, jnp.float32)
  targets = jax.nn.one_hot(labels, num_classes, dtype=dtype)
  if label_smoothing > 0:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(dtype), targets)


def _keep_if_nonfinite(finite, new: TrainState, old: TrainState):
  """`new`, or where the step was not finite, `old`'s parameters, BatchNorm
  statistics and optimizer traces with `new`'s step and step counts (the
  integer leaves), so that data order and schedules still move on."""

  def pick(n, o):
    if jnp.issubdtype(n.dtype, jnp.integer):
      return n
    return jnp.where(finite, n, o)

  return jax.tree.map(pick, new, old)


def train_step(
  state: TrainState,
  images,
  labels,
  *,
  seed: int,
  aug: input_pipeline.Augmentation,
  num_classes: int,
  label_smoothing: float,
  num_shards: int,
  nan_at_step: int = -1,
):
  """One SGD step on this device's slice of the global batch of state.step.

  A step whose loss, gradients or new BatchNorm statistics are not finite
  changes no parameter, BatchNorm statistic or momentum (only the step and
  schedule counts move on) and reports metrics["nonfinite"] = 1; the host then
  stops or goes on (config.nonfinite_policy), so both policies run the same
  program and the state on device never holds the NaN. nan_at_step >= 0 (a
  testing hook) multiplies the loss of that 1-based step by NaN.
  """
  x, y = input_pipeline.train_batch(
    images,
    labels,
    state.step,
    seed=seed,
    aug=aug,
    shard_index=jax.lax.axis_index(AXIS),
    num_shards=num_shards,
  )
  return step_on_batch(
    state,
    x,
    y,
    num_classes=num_classes,
    label_smoothing=label_smoothing,
    nan_at_step=nan_at_step,
  )


def _all_finite(tree):
  """A scalar bool: no NaN/Inf in any leaf of `tree`."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def step_on_batch(
  state: TrainState,
  x,
  y,
  *,
  num_classes: int,
  label_smoothing: float,
  nan_at_step: int = -1,
):
  """The SGD step of `train_step` on this device's batch (x, y).

  x: normalized images in the compute dtype; y: int32 labels. Forward,
  backward, pmean over devices, update and the non-finite guard.
  """

  def loss_fn(params):
    logits, new_model_state = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    loss = cross_entropy(logits, y, num_classes, label_smoothing).mean()
    if nan_at_step >= 0:
      loss = loss * jnp.where(state.step + 1 == nan_at_step, jnp.nan, 1.0)
    return loss, (logits, new_model_state["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
    loss_fn, has_aux=True
  )(state.params)
  # Mean over devices = gradient of the global-batch mean loss.
  grads = jax.lax.pmean(grads, AXIS)
  loss = jax.lax.pmean(loss, AXIS)
  accuracy = jax.lax.pmean(jnp.mean(jnp.argmax(logits, -1) == y), AXIS)
  grad_norm = optax.tree.norm(grads)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  hp = hyperparams(new_state.opt_state)  # This step's learning rate.

  # The new BatchNorm statistics too (an infinite variance leaves loss and
  # gradients finite). They agree over devices (synchronized BN); the guard
  # must, so it takes the minimum over devices.
  stats_finite = jax.lax.pmin(_all_finite(batch_stats).astype(jnp.int32), AXIS)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & (stats_finite == 1)
  new_state = _keep_if_nonfinite(finite, new_state, state)
  metrics = {
    "train_loss": loss,
    "train_accuracy": accuracy,
    "grad_norm": grad_norm,
    "learning_rate": hp["learning_rate"],
    "momentum": hp["momentum"],
    "nonfinite": 1 - finite.astype(jnp.int32),
  }
  return new_state, metrics


def eval_step(
  state: TrainState, images, labels, mask, *, mean, std, dtype, num_classes: int
):
  """Sums of loss, correct predictions and real images over all batches.

  images: uint8 [batches, local_batch, H, W, C] on this device; mask marks
  real (1) and padding (0) images.
  """

  def one_batch(totals, batch):
    x, y, m = batch
    logits = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats},
      input_pipeline.normalize(x, mean, std, dtype),
      train=False,
    )
    loss = cross_entropy(logits, y, num_classes, 0.0)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return (
      totals[0] + jnp.sum(loss * m),
      totals[1] + jnp.sum(correct * m),
      totals[2] + jnp.sum(m),
    ), None

  zero = jnp.zeros((), jnp.promote_types(dtype, jnp.float32))
  totals, _ = jax.lax.scan(
    one_batch, (zero, zero, zero), (images, labels, mask)
  )
  return jax.lax.psum(totals, AXIS)


def _pmap(fn, *, donate_state: bool, in_axes=0):
  """The one place that maps a per-device function over the devices
  (`in_axes` as jax.pmap's: None for an argument every device shares)."""
  return jax.pmap(
    fn,
    axis_name=AXIS,
    in_axes=in_axes,
    donate_argnums=(0,) if donate_state else (),
  )


def unreplicate(tree):
  """This process's first local copy of a replicated (pmapped) pytree.

  Reads the shard on the first local device instead of indexing `x[0]`:
  with several processes `x[0]` is a computation over every device in the
  job, which each process would have to launch in the same order, and which
  deadlocks against Orbax's own cross-process barriers.
  """

  def first(x):
    if isinstance(x, jax.Array):
      local = x.addressable_data(0)  # One device, no cross-process work.
      return local[0] if local.ndim == x.ndim else local
    return x[0]

  return jax.tree.map(first, tree)


# ============================================================================
# The run
# ============================================================================


class NonFiniteError(RuntimeError):
  """Loss, gradients or BatchNorm statistics became NaN/Inf (the message
  says where)."""


def nonfinite_quantity(metrics: dict) -> str:
  """What made a step non-finite, from its (host) metrics: the loss, else
  the gradients, else (both finite) the BatchNorm statistics."""
  if not np.isfinite(metrics["train_loss"]):
    return "loss"
  if not np.isfinite(metrics["grad_norm"]):
    return "gradients"
  return "BatchNorm statistics"


def lock_workdir(workdir: str, program: str):
  """Takes the workdir's lock (lock.py) before anything is written there.

  Only process 0 writes the run's own files, so only process 0 takes the
  lock; with several processes, all of them learn whether it did, and all
  raise lock.LockError (exit 2) if not, instead of waiting for process 0
  in a collective. The lock is held until the process exits.
  """
  error, held = None, None
  if jax.process_index() == 0:
    try:
      held = lock.acquire(workdir, program)
    except lock.LockError as e:
      error = e
  if jax.process_count() > 1:
    taken = multihost_utils.broadcast_one_to_all(np.int32(error is None))
    if not int(taken) and error is None:
      error = lock.LockError(
        f"--workdir: {storage.absolute(workdir)}: process 0 could not lock"
        " it (its error names the holder)"
      )
  if error is not None:
    raise error
  return held


class Interrupted(Exception):
  """SIGTERM/SIGINT stopped the run after a checkpoint of `step` was saved."""

  def __init__(self, signum: int, step: int):
    self.signum, self.step = signum, step
    super().__init__(
      f"stopped by {signal.Signals(signum).name} at step {step} after"
      " saving its checkpoint; run the same command to resume"
    )

  @property
  def exit_status(self) -> int:
    """128 + the signal number, as a shell reports a signalled process."""
    return 128 + self.signum


class _StopSignals:
  """Turns the first SIGTERM/SIGINT into a request to stop; a second one
  ends the process at once.

  The first signal is only recorded: the loop acts on it at the next step
  boundary. A second one ends the process at once with status 128 + its
  number and one line on stderr, no traceback, even while the main thread
  is inside a long C++ call such as XLA's compiler, where Python runs no
  signal handler until the call returns: `signal.set_wakeup_fd` makes
  Python's C-level handler write each signal's number to a pipe, and a
  watcher thread reading it (the compiler releases the GIL) calls
  `os._exit`. Like kill -9, that loses the steps since the last complete
  checkpoint: a half-written one is never restored. Only the main thread
  can install handlers; elsewhere this does nothing.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None
    self._previous: dict = {}
    self._pipe: tuple[int, int] | None = None
    self._previous_wakeup = -1
    self._watcher: threading.Thread | None = None

  def __enter__(self):
    if threading.current_thread() is not threading.main_thread():
      return self
    for sig in self.SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    self._pipe = os.pipe()
    os.set_blocking(self._pipe[1], False)
    self._previous_wakeup = signal.set_wakeup_fd(
      self._pipe[1], warn_on_full_buffer=False
    )
    self._watcher = threading.Thread(
      target=self._watch, name="superconv-second-signal", daemon=True
    )
    self._watcher.start()
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signum is not None:
      self._exit_at_once(signum)
    self.signum = signum

  def _watch(self):
    """Counts the signals Python's C handler reports; exits at the second."""
    received = 0
    while True:
      for signum in os.read(self._pipe[0], 64):
        if signum == 0:  # __exit__'s stop byte.
          return
        if signum in self.SIGNALS:
          received += 1
          if received >= 2:
            self._exit_at_once(signum)

  def __exit__(self, *exc_info):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
    if self._pipe is not None:
      signal.set_wakeup_fd(self._previous_wakeup)
      os.write(self._pipe[1], b"\0")
      self._watcher.join()
      for fd in self._pipe:
        os.close(fd)
      self._pipe = None

  @staticmethod
  def _exit_at_once(signum: int) -> None:
    """Ends the process now with 128 + signum, as kill would: no cleanup."""
    name = signal.Signals(signum).name
    line = (
      f"superconv: {name} again: stopped at once; run the same command to"
      " resume from the last complete checkpoint\n"
    )
    os.write(2, line.encode())
    os._exit(128 + signum)  # pylint: disable=protected-access


DEBUG_SIGNAL_ENV = "SUPERCONV_DEBUG_SIGNAL_AT_STEP"


def _debug_signal() -> tuple[int | None, int]:
  """(step, signal) of the SUPERCONV_DEBUG_SIGNAL_AT_STEP testing hook."""
  value = os.environ.get(DEBUG_SIGNAL_ENV, "").strip()
  if not value:
    return None, signal.SIGTERM
  step, _, name = value.partition(":")
  try:
    return int(step), int(getattr(signal, name or "SIGTERM"))
  except (ValueError, AttributeError):
    raise ValueError(
      f"{DEBUG_SIGNAL_ENV}: expected STEP[:SIGNAME], e.g."
      f" 5:SIGINT, got {value!r}"
    ) from None


def config_to_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


class Evaluator:
  """Evaluates a replicated state on every test image exactly once."""

  def __init__(
    self,
    config,
    dataset: data_lib.Dataset,
    aug,
    eval_batch_size: int | None = None,
  ):
    """eval_batch_size (default config.eval_batch_size): a multiple of the
    (global) device count; padding images are masked out, so the result
    does not depend on it beyond float summation order.

    The padded test set is laid out over all devices of all processes; each
    process places only its own devices' rows (process-major, as pmap
    numbers them), so the psum counts every test image exactly once.
    """
    images, labels, mask = input_pipeline.eval_batches(
      dataset.test_images,
      dataset.test_labels,
      global_batch=eval_batch_size or config.eval_batch_size,
      num_devices=jax.device_count(),
    )
    self.num_images = int(mask.sum())
    local = jax.local_device_count()
    rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    self.images = input_pipeline.shard(images[rows])
    self.labels = input_pipeline.shard(labels[rows].astype(np.int32))
    self.mask = input_pipeline.shard(mask[rows])
    self.num_replicas = len(replica_seeds(config))
    step = functools.partial(
      eval_step,
      mean=aug.mean,
      std=aug.std,
      dtype=aug.dtype,
      num_classes=dataset.num_classes,
    )
    if self.num_replicas > 1:
      step = jax.vmap(step, in_axes=(0, None, None, None))
    self._step = _pmap(step, donate_state=False)

  def replicas(self, state) -> list[dict]:
    """Metrics of each replica of `state` (one for a single-seed run)."""
    totals = jax.device_get(
      unreplicate(self._step(state, self.images, self.labels, self.mask))
    )
    results = []
    for loss_sum, correct, count in np.stack(totals, -1).reshape(-1, 3):
      assert int(count) == self.num_images, (count, self.num_images)
      results.append(
        {
          "eval_loss": float(loss_sum / count),
          "eval_accuracy": float(correct / count),
          "eval_examples": int(count),
        }
      )
    return results

  def __call__(self, state) -> dict:
    """Metrics of a single-seed state."""
    if self.num_replicas != 1:
      raise ValueError("this state holds several replicas: use .replicas()")
    return self.replicas(state)[0]


@dataclasses.dataclass(frozen=True)
class Run:
  """What a run derives from (config, dataset), before any compilation."""

  steps_per_epoch: int
  total_steps: int
  lr_fn: optax.Schedule
  momentum_fn: optax.Schedule
  aug: input_pipeline.Augmentation
  model: Any
  tx: optax.GradientTransformation


def setup(config, dataset: data_lib.Dataset) -> Run:
  num_train = dataset.train_images.shape[0]
  spe = config_lib.steps_per_epoch(num_train, config.batch_size)
  total = config_lib.total_steps(config, num_train)
  lr_fn, momentum_fn = schedules.create(
    config.schedule,
    momentum=config.momentum,
    steps_per_epoch=spe,
    total_steps=total,
  )
  mean, std = dataset.channel_mean_std()
  aug = input_pipeline.Augmentation(
    global_batch=config.batch_size,
    steps_per_epoch=spe,
    mean=tuple(float(m) for m in mean),
    std=tuple(float(s) for s in std),
    crop_padding=config.crop_padding,
    random_flip=config.random_flip,
    dtype=config.dtype,
  )
  return Run(
    steps_per_epoch=spe,
    total_steps=total,
    lr_fn=lr_fn,
    momentum_fn=momentum_fn,
    aug=aug,
    model=models.from_config(config, dataset.num_classes, axis_name=AXIS),
    tx=make_optimizer(config, lr_fn, momentum_fn),
  )


def make_train_step(config, dataset, aug):
  """The pmapped train step: (state, images, labels) -> (state, metrics).

  With several replicas, `jax.vmap` maps the same step over the replica
  axis of the state and over the replicas' seeds (data order and
  augmentation), inside the one compiled program; metrics get a replica
  axis too.
  """
  step = functools.partial(
    train_step,
    aug=aug,
    num_classes=dataset.num_classes,
    label_smoothing=config.label_smoothing,
    num_shards=jax.device_count(),
    nan_at_step=int(config.get("debug_nan_at_step", -1)),
  )

  def seeds_step(state, images, labels, seeds):
    if len(seeds) == 1:  # Static: a single run's state has no replica axis.
      return step(state, images, labels, seed=seeds[0])
    return jax.vmap(lambda st, seed: step(st, images, labels, seed=seed))(
      state, seeds
    )

  # The seeds are an argument, not constants: one program serves every seed.
  p_step = _pmap(seeds_step, donate_state=True, in_axes=(0, 0, 0, None))
  seeds = init_seeds(config)
  return lambda state, images, labels: p_step(state, images, labels, seeds)


def replica_workdir(workdir: str, seed: int) -> str:
  """Where replica `seed` of a several-seed run logs (a run directory)."""
  return storage.join(workdir, f"seed={seed}")


def replica_config(config, seed: int):
  """The config of a separate run equal to replica `seed`."""
  one = ml_collections.ConfigDict(config_to_dict(config))
  one.seed = seed
  one.num_parallel_seeds = 1
  return one


def _train_row(
  fetched: list[dict],
  *,
  step: int,
  epoch: float,
  rate: float,
  batch_size: int,
  wall_time: float,
) -> dict:
  """The metrics row of `step` from the steps' metrics since the last row."""
  last = fetched[-1]
  return {
    "step": step,
    "epoch": epoch,
    "train_loss": float(np.mean([m["train_loss"] for m in fetched])),
    "train_accuracy": float(np.mean([m["train_accuracy"] for m in fetched])),
    "grad_norm": float(last["grad_norm"]),
    "learning_rate": float(last["learning_rate"]),
    "momentum": float(last["momentum"]),
    "nonfinite_steps": int(sum(int(m["nonfinite"]) for m in fetched)),
    "steps_per_sec": rate,
    "batch_size": batch_size,
    "examples_seen": step * batch_size,
    "wall_time": wall_time,
  }


def _every(step: int, period: int) -> bool:
  return period > 0 and step % period == 0


def run_meta(run: Run, dataset: data_lib.Dataset, config) -> dict:
  """What a checkpoint records beside the config (checkpoint.py: meta)."""
  return {
    "total_steps": run.total_steps,
    "steps_per_epoch": run.steps_per_epoch,
    "num_train_examples": int(dataset.train_images.shape[0]),
    "num_classes": dataset.num_classes,
    "image_shape": list(dataset.image_shape),
    "mean": list(run.aug.mean),
    "std": list(run.aug.std),
    "num_devices": jax.device_count(),
    "replica_seeds": replica_seeds(config),
  }


def _resume_check(config_dict: dict, total_steps: int, workdir: str):
  """check(saved_config, meta, step) for checkpoint.restore_latest: raises
  ConfigError naming the fields if resuming would change the trajectory."""

  def check(saved_config: dict, meta: dict, step: int) -> None:
    changes = checkpoint_lib.config_changes(
      saved_config,
      config_dict,
      saved_total_steps=meta.get("total_steps"),
      current_total_steps=total_steps,
    )
    if changes:
      raise config_lib.ConfigError(
        f"{', '.join(changes)}: differs from checkpoint {step} in"
        f" {checkpoint_lib.checkpoint_dir(workdir)} and would change the"
        " training trajectory; use a new --workdir or the checkpointed"
        " values (free to change on resume:"
        f" {', '.join(sorted(checkpoint_lib.RESUME_SAFE_KEYS))})"
      )

  return check


# ============================================================================
# The loop's pieces: when to act, the replicas' logs, the checkpoints
# ============================================================================


@dataclasses.dataclass(frozen=True)
class Cadence:
  """Which steps log, evaluate, save and sync (a pure rule of the step).

  Every period is in steps (0 = never); the last step always evaluates,
  saves and logs; a step that stops on a signal saves and logs. The steps
  that sync the host anyway (log, eval, checkpoint, last) are where
  several processes agree on a stop.
  """

  total: int
  log_every: int
  eval_every: int
  checkpoint_every: int

  @classmethod
  def from_config(cls, config, run: Run) -> Cadence:
    return cls(
      total=run.total_steps,
      log_every=config.log_every_steps,
      eval_every=config_lib.eval_every_steps(config, run.steps_per_epoch),
      checkpoint_every=config.checkpoint_every_steps,
    )

  def is_last(self, step: int) -> bool:
    return step == self.total

  def syncs(self, step: int) -> bool:
    return (
      _every(step, self.log_every)
      or self.is_last(step)
      or _every(step, self.checkpoint_every)
      or _every(step, self.eval_every)
    )

  def evaluates(self, step: int) -> bool:
    return _every(step, self.eval_every) or self.is_last(step)

  def saves(self, step: int, stopping: bool) -> bool:
    return _every(step, self.checkpoint_every) or self.is_last(step) or stopping

  def logs(self, step: int, stopping: bool) -> bool:
    return (
      _every(step, self.log_every)
      or self.saves(step, stopping)
      or self.evaluates(step)
    )


class ReplicaLogs:
  """The metrics streams of a run's replicas, and the steps not yet logged.

  One stream per replica: the workdir itself for a single seed,
  workdir/seed=<s>/ (with the config.json of a run with that seed) each.
  Device metrics wait in `pending` (no host sync) until `flush`.
  """

  def __init__(self, config, workdir: str, start_step: int, run: Run):
    is_chief = jax.process_index() == 0
    self.config, self.seeds = config, replica_seeds(config)
    self.spe = run.steps_per_epoch
    if len(self.seeds) == 1:
      dirs, labels = [workdir], [""]
    else:
      dirs = [replica_workdir(workdir, s) for s in self.seeds]
      labels = [f"seed {s}" for s in self.seeds]
      for seed, replica_dir in zip(self.seeds, dirs):
        storage.makedirs(replica_dir)
        write_config(replica_config(config, seed), replica_dir)
    self.writers = [
      metric_writer.MetricWriter(
        d, enabled=is_chief, resume_from_step=start_step
      )
      for d in dirs
    ]
    self.consoles = [
      metric_writer.Console(run.total_steps, enabled=is_chief, label=label)
      for label in labels
    ]
    previous = self.writers[0].previous_rows
    self.wall_offset = float(previous[-1]["wall_time"]) if previous else 0.0
    self.pending: list[dict] = []
    self.start_clock()

  def start_clock(self) -> None:
    """Wall time and steps/s count from now (the loop's start)."""
    self.start = time.time()
    self.restart_clock()

  def wall(self) -> float:
    return self.wall_offset + time.time() - self.start

  def restart_clock(self) -> None:
    """Steps from now on count toward the next row's steps/s."""
    self.interval_start, self.interval_steps = time.time(), 0

  def add(self, metrics) -> None:
    self.pending.append(metrics)
    self.interval_steps += 1

  def first_step_done(self, metrics) -> None:
    """After the first step: compile time is not training speed."""
    jax.block_until_ready(metrics)
    log.info(
      "Compiled and ran the first step in %.1fs.",
      time.time() - self.interval_start,
    )
    self.restart_clock()

  def _fetch(self) -> list[list[dict]]:
    """The pending metrics as [step][replica] -> dict of scalars."""
    fetched = jax.device_get([unreplicate(m) for m in self.pending])
    if len(self.seeds) == 1:
      return [[m] for m in fetched]
    return [
      [{k: v[r] for k, v in m.items()} for r in range(len(self.seeds))]
      for m in fetched
    ]

  def _check_finite(self, fetched, step: int, kept: str) -> None:
    if self.config.nonfinite_policy != "stop":
      return
    first_step = step - len(fetched) + 1
    for offset, per_replica in enumerate(fetched):
      for seed, m in zip(self.seeds, per_replica):
        if m["nonfinite"]:
          what = nonfinite_quantity(m)
          which = f" of seed {seed}" if len(self.seeds) > 1 else ""
          raise NonFiniteError(
            f"non-finite {what}{which} at step {first_step + offset}"
            f" (learning_rate={float(m['learning_rate']):.6g},"
            f" momentum={float(m['momentum']):.4g}); stopped"
            f" (nonfinite_policy='stop'), {kept}"
          )

  def flush(self, step: int, kept: str) -> None:
    """Fetches pending metrics; one row for `step`; stops on NaN/Inf.

    `kept`: what the NonFiniteError says of the checkpoints kept.
    """
    if not self.pending:
      return
    fetched = self._fetch()
    self._check_finite(fetched, step, kept)
    rate = self.interval_steps / max(time.time() - self.interval_start, 1e-9)
    self.pending.clear()
    self.restart_clock()
    for r, (writer, console) in enumerate(zip(self.writers, self.consoles)):
      row = _train_row(
        [per_replica[r] for per_replica in fetched],
        step=step,
        epoch=step / self.spe,
        rate=rate,
        batch_size=self.config.batch_size,
        wall_time=self.wall(),
      )
      writer.write(row)
      console.train(row)

  def evaluate(self, step: int, evaluator: Evaluator, state) -> list[dict]:
    """Evaluates every replica of `state`, logs and returns the metrics."""
    t0 = time.time()
    results = evaluator.replicas(state)
    seconds = time.time() - t0
    for result, writer, console in zip(results, self.writers, self.consoles):
      eval_row = {
        "step": step,
        "epoch": step / self.spe,
        "examples_seen": step * self.config.batch_size,
        "eval_seconds": seconds,
        **result,
        "wall_time": self.wall(),
      }
      writer.write(eval_row)
      console.eval(eval_row)
    self.interval_start = time.time()  # Eval time is not training speed.
    return results

  def sync(self) -> None:
    for writer in self.writers:
      writer.sync()

  def close(self) -> None:
    for writer in self.writers:
      writer.close()


class Checkpoints:
  """Saves a run's checkpoints (asynchronously) and knows the last one."""

  def __init__(self, config, workdir: str, meta: dict, last_saved):
    self.config_dict, self.meta = config_to_dict(config), meta
    self.last_saved = last_saved
    self.mngr = checkpoint_lib.manager(workdir, keep=config.keep_checkpoints)

  def kept(self) -> str:
    if self.last_saved is None:
      return "no checkpoint was saved"
    return f"checkpoint {self.last_saved} is the last one kept"

  def save(self, step: int, state, logs: ReplicaLogs) -> None:
    """Checkpoint of `step`; never of a non-finite state."""
    logs.sync()  # Rows up to `step` on disk before its checkpoint.
    try:
      checkpoint_lib.save(
        self.mngr, step, unreplicate(state), self.config_dict, self.meta
      )
    except checkpoint_lib.NonFiniteStateError as e:
      raise NonFiniteError(f"{e}; {self.kept()}") from None
    self.last_saved = step

  def close(self) -> None:
    """Waits for every asynchronous save to complete."""
    self.mngr.wait_until_finished()
    self.mngr.close()


def agreed_stop(stop_signal: _StopSignals, sync_point: bool) -> int | None:
  """The signal to stop with now, the same on every process, or None.

  One process acts on its own signal at the next step. Several processes
  must stop at the same step (each saves its part of the checkpoint, and
  one that trains on alone waits forever in a collective), so they agree
  at the steps where the loop syncs anyway (logging, evaluation,
  checkpoints): every process contributes the signal it received (0 for
  none) and all stop if any did.
  """
  local = stop_signal.signum
  if jax.process_count() == 1:
    return local
  if not sync_point:
    return None
  signals = multihost_utils.process_allgather(np.int32(local or 0))
  return int(np.max(signals)) or None


def _stop(stop_signal: _StopSignals, signum: int, step: int):
  log.warning(
    "%s %s: saved checkpoint %d; stopping.",
    "Received" if stop_signal.signum else "Another process received",
    signal.Signals(signum).name,
    step,
  )
  raise Interrupted(signum, step)


def restore_or_init(config, workdir: str, run: Run, dataset):
  """The run's state (replicated) and start step, and the restored step.

  Restores the latest complete checkpoint (refusing one whose config would
  change the trajectory: nothing is written before), or initializes; then
  writes config.json and sets incomplete checkpoints aside.
  """
  image_shape = dataset.train_images.shape[1:]
  restored, incomplete = checkpoint_lib.restore_latest(
    workdir,
    abstract_train_state(config, run.model, image_shape, run.tx),
    check=_resume_check(config_to_dict(config), run.total_steps, workdir),
  )
  storage.makedirs(workdir)
  write_config(config, workdir)
  checkpoint_lib.set_aside(workdir, incomplete)
  if restored is not None:
    state = restored.state
    log.info("Resumed from checkpoint %d.", restored.step)
  else:
    state = create_train_state(config, run.model, image_shape, run.tx)
  start_step = int(np.ravel(state.step)[0])  # The same for every replica.
  if jax.process_count() > 1:
    # A barrier: no process scans the checkpoint directory (manager) before
    # process 0 has set incomplete checkpoints aside, and all resume alike.
    multihost_utils.assert_equal(
      np.int32(start_step), "processes restored different checkpoints"
    )
  last_saved = start_step if restored is not None else None
  return input_pipeline.replicate_tree(state), start_step, last_saved


# ============================================================================
# The loop
# ============================================================================


def train_and_evaluate(
  config, workdir: str, dataset: data_lib.Dataset
) -> list[dict]:
  """Trains (resuming from the latest checkpoint), evaluates, logs.

  Returns the last evaluation's metrics, one dict per replica, each with its
  "seed". Raises config.ConfigError (before anything is written) when a
  resume would change the trajectory, NonFiniteError on NaN/Inf (policy
  "stop"), Interrupted after SIGTERM/SIGINT once the checkpoint is saved
  (a signal while starting up takes effect after the first step; with
  several processes, a signal to any stops all together at the next log,
  eval or checkpoint step).
  """
  with _StopSignals() as stop_signal:
    # --- Setup: state restored or fresh, logs, data on device, steps -----
    run = setup(config, dataset)
    cadence = Cadence.from_config(config, run)
    state, start_step, last_saved = restore_or_init(
      config, workdir, run, dataset
    )
    meta = run_meta(run, dataset, config)
    checkpoints = Checkpoints(config, workdir, meta, last_saved)
    logs = ReplicaLogs(config, workdir, start_step, run)
    images = input_pipeline.replicate(dataset.train_images)
    labels = input_pipeline.replicate(dataset.train_labels.astype(np.int32))
    p_train_step = make_train_step(config, dataset, run.aug)
    evaluator = Evaluator(config, dataset, run.aug)
    debug_step, debug_signal = _debug_signal()
    last_eval: list[dict] = []

    # --- Loop -------------------------------------------------------------
    logs.start_clock()
    try:
      if start_step >= run.total_steps:  # Complete: report, change nothing.
        last_eval = evaluator.replicas(state)
      for step in range(start_step + 1, run.total_steps + 1):
        state, metrics = p_train_step(state, images, labels)
        logs.add(metrics)
        if step == start_step + 1:
          logs.first_step_done(metrics)
        if step == debug_step:
          os.kill(os.getpid(), debug_signal)
        signum = None
        if not cadence.is_last(step):
          signum = agreed_stop(stop_signal, cadence.syncs(step))
        stopping = signum is not None
        if cadence.logs(step, stopping):
          logs.flush(step, checkpoints.kept())
        if cadence.evaluates(step):
          last_eval = logs.evaluate(step, evaluator, state)
        if cadence.saves(step, stopping):
          checkpoints.save(step, state, logs)
        if stopping:
          _stop(stop_signal, signum, step)
    finally:
      # Every asynchronous save completes before returning or raising.
      checkpoints.close()
      logs.close()
  return [{"seed": s, **r} for s, r in zip(replica_seeds(config), last_eval)]


def write_config(config, workdir: str) -> None:
  """workdir/config.json: the resolved config of the run (process 0)."""
  if jax.process_index() != 0:
    return
  storage.write_text(
    storage.join(workdir, "config.json"),
    json.dumps(config_to_dict(config), indent=2, sort_keys=True) + "\n",
  )
