"""The configuration schema: every field, its default and its meaning.

Experiment files in `configs/` start from `base_config()` and override only
what differs. `validate()` checks a resolved config once, before anything is
compiled or written; every error names the offending key and what would be
valid. `steps()` is the one place where durations in epochs or fractions of
the run become steps.
"""

from __future__ import annotations

import jax
import ml_collections

from superconv import batchnorm as bn_lib
from superconv import conv as conv_lib
from superconv import data as data_lib
from superconv import models, schedules


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all experiments (each field commented)."""
  c = ml_collections.ConfigDict()

  # --- Reproducibility -----------------------------------------------------
  c.seed = 0  # Seeds the initialization, data order and augmentation.
  # Train K independent replicas in one program, seeds seed .. seed+K-1
  # (each its own init, data order, augmentation; results equal K separate
  # runs). Each replica logs to workdir/seed=<s>/; one checkpoint holds all.
  c.num_parallel_seeds = 1

  # --- Data ----------------------------------------------------------------
  # cifar10 | cifar100 (the original archives, downloaded into cache_dir) |
  # cifar:<their .tar.gz or dir> | tfds:cifar10 | tfds:cifar100 |
  # folder:<dir or .tar[.gz|.xz]> | synthetic (see superconv/data.py)
  c.dataset = "tfds:cifar10"
  # TFDS data directory ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets).
  c.data_dir = ""
  # Decoded-folder cache ("" = $SUPERCONV_CACHE_DIR or ~/.cache/superconv).
  c.cache_dir = ""
  c.tfds_download = True  # Let tfds download (and prepare) a missing dataset.
  c.synthetic_train_size = 1024  # Images in the synthetic train split.
  c.synthetic_test_size = 256  # Images in the synthetic test split.
  # Hold out this many train images (the last of a fixed seed-0 permutation)
  # and evaluate on them instead of the test set: for tuning (0 = off).
  c.validation_size = 0
  # Zero padding before the random crop (He et al.); 0 = no crop.
  c.crop_padding = 4
  c.random_flip = True  # Random horizontal flip.

  # --- Model ---------------------------------------------------------------
  c.model = "resnet56"  # One of superconv.models.MODEL_NAMES.
  # CIFAR ResNets: A = parameter-free zero padding, B = 1x1 projection.
  c.shortcut = "A"
  # Compute dtype: bfloat16 | float32 (params and BN stats stay float32).
  # float64 (params too) needs JAX_ENABLE_X64=1; the tests use it to check
  # that two computations are the same algorithm, free of float32 rounding.
  c.dtype = "bfloat16"
  # BatchNorm moving-average factor (Caffe moving_average_fraction).
  c.bn_momentum = 0.9
  c.bn_epsilon = 1e-5  # BatchNorm epsilon.
  # Convolution: auto | xla | chunked. 'chunked' computes each weight
  # gradient in cache-sized batch chunks (2-3x faster on XLA:CPU, see
  # superconv/conv.py); 'auto' = chunked on CPU, XLA's own elsewhere. Same
  # values up to float summation order, so it may change on resume.
  c.conv_impl = "auto"
  # BatchNorm: auto | flax | fused. 'fused' computes BN, the residual add
  # and ReLU with a hand-derived backward (faster on XLA:CPU, see
  # superconv/batchnorm.py); 'auto' = fused on CPU, flax's elsewhere. Same
  # values up to float summation order, so it may change on resume.
  c.bn_impl = "auto"

  # --- Duration and batch --------------------------------------------------
  # Global batch over all devices (must divide by the device count).
  c.batch_size = 128
  c.num_epochs = 0.0  # Training length in epochs (used when num_steps == 0).
  c.num_steps = 0  # Training length in steps; overrides num_epochs when > 0.
  # Global evaluation batch (the last batch is padded and masked).
  c.eval_batch_size = 1000

  # --- Optimizer ------------------------------------------------------------
  # sgd: SGD with momentum, L2 weight decay added to the gradient (Caffe,
  # PyTorch SGD). adamw: optax.adamw (PyTorch AdamW), decoupled decay.
  c.optimizer = "sgd"
  # Momentum when the schedule does not cycle it; for adamw this is beta1
  # (PyTorch Adam's betas[0], 0.9; a cycling schedule cycles it between
  # schedule.max_momentum and base_momentum, as OneCycleLR does for Adam).
  c.momentum = 0.9
  c.nesterov = False  # Nesterov momentum (sgd only).
  # sgd: L2 added to the gradient. adamw: decoupled and scaled by the LR,
  # p -= lr * weight_decay * p (PyTorch AdamW; fastai's default is 1e-2).
  c.weight_decay = 1e-4
  # Whether BatchNorm scales/offsets and biases decay too (PyTorch: yes;
  # fastai: wd_bn_bias=False).
  c.decay_bn_and_bias = True
  # adamw only: beta2 and eps (added outside the square root), PyTorch's
  # defaults. fastai's Adam uses sqr_mom 0.99 and eps 1e-5.
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8
  c.label_smoothing = 0.0  # Label smoothing of the cross-entropy targets.
  # NaN/Inf loss or gradients: "stop" (exit non-zero, keep the last good
  # checkpoint) or "skip" (leave the state unchanged, count the step).
  c.nonfinite_policy = "stop"
  # Testing hook: multiply the loss of this step (1-based) by NaN, so loss
  # and gradients go non-finite there; -1 = off. Never set in experiments.
  c.debug_nan_at_step = -1

  # --- Learning-rate and momentum schedule ---------------------------------
  c.schedule = schedules.default_schedule_config()

  # --- Logging, evaluation, checkpoints -------------------------------------
  c.log_every_steps = 50  # Train metrics row (and console line) every N steps.
  # Test-set evaluation every N epochs (and at the end).
  c.eval_every_epochs = 1.0
  # Orbax checkpoint every N steps (and at the end).
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3  # Checkpoints kept (the final one always).
  return c


DURATION_KEYS = ("num_epochs", "num_steps")
OPTIMIZERS = ("sgd", "adamw")  # Values of config.optimizer.


def steps_per_epoch(num_train_examples: int, batch_size: int) -> int:
  """Full batches per epoch: floor(train examples / global batch)."""
  return num_train_examples // batch_size


def steps(
  value: float,
  unit: str,
  *,
  steps_per_epoch: int,
  total_steps: int | None = None,
) -> int:
  """Converts a duration to steps; `unit` is 'steps', 'epochs' or 'fraction'.

  The one helper for every duration in a config, so a schedule given in
  epochs and one given in steps land on the same step boundaries.
  """
  if unit == "steps":
    return int(value)
  if unit == "epochs":
    return int(round(value * steps_per_epoch))
  if unit == "fraction":
    if total_steps is None:
      raise ValueError("a fraction of the run needs total_steps")
    return int(round(value * total_steps))
  raise ValueError(f"unit must be steps, epochs or fraction, not {unit!r}")


def total_steps(config, num_train_examples: int) -> int:
  """Number of training steps of a run."""
  if config.num_steps > 0:
    return int(config.num_steps)
  spe = steps_per_epoch(num_train_examples, config.batch_size)
  return steps(config.num_epochs, "epochs", steps_per_epoch=spe)


def _check(condition: bool, key: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"{key}: {message}")


def validate_static(config, *, num_devices: int) -> None:
  """Checks everything that needs no data: run before anything is loaded."""
  _check(
    isinstance(config.seed, int) and config.seed >= 0,
    "seed",
    f"must be a non-negative integer, got {config.seed!r}",
  )
  try:
    data_lib.check_spec(config.dataset, data_dir=config.data_dir or None)
  except data_lib.DataError as e:
    raise ConfigError(str(e)) from None
  _check(
    config.model in models.MODEL_NAMES,
    "model",
    f"unknown {config.model!r}; valid: {', '.join(models.MODEL_NAMES)}",
  )
  _check(
    config.shortcut in ("A", "B"),
    "shortcut",
    f"must be 'A' or 'B', got {config.shortcut!r}",
  )
  _check(
    config.dtype in ("bfloat16", "float32", "float64"),
    "dtype",
    f"must be 'bfloat16' or 'float32' (or 'float64' with"
    f" JAX_ENABLE_X64=1), got {config.dtype!r}",
  )
  _check(
    config.dtype != "float64" or jax.config.jax_enable_x64,
    "dtype",
    "float64 needs JAX_ENABLE_X64=1",
  )
  _check(
    0.0 <= config.bn_momentum < 1.0,
    "bn_momentum",
    f"must be in [0, 1), got {config.bn_momentum}",
  )
  _check(config.bn_epsilon > 0, "bn_epsilon", "must be > 0")
  _check(
    config.conv_impl in conv_lib.CONV_IMPLS,
    "conv_impl",
    f"unknown {config.conv_impl!r}; valid: {', '.join(conv_lib.CONV_IMPLS)}",
  )
  _check(
    config.bn_impl in bn_lib.BN_IMPLS,
    "bn_impl",
    f"unknown {config.bn_impl!r}; valid: {', '.join(bn_lib.BN_IMPLS)}",
  )
  _check(
    config.batch_size > 0,
    "batch_size",
    f"must be positive, got {config.batch_size}",
  )
  _check(
    config.batch_size % num_devices == 0,
    "batch_size",
    f"{config.batch_size} is not divisible by the {num_devices} devices;"
    f" use a multiple of {num_devices}",
  )
  _check(
    config.eval_batch_size > 0 and config.eval_batch_size % num_devices == 0,
    "eval_batch_size",
    f"must be a positive multiple of the {num_devices} devices,"
    f" got {config.eval_batch_size}",
  )
  _check(
    config.num_epochs >= 0,
    "num_epochs",
    f"must be >= 0, got {config.num_epochs}",
  )
  _check(
    config.num_steps >= 0, "num_steps", f"must be >= 0, got {config.num_steps}"
  )
  _check(
    config.num_steps > 0 or config.num_epochs > 0,
    "num_epochs",
    "set num_epochs > 0 or num_steps > 0",
  )
  _check(config.crop_padding >= 0, "crop_padding", "must be >= 0")
  _check(
    0.0 <= config.momentum < 1.0,
    "momentum",
    f"must be in [0, 1), got {config.momentum}",
  )
  _check(
    config.optimizer in OPTIMIZERS,
    "optimizer",
    f"unknown {config.optimizer!r}; valid: {', '.join(OPTIMIZERS)}",
  )
  if config.optimizer == "adamw":
    _check(
      not config.nesterov,
      "nesterov",
      "is for optimizer='sgd' only; AdamW here has no Nesterov variant,"
      " set nesterov=False",
    )
  _check(
    0.0 <= config.adam_b2 < 1.0,
    "adam_b2",
    f"must be in [0, 1), got {config.adam_b2}",
  )
  _check(config.adam_eps > 0, "adam_eps", f"must be > 0, got {config.adam_eps}")
  _check(
    config.nonfinite_policy in ("stop", "skip"),
    "nonfinite_policy",
    f"must be 'stop' or 'skip', got {config.nonfinite_policy!r}",
  )
  _check(
    isinstance(config.debug_nan_at_step, int)
    and (config.debug_nan_at_step == -1 or config.debug_nan_at_step >= 1),
    "debug_nan_at_step",
    f"must be -1 (off) or a step >= 1, got {config.debug_nan_at_step!r}",
  )
  _check(config.weight_decay >= 0, "weight_decay", "must be >= 0")
  _check(
    0.0 <= config.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)"
  )
  _check(config.synthetic_train_size > 0, "synthetic_train_size", "must be > 0")
  _check(config.synthetic_test_size > 0, "synthetic_test_size", "must be > 0")
  _check(
    isinstance(config.validation_size, int) and config.validation_size >= 0,
    "validation_size",
    f"must be a non-negative integer, got {config.validation_size!r}",
  )
  _check(
    isinstance(config.num_parallel_seeds, int)
    and config.num_parallel_seeds >= 1,
    "num_parallel_seeds",
    f"must be an integer >= 1, got {config.num_parallel_seeds!r}",
  )
  _check(config.log_every_steps > 0, "log_every_steps", "must be > 0")
  _check(config.eval_every_epochs > 0, "eval_every_epochs", "must be > 0")
  _check(
    config.checkpoint_every_steps > 0, "checkpoint_every_steps", "must be > 0"
  )
  _check(config.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")


def validate_with_data(config, *, num_train_examples: int) -> None:
  """Checks what depends on the dataset size (durations, schedule)."""
  spe = steps_per_epoch(num_train_examples, config.batch_size)
  _check(
    spe >= 1,
    "batch_size",
    f"{config.batch_size} exceeds the {num_train_examples} training examples",
  )
  n = total_steps(config, num_train_examples)
  _check(n >= 1, "num_epochs", f"gives {n} steps; must give at least one")
  try:
    schedules.validate(config.schedule, steps_per_epoch=spe, total_steps=n)
  except schedules.ScheduleError as e:
    raise ConfigError(str(e)) from None
