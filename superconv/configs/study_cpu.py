"""The small-scale study: one-cycle vs tuned warm-up + piecewise (and linear).

ResNet-20 on CIFAR-10 at an equal budget of 200 steps of 256 images (about
one epoch), small enough for a 2-core CPU. The arms share everything but
the schedule (model, batch, weight decay, augmentation, data order per
seed); each schedule's peak LR is picked on a 5,000-image validation split
carved from the training set, then the winner trains on the full training
set with 3 seeds and is scored on the test set. The argument after the
colon picks the schedule: `onecycle` (default), `piecewise` or `linear`.
`linear` is the budget literature's baseline (Li, Yumer & Ramanan 2020,
"Budgeted Training": warm-up like piecewise, then linear decay to zero at
the end of the budget; REX, `schedule.name=rex`, is its variant from Chen,
Wolfe & Kyrillidis 2021); results/study_cpu/ has only the first two arms.

Reproduce (about 75 minutes on a 2-core CPU; results/study_cpu/ holds ours):
  D=folder:../shared/data/cifar10-jpeg.tar.xz
  for s in onecycle piecewise; do
    python -m superconv.sweep tune --config configs/study_cpu.py:$s \
        --workdir runs/study/tune_$s --budget-steps 200 \
        --validation-size 5000 --sweep schedule.max_lr=0.2,0.4,0.8 \
        --config.dataset=$D
  done
  # Then, for each schedule, the command tune prints (3 seeds, test set):
  python -m superconv.sweep --config configs/study_cpu.py:onecycle \
      --workdir runs/study/onecycle --sweep seed=0,1,2 \
      --config.schedule.max_lr=<winner> --config.dataset=$D
  python -m superconv.report runs/study/onecycle runs/study/piecewise \
      --baseline piecewise --targets 40,50 --out runs/study/report

Expected: see results/study_cpu/report.md (mean test accuracy of each
schedule over 3 seeds, with 95% intervals).
"""

from superconv import config as config_lib

_SCHEDULES = ("onecycle", "piecewise", "linear")


def get_config(schedule: str = "onecycle"):
  if schedule not in _SCHEDULES:
    raise ValueError(
      f"configs/study_cpu.py:<schedule>: one of {_SCHEDULES}, got {schedule!r}"
    )
  config = config_lib.base_config()
  config.dataset = "tfds:cifar10"  # Or folder:<CIFAR-10 image folder>.
  config.model = "resnet20"  # Smallest He et al. CIFAR ResNet (0.27M params).
  config.dtype = "float32"  # CPUs have no fast bfloat16 convolutions.
  config.batch_size = 256  # Global batch.
  config.num_steps = 200  # The equal budget: 51,200 images, ~1 epoch.
  config.weight_decay = 5e-4  # Same for both schedules.
  config.eval_every_epochs = 0.25  # Test accuracy 4 times per epoch: curves.
  config.log_every_steps = 10  # Metrics row every 10 steps.
  config.checkpoint_every_steps = 100  # Resume point every 100 steps.
  s = config.schedule
  s.unit = "fraction"  # Durations below as fractions of the 200 steps.
  s.max_lr = 0.4  # Peak LR; the study tunes it over 0.2, 0.4, 0.8.
  if schedule == "onecycle":
    s.name = "one_cycle"  # PyTorch OneCycleLR: cosine rise, cosine anneal.
    s.pct_start = 0.25  # A quarter of the run rising from max_lr / 25.
    s.cycle_momentum = True  # 0.95 -> 0.85 -> 0.95, as OneCycleLR.
  elif schedule == "piecewise":
    s.name = "piecewise"  # The critic's baseline: warm-up, then step decay.
    s.warmup = 0.1  # Linear warm-up over the first 10% (20 steps)...
    s.warmup_start_factor = 0.1  # ...from max_lr / 10.
    s.boundaries = (0.5, 0.75)  # Divide by 10 at 50% and at 75%...
    s.decay_factors = (0.1, 0.1)  # ...of the run.
    s.cycle_momentum = False  # Constant momentum 0.9.
  else:
    s.name = "linear"  # Budgeted training's baseline (Li et al. 2020).
    s.warmup = 0.1  # Same warm-up as piecewise: the first 10% (20 steps)...
    s.warmup_start_factor = 0.1  # ...from max_lr / 10...
    s.final_lr_factor = 0.0  # ...then linearly down to 0 at step 200.
    s.cycle_momentum = False  # Constant momentum 0.9, as piecewise.
  return config
