"""config.optimizer: AdamW against optax.adamw and PyTorch's algorithm, beta1
scheduled like momentum, decoupled weight decay, SGD unchanged, validation,
resuming checkpoints written before the field existed, and
configs/onecycle_adamw_resnet20.py.

The algorithm comparisons run in float64 (`jax.enable_x64`) on a tiny
float64 model with a float64 loss, so two programs that compute the same
gradient agree to float64 rounding and the tolerances can be tight.
"""

import functools
import json
import math
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from superconv import checkpoint, cli, input_pipeline, schedules, train
from superconv import config as config_lib
from superconv import data as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F64 = jnp.float64
AXIS = train.AXIS


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def adamw_config(**overrides):
  """AdamW with a one-cycle schedule that moves the LR and beta1 every step."""
  c = config_lib.base_config()
  c.dataset = "synthetic"
  c.synthetic_train_size = 32
  c.synthetic_test_size = 16
  c.batch_size = 16
  c.num_steps = 20
  c.optimizer = "adamw"
  c.weight_decay = 0.05
  c.decay_bn_and_bias = False
  c.adam_b2 = 0.99
  c.adam_eps = 1e-8
  c.schedule.name = "one_cycle"
  c.schedule.max_lr = 0.01
  c.schedule.pct_start = 0.25
  c.schedule.cycle_momentum = True
  for k, v in overrides.items():
    c[k] = v
  return c


def schedule_fns(config):
  """(lr_fn, momentum_fn) of `config` for its config.num_steps."""
  return schedules.create(
    config.schedule,
    momentum=config.momentum,
    steps_per_epoch=config.synthetic_train_size // config.batch_size,
    total_steps=config.num_steps,
  )


def optimizer(config):
  return train.make_optimizer(config, *schedule_fns(config))


class Tiny(nn.Module):
  """Dense (no bias) -> BatchNorm -> ReLU -> Dense, in float64: kernels,
  a bias and BatchNorm parameters, as a ResNet has."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Dense(6, use_bias=False, dtype=F64, param_dtype=F64)(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      axis_name=AXIS,
      dtype=F64,
      param_dtype=F64,
    )(x)
    return nn.Dense(10, dtype=F64, param_dtype=F64)(nn.relu(x))


def tiny_state(tx, seed=0):
  x = jax.random.normal(jax.random.key(seed), (16, 5), F64)
  y = jax.random.randint(jax.random.key(seed + 1), (16,), 0, 10)
  model = Tiny()
  variables = jax.vmap(
    lambda x: model.init(jax.random.key(2), x, train=False),
    axis_name=train.AXIS,
  )(x[None])
  variables = jax.tree.map(lambda v: v[0], variables)
  state = train.TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    tx=tx,
  )
  return state.replace(step=jnp.zeros((), jnp.int32)), x, y


def our_step(state, x, y):
  """train.step_on_batch, the production step, on one device's batch."""
  step = functools.partial(
    train.step_on_batch, num_classes=10, label_smoothing=0
  )
  new, metrics = jax.vmap(step, in_axes=(None, 0, 0), axis_name=train.AXIS)(
    state, x[None], y[None]
  )
  return jax.tree.map(lambda v: v[0], new), jax.tree.map(
    lambda v: v[0], metrics
  )


def gradient(state, params, x, y):
  """The gradient of the batch loss at `params`, computed on its own."""

  def loss(params, x, y):
    logits, _ = state.apply_fn(
      {"params": params, "batch_stats": state.batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return train.cross_entropy(logits, y, 10, 0.0).mean()

  grads = jax.vmap(jax.grad(loss), in_axes=(None, 0, 0), axis_name=train.AXIS)(
    params, x[None], y[None]
  )
  return jax.tree.map(lambda g: g[0], grads)


def max_relative_error(actual, expected) -> float:
  """max over leaves of |actual - expected| / |expected| (2-norms)."""
  return max(
    float(jnp.linalg.norm(a - e) / jnp.linalg.norm(e))
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected))
  )


