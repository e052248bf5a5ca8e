"""Convolution with a cache-sized weight gradient, for XLA:CPU.

XLA:CPU computes a convolution's weight gradient (a contraction over the
whole batch and image, into a tiny 3x3xCinxCout result) with one Eigen
contraction that streams the full batch through the cache, and barely uses
a second thread. Split into batch chunks whose activations fit in a core's
L2 cache and summed, the same gradient is 2-3 times faster (ResNet-20
shapes at batch 128 on a 2-core Xeon: 37 -> 14 ms at 32x32x16,
21 -> 8.5 ms at 16x16x32). Its inputs are stored once before they are cut
into chunks (see `materialized`). The forward convolution and the
input gradient are XLA's own.

`make_conv` returns a drop-in replacement for
`jax.lax.conv_general_dilated` (the `conv_general_dilated` argument of
`flax.linen.Conv`): the same parameters, values and input gradient, and a
weight gradient equal up to float summation order. On GPU/TPU, where the
compilers do this well, `conv_for_backend` keeps the plain
convolution.
"""

from __future__ import annotations

from collections.abc import Callable
import functools
import os

import jax
from jax import lax
import jax.numpy as jnp

# Activation bytes of one weight-gradient chunk: half of a 2 MiB L2.
DEFAULT_CHUNK_BYTES = 1 << 20

CONV_IMPLS = ("auto", "xla", "chunked")


def _batch_axis(dimension_numbers, ndim: int) -> int:
  dn = lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dimension_numbers)
  return dn.lhs_spec[0]


