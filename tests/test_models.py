"""superconv.models: parameter counts, dtypes, MACs, BatchNorm semantics."""

import math

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from superconv import models
from superconv.models import MODEL_NAMES, create_model, forward_macs

EXPECTED_PARAMS = {
  # Not in the published tables: 6n+2 with n=1, counted by hand the same
  # way as resnet20's (stem 464, one block per stage 4,672 + 13,952 +
  # 55,552, head 650).
  "resnet8": 75_290,
  "resnet20": 269_722,
  "resnet32": 464_154,
  "resnet44": 658_586,
  "resnet56": 853_018,
  "resnet110": 1_727_962,
  "resnet18": 11_173_962,
  "resnet34": 21_282_122,
  "resnet50": 23_520_842,
  "preact_resnet18": 11_171_146,
}


def _abstract_init(model, batch=2, size=32, in_dtype=jnp.float32):
  """(logits, variables) as ShapeDtypeStructs, without any compute."""
  x = jnp.zeros((batch, size, size, 3), in_dtype)
  return jax.eval_shape(
    lambda: model.init_with_output(jax.random.key(0), x, train=False)
  )


def _count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree))


def test_model_names_match_table():
  assert MODEL_NAMES == tuple(EXPECTED_PARAMS)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_param_count(name):
  _, variables = _abstract_init(create_model(name))
  assert set(variables) == {"params", "batch_stats"}
  assert _count(variables["params"]) == EXPECTED_PARAMS[name]


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_and_variable_dtypes(name, dtype):
  # The input dtype is independent of the compute dtype: feed the "other" one.
  in_dtype = jnp.bfloat16 if dtype == jnp.float32 else jnp.float32
  logits, variables = _abstract_init(
    create_model(name, dtype=dtype), in_dtype=in_dtype
  )
  assert logits.shape == (2, 10)
  assert logits.dtype == jnp.float32
  for collection in ("params", "batch_stats"):
    dtypes = {
      leaf.dtype for leaf in jax.tree_util.tree_leaves(variables[collection])
    }
    assert dtypes == {jnp.dtype(jnp.float32)}, (collection, dtypes)


def test_num_classes():
  logits, variables = _abstract_init(create_model("resnet18", num_classes=100))
  assert logits.shape == (2, 100)
  assert variables["params"]["head"]["kernel"].shape == (512, 100)
  assert variables["params"]["head"]["bias"].shape == (100,)


@pytest.fixture(scope="module")
def resnet20_variables():
  """Real resnet20 variables, initialised once (RNG init is slow on CPU).

  Created with axis_name set: init runs BN in eval mode, so needs no pmap.
  Parameters do not depend on the image size or compute dtype, so every
  test below reuses them.
  """
  model = create_model("resnet20", axis_name="batch")
  return model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)


def test_resnet20_init_values(resnet20_variables):
  params, stats = (
    resnet20_variables["params"],
    resnet20_variables["batch_stats"],
  )
  # He (fan_out) init for conv kernels: std = sqrt(2 / (3 * 3 * 16)).
  kernel = params["stage1_block1"]["conv1"]["kernel"]
  assert kernel.shape == (3, 3, 16, 16) and kernel.dtype == jnp.float32
  assert abs(float(jnp.std(kernel)) - math.sqrt(2 / 144)) < 0.02
  np.testing.assert_array_equal(params["stem_bn"]["scale"], 1.0)
  np.testing.assert_array_equal(params["stem_bn"]["bias"], 0.0)
  np.testing.assert_array_equal(stats["stem_bn"]["mean"], 0.0)
  np.testing.assert_array_equal(stats["stem_bn"]["var"], 1.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_real_forward_resnet20(resnet20_variables, dtype):
  model = create_model("resnet20", dtype=dtype)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3), jnp.float32)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(
    resnet20_variables, x
  )
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  if dtype == jnp.bfloat16:  # same function, lower precision
    ref = create_model("resnet20").apply(resnet20_variables, x, train=False)
    np.testing.assert_allclose(logits, ref, rtol=0.1, atol=0.1)