# --- AdamW against optax.adamw and PyTorch's AdamW ---------------------------


def test_first_adamw_train_step_equals_optax_adamw_on_the_same_batch(
  x64,
):
  config = adamw_config()
  lr_fn, momentum_fn = schedule_fns(config)
  state, x, y = tiny_state(train.make_optimizer(config, lr_fn, momentum_fn))
  new_state, metrics = our_step(state, x, y)

  # The hyperparameters this step used, the schedule's at step 0.
  lr, b1 = float(metrics["learning_rate"]), float(metrics["momentum"])
  assert lr == pytest.approx(float(lr_fn(0)), rel=1e-6)
  assert lr == pytest.approx(0.01 / 25, rel=1e-6)
  assert b1 == pytest.approx(float(momentum_fn(0)), rel=1e-6)
  assert b1 == pytest.approx(0.95, rel=1e-6)
  reference = optax.adamw(
    learning_rate=lr,
    b1=b1,
    b2=0.99,
    eps=1e-8,
    weight_decay=0.05,
    mask=train.decay_mask,
  )
  grads = gradient(state, state.params, x, y)
  updates, _ = reference.update(
    grads, reference.init(state.params), state.params
  )

  ours = jax.tree.map(jnp.subtract, new_state.params, state.params)
  # Both are float64 computations on the same gradient (the bias
  # corrections 1 - b1 and 1 - b2 are exact even with b1 in float32), so
  # they agree to a few float64 ulps of the update.
  assert max_relative_error(ours, updates) < 1e-12
  # BatchNorm's scale and offset and the output bias are not decayed
  # (decay_bn_and_bias=False): with the decay they would differ by lr*wd*p.
  decayed = optax.adamw(lr, b1=b1, b2=0.99, eps=1e-8, weight_decay=0.05)
  all_decayed, _ = decayed.update(
    grads, decayed.init(state.params), state.params
  )
  assert max_relative_error(ours, all_decayed) > 1e-6


def pytorch_adamw(p, g, m, v, t, *, lr, b1, b2, eps, wd):
  """One step t (1-based) of torch.optim.AdamW, in NumPy: decay first, bias
  corrections with the current beta1 (as under OneCycleLR)."""
  p = p * (1 - lr * wd)
  m = b1 * m + (1 - b1) * g
  v = b2 * v + (1 - b2) * g * g
  m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
  return p - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


def test_adamw_steps_follow_pytorch_adamw_with_scheduled_lr_and_beta1(
  x64,
):
  # Four train steps on one batch; the reference recomputes each gradient
  # at its own parameters and applies PyTorch's AdamW with this step's LR
  # and beta1 from the schedule. The gradients are smooth in the
  # parameters, so float64 errors stay near rounding after four steps.
  # optax does the scalar arithmetic of the hyperparameters (1 - b1**t) in
  # the schedules' dtype, float32; here they give float64 (the same values),
  # so that only float64 rounding is left.
  config = adamw_config(decay_bn_and_bias=True)
  lr_fn, momentum_fn = [
    lambda count, f=f: jnp.asarray(f(count), F64) for f in schedule_fns(config)
  ]
  state, x, y = tiny_state(train.make_optimizer(config, lr_fn, momentum_fn))
  params = jax.tree.map(np.asarray, state.params)
  m = jax.tree.map(np.zeros_like, params)
  v = jax.tree.map(np.zeros_like, params)
  b1s = []
  for t in range(4):
    state, metrics = our_step(state, x, y)
    g = jax.tree.map(np.asarray, gradient(state, params, x, y))
    lr, b1 = float(metrics["learning_rate"]), float(metrics["momentum"])
    assert lr == pytest.approx(float(lr_fn(t)), rel=1e-6)
    assert b1 == pytest.approx(float(momentum_fn(t)), rel=1e-6)
    b1s.append(b1)
    step = functools.partial(
      pytorch_adamw, t=t + 1, lr=lr, b1=b1, b2=0.99, eps=1e-8, wd=0.05
    )
    out = jax.tree.map(step, params, g, m, v)
    is_out = lambda o: isinstance(o, tuple)
    params = jax.tree.map(lambda o: o[0], out, is_leaf=is_out)
    m = jax.tree.map(lambda o: o[1], out, is_leaf=is_out)
    v = jax.tree.map(lambda o: o[2], out, is_leaf=is_out)
    assert max_relative_error(state.params, params) < 1e-12, t
  # beta1 really moved (0.95 at step 0, towards 0.85 at the peak, step 4).
  assert b1s[0] == pytest.approx(0.95) and b1s[3] < b1s[2] < b1s[1] < 0.95


