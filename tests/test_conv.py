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


def _vjp(fn, x, w, g):
  """(input gradient, weight gradient) of `fn(x, w)` for the cotangent g."""
  return jax.jit(lambda x, w, g: jax.vjp(fn, x, w)[1](g))(x, w, g)


def _assert_within(got, want, bound, name):
  excess = np.abs(np.float64(got) - np.float64(want)) - bound
  assert np.all(excess <= 0), (name, float(excess.max()))


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
  # In float64. Each gradient element is a sum of at most n products
  # (n = g.size for the weight gradient, w.size for the input gradient), in
  # whatever order a CPU, a thread count or the chunks choose; each order is
  # within n * 2^-53 * sum(|products|) of the exact sum, so the two results
  # differ by at most twice that, elementwise. sum(|products|) is the same
  # gradient of |x|, |w| and |g|. A dropped, doubled or misplaced chunk
  # misses that bound by 10 orders of magnitude.
  x_shape, w_shape = shapes
  with jax.enable_x64(True):
    # A chunk of 2-3 images: several uneven chunks for every case above.
    per_image = int(np.prod(x_shape[1:])) * 8
    conv = conv_lib.make_conv(chunk_bytes=per_image * 5 // 2)
    kx, kw, kg = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, x_shape, jnp.float64)
    w = jax.random.normal(kw, w_shape, jnp.float64)

    def apply(fn):
      return lambda x, w: fn(x, w, strides, padding, dimension_numbers=dn)

    want = apply(lax.conv_general_dilated)(x, w)
    got = jax.jit(apply(conv))(x, w)
    np.testing.assert_array_equal(got, want)  # The forward is XLA's own.
    g = jax.random.normal(kg, want.shape, jnp.float64)
    gx_want, gw_want = _vjp(apply(lax.conv_general_dilated), x, w, g)
    gx_got, gw_got = _vjp(apply(conv), x, w, g)
    gx_abs, gw_abs = _vjp(apply(lax.conv_general_dilated), *map(abs, (x, w, g)))
    # Host arrays: the bounds below stay float64 outside this block.
    gx_want, gw_want, gx_got, gw_got, gx_abs, gw_abs = jax.device_get(
      (gx_want, gw_want, gx_got, gw_got, gx_abs, gw_abs)
    )
  u = np.finfo(np.float64).eps / 2
  _assert_within(gx_got, gx_want, 2 * w.size * u * gx_abs, "input gradient")
  _assert_within(gw_got, gw_want, 2 * g.size * u * gw_abs, "weight gradient")
  assert gw_got.dtype == np.float64
  assert np.any(gw_got != 0)


def test_bfloat16_gradients_equal_xla():
  shape = (7, 6, 6, 4)
  chunk_bytes = 2 * 6 * 6 * 4 * 2  # 2 images a chunk: 4 chunks.
  conv = conv_lib.make_conv(chunk_bytes=chunk_bytes)
  kx, kw, kg = jax.random.split(jax.random.key(3), 3)
  x = jax.random.normal(kx, shape, jnp.bfloat16)
  w = jax.random.normal(kw, (3, 3, 4, 5), jnp.bfloat16)
  g = jax.random.normal(kg, (7, 6, 6, 5), jnp.bfloat16)

  def same(fn):
    return lambda x, w: fn(
      x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )

  gx_want, gw_want = _vjp(same(lax.conv_general_dilated), x, w, g)
  gx_got, gw_got = _vjp(same(conv), x, w, g)
  assert gx_got.dtype == gw_got.dtype == jnp.bfloat16
  # Bounds: XLA:CPU convolves bfloat16 in float32 and rounds the result
  # once (relative error u = 2^-8); a float32 sum of at most n products is
  # within n * 2^-24 * sum(|products|) of the exact one (n = w.size for the
  # input gradient, g.size for the weight gradient), and sum(|products|) is
  # the same gradient of |x|, |w| and |g|. Input gradient: both results are
  # one rounding of a float32 sum, within 2u + 3 n 2^-24 of sum(|products|).
  # Weight gradient: XLA's result is within u * |want| of its float32 sum;
  # the chunked one rounds each chunk's partial p_k, then each of the K - 1
  # running sums s_j, |s_j| <= S = sum_k |p_k|: within K * u * S.
  u, u32 = 2.0**-8, 2.0**-24
  x32, w32, g32 = (np.float32(a) for a in (x, w, g))
  conv32 = same(lax.conv_general_dilated)
  gx_abs, gw_abs = (
    np.float64(a) for a in _vjp(conv32, *map(abs, (x32, w32, g32)))
  )
  gx_bound = (2 * u + 3 * w.size * u32) * gx_abs
  _assert_within(gx_got, gx_want, gx_bound, "input gradient")
  per_image = int(np.prod(shape[1:])) * 2
  bounds = conv_lib.chunk_bounds(shape[0], per_image, chunk_bytes)
  assert len(bounds) == 4
  partials = [
    np.float64(_vjp(conv32, x32[a:b], w32, g32[a:b])[1]) for a, b in bounds
  ]
  s = sum(np.abs(p) for p in partials)
  gw_bound = (
    len(bounds) * u * s
    + u * np.abs(np.float64(gw_want))
    + 2 * g.size * u32 * gw_abs
  )
  _assert_within(gw_got, gw_want, gw_bound, "weight gradient")
  # Each chunk's contribution exceeds the bound somewhere: losing or
  # doubling any chunk fails.
  assert all(np.any(np.abs(p) > gw_bound) for p in partials)


