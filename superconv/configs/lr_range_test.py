r"""LR range test: pick max_lr (and min_lr) of a one-cycle / cyclical run.

`base_config()` (the training fields: model, data, batch, weight decay,
momentum, seed) plus a `range_test` sub-config (superconv.lr_range_test).
The argument after the file name picks the preset and, optionally, the
training config to start from instead of base_config(), so the test uses
exactly that run's model, batch, weight decay and momentum:

  configs/lr_range_test.py                 linear (Smith), CPU-sized ResNet-20
  configs/lr_range_test.py:exponential     exponential (fastai), ResNet-20
  configs/lr_range_test.py:exponential,onecycle_resnet56
                            exponential on configs/onecycle_resnet56.py

Run (CIFAR-10, JPEG q75 copy, 2 CPU cores, about 10 minutes each):
  python -m superconv.lr_range_test --config configs/lr_range_test.py \
      --workdir runs/lr_range_linear \
      --config.dataset=folder:../shared/data/cifar10-jpeg.tar.xz
  python -m superconv.lr_range_test \
      --config configs/lr_range_test.py:exponential \
      --workdir runs/lr_range_exponential \
      --config.dataset=folder:../shared/data/cifar10-jpeg.tar.xz

Then train with the result (same batch size as the test: the right LR
depends on it; or run the test on the training config itself, e.g.
configs/lr_range_test.py:linear,quick):
  python -m superconv.main --config configs/quick.py --workdir runs/quick_rt \
      --config.batch_size=128 \
      --config.schedule.lr_from_range_test=runs/lr_range_linear

Expected (ResNet-20, batch 128, weight decay 5e-4, seed 0, CIFAR-10 JPEG q75;
docs/lr_range_test_{linear,exponential}.{png,json}; ~10 min each on 2 busy
CPU cores):
  linear 0.01 -> 1.5, 300 steps: held-out accuracy peaks at 0.32 at lr 0.63
    and turns ragged above it -> recommended max_lr 0.63, min_lr 0.16
    (smith); loss-based: steepest 0.16, min_loss_div_10 0.15, valley 1.04.
  exponential 1e-4 -> 10, 400 steps: smoothed loss lowest at lr 2.5, diverged
    (4x) at lr 8.7 after 395 steps -> recommended max_lr 0.25, min_lr 0.010
    (min_loss_div_10, / 25); valley 0.099, steepest 0.00034.
"""

import os

from superconv import cli, lr_range_test
from superconv import config as config_lib


def _training_config(name: str):
  """get_config() of configs/<name>.py (a sibling of this file)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  if not os.path.isfile(path):
    raise ValueError(
      f"--config: no training config {path} (the argument"
      " after ':' is mode[,training config name])"
    )
  return cli.load_config_file(path)


def get_config(arg: str | None = None):
  """arg: '' | 'linear' | 'exponential', optionally ',<training config>'."""
  parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
  mode = parts[0] if parts else "linear"
  if mode not in lr_range_test.MODES:
    raise ValueError(
      f"--config: unknown range-test mode {mode!r} after ':';"
      f" valid: {', '.join(lr_range_test.MODES)}"
    )
  if len(parts) > 1:
    # The training run's own model, data, batch, optimizer and seed.
    config = _training_config(parts[1])
  else:
    config = config_lib.base_config()
    config.dataset = "tfds:cifar10"  # Or folder:<CIFAR-10 image folder>.
    config.model = "resnet20"  # As configs/quick.py: the CPU-sized ResNet.
    config.dtype = "float32"  # CPUs have no fast bfloat16 convolutions.
    config.batch_size = 128  # Global batch (the test's LR is per this batch).
    config.weight_decay = 5e-4  # As configs/quick.py (the test depends on it).
  config.log_every_steps = 25  # Console line every N steps (and at each eval).
  # The training schedule and num_epochs/num_steps are unused here: the test
  # has its own length and LR sequence (range_test.*), constant momentum
  # config.momentum, and writes no checkpoint.
  config.range_test = lr_range_test.default_config(mode)
  return config