# --- beta1 follows the momentum schedule ---------------------------------


# OneCycleLR, 20 steps, pct_start 0.25: the peak is step 0.25 * 20 - 1 = 4;
# cosine annealing, so step 2 is half-way; the last step (19) is back at
# max_momentum. LR: max_lr / div_factor at step 0, max_lr at the peak.
BETA1_TABLE = [
  # step, learning rate, beta1
  (0, 0.01 / 25, 0.95),
  (2, (0.01 + 0.01 / 25) / 2, 0.90),
  (4, 0.01, 0.85),
  (19, 0.01 / 25 / 1e4, 0.95),
]


def test_beta1_follows_the_one_cycle_momentum_table(x64):
  config = adamw_config()
  tx = optimizer(config)
  params = {"w": jnp.ones(3, F64)}
  state = tx.init(params)
  rows = {}
  for step in range(20):
    _, state = tx.update({"w": jnp.zeros(3, F64)}, state, params)
    hp = train.hyperparams(state)
    rows[step] = (float(hp["learning_rate"]), float(hp["b1"]))
    assert float(hp["momentum"]) == float(hp["b1"])
    assert float(hp["b2"]) == pytest.approx(0.99)
  for step, lr, b1 in BETA1_TABLE:
    assert rows[step][0] == pytest.approx(lr, rel=1e-5), step
    assert rows[step][1] == pytest.approx(b1, rel=1e-6), step


def test_beta1_is_config_momentum_when_the_schedule_does_not_cycle(x64):
  config = adamw_config(momentum=0.8)
  config.schedule.cycle_momentum = False
  tx = optimizer(config)
  params = {"w": jnp.ones(3, F64)}
  state = tx.init(params)
  for _ in range(3):
    _, state = tx.update({"w": jnp.ones(3, F64)}, state, params)
    assert float(train.hyperparams(state)["b1"]) == pytest.approx(0.8)


# --- Weight decay --------------------------------------------------------


