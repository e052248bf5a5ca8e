"""Training and evaluation: state, pmapped steps, and the loop.

Reads top to bottom: the train state and optimizer, the per-device train
and eval steps, then `train_and_evaluate(config, workdir)`. The one
`jax.pmap` call lives in `_pmap`, so a move to `jax.jit` + `shard_map` is a
local change.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state as flax_train_state

from superconv import checkpoint as checkpoint_lib
from superconv import config as config_lib
from superconv import data as data_lib
from superconv import input_pipeline
from superconv import metric_writer
from superconv import models
from superconv import schedules

log = logging.getLogger("superconv")
AXIS = input_pipeline.AXIS


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
      lambda path, _: path[-1].key == "kernel", params)


def make_optimizer(config, lr_fn, momentum_fn) -> optax.GradientTransformation:
  """L2 on the gradient, then SGD whose lr and momentum are scheduled.

  `inject_hyperparams` keeps the learning rate and momentum of the current
  step in the optimizer state, where the train step reads them for logging.
  """
  mask = None if config.decay_bn_and_bias else decay_mask
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=mask),
      optax.inject_hyperparams(optax.sgd, static_args=("nesterov",))(
          learning_rate=lr_fn, momentum=momentum_fn,
          nesterov=config.nesterov))


def hyperparams(opt_state) -> dict:
  """The injected hyperparameters (learning_rate, momentum) of a state."""
  for s in jax.tree.leaves(
      opt_state, is_leaf=lambda x: hasattr(x, "hyperparams")):
    if hasattr(s, "hyperparams"):
      return s.hyperparams
  raise ValueError("optimizer state has no injected hyperparameters")


def create_model(config, num_classes: int):
  return models.create_model(
      config.model, num_classes=num_classes, dtype=jnp.dtype(config.dtype),
      bn_momentum=config.bn_momentum, bn_epsilon=config.bn_epsilon,
      shortcut=config.shortcut, axis_name=AXIS)


def create_train_state(config, model, image_shape, tx) -> TrainState:
  """Initial state from config.seed (identical on every host and device)."""
  init_key = jax.random.fold_in(jax.random.key(config.seed), 0)

  @jax.jit
  def init():
    variables = model.init(init_key, jnp.zeros((1,) + tuple(image_shape),
                                               jnp.float32), train=False)
    return TrainState.create(
        apply_fn=model.apply, params=variables["params"],
        batch_stats=variables["batch_stats"], tx=tx)

  return init()


# ============================================================================
# Per-device steps (mapped over the AXIS device axis)
# ============================================================================


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float):
  """Mean softmax cross-entropy, in float32."""
  targets = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
  if label_smoothing > 0:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def train_step(state: TrainState, images, labels, *, seed: int,
               aug: input_pipeline.Augmentation, num_classes: int,
               label_smoothing: float, num_shards: int,
               skip_nonfinite: bool):
  """One SGD step on this device's slice of the global batch of state.step."""
  x, y = input_pipeline.train_batch(
      images, labels, state.step, seed=seed, aug=aug,
      shard_index=jax.lax.axis_index(AXIS), num_shards=num_shards)

  def loss_fn(params):
    logits, new_model_state = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, x, train=True,
        mutable=["batch_stats"])
    loss = cross_entropy(logits, y, num_classes, label_smoothing).mean()
    return loss, (logits, new_model_state["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.params)
  # Mean over devices = gradient of the global-batch mean loss.
  grads = jax.lax.pmean(grads, AXIS)
  loss = jax.lax.pmean(loss, AXIS)
  accuracy = jax.lax.pmean(jnp.mean(jnp.argmax(logits, -1) == y), AXIS)
  grad_norm = optax.tree.norm(grads)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)

  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  if skip_nonfinite:
    # Keep the old parameters and statistics, but advance the step so the
    # data order and schedule move on.
    new_state = jax.tree.map(
        lambda new, old: jnp.where(finite, new, old), new_state,
        state.replace(step=new_state.step))
  hp = hyperparams(new_state.opt_state)
  metrics = {
      "train_loss": loss,
      "train_accuracy": accuracy,
      "grad_norm": grad_norm,
      "learning_rate": hp["learning_rate"],
      "momentum": hp["momentum"],
      "nonfinite": 1 - finite.astype(jnp.int32),
  }
  return new_state, metrics


def eval_step(state: TrainState, images, labels, mask, *, mean, std, dtype,
              num_classes: int):
  """Sums of loss, correct predictions and real images over all batches.

  images: uint8 [batches, local_batch, H, W, C] on this device; mask marks
  real (1) and padding (0) images.
  """

  def one_batch(totals, batch):
    x, y, m = batch
    logits = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats},
        input_pipeline.normalize(x, mean, std, dtype), train=False)
    loss = cross_entropy(logits, y, num_classes, 0.0)
    correct = (jnp.argmax(logits, -1) == y).astype(jnp.float32)
    return (totals[0] + jnp.sum(loss * m), totals[1] + jnp.sum(correct * m),
            totals[2] + jnp.sum(m)), None

  zero = jnp.zeros((), jnp.float32)
  totals, _ = jax.lax.scan(one_batch, (zero, zero, zero),
                           (images, labels, mask))
  return jax.lax.psum(totals, AXIS)


