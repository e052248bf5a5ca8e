"""Flax linen ResNets for CIFAR.

Two families are provided:

* `resnet20/32/44/56/110` -- the CIFAR ResNets of He et al. 2016 ("Deep
  Residual Learning for Image Recognition", section 4.2): 6n+2 layers, three
  stages of `n` BasicBlocks with 16/32/64 channels; `resnet8` (n=1), the
  smallest of the family, for smoke tests.  The default shortcut is
  option "A" (parameter-free subsample + zero-pad), as in the paper and in
  akamaster/pytorch_resnet_cifar10; option "B" uses a 1x1 conv + BN projection
  where the shape changes.
* `resnet18/34/50` and `preact_resnet18` -- the ImageNet ResNets adapted to
  32x32 inputs as in kuangliu/pytorch-cifar: 3x3 stride-1 stem, no max-pool,
  four stages with 64/128/256/512 channels and projection shortcuts.

A single table (`_ARCHS`) describes every architecture; it drives both the
Flax modules built by `create_model` and the analytic multiply-accumulate
count of `forward_macs` (each block class knows its own MAC formula).
`from_config` builds the module a config describes; `validate_config`
checks its model keys (model, shortcut, dtype, BatchNorm, conv_impl),
naming the key at fault.

All models take float NHWC images, compute in `dtype` (e.g. bfloat16) with
float32 parameters and batch statistics, and return float32 logits (all
float64 when `dtype` is float64, which needs `jax_enable_x64`: the tests
check algorithms that way, free of float32 rounding).  Padding
is explicit (1 pixel for 3x3 convs, none for 1x1 convs) so stride-2 layers
match PyTorch's `padding=1` exactly rather than XLA's asymmetric "SAME".
"""

from collections.abc import Callable, Sequence
import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from superconv import batchnorm as bn_lib
from superconv import config as config_lib
from superconv import conv as conv_lib

ModuleDef = Callable[..., nn.Module]

SHORTCUTS: tuple[str, ...] = ("A", "B")
"""Valid shortcut options: "A" = subsample + zero-pad, "B" = conv1x1 + BN."""

# He initialisation as in torchvision: N(0, 2 / fan_out) for conv kernels.
_CONV_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_IN_CHANNELS = 3  # RGB input, used by the analytic MAC count.


def _out_size(size: int, strides: int) -> int:
  """Output size of a 3x3/pad-1 or 1x1/pad-0 conv: ceil(size / strides)."""
  return -(-size // strides)


def _needs_projection(in_ch: int, out_ch: int, strides: int) -> bool:
  """Whether a residual shortcut must change the shape of its input."""
  return strides != 1 or in_ch != out_ch


def _norm_act(norm: ModuleDef, name: str, x, residual=None, relu=True):
  """`relu(norm(x) + residual)`, the add and the ReLU each optional.

  One call to a fused `superconv.batchnorm.BatchNorm`; with
  `flax.linen.BatchNorm`, the same three operations one after another.
  """
  bn = norm(name=name)
  if isinstance(bn, bn_lib.BatchNorm):
    return bn(x, residual=residual, relu=relu)
  y = bn(x)
  if residual is not None:
    y = y + residual
  return nn.relu(y) if relu else y


def _shortcut(
  x,
  out_ch: int,
  strides: int,
  kind: str,
  conv: ModuleDef,
  norm: ModuleDef | None,
):
  """Residual shortcut from `x` to `out_ch` channels at `strides`.

  Identity when the shape is unchanged.  Otherwise option "A" subsamples
  spatially (`x[:, ::s, ::s, :]`) and zero-pads the missing channels evenly
  on both sides (`planes // 4` per side when the width doubles); option "B"
  projects with a bias-free 1x1 conv, followed by BN unless `norm` is None.
  """
  in_ch = x.shape[-1]
  if not _needs_projection(in_ch, out_ch, strides):
    return x
  if kind == "A":
    extra = out_ch - in_ch
    if extra < 0:
      raise ValueError(
        f"shortcut 'A' cannot reduce channels ({in_ch} -> {out_ch})"
      )
    x = x[:, ::strides, ::strides, :]
    return jnp.pad(
      x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2))
    )
  x = conv(out_ch, (1, 1), strides, padding=0, name="shortcut_conv")(x)
  if norm is not None:
    x = _norm_act(norm, "shortcut_bn", x, relu=False)
  return x