@pytest.mark.parametrize("decay_bn_and_bias", [False, True])
def test_adamw_decay_is_decoupled_and_scaled_by_the_lr(x64, decay_bn_and_bias):
  # Zero gradient: Adam's own update is 0 / (0 + eps) = 0, so each step
  # multiplies a decayed parameter by exactly 1 - lr_t * wd. L2 added to
  # the gradient would instead move it by about lr_t (Adam normalizes).
  config = adamw_config(decay_bn_and_bias=decay_bn_and_bias)
  lr_fn, _ = schedule_fns(config)
  tx = optimizer(config)
  params = {
    "Dense_0": {
      "kernel": jnp.array([[1.5, -2.0]], F64),
      "bias": jnp.array([0.5, -0.25], F64),
    }
  }
  zeros = jax.tree.map(jnp.zeros_like, params)
  state = tx.init(params)
  p = params
  factor = 1.0
  for t in range(3):
    updates, state = tx.update(zeros, state, p)
    p = optax.apply_updates(p, updates)
    lr = float(train.hyperparams(state)["learning_rate"])
    assert lr == pytest.approx(float(lr_fn(t)), rel=1e-6)
    factor *= 1 - lr * 0.05
  kernel = params["Dense_0"]["kernel"]
  np.testing.assert_allclose(
    p["Dense_0"]["kernel"], kernel * factor, rtol=1e-14
  )
  bias = params["Dense_0"]["bias"]
  expected_bias = bias * factor if decay_bn_and_bias else bias
  np.testing.assert_allclose(p["Dense_0"]["bias"], expected_bias, rtol=1e-14)
  assert factor < 1 - 1e-5  # The decay is visible at this tolerance.


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_is_l2_on_the_gradient_then_momentum_as_before(x64, nesterov):
  # The formula of config.optimizer = "sgd" (the only optimizer before):
  # g' = g + wd * p (kernels only here), trace = mu_t * trace + g',
  # p -= lr_t * trace (Nesterov: lr_t * (g' + mu_t * trace)).
  config = adamw_config(
    optimizer="sgd", nesterov=nesterov, decay_bn_and_bias=False
  )
  lr_fn, momentum_fn = schedule_fns(config)
  tx = optimizer(config)
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=4), "bias": rng.normal(size=2)}
  params = jax.tree.map(jnp.asarray, params)
  state = tx.init(params)
  # The state's structure is unchanged, so checkpoints written before still
  # restore.
  before = optax.chain(
    optax.add_decayed_weights(0.05, mask=train.decay_mask),
    optax.inject_hyperparams(optax.sgd, static_args=("nesterov",))(
      learning_rate=lr_fn, momentum=momentum_fn, nesterov=nesterov
    ),
  )
  assert jax.tree.structure(state) == jax.tree.structure(before.init(params))
  p = jax.tree.map(np.asarray, params)
  trace = jax.tree.map(np.zeros_like, p)
  ours = params
  for t in range(3):
    g = {k: rng.normal(size=v.shape) for k, v in p.items()}
    updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, ours)
    ours = optax.apply_updates(ours, updates)
    hp = train.hyperparams(state)
    lr, mu = float(hp["learning_rate"]), float(hp["momentum"])
    assert lr == pytest.approx(float(lr_fn(t)), rel=1e-6)
    assert mu == pytest.approx(float(momentum_fn(t)), rel=1e-6)
    for k in p:
      gk = g[k] + (0.05 * p[k] if k == "kernel" else 0.0)
      trace[k] = mu * trace[k] + gk
      p[k] = p[k] - lr * (gk + mu * trace[k] if nesterov else trace[k])
    for k in p:
      np.testing.assert_allclose(ours[k], p[k], rtol=1e-14, atol=0)
  assert mu < 0.95  # Momentum moved: the schedule cycles it.


# --- Validation ----------------------------------------------------------


@pytest.mark.parametrize(
  "overrides,message",
  [
    ({"optimizer": "adam"}, "optimizer: unknown 'adam'; valid: sgd, adamw"),
    ({"adam_b2": 1.0}, "adam_b2: must be in [0, 1), got 1.0"),
    ({"adam_b2": -0.1}, "adam_b2: must be in [0, 1), got -0.1"),
    ({"adam_eps": 0.0}, "adam_eps: must be > 0, got 0.0"),
    ({"nesterov": True}, "nesterov: is for optimizer='sgd' only"),
  ],
)
def test_bad_optimizer_values_give_one_line_naming_the_key(overrides, message):
  config = adamw_config(**overrides)
  with pytest.raises(config_lib.ConfigError) as e:
    config_lib.check(config, num_devices=1)
  assert str(e.value).startswith(message)
  assert "\n" not in str(e.value)


def test_sgd_with_nesterov_and_adamw_without_are_valid():
  config_lib.check(adamw_config(optimizer="sgd", nesterov=True), num_devices=1)
  config_lib.check(adamw_config(), num_devices=1)


