"""He et al. (2016) CIFAR-10 recipe for ResNet-56: the standard baseline.

Source: "Deep Residual Learning for Image Recognition" (He, Zhang, Ren, Sun,
CVPR 2016), Section 4.2: SGD with momentum 0.9, weight decay 1e-4, mini-batch
128, learning rate 0.1 divided by 10 at 32k and 48k iterations, training ends
at 64k iterations; 4-pixel padding + random 32x32 crop + horizontal flip;
shortcut option A on CIFAR. (The 0.01 warm-up the paper uses for ResNet-110
is not used for ResNet-56.)

Run:
  python -m superconv.main --config configs/he2016_resnet56.py \
      --workdir runs/he2016_resnet56

Expected: He et al. report 6.97% test error (93.03% accuracy) for ResNet-56
(Table 6; a single number, no spread). 64k steps at batch 128 are 164
epochs (390 steps per epoch).
"""

from superconv import config as config_lib


def get_config():
  config = config_lib.base_config()
  # The paper's recipe. Several values equal the base's defaults today; they
  # are pinned on purpose, so that the recipe does not move with the base.
  config.dataset = "tfds:cifar10"  # CIFAR-10, 50k training images.
  config.model = "resnet56"  # n = 9: 6n + 2 = 56 layers.
  config.shortcut = "A"  # Identity shortcuts with zero padding on CIFAR.
  config.batch_size = 128  # "mini-batch size of 128".
  config.num_steps = 64_000  # "terminate training at 64k iterations".
  config.crop_padding = 4  # "4 pixels are padded on each side" + random crop.
  config.random_flip = True  # ...and horizontal flip.
  config.momentum = 0.9  # "momentum of 0.9".
  config.weight_decay = 1e-4  # "weight decay of 0.0001".
  config.schedule.name = "piecewise"  # Step decay, no warm-up for ResNet-56.
  config.schedule.max_lr = 0.1  # "start with a learning rate of 0.1".
  config.schedule.unit = "steps"  # Boundaries in iterations, as the paper.
  config.schedule.boundaries = (
    32_000,
    48_000,
  )  # "divide it by 10 at 32k and 48k".
  config.schedule.decay_factors = (0.1, 0.1)  # Divide by 10 each time.
  config.eval_every_epochs = 5.0  # Test accuracy every 1,950 steps.
  return config
