"""The configuration schema: every field, its default and its meaning.

Experiment files in `configs/` start from `base_config()` and override only
what differs. `steps()` is the one place where durations in epochs or
fractions of the run become steps.

A leaf: no JAX, Flax or other superconv module is imported here, so reading
the schema loads nothing else. `check()` and `check_durations()` check the
fields whose meaning lives here; a key whose valid values belong to a part
is checked by that part (`models.validate_config`, `data.check_spec`,
`schedules.validate`), and `train.validate` runs them all, once, before
anything is compiled or written. Every error names the offending key and
what would be valid.
"""

from __future__ import annotations

import ml_collections


class ConfigError(ValueError):
  """A config value that cannot work; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by all experiments (each field commented).

  The fields are flat (`config.batch_size`), but for the `config.schedule`
  sub-config; each group of them is built by a function of its own below.
  """
  c = ml_collections.ConfigDict()
  c.update(_reproducibility_config())
  c.update(_data_config())
  c.update(_model_config())
  c.update(_duration_config())
  c.update(_optimizer_config())
  c.schedule = default_schedule_config()  # Learning-rate and momentum.
  c.update(_cadence_config())
  return c


def _reproducibility_config() -> ml_collections.ConfigDict:
  """`base_config()`'s seeds."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # Seeds the initialization, data order and augmentation.
  # Train K independent replicas in one program, seeds seed .. seed+K-1
  # (each its own init, data order, augmentation; results equal K separate
  # runs). Each replica logs to workdir/seed=<s>/; one checkpoint holds all.
  c.num_parallel_seeds = 1
  return c


def _data_config() -> ml_collections.ConfigDict:
  """`base_config()`'s data set and augmentation."""
  c = ml_collections.ConfigDict()
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
  return c


def _model_config() -> ml_collections.ConfigDict:
  """`base_config()`'s model and its kernels."""
  c = ml_collections.ConfigDict()
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
  return c


def _duration_config() -> ml_collections.ConfigDict:
  """`base_config()`'s training length and batch sizes."""
  c = ml_collections.ConfigDict()
  # Global batch over all devices (must divide by the device count).
  c.batch_size = 128
  c.num_epochs = 0.0  # Training length in epochs (used when num_steps == 0).
  c.num_steps = 0  # Training length in steps; overrides num_epochs when > 0.
  # Global evaluation batch (the last batch is padded and masked).
  c.eval_batch_size = 1000
  return c


def _optimizer_config() -> ml_collections.ConfigDict:
  """`base_config()`'s optimizer, loss and non-finite handling."""
  c = ml_collections.ConfigDict()
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
  return c


def _cadence_config() -> ml_collections.ConfigDict:
  """`base_config()`'s logging, evaluation and checkpoint cadences."""
  c = ml_collections.ConfigDict()
  c.log_every_steps = 50  # Train metrics row (and console line) every N steps.
  # Test-set evaluation every N epochs (and at the end).
  c.eval_every_epochs = 1.0
  # Orbax checkpoint every N steps (and at the end).
  c.checkpoint_every_steps = 1000
  c.keep_checkpoints = 3  # Checkpoints kept (the final one always).
  return c