def _projection_macs(
  h: int, w: int, in_ch: int, out_ch: int, strides: int, kind: str
) -> int:
  """MACs of the 1x1 projection shortcut (zero for identity or option "A")."""
  if kind == "B" and _needs_projection(in_ch, out_ch, strides):
    return _out_size(h, strides) * _out_size(w, strides) * in_ch * out_ch
  return 0


class BasicBlock(nn.Module):
  """Post-activation basic block: conv3x3-BN-relu-conv3x3-BN, + shortcut, relu.

  `conv` and `norm` are partially applied `nn.Conv` / `nn.BatchNorm`
  constructors carrying dtype, initialisers and train/eval mode.
  """

  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  shortcut: str = "B"

  # output channels = expansion * planes (class constant, not a field)
  expansion = 1

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.planes, (3, 3), self.strides, padding=1, name="conv1")(x)
    y = _norm_act(self.norm, "bn1", y)
    y = self.conv(self.planes, (3, 3), 1, padding=1, name="conv2")(y)
    short = _shortcut(
      x, self.planes, self.strides, self.shortcut, self.conv, self.norm
    )
    return _norm_act(self.norm, "bn2", y, residual=short)

  @staticmethod
  def macs(
    h: int, w: int, in_ch: int, planes: int, strides: int, shortcut: str
  ) -> int:
    """Forward MACs of one block on an `h` x `w` x `in_ch` input."""
    ho, wo = _out_size(h, strides), _out_size(w, strides)
    return ho * wo * 9 * (in_ch * planes + planes * planes) + _projection_macs(
      h, w, in_ch, planes, strides, shortcut
    )


class Bottleneck(nn.Module):
  """Bottleneck block (expansion 4), stride on the 3x3 conv.

  As kuangliu's and torchvision v1.5's.

  conv1x1-BN-relu-conv3x3(stride)-BN-relu-conv1x1(4*planes)-BN, + shortcut,
  relu.
  """

  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  shortcut: str = "B"

  # output channels = expansion * planes (class constant, not a field)
  expansion = 4

  @nn.compact
  def __call__(self, x):
    out_ch = self.planes * self.expansion
    y = self.conv(self.planes, (1, 1), 1, padding=0, name="conv1")(x)
    y = _norm_act(self.norm, "bn1", y)
    y = self.conv(self.planes, (3, 3), self.strides, padding=1, name="conv2")(y)
    y = _norm_act(self.norm, "bn2", y)
    y = self.conv(out_ch, (1, 1), 1, padding=0, name="conv3")(y)
    short = _shortcut(
      x, out_ch, self.strides, self.shortcut, self.conv, self.norm
    )
    return _norm_act(self.norm, "bn3", y, residual=short)

  @staticmethod
  def macs(
    h: int, w: int, in_ch: int, planes: int, strides: int, shortcut: str
  ) -> int:
    """Forward MACs of one block on an `h` x `w` x `in_ch` input."""
    ho, wo = _out_size(h, strides), _out_size(w, strides)
    out_ch = planes * Bottleneck.expansion
    return (
      h * w * in_ch * planes
      + ho * wo * (9 * planes * planes + planes * out_ch)
      + _projection_macs(h, w, in_ch, out_ch, strides, shortcut)
    )


class PreActBlock(nn.Module):
  """Pre-activation basic block (He et al. 2016b), as kuangliu's PreActBlock.

  out = relu(bn1(x)); shortcut = conv1x1(out) (no BN) if the shape changes,
  else x; out = conv2(relu(bn2(conv1(out)))); return out + shortcut.
  """

  planes: int
  strides: int
  conv: ModuleDef
  norm: ModuleDef
  shortcut: str = (
    "B"  # only "B" (a bare 1x1 conv projection) is meaningful here
  )

  # output channels = expansion * planes (class constant, not a field)
  expansion = 1

  @nn.compact
  def __call__(self, x):
    out = _norm_act(self.norm, "bn1", x)
    short = x
    if _needs_projection(x.shape[-1], self.planes, self.strides):
      short = _shortcut(
        out, self.planes, self.strides, self.shortcut, self.conv, None
      )
    y = self.conv(self.planes, (3, 3), self.strides, padding=1, name="conv1")(
      out
    )
    y = _norm_act(self.norm, "bn2", y)
    y = self.conv(self.planes, (3, 3), 1, padding=1, name="conv2")(y)
    return y + short

  macs = staticmethod(BasicBlock.macs)  # same convs as the basic block


