r"""ResNet-20 with AdamW and one cycle, as fastai's `fit_one_cycle` trains.

fastai (`Learner.fit_one_cycle` with its default `Adam` optimizer): cosine
rise from lr_max / 25 to lr_max over the first 25% of the run (pct_start
0.25, div 25), cosine anneal to lr_max / 1e5 (div_final); momentum, i.e.
Adam's beta1, cycled 0.95 -> 0.85 -> 0.95 inversely to the LR (moms);
beta2 0.99 (sqr_mom), eps 1e-5; weight decay 1e-2, decoupled
(p *= 1 - lr * wd) and not applied to BatchNorm and bias parameters
(wd_bn_bias=False). Mapped onto PyTorch OneCycleLR's names used here:
div_factor 25, final_div_factor 1e5 / 25 = 4000. One difference: fastai
places the phase boundary at the fraction pct_start of the run, OneCycleLR
(and superconv) at step pct_start x steps - 1.

The peak LR 3e-3 is a usual pick for Adam on CIFAR ResNets, not tuned
here (run `python -m superconv.lr_range_test` with this config to choose
one). Duration and batch as configs/quick.py: 2 epochs of 256 images.

Run (CIFAR-10, JPEG q75 copy, no internet needed):
  python -m superconv.main --config configs/onecycle_adamw_resnet20.py \
      --workdir runs/onecycle_adamw \
      --config.dataset=folder:../shared/data/cifar10-jpeg.tar.xz

Expected: not measured.
"""

from superconv import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset = "tfds:cifar10"  # Or folder:<CIFAR-10 image folder>.
  config.model = "resnet20"  # Smallest He et al. CIFAR ResNet (0.27M params).
  config.dtype = "float32"  # CPUs have no fast bfloat16 convolutions.
  config.batch_size = 256  # Global batch, as configs/quick.py.
  config.num_epochs = 2.0  # Short: 390 steps of 256 images.

  # fastai's Adam: decoupled weight decay 1e-2, sqr_mom 0.99, eps 1e-5.
  config.optimizer = "adamw"
  config.weight_decay = 1e-2  # p -= lr * wd * p, not added to the gradient.
  config.decay_bn_and_bias = False  # fastai: wd_bn_bias=False.
  config.adam_b2 = 0.99  # fastai sqr_mom (PyTorch's default is 0.999).
  config.adam_eps = 1e-5  # fastai eps (PyTorch's default is 1e-8).

  # fit_one_cycle: cosine up for 25%, cosine down; beta1 0.95 -> 0.85 -> 0.95.
  config.schedule.name = "one_cycle"
  config.schedule.max_lr = 3e-3  # Peak LR (usual for Adam; not tuned here).
  config.schedule.pct_start = 0.25  # fastai pct_start.
  config.schedule.anneal_strategy = "cos"  # fastai: cosine in both phases.
  config.schedule.div_factor = 25.0  # fastai div: first LR = max_lr / 25.
  config.schedule.final_div_factor = 4000.0  # fastai div_final 1e5 = 25 x 4000.
  config.schedule.cycle_momentum = True  # Cycles beta1 (fastai moms).
  config.schedule.max_momentum = 0.95  # beta1 at the start and the end.
  config.schedule.base_momentum = 0.85  # beta1 at the LR peak.

  config.eval_every_epochs = 1.0  # Test accuracy after every epoch.
  config.log_every_steps = 20  # Console/metrics row every 20 steps.
  config.checkpoint_every_steps = 200  # Resume point every 200 steps.
  return config
