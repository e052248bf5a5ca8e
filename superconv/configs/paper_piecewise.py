"""Smith & Topin (2017) baseline: ResNet-56, piecewise-constant LR, 80k steps.

Source: the paper's Table 1 / Figure 1a baseline ("PC-LR") and the released
Caffe solver (github.com/lnsmith54/super-convergence, solver.prototxt):
base_lr 0.35, lr_policy multistep with gamma 0.1 at stepvalue 50,000 and
70,000, max_iter 80,000, momentum 0.9, weight_decay 1e-4; global batch 1000 as
in the paper's other CIFAR-10 runs; BatchNorm moving_average_fraction 0.999
(Caffe's default). No warm-up.

Run:
  python -m superconv.main --config configs/paper_piecewise.py \
      --workdir runs/paper_piecewise
  python -m superconv.schedules --config configs/paper_piecewise.py  # the LR

Expected: the paper reports 91.2% test accuracy on CIFAR-10 after 80k
iterations (one run, no error bars), against 92.4% for the 10k-step CLR run
of configs/default.py.
"""

from superconv.configs import default


def get_config():
  # configs/default.py's network, data, batch 1000, constant momentum 0.9
  # and weight decay 1e-4; the length, BatchNorm and schedule differ.
  config = default.get_config()
  # Solver max_iter 80,000 (1,600 epochs at batch 1000).
  config.num_steps = 80_000
  config.bn_momentum = 0.999  # Caffe BatchNorm default moving_average_fraction.
  s = config.schedule
  s.name = "piecewise"  # Caffe lr_policy "multistep".
  s.max_lr = 0.35  # Solver: base_lr 0.35.
  s.unit = "steps"  # Boundaries in iterations, as the solver.
  s.boundaries = (50_000, 70_000)  # Solver stepvalue 50k and 70k...
  s.decay_factors = (0.1, 0.1)  # ...each multiplies by gamma 0.1.
  config.eval_every_epochs = 40.0  # Test accuracy every 2,000 steps.
  config.checkpoint_every_steps = 5_000  # Long run: fewer checkpoints.
  return config