def _param_dtype(dtype):
  """float32, or float64 for a float64 model (see the module doc)."""
  return jnp.promote_types(dtype, jnp.float32)


def _layer_factories(
  module: "ResNet", train: bool
) -> tuple[ModuleDef, ModuleDef]:
  """Conv and BatchNorm constructors with the dtype and BN settings."""
  conv = functools.partial(
    nn.Conv,
    use_bias=False,
    dtype=module.dtype,
    param_dtype=_param_dtype(module.dtype),
    kernel_init=_CONV_INIT,
    conv_general_dilated=conv_lib.conv_for_backend(module.conv_impl),
  )
  norm_args = dict(
    use_running_average=not train,
    momentum=module.bn_momentum,
    epsilon=module.bn_epsilon,
    dtype=module.dtype,
    param_dtype=_param_dtype(module.dtype),
    axis_name=module.axis_name,
  )
  if bn_lib.resolve(module.bn_impl) == "fused":
    # Two-pass variance too (superconv/batchnorm.py).
    norm = functools.partial(bn_lib.BatchNorm, **norm_args)
  else:
    norm = functools.partial(
      nn.BatchNorm,
      **norm_args,
      # Two-pass variance, mean((x - mean)^2): the
      # one-pass E[x^2] - E[x]^2 cancels badly when
      # |mean| >> std, which makes results depend on
      # how the batch is split over devices.
      use_fast_variance=False,
    )
  return conv, norm


class ResNet(nn.Module):
  """CIFAR ResNet-18/34/50 as in kuangliu/pytorch-cifar.

  stem conv3x3(widths[0], stride 1)-BN-relu (no max-pool); one stage per
  entry of `stage_sizes`/`widths` (stride 2 at the first block of every
  stage but the first); global average pool; Dense(num_classes) with bias.
  """

  stage_sizes: Sequence[int]
  block_cls: ModuleDef = BasicBlock
  widths: Sequence[int] = (64, 128, 256, 512)
  num_classes: int = 10
  dtype: Any = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  shortcut: str = "B"
  axis_name: str | None = None
  conv_impl: str = (
    "auto"  # superconv.conv.CONV_IMPLS: 'auto' = chunked weight gradient on CPU
  )
  bn_impl: str = (
    "auto"  # superconv.batchnorm.BN_IMPLS: 'auto' = fused backward on CPU
  )

  @nn.compact
  def __call__(self, x, train: bool):
    conv, norm = _layer_factories(self, train)
    x = jnp.asarray(x, self.dtype)
    x = conv(self.widths[0], (3, 3), 1, padding=1, name="stem_conv")(x)
    x = _norm_act(norm, "stem_bn", x)
    x = _stages(self, x, conv, norm)
    return _head(self, x)


class CifarResNet(ResNet):
  """He et al. 2016 CIFAR ResNet (6n+2 layers): `stage_sizes=(n, n, n)`.

  conv3x3(16)-BN-relu, three stages of n BasicBlocks with 16/32/64 channels,
  global average pool, Dense(num_classes).  `shortcut` "A" (default) is the
  parameter-free subsample + zero-pad; "B" is a conv1x1 + BN projection.
  """

  block_cls: ModuleDef = BasicBlock
  widths: Sequence[int] = (16, 32, 64)
  shortcut: str = "A"


class PreActResNet(ResNet):
  """Pre-activation ResNet as in kuangliu/pytorch-cifar (`PreActResNet18`).

  The stem is a bare conv3x3 (no BN/relu), blocks are `PreActBlock`,
  and, as in kuangliu's code, there is no final BN-relu before pooling.
  """

  block_cls: ModuleDef = PreActBlock

  @nn.compact
  def __call__(self, x, train: bool):
    conv, norm = _layer_factories(self, train)
    x = jnp.asarray(x, self.dtype)
    x = conv(self.widths[0], (3, 3), 1, padding=1, name="stem_conv")(x)
    x = _stages(self, x, conv, norm)
    return _head(self, x)