def _pmap(fn, *, donate_state: bool):
  """The one place that maps a per-device function over the devices."""
  return jax.pmap(fn, axis_name=AXIS,
                  donate_argnums=(0,) if donate_state else ())


def unreplicate(tree):
  """First device's copy of a replicated pytree."""
  return jax.tree.map(lambda x: x[0], tree)


# ============================================================================
# The run
# ============================================================================


class NonFiniteError(RuntimeError):
  """Loss or gradients became NaN/Inf (the message says where)."""


def config_to_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


class Evaluator:
  """Evaluates a replicated state on every test image exactly once."""

  def __init__(self, config, dataset: data_lib.Dataset, aug):
    images, labels, mask = input_pipeline.eval_batches(
        dataset.test_images, dataset.test_labels,
        global_batch=config.eval_batch_size,
        num_devices=jax.local_device_count())
    self.num_images = int(mask.sum())
    self.images = input_pipeline.shard(images)
    self.labels = input_pipeline.shard(labels.astype(np.int32))
    self.mask = input_pipeline.shard(mask)
    self._step = _pmap(functools.partial(
        eval_step, mean=aug.mean, std=aug.std, dtype=aug.dtype,
        num_classes=dataset.num_classes), donate_state=False)

  def __call__(self, state) -> dict:
    loss_sum, correct, count = jax.device_get(
        unreplicate(self._step(state, self.images, self.labels, self.mask)))
    assert int(count) == self.num_images, (count, self.num_images)
    return {"eval_loss": float(loss_sum / count),
            "eval_accuracy": float(correct / count),
            "eval_examples": int(count)}


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
      config.schedule, momentum=config.momentum, steps_per_epoch=spe,
      total_steps=total)
  mean, std = dataset.channel_mean_std()
  aug = input_pipeline.Augmentation(
      global_batch=config.batch_size, steps_per_epoch=spe,
      mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std),
      crop_padding=config.crop_padding, random_flip=config.random_flip,
      dtype=config.dtype)
  return Run(steps_per_epoch=spe, total_steps=total, lr_fn=lr_fn,
             momentum_fn=momentum_fn, aug=aug,
             model=create_model(config, dataset.num_classes),
             tx=make_optimizer(config, lr_fn, momentum_fn))


def make_train_step(config, dataset, aug):
  return _pmap(functools.partial(
      train_step, seed=config.seed, aug=aug, num_classes=dataset.num_classes,
      label_smoothing=config.label_smoothing,
      num_shards=jax.device_count(),
      skip_nonfinite=config.nonfinite_policy == "skip"),
      donate_state=True)


def _every(step: int, period: int) -> bool:
  return period > 0 and step % period == 0


