"""Smith & Topin (2017) super-convergence run: ResNet-56, CLR 0.1 -> 3.0 -> 0.1.

Source: the paper's Section 4 and the released Caffe solver files
(github.com/lnsmith54/super-convergence): ResNet-56, global batch 1000,
10,000 iterations, triangular cyclical LR between 0.1 and 3.0 with a step size
of 5,000 (one cycle), momentum 0.9, weight decay 1e-4, BatchNorm moving
average fraction 0.95.

Run:
  python -m superconv.main --config configs/default.py --workdir runs/default

Expected: the paper reports 92.4% test accuracy on CIFAR-10 after 10k
iterations (no error bars). On CIFAR-10 (JPEG q75) accuracies are lower;
see the README's results section.
"""

from superconv import config as config_lib


def get_config():
  config = config_lib.base_config()
  # The paper's values. Most equal the base's defaults today; they are
  # pinned on purpose, so that the paper's run does not move with the base.
  config.dataset = "tfds:cifar10"  # The paper's data set.
  config.model = "resnet56"  # He et al. CIFAR ResNet-56, shortcut option A.
  config.batch_size = 1000  # Global batch of the paper's runs.
  config.num_steps = 10_000  # 10k iterations = 200 epochs at batch 1000.
  config.momentum = 0.9  # Constant momentum (solver: momentum 0.9).
  config.weight_decay = 1e-4  # Solver: weight_decay 1e-4.
  config.bn_momentum = 0.95  # Solver: moving_average_fraction 0.95.
  config.schedule.name = "cyclical"  # Triangular CLR, one full cycle.
  config.schedule.base_lr = 0.1  # Lower bound of the cycle.
  config.schedule.max_lr = 3.0  # Upper bound of the cycle.
  config.schedule.step_size = 5_000  # Half cycle: up for 5k, down for 5k.
  config.schedule.unit = "steps"  # step_size is in steps.
  config.eval_every_epochs = 10.0  # Test accuracy every 500 steps.
  config.log_every_steps = 50  # One train-metrics row per epoch.
  return config