def test_main_refuses_an_unknown_optimizer_with_exit_2(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "superconv.main",
      "--config",
      "configs/onecycle_adamw_resnet20.py",
      "--workdir",
      str(workdir),
      "--config.dataset=synthetic",
      "--config.optimizer=adam",
    ],
    cwd=REPO,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 2, result.stderr
  assert result.stderr.strip().splitlines() == [
    "superconv: error: optimizer: unknown 'adam'; valid: sgd, adamw"
  ]
  assert not workdir.exists()


# --- Resuming a checkpoint written before a field existed -----------------


def base_dict() -> dict:
  return json.loads(config_lib.base_config().to_json_best_effort())


def test_fields_missing_from_an_older_checkpoint_are_unchanged_at_default():
  current = base_dict()
  saved = base_dict()
  for key in ("optimizer", "adam_b2", "adam_eps"):
    del saved[key]
  del saved["schedule"]["epochs"], saved["schedule"]["cycle_momentum"]
  assert checkpoint.config_changes(saved, current) == []
  current["optimizer"] = "adamw"
  current["schedule"]["epochs"] = 3
  assert checkpoint.config_changes(saved, current) == [
    "optimizer ('<absent>' -> 'adamw')",
    "schedule.epochs ('<absent>' -> 3)",
  ]


def test_optimizer_fields_change_the_trajectory_on_resume():
  for key in ("optimizer", "adam_b2", "adam_eps"):
    assert key not in checkpoint.RESUME_SAFE_KEYS
  saved, current = base_dict(), base_dict()
  current.update(optimizer="adamw", adam_b2=0.99, adam_eps=1e-5)
  assert checkpoint.config_changes(saved, current) == [
    "adam_b2 (0.999 -> 0.99)",
    "adam_eps (1e-08 -> 1e-05)",
    "optimizer ('sgd' -> 'adamw')",
  ]


# --- configs/onecycle_adamw_resnet20.py ----------------------------------


def load_config_file(name):
  return cli.load_config_file(os.path.join(REPO, "configs", name))


def test_onecycle_adamw_config_trains_on_synthetic_data():
  config = load_config_file("onecycle_adamw_resnet20.py")
  assert config.optimizer == "adamw" and config.model == "resnet20"
  # 5 steps: the shortest run with a rising phase at pct_start 0.25.
  config.update(
    dataset="synthetic",
    synthetic_train_size=32,
    synthetic_test_size=16,
    batch_size=16,
    num_steps=5,
  )
  config_lib.check(config, num_devices=1)
  dataset = data_lib.load(
    "synthetic", synthetic_train_size=32, synthetic_test_size=16
  )
  train.validate(config, num_devices=1, num_train_examples=32)
  run = train.setup(config, dataset)
  state = input_pipeline.replicate_tree(
    train.create_train_state(config, run.model, (32, 32, 3), run.tx)
  )
  step = train.make_train_step(config, dataset, run.aug)
  images = input_pipeline.replicate(dataset.train_images)
  labels = input_pipeline.replicate(dataset.train_labels)
  rows = []
  for _ in range(5):
    state, m = step(state, images, labels)
    rows.append(jax.device_get(train.unreplicate(m)))
  assert all(math.isfinite(float(r["train_loss"])) for r in rows)
  assert all(int(r["nonfinite"]) == 0 for r in rows)
  # fit_one_cycle's ends: lr_max / div (25) first, lr_max / div_final (1e5)
  # last; beta1 0.95 at both ends, lower in between.
  lrs = [float(r["learning_rate"]) for r in rows]
  b1s = [float(r["momentum"]) for r in rows]
  assert lrs[0] == pytest.approx(3e-3 / 25, rel=1e-6)
  assert lrs[-1] == pytest.approx(3e-3 / 1e5, rel=1e-5)
  assert b1s[0] == pytest.approx(0.95) and b1s[-1] == pytest.approx(0.95)
  assert min(b1s) < 0.9
  opt_state = train.unreplicate(state).opt_state
  assert float(train.hyperparams(opt_state)["b2"]) == pytest.approx(0.99)