def _stages(net: ResNet, x, conv: ModuleDef, norm: ModuleDef):
  """Residual stages of `net`; called from inside its compact `__call__`."""
  for i, (n_blocks, planes) in enumerate(zip(net.stage_sizes, net.widths)):
    for j in range(n_blocks):
      strides = 2 if i > 0 and j == 0 else 1
      x = net.block_cls(
        planes=planes,
        strides=strides,
        conv=conv,
        norm=norm,
        shortcut=net.shortcut,
        name=f"stage{i + 1}_block{j + 1}",
      )(x)
  return x


def _head(net: ResNet, x):
  """Global average pool + Dense(num_classes) with bias; float32 logits
  (float64 for a float64 model)."""
  x = jnp.mean(x, axis=(1, 2))
  param_dtype = _param_dtype(net.dtype)
  x = nn.Dense(
    net.num_classes, dtype=net.dtype, param_dtype=param_dtype, name="head"
  )(x)
  return jnp.asarray(x, param_dtype)


@dataclasses.dataclass(frozen=True)
class _Arch:
  """One row of the architecture table.

  `shortcut` is None when the caller's `shortcut` argument applies (the
  CIFAR ResNets); otherwise the fixed shortcut kind of that architecture.
  """

  network: type[ResNet]
  block: type[nn.Module]
  stage_sizes: tuple[int, ...]
  widths: tuple[int, ...]
  shortcut: str | None = None


_CIFAR_WIDTHS = (16, 32, 64)
_IMAGENET_WIDTHS = (64, 128, 256, 512)

_ARCHS: dict[str, _Arch] = {
  **{
    f"resnet{6 * n + 2}": _Arch(
      CifarResNet, BasicBlock, (n, n, n), _CIFAR_WIDTHS
    )
    for n in (1, 3, 5, 7, 9, 18)
  },
  "resnet18": _Arch(ResNet, BasicBlock, (2, 2, 2, 2), _IMAGENET_WIDTHS, "B"),
  "resnet34": _Arch(ResNet, BasicBlock, (3, 4, 6, 3), _IMAGENET_WIDTHS, "B"),
  "resnet50": _Arch(ResNet, Bottleneck, (3, 4, 6, 3), _IMAGENET_WIDTHS, "B"),
  "preact_resnet18": _Arch(
    PreActResNet, PreActBlock, (2, 2, 2, 2), _IMAGENET_WIDTHS, "B"
  ),
}

MODEL_NAMES: tuple[str, ...] = tuple(_ARCHS)


def _lookup(name: str, shortcut: str) -> tuple[_Arch, str]:
  """Validates `name` and `shortcut`; returns the arch and its shortcut."""
  if name not in _ARCHS:
    raise ValueError(
      f"model: unknown {name!r}; valid: {', '.join(MODEL_NAMES)}"
    )
  if shortcut not in SHORTCUTS:
    raise ValueError(
      f"shortcut: unknown {shortcut!r}; valid: {', '.join(SHORTCUTS)}"
    )
  arch = _ARCHS[name]
  return arch, arch.shortcut or shortcut


def _check(condition: bool, key: str, message: str) -> None:
  if not condition:
    raise config_lib.ConfigError(f"{key}: {message}")


def validate_config(config) -> None:
  """Checks the model keys of a config; raises config.ConfigError."""
  _check(
    config.model in MODEL_NAMES,
    "model",
    f"unknown {config.model!r}; valid: {', '.join(MODEL_NAMES)}",
  )
  _check(
    config.shortcut in SHORTCUTS,
    "shortcut",
    f"must be 'A' or 'B', got {config.shortcut!r}",
  )
  _check(
    config.dtype in ("bfloat16", "float32", "float64"),
    "dtype",
    f"must be 'bfloat16' or 'float32' (or 'float64' with"
    f" JAX_ENABLE_X64=1), got {config.dtype!r}",
  )
  _check(
    config.dtype != "float64" or jax.config.jax_enable_x64,
    "dtype",
    "float64 needs JAX_ENABLE_X64=1",
  )
  _check(
    0.0 <= config.bn_momentum < 1.0,
    "bn_momentum",
    f"must be in [0, 1), got {config.bn_momentum}",
  )
  _check(config.bn_epsilon > 0, "bn_epsilon", "must be > 0")
  _check(
    config.conv_impl in conv_lib.CONV_IMPLS,
    "conv_impl",
    f"unknown {config.conv_impl!r}; valid: {', '.join(conv_lib.CONV_IMPLS)}",
  )
  _check(
    config.bn_impl in bn_lib.BN_IMPLS,
    "bn_impl",
    f"unknown {config.bn_impl!r}; valid: {', '.join(bn_lib.BN_IMPLS)}",
  )