def test_shortcut_b_param_count():
  # Option B adds a conv1x1 + BN projection at the two downsampling blocks:
  #   stage2: 16*32 kernel + 2*32 BN (scale, bias) =  576
  #   stage3: 32*64 kernel + 2*64 BN               = 2176
  # 269,722 + 576 + 2176 = 272,474.
  _, variables = _abstract_init(create_model("resnet20", shortcut="B"))
  assert _count(variables["params"]) == 272_474
  assert "shortcut_conv" in variables["params"]["stage2_block1"]
  assert "shortcut_bn" in variables["batch_stats"]["stage2_block1"]
  # Option A (default) is parameter-free.
  _, variables = _abstract_init(create_model("resnet20"))
  assert not any(
    "shortcut" in key for key in variables["params"]["stage2_block1"]
  )


def test_shortcut_a_subsamples_and_zero_pads():
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 16))
  y = models._shortcut(x, 32, 2, "A", conv=None, norm=None)
  assert y.shape == (1, 2, 2, 32)
  np.testing.assert_array_equal(y[..., 8:24], x[:, ::2, ::2, :])
  assert not np.any(y[..., :8]) and not np.any(y[..., 24:])
  assert models._shortcut(x, 16, 1, "A", conv=None, norm=None) is x


def test_preact_structure():
  _, variables = _abstract_init(create_model("preact_resnet18"))
  params = variables["params"]
  assert "stem_bn" not in params  # bare conv stem
  block = params["stage2_block1"]
  assert (
    "shortcut_conv" in block and "shortcut_bn" not in block
  )  # projection without BN
  assert "shortcut_conv" not in params["stage1_block1"]


@pytest.mark.parametrize(
  "name, expected",
  [("resnet20", 40.6e6), ("resnet56", 125.5e6), ("resnet18", 555.4e6)],
)
def test_forward_macs_reference(name, expected):
  assert abs(forward_macs(name) - expected) / expected < 0.01