def chunk_bounds(
  batch: int, per_image_bytes: int, chunk_bytes: int
) -> list[tuple[int, int]]:
  """[start, stop) batch ranges of about `chunk_bytes` of activations each.

  Chunks are as equal as possible (sizes differ by at most one image) and
  cover `range(batch)` exactly once, in order.
  """
  if batch <= 0:
    raise ValueError(f"batch must be positive, got {batch}")
  per_chunk = max(1, chunk_bytes // max(1, per_image_bytes))
  count = -(-batch // per_chunk)  # <= batch: per_chunk >= 1.
  edges = [batch * k // count for k in range(count + 1)]
  return list(zip(edges[:-1], edges[1:]))


def materialized(tree, token, fn=None):
  """`tree` itself (or `fn(tree)`), computed once into buffers, not fused
  into consumers.

  XLA:CPU duplicates cheap elementwise producers into each consumer. The
  consumers of the weight gradient's inputs are transposes of batch chunks,
  and recomputing a residual stage's BatchNorm/ReLU chain inside every
  strided transpose made those transposes 4-10 times slower than copies of
  a stored array (about 130 of 470 ms per ResNet-20 step at batch 128).
  `lax.optimization_barrier` would say this, but the CPU compiler drops
  it; a conditional's operands and results are always buffers. Its
  predicate is always true, `(bits | 1) != 0`, but computed from `token` so
  that XLA cannot fold the conditional away. With `fn`, the conditional
  computes `fn(tree)` and writes it straight into its result (an identity
  branch costs a copy of its operand).
  """
  fn = (lambda t: t) if fn is None else fn
  bits = lax.bitcast_convert_type(
    jnp.ravel(token)[0].astype(jnp.float32), jnp.int32
  )
  return lax.cond(
    (bits | 1) != 0,
    fn,
    lambda t: jax.tree.map(jnp.zeros_like, jax.eval_shape(fn, t)),
    tree,
  )


def make_conv(chunk_bytes: int | None = None) -> Callable:
  """`lax.conv_general_dilated` whose weight gradient runs in batch chunks.

  `chunk_bytes`: activation bytes per chunk (default
  `DEFAULT_CHUNK_BYTES`).
  """
  chunk_bytes = DEFAULT_CHUNK_BYTES if chunk_bytes is None else chunk_bytes
  if chunk_bytes <= 0:
    raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")

  def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    batch_group_count=1,
    precision=None,
    preferred_element_type=None,
  ):
    conv = functools.partial(
      lax.conv_general_dilated,
      window_strides=window_strides,
      padding=padding,
      lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation,
      dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count,
      batch_group_count=batch_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
    )
    if batch_group_count != 1:
      return conv(lhs, rhs)
    axis = _batch_axis(dimension_numbers, lhs.ndim)
    per_image = lhs.size // lhs.shape[axis] * lhs.dtype.itemsize
    bounds = chunk_bounds(lhs.shape[axis], per_image, chunk_bytes)
    if len(bounds) == 1:
      return conv(lhs, rhs)

    @jax.custom_vjp
    def chunked(x, w):
      return conv(x, w)

    def fwd(x, w):
      return conv(x, w), (x, w)

    def bwd(res, g):
      x, w = res
      x, g = materialized((x, g), w)
      _, vjp_x = jax.vjp(lambda x_: conv(x_, w), x)
      (gx,) = vjp_x(g)
      gw = None
      for start, stop in bounds:
        xs = lax.slice_in_dim(x, start, stop, axis=axis)
        gs = lax.slice_in_dim(g, start, stop, axis=axis)
        _, vjp_w = jax.vjp(lambda w_, xs=xs: conv(xs, w_), w)
        (part,) = vjp_w(gs)
        gw = part if gw is None else gw + part
      return gx, gw

    chunked.defvjp(fwd, bwd)
    return chunked(lhs, rhs)

  return conv_general_dilated


def resolve(impl: str = "auto", backend: str | None = None) -> str:
  """'xla' or 'chunked': `impl`, with 'auto' = chunked on the CPU backend."""
  if impl not in CONV_IMPLS:
    raise ValueError(
      f"conv_impl: unknown {impl!r}; valid: {', '.join(CONV_IMPLS)}"
    )
  if impl == "auto":
    impl = "chunked" if (backend or jax.default_backend()) == "cpu" else "xla"
  return impl


def conv_for_backend(
  impl: str = "auto", backend: str | None = None
) -> Callable:
  """The convolution function for `impl` (see `resolve`)."""
  return (
    make_conv()
    if resolve(impl, backend) == "chunked"
    else lax.conv_general_dilated
  )


# jaxlib 0.10 sends forward and input-gradient convolutions with more than
# 16 channels to YNNPACK; for CIFAR ResNets' narrow layers Eigen's are
# faster (BENCHMARKS.md: +14-20% per step). The XLA flag that switches is
# experimental, and an XLA that does not know a flag stops the process, so
# it is only ever set for the jaxlib releases checked to accept it.
EIGEN_CONV_FLAG = (
  "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
)
EIGEN_CONV_JAXLIB = ((0, 10),)  # (major, minor) of the releases checked.


def eigen_conv_flags(xla_flags: str, jaxlib_version: str) -> str | None:
  """`xla_flags` plus `EIGEN_CONV_FLAG`, or None where `jaxlib_version` is
  not a release in `EIGEN_CONV_JAXLIB`."""
  try:
    major, minor = (int(p) for p in jaxlib_version.split(".")[:2])
  except ValueError:
    return None
  if (major, minor) not in EIGEN_CONV_JAXLIB:
    return None
  flags = xla_flags.split()
  return " ".join(
    flags if EIGEN_CONV_FLAG in flags else [*flags, EIGEN_CONV_FLAG]
  )


def use_eigen_convolutions() -> bool:
  """Makes XLA:CPU run convolutions with Eigen instead of YNNPACK.

  Adds `EIGEN_CONV_FLAG` to `XLA_FLAGS` where this jaxlib is known to
  accept it. XLA reads its flags when the first backend starts, so call
  this before any use of a device.

  Returns:
    Whether the flag is set; False (nothing changed) for other jaxlibs.

  Raises:
    RuntimeError: a JAX backend has already started.
  """
  from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top

  if xla_bridge.backends_are_initialized():
    raise RuntimeError(
      "use_eigen_convolutions: a JAX backend has already started"
    )
  flags = eigen_conv_flags(os.environ.get("XLA_FLAGS", ""), jaxlib.__version__)
  if flags is None:
    return False
  os.environ["XLA_FLAGS"] = flags
  return True