def test_weight_gradient_inputs_are_stored_once_not_folded_away():
  # The conditional of conv.materialized must survive XLA's simplifier,
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
  # In float64, where the two convolutions differ only in how the weight
  # gradients' sums are split and ordered: float64 rounding (1e-16), grown
  # through ResNet-8's layers and BatchNorms (every kind ResNet-20 has) to
  # about 3e-15 relative to a leaf's norm (measured on 1 and 2 threads).
  # Float32 would give 1e-6 and a dropped or doubled chunk 1e-1, so 1e-10
  # keeps margins of 1e3 or more.
  tolerance = 1e-10
  # 200 kB chunks: 1, 3 and 6 float64 images at 32x32x16, 16x16x32, 8x8x64.
  monkeypatch.setattr(conv_lib, "DEFAULT_CHUNK_BYTES", 200_000)
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3), jnp.float64)
    y = jnp.arange(8) % 10

    def grads(impl):
      model = models.create_model("resnet8", dtype=jnp.float64, conv_impl=impl)
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
  # The same forward, in two programs that may fuse its sums differently.
  assert float(loss_chunked) == pytest.approx(float(loss_xla), rel=tolerance)
  flat_xla = jax.tree_util.tree_leaves_with_path(g_xla)
  flat_chunked = jax.tree.leaves(g_chunked)
  assert len(flat_xla) == len(flat_chunked) == 23
  for (path, a), b in zip(flat_xla, flat_chunked):
    assert a.dtype == b.dtype == np.float64
    diff = np.linalg.norm(b - a) / np.linalg.norm(a)
    assert diff <= tolerance, (jax.tree_util.keystr(path), diff)


def test_config_validates_conv_impl():
  c = config_lib.base_config()
  assert c.conv_impl == "auto"
  c.dataset = "synthetic"
  c.conv_impl = "fast"
  with pytest.raises(config_lib.ConfigError, match="conv_impl"):
    train.validate(c, num_devices=1)


@pytest.mark.parametrize(
  "flags,version,expected",
  [
    ("", "0.10.2", conv_lib.EIGEN_CONV_FLAG),
    ("--a=1", "0.10.0", "--a=1 " + conv_lib.EIGEN_CONV_FLAG),
    (conv_lib.EIGEN_CONV_FLAG, "0.10.2", conv_lib.EIGEN_CONV_FLAG),
    ("--a=1", "0.11.0", None),  # Not checked: never set.
    ("", "0.9.1", None),
    ("", "dev", None),
  ],
)
def test_eigen_conv_flag_only_for_checked_jaxlibs(flags, version, expected):
  assert conv_lib.eigen_conv_flags(flags, version) == expected


def test_eigen_conv_flag_refused_after_backend_start():
  jax.devices()  # Starts the backend.
  with pytest.raises(RuntimeError, match="backend has already started"):
    conv_lib.use_eigen_convolutions()