def create_model(
  name: str,
  *,
  num_classes: int = 10,
  dtype=jnp.float32,
  bn_momentum: float = 0.9,
  bn_epsilon: float = 1e-5,
  shortcut: str = "A",
  axis_name: str | None = None,
  conv_impl: str = "auto",
  bn_impl: str = "auto",
) -> nn.Module:
  """Build the Flax module for model `name` (one of `MODEL_NAMES`).

  Args:
    name: architecture name.
    num_classes: width of the final Dense layer.
    dtype: computation dtype (parameters and batch statistics stay float32;
      float64 for float64).
    bn_momentum: flax BatchNorm momentum
      (running = m * running + (1 - m) * batch).
    bn_epsilon: BatchNorm epsilon.
    shortcut: "A" or "B"; only affects resnet8/20/32/44/56/110.  The
      kuangliu-style resnet18/34/50/preact_resnet18 always use projections.
    axis_name: pmap axis over which training-mode BN averages batch statistics.
    conv_impl: one of `superconv.conv.CONV_IMPLS`: 'xla' (plain
      `lax.conv_general_dilated`), 'chunked' (weight gradient in
      cache-sized batch chunks, see :mod:`superconv.conv`) or 'auto'
      (chunked on the CPU backend, xla elsewhere). Same parameters and
      values; gradients equal up to float summation order.
    bn_impl: one of `superconv.batchnorm.BN_IMPLS`: 'flax'
      (`flax.linen.BatchNorm`, autodiff backward), 'fused' (BatchNorm,
      residual add and ReLU with a hand-derived backward, see
      :mod:`superconv.batchnorm`) or 'auto' (fused on the CPU backend,
      flax elsewhere). Same parameters and values; gradients equal up to
      float summation order.

  Returns:
    A module called as `module.apply(variables, x, train=...)` on NHWC
    images, with variables `{'params', 'batch_stats'}`, returning float32
    logits of shape [batch, num_classes].

  Raises:
    ValueError: unknown `name`, `shortcut`, `conv_impl` or `bn_impl`.
  """
  arch, shortcut = _lookup(name, shortcut)
  conv_lib.resolve(conv_impl)  # validates
  bn_lib.resolve(bn_impl)
  return arch.network(
    stage_sizes=arch.stage_sizes,
    block_cls=arch.block,
    widths=arch.widths,
    num_classes=num_classes,
    dtype=dtype,
    bn_momentum=bn_momentum,
    bn_epsilon=bn_epsilon,
    shortcut=shortcut,
    axis_name=axis_name,
    conv_impl=conv_impl,
    bn_impl=bn_impl,
  )


def from_config(config, num_classes: int, axis_name: str | None = None):
  """The Flax module a config describes (`create_model` with its keys).

  `axis_name`: the pmap axis of synchronized BatchNorm (training); None for
  a module called directly (evaluation in a notebook).
  """
  return create_model(
    config.model,
    num_classes=num_classes,
    dtype=jnp.dtype(config.dtype),
    bn_momentum=config.bn_momentum,
    bn_epsilon=config.bn_epsilon,
    shortcut=config.shortcut,
    axis_name=axis_name,
    conv_impl=config.get("conv_impl", "auto"),
    bn_impl=config.get("bn_impl", "auto"),
  )


def forward_macs(
  name: str, *, num_classes: int = 10, image_size: int = 32, shortcut: str = "A"
) -> int:
  """Analytic multiply-accumulates of one forward pass for one RGB image.

  Counts convolutions and the final Dense layer only (BN, relu, residual
  adds and pooling are ignored), walking the same table as `create_model`.

  Raises:
    ValueError: unknown `name` or `shortcut`.
  """
  arch, shortcut = _lookup(name, shortcut)
  h = w = image_size
  ch = arch.widths[0]
  macs = h * w * 9 * _IN_CHANNELS * ch  # stem conv3x3, stride 1
  for i, (n_blocks, planes) in enumerate(zip(arch.stage_sizes, arch.widths)):
    for j in range(n_blocks):
      strides = 2 if i > 0 and j == 0 else 1
      macs += arch.block.macs(h, w, ch, planes, strides, shortcut)
      h, w = _out_size(h, strides), _out_size(w, strides)
      ch = planes * arch.block.expansion
  return macs + ch * num_classes
