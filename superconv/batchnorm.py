"""BatchNorm (+ residual add + ReLU) with a hand-derived backward.

`BatchNorm` is `flax.linen.BatchNorm` as the models use it (feature axis
last, two-pass variance `mean((x - mean)^2)`, statistics in float32,
`axis_name` for the cross-device mean, running averages with `momentum`,
the same `params` and `batch_stats` names), extended to what follows it in
a residual block: `bn(x, residual=r, relu=True)` is
`relu(bn(x) + r)` in one piece.

In training mode the normalization is a `jax.custom_vjp` whose backward is
the closed form that oneDNN and cuDNN use: one pass over the cotangent for
the two per-channel sums (sum(g), sum(g * (x - mean))), one for the input
gradient,

  dx = scale / sigma * (g - mean(g) - xhat * mean(g * xhat)),

with the ReLU's mask taken from the stored output and the residual's
cotangent the masked `g`. Autodiff through the two-pass statistics instead
runs separate passes for each of the terms and, on XLA:CPU, recomputes the
block's element-wise chain inside them. The values are the same as flax's
(same operations in the same order); gradients are equal up to float
summation order (`tests/test_bn.py` compares both in float64).

With `axis_name` (pmap), the two sums are averaged over the devices like
the statistics are, so the input gradient is the one autodiff gives there:
the derivative of the sum of the devices' losses. Scale and bias
gradients stay per-device sums, as autodiff gives them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from superconv import conv as conv_lib

BN_IMPLS = ("auto", "flax", "fused")


def resolve(impl: str = "auto", backend: str | None = None) -> str:
  """'flax' or 'fused': `impl`, with 'auto' = fused on the CPU backend."""
  if impl not in BN_IMPLS:
    raise ValueError(f"bn_impl: unknown {impl!r}; valid: {', '.join(BN_IMPLS)}")
  if impl == "auto":
    impl = "fused" if (backend or jax.default_backend()) == "cpu" else "flax"
  return impl


def _pmean(x, axis_name):
  return x if axis_name is None else lax.pmean(x, axis_name)


def _stats(x, axis_name):
  """Mean and two-pass variance over all axes but the last, in float32."""
  axes = tuple(range(x.ndim - 1))
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = _pmean(xf.mean(axes), axis_name)
  var = _pmean(lax.square(xf - mean).mean(axes), axis_name)
  return mean, var


def _apply(x, mean, mul, bias, residual, relu, dtype):
  """(x - mean) * mul + bias in float32, cast to `dtype`, + residual, relu.

  The operations and their order are flax's `_normalize` followed by the
  block's add and `nn.relu`, so the values are the same.
  """
  y = ((x - mean) * mul + bias).astype(dtype)
  if residual is not None:
    y = y + residual
  return nn.relu(y) if relu else y


def _apply_stored(x, mean, mul, bias, residual, relu, dtype):
  """`_apply`, stored once when it is a block's output (`residual` given).

  XLA:CPU would otherwise recompute a stage's whole chain of BN-add-ReLU
  into each consumer of a block's output (the next block's add, the ReLU
  masks of the backward), which grows with the square of the stage's depth.
  """
  if residual is None:
    return _apply(x, mean, mul, bias, residual, relu, dtype)
  return conv_lib.materialized(
    (x, mean, mul, bias, residual),
    mul,
    lambda args: _apply(*args, relu, dtype),
  )


def _train_norm(x, scale, bias, residual, *, epsilon, axis_name, relu, dtype):
  """(out, mean, var) of training-mode BN (+ residual, relu), custom VJP."""
  axes = tuple(range(x.ndim - 1))
  count = 1
  for a in axes:
    count *= x.shape[a]

  def forward(x, scale, bias, residual):
    mean, var = _stats(x, axis_name)
    inv = lax.rsqrt(var + epsilon)
    out = _apply_stored(x, mean, inv * scale, bias, residual, relu, dtype)
    return (out, mean, var), (x, mean, inv, scale, out)

  @jax.custom_vjp
  def norm(x, scale, bias, residual):
    return forward(x, scale, bias, residual)[0]

  def backward(saved, cotangents):
    x, mean, inv, scale, out = saved
    g_out, g_mean, g_var = cotangents
    if relu:
      g_out = jnp.where(out > 0, g_out, jnp.zeros_like(g_out))
    g_residual = None if residual is None else g_out
    g = g_out.astype(mean.dtype)
    xc = x - mean
    sum_g = g.sum(axes)
    sum_gxc = (g * xc).sum(axes)
    # Device means of the sums and of the statistics' own cotangents (the
    # running averages': zero in training), in one collective.
    m_g, m_gxc, c_mean, c_var = _pmean(
      jnp.stack([sum_g, sum_gxc, g_mean, g_var]), axis_name
    )
    a = scale * inv
    b = (2.0 * c_var - a * inv * inv * m_gxc) / count
    c = (c_mean - a * m_g) / count
    dx = (a * g + b * xc + c).astype(x.dtype)
    return (
      dx,
      (inv * sum_gxc).astype(scale.dtype),
      sum_g.astype(bias.dtype),
      g_residual,
    )

  norm.defvjp(forward, backward)
  return norm(x, scale, bias, residual)


class BatchNorm(nn.Module):
  """`flax.linen.BatchNorm` over the last axis, with an optional fused
  residual add and ReLU and a hand-derived backward in training mode.

  The fields that the models set on `nn.BatchNorm`, with the same meaning;
  the variables are the same (`params`: scale, bias; `batch_stats`: mean,
  var), so parameter trees and checkpoints are interchangeable.
  """

  use_running_average: bool | None = None
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(
    self,
    x,
    residual=None,
    relu: bool = False,
    use_running_average: bool | None = None,
  ):
    """BN of `x`, then `+ residual` (if given) and ReLU (if `relu`)."""
    use_running_average = nn.merge_param(
      "use_running_average", self.use_running_average, use_running_average
    )
    features = (x.shape[-1],)
    ra_mean = self.variable(
      "batch_stats", "mean", lambda s: jnp.zeros(s, jnp.float32), features
    )
    ra_var = self.variable(
      "batch_stats", "var", lambda s: jnp.ones(s, jnp.float32), features
    )
    scale = self.param(
      "scale", nn.initializers.ones, features, self.param_dtype
    )
    bias = self.param("bias", nn.initializers.zeros, features, self.param_dtype)
    dtype = nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype)
    if use_running_average:
      mul = lax.rsqrt(ra_var.value + self.epsilon) * scale
      return _apply_stored(x, ra_mean.value, mul, bias, residual, relu, dtype)
    initializing = self.is_initializing()
    out, mean, var = _train_norm(
      x,
      scale,
      bias,
      residual,
      epsilon=self.epsilon,
      axis_name=None if initializing else self.axis_name,
      relu=relu,
      dtype=dtype,
    )
    if not initializing:
      m = self.momentum
      ra_mean.value = m * ra_mean.value + (1 - m) * mean
      ra_var.value = m * ra_var.value + (1 - m) * var
    return out
