"""superconv.batchnorm: the fused BatchNorm is flax's, value and gradients.

Every comparison runs in float64, where a different summation order moves a
result by ~1e-16 of its norm and a wrong term by far more than the 1e-12
tolerance (relative to the leaf's largest magnitude).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from superconv import batchnorm as bn_lib
from superconv import config as config_lib
from superconv import models, train

RTOL = 1e-12


def _assert_close(got, want, rtol=RTOL):
  """Leaf by leaf, within `rtol` of the leaf's largest magnitude."""
  paths = jax.tree_util.tree_leaves_with_path(want)
  assert len(paths) == len(jax.tree.leaves(got))
  for (path, w), g in zip(paths, jax.tree.leaves(got)):
    w, g = np.asarray(w), np.asarray(g)
    assert g.dtype == w.dtype and g.shape == w.shape, jax.tree_util.keystr(path)
    scale = max(float(np.abs(w).max()), 1e-300)
    np.testing.assert_allclose(
      g, w, rtol=0, atol=rtol * scale, err_msg=jax.tree_util.keystr(path)
    )


@pytest.fixture(autouse=True)
def _x64():
  with jax.enable_x64(True):
    yield


def _inputs(shape=(2, 3, 4, 4, 5)):
  """Two shards of images whose mean is far from zero (as after a conv)."""
  k = jax.random.split(jax.random.key(0), 5)
  x = 3.0 + 2.0 * jax.random.normal(k[0], shape, jnp.float64)
  residual = jax.random.normal(k[1], shape, jnp.float64)
  g = jax.random.normal(k[2], shape, jnp.float64)
  c = shape[-1]
  params = {
    "scale": jnp.linspace(0.5, 2.0, c),
    "bias": jnp.linspace(-1.0, 1.0, c),
  }
  # Cotangents of the new running statistics: zero in training, but the
  # backward must still be the derivative of everything the layer returns.
  g_stats = {
    "mean": jax.random.normal(k[3], (c,), jnp.float64),
    "var": jax.random.normal(k[4], (c,), jnp.float64),
  }
  return x, residual, g, params, g_stats


def _layer(fused: bool, axis_name, relu: bool, with_residual: bool):
  """f(params, stats, x, residual) -> (out, new stats) for either module."""
  kw = dict(
    use_running_average=False,
    momentum=0.8,
    epsilon=1e-3,
    dtype=jnp.float64,
    param_dtype=jnp.float64,
    axis_name=axis_name,
  )

  def f(params, stats, x, residual):
    variables = {"params": params, "batch_stats": stats}
    residual = residual if with_residual else None
    if fused:
      return bn_lib.BatchNorm(**kw).apply(
        variables, x, residual=residual, relu=relu, mutable=["batch_stats"]
      )
    y, new = nn.BatchNorm(**kw, use_fast_variance=False).apply(
      variables, x, mutable=["batch_stats"]
    )
    if residual is not None:
      y = y + residual
    return (nn.relu(y) if relu else y), new

  return f


@pytest.mark.parametrize("axis_name", [None, "shards"])
@pytest.mark.parametrize(
  "relu,with_residual", [(False, False), (True, False), (True, True)]
)
def test_train_mode_value_and_vjp_equal_flax(axis_name, relu, with_residual):
  x, residual, g, params, g_stats = _inputs()
  c = x.shape[-1]
  stats = {"mean": jnp.linspace(-1, 1, c), "var": jnp.linspace(1, 2, c)}

  def value_and_vjp(fused):
    f = _layer(fused, axis_name, relu, with_residual)

    def one(x, residual, g):
      out, vjp = jax.vjp(lambda p, x, r: f(p, stats, x, r), params, x, residual)
      return out, vjp((g, {"batch_stats": g_stats}))

    if axis_name is None:  # One shard of 3 images.
      return jax.jit(one)(x[0], residual[0], g[0])
    return jax.jit(jax.vmap(one, axis_name=axis_name))(x, residual, g)

  want, got = value_and_vjp(False), value_and_vjp(True)
  _assert_close(got, want)
  (out, new_stats), (g_params, g_x, g_residual) = got
  if not with_residual:  # A residual that is not used gets no gradient.
    assert not np.any(g_residual)
  # The statistics moved: the running-average update is not a no-op.
  assert not np.allclose(new_stats["batch_stats"]["mean"], stats["mean"])
  assert np.all(np.isfinite(g_x)) and np.any(g_params["scale"])


@pytest.mark.parametrize("with_residual", [False, True])
def test_eval_mode_equals_flax(with_residual):
  x, residual, _, params, _ = _inputs()
  c = x.shape[-1]
  variables = {
    "params": params,
    "batch_stats": {
      "mean": jnp.linspace(2, 4, c),
      "var": jnp.linspace(1, 3, c),
    },
  }
  kw = dict(use_running_average=True, epsilon=1e-3, dtype=jnp.float64)
  r = residual[0] if with_residual else None
  got = bn_lib.BatchNorm(**kw).apply(variables, x[0], residual=r, relu=True)
  want = nn.BatchNorm(**kw).apply(variables, x[0])
  want = nn.relu(want if r is None else want + r)
  _assert_close(got, want)


def test_variables_equal_flax():
  x = jnp.zeros((2, 4, 4, 5))
  for cls in (nn.BatchNorm, bn_lib.BatchNorm):
    module = cls(use_running_average=False)
    variables = module.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, variables) == {
      "params": {"scale": (5,), "bias": (5,)},
      "batch_stats": {"mean": (5,), "var": (5,)},
    }
    np.testing.assert_array_equal(variables["params"]["scale"], 1.0)
    np.testing.assert_array_equal(variables["batch_stats"]["var"], 1.0)


