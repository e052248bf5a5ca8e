"""Smith (2018) 1cycle policy for ResNet-56 on CIFAR-10, with cyclical momentum.

Source: L. N. Smith, "A disciplined approach to neural network
hyper-parameters: Part 1" (arXiv:1803.09820), Section 4 (1cycle: one cycle of
two equal steps, then annihilate the LR for the remaining iterations; cyclical
momentum 0.95 -> 0.85 -> 0.95 as the LR rises and falls), and the run files
released with it (github.com/lnsmith54/hyperParam1, Cifar/jsub.sh and the log
Cifar/results/gResnet56_ResTBS512LR.0800.8M.95WD1e-4Epoch95BS128b_1):
ResNet-56, total batch 512 (4 GPUs x 128), LR 0.08 -> 0.8, step size 41
epochs, 95 epochs in all (Caffe max_iter 9277, stepsize 4003), weight decay
1e-4, Nesterov momentum, final LR 8e-5 (= 0.08 / 1000, read off the log).

Mapped onto PyTorch OneCycleLR's names (three_phase=True, linear annealing):
div_factor 10 (0.8 / 10 = 0.08), pct_start 41/95, final_div_factor 1000.
One difference from Smith's Caffe "1cycle" policy: his second leg keeps going
from 0.8 down towards 0 and then holds 8e-5, whereas the three-phase
OneCycleLR shape used here returns to 0.08 after the second leg and then
anneals linearly to 8e-5 over the last 13 epochs (the shape described in the
report's text and in fastai/PyTorch).

Run:
  python -m superconv.main --config configs/onecycle_resnet56.py \
      --workdir runs/onecycle_resnet56
  python -m superconv.schedules --config configs/onecycle_resnet56.py

Expected: about 92% test accuracy. Smith's released log of this recipe with
constant momentum 0.95 ends at 91.9% (Caffe test output at iteration 9200);
the cyclical-momentum result has to be measured here, over several seeds.
"""

from superconv import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset = "tfds:cifar10"  # CIFAR-10.
  config.model = "resnet56"  # Smith's gResnet56 (He et al. ResNet-56).
  config.batch_size = 512  # Total batch 512 (4 GPUs x 128).
  config.num_epochs = 95.0  # 95 epochs = 9,215 steps of floor(50000/512) = 97.
  config.nesterov = True  # Solver type "Nesterov".
  config.weight_decay = 1e-4  # WD1e-4.
  config.schedule.name = "one_cycle"  # 1cycle policy.
  config.schedule.max_lr = 0.8  # Top of the cycle (LR 0.08 -> 0.8).
  config.schedule.div_factor = 10.0  # Initial LR 0.8 / 10 = 0.08.
  config.schedule.pct_start = 41 / 95  # Step size 41 of 95 epochs.
  config.schedule.three_phase = True  # Up, symmetric down, then annihilate.
  config.schedule.anneal_strategy = "linear"  # Smith's cycle is linear.
  config.schedule.final_div_factor = 1000.0  # Final LR 0.08 / 1000 = 8e-5.
  config.schedule.cycle_momentum = True  # Cyclical momentum...
  config.schedule.max_momentum = 0.95  # ...0.95 at the LR's low points...
  config.schedule.base_momentum = 0.85  # ...0.85 at its peak.
  config.eval_every_epochs = 5.0  # Test accuracy every 485 steps.
  return config
