"""A real CIFAR-10 run in under 10 minutes on a 2-core CPU.

ResNet-20 for 2 epochs with a two-phase linear one-cycle: the strongest
short recipe this trainer has (the `onecycle` arm of
configs/budget_study.py at its 2-epoch budget): batch 128 (780 steps), the
LR rising linearly from 0.016 to its peak 0.4 over the first 30% of the run
and falling linearly to 1.6e-6 at the end (PyTorch OneCycleLR with
anneal_strategy="linear", three_phase=False), constant Nesterov momentum
0.9, weight decay 5e-4, random crop and flip.

Run (CIFAR-10, JPEG q75 copy, no internet needed):
  python -m superconv.main --config configs/quick.py --workdir runs/quick \
      --config.dataset=folder:../shared/data/cifar10-jpeg.tar.xz

Expected: 72.32% ± 0.29 test accuracy on CIFAR-10 (JPEG q75), mean ± sd
of seeds 0, 1, 2 (72.55, 71.99, 72.42%; 95% CI [71.59, 73.05]),
2026-12-02, 2-core AMD EPYC; results/quick/ holds the three runs. Seed 0
again with the fused BatchNorm (the CPU default since): 72.01% in 9 min 33 s
wall at about 195 img/s.
"""

from superconv.configs import budget_study


def get_config():
  # The budget study's onecycle arm (ResNet-20, float32, batch 128, Nesterov
  # momentum 0.9, weight decay 5e-4, linear two-phase one-cycle peaking at
  # 0.4 after 30% of the run) at its 2-epoch budget.
  config = budget_study.get_config("onecycle")
  config.num_epochs = 2.0  # 780 steps of 128 images.
  return config