def default_schedule_config() -> ml_collections.ConfigDict:
  """The `config.schedule` sub-config (every field commented)."""
  s = ml_collections.ConfigDict()
  # one_cycle | cyclical | piecewise | cosine | constant | linear | rex.
  # piecewise, cosine, constant, linear and rex start with an optional linear
  # warm-up (`warmup` > 0); linear (Li et al. 2020) and rex (Chen et al.
  # 2021) are the budget literature's baselines, decaying to
  # final_lr_factor x max_lr at the end of the run.
  s.name = "cyclical"
  # Unit of every duration below (step_size, warmup, boundaries):
  # steps | epochs | fraction (of the run), converted by config.steps().
  s.unit = "steps"
  # Peak learning rate: the top of the cycle (one_cycle, cyclical) or the LR
  # after warm-up (piecewise, cosine, constant, linear, rex).
  s.max_lr = 3.0

  # --- cyclical (Smith 2015 CLR) ---
  s.base_lr = 0.1  # Lower bound of the cycle.
  s.step_size = 5000.0  # Half-cycle length, in `unit`.
  # triangular | triangular2 (halve each cycle) | exp_range.
  s.mode = "triangular"
  s.gamma = 1.0  # exp_range: amplitude scaled by gamma**step.

  # --- one_cycle (PyTorch OneCycleLR; same names and defaults) ---
  s.pct_start = 0.3  # Fraction of the run spent rising to max_lr.
  s.anneal_strategy = "cos"  # cos | linear.
  s.div_factor = 25.0  # initial lr = max_lr / div_factor.
  s.final_div_factor = 1e4  # final lr = initial lr / final_div_factor.
  # up, symmetric down to the initial lr, then annihilate.
  s.three_phase = False
  # OneCycleLR's epochs + steps_per_epoch form of total_steps, for code
  # ported from PyTorch: the cycle always spans the run (num_steps, or
  # num_epochs x steps per epoch), so epochs x steps_per_epoch must equal
  # the run's steps (a one-line error otherwise). 0 = not given.
  s.epochs = 0
  s.steps_per_epoch = 0  # 0 = the data's, floor(train examples / batch).

  # --- warm-up (piecewise, cosine, constant, linear, rex) ---
  s.warmup = 0.0  # Linear warm-up length, in `unit` (0 = none).
  s.warmup_start_factor = 0.1  # Warm-up starts at this fraction of max_lr.
  # --- piecewise ---
  s.boundaries = ()  # Steps (in `unit`, absolute) where the LR is multiplied...
  s.decay_factors = ()  # ...by these factors, one per boundary (e.g. 0.1).
  # --- cosine, linear, rex ---
  s.final_lr_factor = 0.0  # LR at the end of the run, as a fraction of max_lr.

  # --- momentum ---
  # False: constant config.momentum. True: cycled inversely to the LR between
  # max_momentum (LR lowest) and base_momentum (LR at its peak); one_cycle
  # follows OneCycleLR, cyclical follows CyclicLR, the others map the LR
  # linearly between its lowest value and max_lr. None (the default): each
  # schedule's usual default, True for one_cycle (as OneCycleLR and fastai's
  # fit_one_cycle: 0.95 -> 0.85 -> 0.95), False for the others (the paper's
  # CLR runs and the baselines keep config.momentum).
  s.cycle_momentum = ml_collections.FieldReference(None, field_type=bool)
  s.base_momentum = 0.85  # Momentum at the LR peak (OneCycleLR default).
  s.max_momentum = 0.95  # Momentum where the LR is lowest (OneCycleLR default).

  # --- from an LR range test (python -m superconv.lr_range_test) ---
  # Its workdir or lr_range_test.json: sets max_lr to the test's
  # recommendation and the first LR to its min_lr (one_cycle: div_factor;
  # cyclical: base_lr; with a warm-up: warmup_start_factor), and is rewritten
  # to the json's absolute path. "" = use the values above.
  s.lr_from_range_test = ""
  return s


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


def eval_every_steps(config, steps_per_epoch_: int) -> int:
  """Steps between evaluations (config.eval_every_epochs, at least 1)."""
  return max(
    1,
    steps(config.eval_every_epochs, "epochs", steps_per_epoch=steps_per_epoch_),
  )


def total_steps(config, num_train_examples: int) -> int:
  """Number of training steps of a run."""
  if config.num_steps > 0:
    return int(config.num_steps)
  spe = steps_per_epoch(num_train_examples, config.batch_size)
  return steps(config.num_epochs, "epochs", steps_per_epoch=spe)


def _check(condition: bool, key: str, message: str) -> None:
  if not condition:
    raise ConfigError(f"{key}: {message}")


def check(config, *, num_devices: int) -> None:
  """Checks the fields whose meaning lives here (needs no data)."""
  _check(
    isinstance(config.seed, int) and config.seed >= 0,
    "seed",
    f"must be a non-negative integer, got {config.seed!r}",
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
  _check_length(config)
  _check_training(config)
  _check_data_fields(config)
  _check_cadences(config)


def _check_length(config) -> None:
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


def _check_training(config) -> None:
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


def _check_data_fields(config) -> None:
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
  # The steps take the seeds as int32 values.
  last = config.seed + config.num_parallel_seeds - 1
  _check(
    last < 2**31,
    "seed",
    f"the last replica's seed {last} must be below 2**31 = {2**31}",
  )


def _check_cadences(config) -> None:
  _check(config.log_every_steps > 0, "log_every_steps", "must be > 0")
  _check(config.eval_every_epochs > 0, "eval_every_epochs", "must be > 0")
  _check(
    config.checkpoint_every_steps > 0, "checkpoint_every_steps", "must be > 0"
  )
  _check(config.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")


def check_durations(config, *, num_train_examples: int) -> None:
  """Checks that the run lasts at least one step of at least one batch."""
  spe = steps_per_epoch(num_train_examples, config.batch_size)
  _check(
    spe >= 1,
    "batch_size",
    f"{config.batch_size} exceeds the {num_train_examples} training examples",
  )
  n = total_steps(config, num_train_examples)
  _check(n >= 1, "num_epochs", f"gives {n} steps; must give at least one")