def train_and_evaluate(config, workdir: str,
                       dataset: data_lib.Dataset) -> dict:
  """Trains (resuming from the latest checkpoint), evaluates, logs.

  Returns the last evaluation's metrics.
  """
  is_chief = jax.process_index() == 0
  run = setup(config, dataset)
  aug, total = run.aug, run.total_steps
  spe = run.steps_per_epoch
  eval_every = max(1, int(round(config.eval_every_epochs * spe)))

  # --- State: fresh or restored --------------------------------------------
  state = create_train_state(config, run.model,
                             dataset.train_images.shape[1:], run.tx)
  config_dict = config_to_dict(config)
  mngr = checkpoint_lib.manager(workdir, keep=config.keep_checkpoints)
  restored = checkpoint_lib.restore(mngr, state)
  if restored is not None:
    state, _ = restored
    log.info("Resumed from step %d.", int(state.step))
  start_step = int(state.step)
  state = flax.jax_utils.replicate(state)

  writer = metric_writer.MetricWriter(workdir, enabled=is_chief,
                                      resume_from_step=start_step)
  console = metric_writer.Console(total, enabled=is_chief)
  previous = writer.previous_rows
  wall_offset = float(previous[-1]["wall_time"]) if previous else 0.0

  # --- Data on device, compiled steps ---------------------------------------
  images = input_pipeline.replicate(dataset.train_images)
  labels = input_pipeline.replicate(dataset.train_labels.astype(np.int32))
  p_train_step = make_train_step(config, dataset, aug)
  evaluate = Evaluator(config, dataset, aug)

  # --- Loop ----------------------------------------------------------------
  start = time.time()
  interval_start, interval_steps = time.time(), 0
  pending: list[dict] = []  # Device metrics not yet fetched (no host sync).
  last_eval: dict = {}

  def wall() -> float:
    return wall_offset + time.time() - start

  def flush(step: int) -> None:
    """Fetches pending metrics; one row for `step`; stops on NaN/Inf."""
    nonlocal interval_start, interval_steps
    if not pending:
      return
    fetched = jax.device_get([unreplicate(m) for m in pending])
    first_step = step - len(fetched) + 1
    for offset, m in enumerate(fetched):
      if m["nonfinite"] and config.nonfinite_policy == "stop":
        bad = first_step + offset
        raise NonFiniteError(
            f"non-finite {'loss' if not np.isfinite(m['train_loss']) else 'gradients'}"
            f" at step {bad} (learning_rate={float(m['learning_rate']):.6g},"
            f" momentum={float(m['momentum']):.4g}); the last checkpoint"
            " before it is kept")
    now = time.time()
    rate = interval_steps / max(now - interval_start, 1e-9)
    last = fetched[-1]
    row = {
        "step": step,
        "epoch": step / spe,
        "train_loss": float(np.mean([m["train_loss"] for m in fetched])),
        "train_accuracy": float(np.mean([m["train_accuracy"]
                                         for m in fetched])),
        "grad_norm": float(last["grad_norm"]),
        "learning_rate": float(last["learning_rate"]),
        "momentum": float(last["momentum"]),
        "nonfinite_steps": int(sum(int(m["nonfinite"]) for m in fetched)),
        "steps_per_sec": rate,
        "batch_size": config.batch_size,
        "examples_seen": step * config.batch_size,
        "wall_time": wall(),
    }
    pending.clear()
    interval_start, interval_steps = now, 0
    writer.write(row)
    console.train(row)

  try:
    if start_step >= total:  # Already complete: report, change nothing.
      last_eval = evaluate(state)
    for step in range(start_step + 1, total + 1):
      state, metrics = p_train_step(state, images, labels)
      pending.append(metrics)
      interval_steps += 1
      if step == start_step + 1:  # Compile time is not training speed.
        jax.block_until_ready(metrics)
        log.info("Compiled and ran the first step in %.1fs.",
                 time.time() - interval_start)
        interval_start, interval_steps = time.time(), 0
      is_last = step == total
      save_now = _every(step, config.checkpoint_every_steps) or is_last
      eval_now = _every(step, eval_every) or is_last
      if _every(step, config.log_every_steps) or save_now or eval_now:
        flush(step)
      if eval_now:
        t0 = time.time()
        last_eval = evaluate(state)
        eval_row = {"step": step, "epoch": step / spe,
                    "examples_seen": step * config.batch_size,
                    "eval_seconds": time.time() - t0, **last_eval,
                    "wall_time": wall()}
        writer.write(eval_row)
        console.eval(eval_row)
        interval_start = time.time()  # Eval time is not training speed.
      if save_now:
        checkpoint_lib.save(mngr, step, unreplicate(state), config_dict)
  finally:
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
  return last_eval


def write_config(config, workdir: str) -> None:
  """workdir/config.json: the resolved config of the run (process 0)."""
  if jax.process_index() != 0:
    return
  path = os.path.join(workdir, "config.json")
  with open(path + ".tmp", "w") as f:
    json.dump(config_to_dict(config), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(path + ".tmp", path)

