"""A real CIFAR-10 run in about 6 minutes on a 2-core CPU.

ResNet-20 with a one-cycle schedule for a few epochs: not a paper result, a
smoke test with honest numbers that exercises the whole pipeline.

Run (CIFAR-10, JPEG q75 copy, no internet needed):
  python -m superconv.main --config configs/quick.py --workdir runs/quick \
      --config.dataset=folder:../shared/data/cifar10-jpeg.tar.xz

Expected: about 64.5-64.8% test accuracy on CIFAR-10 (JPEG q75), seed 0
(README results table, with the wall times).
"""

from superconv import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset = "tfds:cifar10"  # Or folder:<CIFAR-10 image folder>.
  config.model = "resnet20"  # Smallest He et al. CIFAR ResNet (0.27M params).
  config.dtype = "float32"  # CPUs have no fast bfloat16 convolutions.
  config.batch_size = 256  # Global batch.
  config.num_epochs = 2.0  # Short: 390 steps of 256 images.
  config.weight_decay = 5e-4  # Stronger decay suits short schedules.
  # PyTorch OneCycleLR: cosine rise, cosine anneal.
  config.schedule.name = "one_cycle"
  config.schedule.max_lr = 0.4  # Peak LR.
  config.schedule.pct_start = 0.25  # A quarter of the run rising.
  config.schedule.cycle_momentum = True  # 0.95 -> 0.85 -> 0.95, as OneCycleLR.
  config.eval_every_epochs = 1.0  # Test accuracy after every epoch.
  config.log_every_steps = 20  # Console/metrics row every 20 steps.
  config.checkpoint_every_steps = 200  # Resume point every 200 steps.
  return config
