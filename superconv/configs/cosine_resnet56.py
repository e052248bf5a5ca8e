"""Cosine + warm-up baseline for ResNet-56 at the one-cycle budget.

Same network, batch, step budget, momentum, weight decay and BatchNorm
setting as the super-convergence run (configs/default.py: batch 1000, 10,000
steps = 200 epochs), with the schedule most modern baselines use instead:
linear warm-up then cosine decay to zero (Loshchilov & Hutter 2017; warm-up as
Goyal et al. 2017). The peak 0.8 is the linear-scaling rule applied to He et
al.'s 0.1 at batch 128 (0.1 x 1000 / 128 = 0.78); the warm-up is Goyal et
al.'s 5 epochs, starting from 0.1 x peak = 0.08 (close to the small-batch
LR, as their gradual warm-up). Tune max_lr with the LR range test / sweep
before drawing conclusions.

Run:
  python -m superconv.main --config configs/cosine_resnet56.py \
      --workdir runs/cosine_resnet56

Expected: no published number for this exact recipe; it is the control for
configs/default.py (paper: 92.4% for CLR at 10k steps). Report mean and spread
over seeds next to that run.
"""

from superconv.configs import default


def get_config():
  # configs/default.py's network, batch, step budget, constant momentum 0.9,
  # weight decay and BatchNorm setting; only the schedule differs.
  config = default.get_config()
  s = config.schedule
  s.name = "cosine"  # Warm-up, then cosine decay.
  s.max_lr = 0.8  # Linear scaling of 0.1 @ 128 to batch 1000.
  s.unit = "epochs"  # warmup in epochs.
  s.warmup = 5.0  # 5 epochs = 250 steps (Goyal et al.).
  s.warmup_start_factor = 0.1  # Warm-up starts at 0.08.
  s.final_lr_factor = 0.0  # Decay to zero at the end.
  return config
