"""The chunked-weight-gradient convolution equals XLA's, value and gradients."""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from superconv import config as config_lib
from superconv import conv as conv_lib
from superconv import models, train


@pytest.mark.parametrize(
  "batch,per_image,chunk,expected",
  [
    (128, 64 * 1024, 1 << 20, [(k * 16, k * 16 + 16) for k in range(8)]),
    (
      10,
      100,
      300,
      [(0, 2), (2, 5), (5, 7), (7, 10)],
    ),  # 3 per chunk -> 4 chunks
    (5, 100, 10_000, [(0, 5)]),  # Everything fits: one chunk.
    (3, 100, 1, [(0, 1), (1, 2), (2, 3)]),  # Smaller than one image: 1 each.
  ],
)
def test_chunk_bounds(batch, per_image, chunk, expected):
  assert conv_lib.chunk_bounds(batch, per_image, chunk) == expected


@pytest.mark.parametrize("batch", [1, 7, 64, 129])
def test_chunk_bounds_cover_the_batch_once_in_near_equal_chunks(batch):
  bounds = conv_lib.chunk_bounds(batch, 1000, 16_000)
  assert bounds[0][0] == 0 and bounds[-1][1] == batch
  assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
  sizes = [stop - start for start, stop in bounds]
  assert max(sizes) - min(sizes) <= 1 and max(sizes) <= 16
  assert len(bounds) == -(-batch // 16)


def test_bad_arguments_are_refused():
  with pytest.raises(ValueError, match="batch must be positive"):
    conv_lib.chunk_bounds(0, 10, 10)
  with pytest.raises(ValueError, match="chunk_bytes must be positive"):
    conv_lib.make_conv(0)
  with pytest.raises(ValueError, match="conv_impl: unknown 'fast'"):
    conv_lib.resolve("fast")
  with pytest.raises(ValueError, match="conv_impl: unknown 'fast'"):
    models.create_model("resnet20", conv_impl="fast")


@pytest.mark.parametrize(
  "impl,backend,expected",
  [
    ("auto", "cpu", "chunked"),
    ("auto", "gpu", "xla"),
    ("auto", "tpu", "xla"),
    ("xla", "cpu", "xla"),
    ("chunked", "gpu", "chunked"),
  ],
)
def test_auto_is_chunked_on_cpu_only(impl, backend, expected):
  assert conv_lib.resolve(impl, backend) == expected
  fn = conv_lib.conv_for_backend(impl, backend)
  assert (fn is lax.conv_general_dilated) == (expected == "xla")


@pytest.mark.parametrize(
  "strides,padding,dn,shapes",
  [
    ((1, 1), "SAME", ("NHWC", "HWIO", "NHWC"), ((10, 8, 8, 3), (3, 3, 3, 5))),
    (
      (2, 2),
      ((1, 1), (1, 1)),
      ("NHWC", "HWIO", "NHWC"),
      ((9, 8, 8, 4), (3, 3, 4, 6)),
    ),
    ((1, 1), "VALID", ("NCHW", "OIHW", "NCHW"), ((6, 3, 7, 7), (4, 3, 3, 3))),
    ((1, 1), "SAME", ("NHWC", "HWIO", "NHWC"), ((11, 6, 6, 4), (1, 1, 4, 2))),
  ],
)
def test_value_and_gradients_equal_xla(strides, padding, dn, shapes):
  # A chunk of 2-3 images: several uneven chunks for every case above.
  x_shape, w_shape = shapes
  per_image = int(np.prod(x_shape[1:])) * 4
  conv = conv_lib.make_conv(chunk_bytes=per_image * 5 // 2)
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape)

  def apply(fn, x, w):
    return fn(x, w, strides, padding, dimension_numbers=dn)

  want = apply(lax.conv_general_dilated, x, w)
  got = jax.jit(lambda x, w: apply(conv, x, w))(x, w)
  np.testing.assert_array_equal(got, want)  # The forward is XLA's own.
  g = jax.random.normal(kg, want.shape)
  _, vjp_want = jax.vjp(
    lambda x, w: apply(lax.conv_general_dilated, x, w), x, w
  )
  _, vjp_got = jax.vjp(lambda x, w: apply(conv, x, w), x, w)
  gx_want, gw_want = vjp_want(g)
  gx_got, gw_got = jax.jit(vjp_got)(g)
  np.testing.assert_allclose(gx_got, gx_want, rtol=1e-6, atol=1e-6)
  # Summed in another order: equal up to float32 rounding.
  np.testing.assert_allclose(
    gw_got, gw_want, rtol=1e-5, atol=1e-5 * np.abs(gw_want).max()
  )
  assert not np.array_equal(gw_got, jnp.zeros_like(gw_got))


def test_bfloat16_gradients_equal_xla():
  conv = conv_lib.make_conv(chunk_bytes=2 * 6 * 6 * 4 * 2)  # 2 images a chunk.
  kx, kw, kg = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, (7, 6, 6, 4), jnp.bfloat16)
  w = jax.random.normal(kw, (3, 3, 4, 5), jnp.bfloat16)
  g = jax.random.normal(kg, (7, 6, 6, 5), jnp.bfloat16)

  def grads(fn):
    f = lambda x, w: fn(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    return jax.jit(lambda x, w, g: jax.vjp(f, x, w)[1](g))(x, w, g)

  (gx_want, gw_want), (gx_got, gw_got) = (
    grads(lax.conv_general_dilated),
    grads(conv),
  )
  assert gx_got.dtype == gw_got.dtype == jnp.bfloat16
  np.testing.assert_array_equal(gx_got, gx_want)
  np.testing.assert_allclose(
    np.float32(gw_got),
    np.float32(gw_want),
    rtol=2e-2,
    atol=2e-2 * float(np.abs(np.float32(gw_want)).max()),
  )


def test_weight_gradient_inputs_are_stored_once_not_folded_away():
  # The conditional of conv._materialized must survive XLA's simplifier,
  # else the chunk transposes recompute their producers (superconv/conv.py).
  conv = conv_lib.make_conv(chunk_bytes=4 * 4 * 3 * 4)  # 1 image a chunk.
  x = jnp.ones((3, 4, 4, 3))
  w = jnp.ones((3, 3, 3, 2))

  def loss(x, w):
    y = conv(
      jnp.maximum(x * 2.0, 0.0),
      w,
      (1, 1),
      "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    return jnp.sum(y**2)

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, w).compile().as_text()
  assert " conditional(" in hlo


def test_resnet_gradients_are_the_same_with_either_convolution(monkeypatch):
  # 100 kB chunks: 1, 3 and 6 images at 32x32x16, 16x16x32 and 8x8x64.
  monkeypatch.setattr(conv_lib, "DEFAULT_CHUNK_BYTES", 100_000)
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  y = jnp.arange(8) % 10

  def grads(impl):
    model = models.create_model("resnet20", conv_impl=impl)
    variables = model.init(jax.random.key(0), x, train=False)

    def loss(params):
      logits, _ = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        x,
        train=True,
        mutable=["batch_stats"],
      )
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return variables, jax.jit(jax.value_and_grad(loss))(variables["params"])

  v_xla, (loss_xla, g_xla) = grads("xla")
  v_chunked, (loss_chunked, g_chunked) = grads("chunked")
  # Same parameters (names, shapes, values): checkpoints are interchangeable.
  jax.tree.map(np.testing.assert_array_equal, v_xla, v_chunked)
  assert loss_chunked == loss_xla
  flat_xla = jax.tree_util.tree_leaves_with_path(g_xla)
  flat_chunked = jax.tree.leaves(g_chunked)
  assert len(flat_xla) == len(flat_chunked) == 59
  for (path, a), b in zip(flat_xla, flat_chunked):
    np.testing.assert_allclose(
      b,
      a,
      rtol=1e-4,
      atol=1e-5 * float(np.abs(a).max()),
      err_msg=jax.tree_util.keystr(path),
    )


def test_config_validates_conv_impl():
  c = config_lib.base_config()
  assert c.conv_impl == "auto"
  c.dataset = "synthetic"
  c.conv_impl = "fast"
  with pytest.raises(config_lib.ConfigError, match="conv_impl"):
    train.validate(c, num_devices=1)
