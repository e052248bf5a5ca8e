"""A real CIFAR-10 run in about 6 minutes on a 2-core CPU.

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
2026-12-02, 2-core AMD EPYC; results/quick/ holds the three runs.
"""

from superconv import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset = "tfds:cifar10"  # Or folder:<CIFAR-10 image folder>.
  config.model = "resnet20"  # Smallest He et al. CIFAR ResNet (0.27M params).
  config.dtype = "float32"  # CPUs have no fast bfloat16 convolutions.
  config.batch_size = 128  # Global batch: 390 steps per epoch.
  config.num_epochs = 2.0  # Short: 780 steps of 128 images.
  config.nesterov = True  # SGD with Nesterov momentum 0.9 (the base's).
  config.weight_decay = 5e-4  # Stronger decay suits short schedules.
  s = config.schedule
  s.name = "one_cycle"  # PyTorch OneCycleLR...
  s.anneal_strategy = "linear"  # ...with linear rise and fall...
  s.three_phase = False  # ...in two phases: up, then down to the end.
  s.max_lr = 0.4  # Peak LR.
  s.pct_start = 0.3  # Peak after 30% of the run.
  s.cycle_momentum = False  # Constant momentum 0.9.
  config.eval_every_epochs = 1.0  # Test accuracy after every epoch.
  config.log_every_steps = 30  # Console/metrics row every 30 steps.
  config.checkpoint_every_steps = 200  # Resume point every 200 steps.
  return config