def _traced_macs(model, image_size):
  """Count conv/dense MACs (padding positions included) in the traced jaxpr."""
  x = jnp.zeros((1, image_size, image_size, 3))
  variables = jax.eval_shape(
    lambda: model.init(jax.random.key(0), x, train=False)
  )
  jaxpr = jax.make_jaxpr(lambda v: model.apply(v, x, train=False))(variables)
  paddings = []

  def walk(jaxpr):
    total = 0
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "conv_general_dilated":
        kernel = eqn.invars[1].aval.shape  # HWIO (flax)
        total += math.prod(eqn.outvars[0].aval.shape) * math.prod(kernel[:-1])
        paddings.append((kernel[:2], tuple(eqn.params["padding"])))
      elif eqn.primitive.name == "dot_general":
        (lhs_contract, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        total += math.prod(eqn.outvars[0].aval.shape) * math.prod(
          lhs[d] for d in lhs_contract
        )
      for param in eqn.params.values():
        for sub in param if isinstance(param, (tuple, list)) else (param,):
          if isinstance(sub, jax.extend.core.ClosedJaxpr):
            total += walk(sub.jaxpr)
          elif isinstance(sub, jax.extend.core.Jaxpr):
            total += walk(sub)
    return total

  return walk(jaxpr.jaxpr), paddings


@pytest.mark.parametrize(
  "name, shortcut, image_size",
  [
    ("resnet20", "A", 32),
    ("resnet20", "B", 32),
    ("resnet18", "A", 32),
    ("resnet50", "A", 32),
    ("preact_resnet18", "A", 32),
    ("resnet32", "B", 24),
  ],
)
def test_forward_macs_matches_traced_graph(name, shortcut, image_size):
  traced, paddings = _traced_macs(
    create_model(name, shortcut=shortcut), image_size
  )
  assert forward_macs(name, shortcut=shortcut, image_size=image_size) == traced
  # PyTorch-style symmetric padding: 1 pixel for 3x3 convs, none for 1x1 convs.
  for kernel_hw, padding in paddings:
    pad = (kernel_hw[0] // 2, kernel_hw[0] // 2)
    assert padding == (pad, pad), (kernel_hw, padding)


def test_forward_macs_shortcut_b_adds_projections():
  # 1x1 projections at 16x16 (16->32) and 8x8 (32->64).
  extra = 16 * 16 * 16 * 32 + 8 * 8 * 32 * 64
  assert (
    forward_macs("resnet20", shortcut="B") == forward_macs("resnet20") + extra
  )
  assert (
    forward_macs("resnet18", num_classes=100)
    == forward_macs("resnet18") + 512 * 90
  )


@pytest.mark.parametrize("fn", [create_model, forward_macs])
def test_unknown_model_name(fn):
  with pytest.raises(ValueError) as info:
    fn("resnet21")
  message = str(info.value)
  assert "resnet21" in message
  assert all(name in message for name in MODEL_NAMES)


@pytest.mark.parametrize("fn", [create_model, forward_macs])
def test_bad_shortcut(fn):
  with pytest.raises(ValueError) as info:
    fn("resnet20", shortcut="C")
  message = str(info.value)
  assert "shortcut" in message and "'C'" in message
  assert "A" in message and "B" in message


def _stem_conv(x, kernel):
  return jax.lax.conv_general_dilated(
    x,
    kernel,
    (1, 1),
    ((1, 1), (1, 1)),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )


def test_train_mode_updates_running_stats(resnet20_variables):
  momentum = 0.8
  model = create_model("resnet20", bn_momentum=momentum, axis_name="batch")
  x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
  variables = resnet20_variables  # running mean 0, running var 1

  def train_step(variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"])

  # A single-device pmap exercises the cross-device mean with axis_name='batch'.
  replicate = lambda tree: jax.tree_util.tree_map(lambda a: a[None], tree)
  logits, updates = jax.pmap(train_step, axis_name="batch")(
    replicate(variables), x[None]
  )
  assert logits.shape == (1, 4, 10) and logits.dtype == jnp.float32
  stats = jax.tree_util.tree_map(lambda a: a[0], updates["batch_stats"])

  h = _stem_conv(x, variables["params"]["stem_conv"]["kernel"])
  batch_mean = h.mean(axis=(0, 1, 2))
  batch_var = h.var(axis=(0, 1, 2))
  np.testing.assert_allclose(
    stats["stem_bn"]["mean"], (1 - momentum) * batch_mean, rtol=1e-4, atol=1e-6
  )
  np.testing.assert_allclose(
    stats["stem_bn"]["var"], momentum + (1 - momentum) * batch_var, rtol=1e-4
  )
  # Eval mode leaves the statistics alone.
  _, eval_updates = model.apply(
    variables, x, train=False, mutable=["batch_stats"]
  )
  np.testing.assert_array_equal(
    eval_updates["batch_stats"]["stem_bn"]["mean"], 0.0
  )


def test_sharded_batch_stats_equal_global_stats(resnet20_variables):
  """With axis_name set, BN statistics are averaged over shards: 2 shards of 2
  images (emulated with vmap over a named axis) match one batch of 4.

  In float64: the two differ only in how each statistic's sum is split (two
  halves and a mean over the axis, or one sum), which float64 rounds at
  1e-16; through 20 layers that stays near 1e-15 relative to a leaf's norm
  (measured). Float32 would give 1e-6, and per-shard statistics (no mean
  over the axis) differ by about 1 (measured 0.9), so 1e-10 keeps margins of
  1e5 or more on either side.
  """
  tolerance = 1e-10
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(1), (4, 8, 8, 3), jnp.float64)
    local = create_model("resnet20", dtype=jnp.float64)
    sharded = create_model("resnet20", dtype=jnp.float64, axis_name="batch")
    variables = jax.tree.map(
      lambda v: v.astype(jnp.float64), resnet20_variables
    )

    ref_logits, ref = jax.jit(
      lambda x: local.apply(variables, x, train=True, mutable=["batch_stats"])
    )(x)
    logits, stats = jax.jit(
      jax.vmap(
        lambda xs: sharded.apply(
          variables, xs, train=True, mutable=["batch_stats"]
        ),
        axis_name="batch",
      )
    )(x.reshape(2, 2, 8, 8, 3))
    ref_logits, ref, logits, stats = jax.device_get(
      (ref_logits, ref, logits, stats)
    )

  def assert_close(got, want):
    assert got.dtype == want.dtype == np.float64
    diff = np.linalg.norm(got - want)
    assert diff <= tolerance * np.linalg.norm(want), diff

  assert_close(logits.reshape(4, 10), ref_logits)
  leaves = jax.tree_util.tree_leaves(stats)
  assert len(leaves) == 2 * 19  # Mean and variance of every BatchNorm.
  for got, want in zip(leaves, jax.tree_util.tree_leaves(ref)):
    assert_close(got[0], want)
    assert_close(got[1], want)