@pytest.mark.parametrize(
  "impl,backend,expected",
  [
    ("auto", "cpu", "fused"),
    ("auto", "gpu", "flax"),
    ("auto", "tpu", "flax"),
    ("flax", "cpu", "flax"),
    ("fused", "gpu", "fused"),
  ],
)
def test_auto_is_fused_on_cpu_only(impl, backend, expected):
  assert bn_lib.resolve(impl, backend) == expected


def test_unknown_impl_is_refused():
  with pytest.raises(ValueError, match="bn_impl: unknown 'fast'"):
    bn_lib.resolve("fast")
  with pytest.raises(ValueError, match="bn_impl: unknown 'fast'"):
    models.create_model("resnet20", bn_impl="fast")
  c = config_lib.base_config()
  assert c.bn_impl == "auto"
  c.dataset = "synthetic"
  c.bn_impl = "fast"
  with pytest.raises(config_lib.ConfigError, match="bn_impl"):
    train.validate(c, num_devices=1)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_parameter_trees_are_the_same_with_either_batchnorm(name):
  x = jnp.zeros((1, 32, 32, 3))

  def tree(impl):
    model = models.create_model(name, bn_impl=impl, shortcut="B")
    shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), x, train=False)
    )
    return jax.tree_util.tree_structure(shapes), jax.tree.leaves(shapes)

  assert tree("flax") == tree("fused")


def test_resnet_step_is_the_same_with_either_batchnorm():
  """Loss, logits, new statistics and gradients of a train step of ResNet-8
  (one block per stage) with projection shortcuts (every kind of BN call)
  on 2 shards that share BN statistics. (Same variables: see
  `test_parameter_trees_are_the_same_with_either_batchnorm`.)"""
  x = jax.random.normal(jax.random.key(1), (2, 2, 8, 8, 3), jnp.float64)
  y = jnp.arange(4).reshape(2, 2) % 10

  def model(impl):
    return models.create_model(
      "resnet8",
      shortcut="B",
      bn_impl=impl,
      conv_impl="xla",
      dtype=jnp.float64,
      axis_name="shards",
    )

  # Random variables of the model's shapes (cheaper than its RNG init).
  shapes = jax.eval_shape(
    lambda: model("flax").init(jax.random.key(0), x[0], train=False)
  )
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    noise = rng.normal(size=leaf.shape)
    if "var" in name:
      return jnp.asarray(1.0 + 0.1 * noise**2)
    if "scale" in name:
      return jnp.asarray(1.0 + 0.1 * noise)
    fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim > 1 else 10
    return jnp.asarray(noise / np.sqrt(fan_in))

  variables = jax.tree_util.tree_map_with_path(fill, shapes)

  def step(impl):
    def loss(params, x, y):
      logits, new = model(impl).apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        x,
        train=True,
        mutable=["batch_stats"],
      )
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
      return loss.mean(), (logits, new)

    grad = jax.value_and_grad(loss, has_aux=True)
    run = jax.jit(jax.vmap(grad, in_axes=(None, 0, 0), axis_name="shards"))
    return run(variables["params"], x, y)

  got = step("fused")
  _assert_close(got, step("flax"))
  (_, (_, new_stats)), grads = got
  # stem conv + BN, 3 x (2 convs, 2 BNs), 2 projections (conv + BN), head.
  assert len(jax.tree.leaves(grads)) == 2 + 1 + 3 * 6 + 2 * 3 + 2
  stats = new_stats["batch_stats"]
  for bn in (stats["stem_bn"], stats["stage2_block1"]["shortcut_bn"]):
    assert not np.allclose(bn["mean"], 0.0)


def test_bfloat16_compute_matches_flax():
  """bf16 activations, float32 statistics and parameters: the same values
  and dtypes as flax's, gradients within bf16 rounding of the norm."""
  x, residual, g, _, _ = _inputs()
  with jax.enable_x64(False):
    x, residual, g = (
      jnp.asarray(np.asarray(a[0], np.float32), jnp.bfloat16)
      for a in (x, residual, g)
    )
    kw = dict(use_running_average=False, dtype=jnp.bfloat16)
    fl = nn.BatchNorm(**kw, use_fast_variance=False)
    fu = bn_lib.BatchNorm(**kw)
    variables = fl.init(jax.random.key(0), x)

    def grads(f):
      out, vjp = jax.vjp(f, variables["params"], x, residual)
      return out, vjp(g)

    def flax_fn(p, x, r):
      y = fl.apply({**variables, "params": p}, x, mutable=["batch_stats"])[0]
      return nn.relu(y + r)

    def fused_fn(p, x, r):
      return fu.apply(
        {**variables, "params": p},
        x,
        residual=r,
        relu=True,
        mutable=["batch_stats"],
      )[0]

    want, got = (
      jax.jit(grads, static_argnums=0)(flax_fn),
      jax.jit(grads, static_argnums=0)(fused_fn),
    )
    for (path, w), a in zip(
      jax.tree_util.tree_leaves_with_path(want), jax.tree.leaves(got)
    ):
      assert a.dtype == w.dtype, jax.tree_util.keystr(path)
      w, a = np.float32(w), np.float32(a)
      # A few bf16 roundings (2^-8 each) of values of the leaf's magnitude.
      np.testing.assert_allclose(
        a, w, rtol=0, atol=3e-2 * np.abs(w).max(), err_msg=str(path)
      )
