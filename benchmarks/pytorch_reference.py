r"""PyTorch reference for `python -m superconv.bench`: same models, same step.

  python benchmarks/pytorch_reference.py --model resnet56 --batch 1000 \
      --dtype bfloat16 --json torch.json

Runs in its own environment (torch is not a dependency of superconv; this
file imports neither superconv nor JAX, only superconv/bench_common.py,
plain Python, loaded by its path from this checkout):

  python3 -m venv .torchvenv
  .torchvenv/bin/pip install torch numpy
  python -m superconv.bench --compare-pytorch   # Finds .torchvenv itself.

Models: the He et al. CIFAR ResNets (resnet20/32/44/56/110) with option A
shortcuts, as akamaster/pytorch_resnet_cifar10, and resnet18/34 as
kuangliu/pytorch-cifar; parameter counts are asserted equal to superconv's
(`EXPECTED_PARAMS`). Forward MACs are counted from the modules themselves
(forward hooks on every Conv2d and Linear), an independent check of
`superconv.models.forward_macs`.

The step: SGD (momentum 0.9, coupled weight decay on every parameter, as
superconv's default decay_bn_and_bias=True), softmax cross-entropy,
BatchNorm momentum 0.1 (= Flax 0.9), eps 1e-5. bfloat16 autocast for
--dtype bfloat16 (float32 parameters, as superconv), TF32 for float32 on
CUDA (what XLA uses by default), cudnn.benchmark, a fused SGD where
available.

Settings (`--settings`, `bench_common.TORCH_SETTINGS`), each its own row,
model and optimizer, since a user picks whichever is fastest: `eager`
(NCHW), `eager_cl` (channels_last memory format), `compile`/`compile_cl`
(`torch.compile(model)`, `--compile-mode`) -- if compiling (or the first
compiled step) fails, that setting runs eagerly and its `settings` says why.
Default: eager, eager_cl, compile_cl.

What is timed (as superconv.bench, see benchmarks/README.md):
* step: the step on one fixed, pre-augmented, normalized device batch.
* aug: the step plus selecting the batch from the device-resident uint8
  data set (a permutation per epoch) and random crop (4-pixel zero padding)
  + horizontal flip + normalization on the device.
* loop: a plain training loop of aug steps that reads the loss back to the
  host every --log-every steps (as superconv's loop fetches its metrics);
  images/s over all log intervals but the first.
Blocks of --steps steps end with torch.cuda.synchronize() (CPU ops are
synchronous). As in superconv.bench (`bench_common.measure_group`): every
setting warms up until two consecutive blocks of --warmup steps agree and
`torch.compile` compiled nothing during them (its counters,
`compile_events`), then the settings' --repeats timed blocks are
interleaved; a rate is the median block, with its spread and flags.
compile_s is the wall time of the first step (compilation, autotuning and
one step).

`--serve` (used by `superconv.bench --compare-pytorch`) answers JSON
requests, one per line on stdin, so that superconv.bench can interleave
these settings' blocks with its own.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
import traceback


def _load_common():
  """superconv/bench_common.py of this checkout, without the package (whose
  other modules need JAX)."""
  path = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "superconv",
    "bench_common.py",
  )
  name = "superconv_bench_common"
  if name in sys.modules:
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


common = _load_common()
ROW_KEYS = common.ROW_KEYS

# superconv.models parameter counts (tests/test_models.py).
EXPECTED_PARAMS = {
  "resnet20": 269_722,
  "resnet32": 464_154,
  "resnet44": 658_586,
  "resnet56": 853_018,
  "resnet110": 1_727_962,
  "resnet18": 11_173_962,
  "resnet34": 21_282_122,
}
MODEL_NAMES = tuple(EXPECTED_PARAMS)

MEAN = (0.4914, 0.4822, 0.4465)  # CIFAR-10 channel statistics ([0, 1] units).
STD = (0.2470, 0.2435, 0.2616)

# torch._dynamo.utils.counters entries that grow with every compilation:
# frames Dynamo compiled (a recompilation for a new input counts again),
# graphs AOT autograd compiled (forward and backward), and graphs inductor
# compiled or loaded from its cache.
COMPILE_COUNTERS = (
  ("frames", "total"),
  ("aot_autograd", "total"),
  ("inductor", "fxgraph_cache_miss"),
  ("inductor", "fxgraph_cache_hit"),
)


def compile_events(counters) -> int:
  """How many compilations `counters` (torch._dynamo.utils.counters, a
  mapping of mappings) record so far; a change means a compilation."""
  return sum(int(counters.get(a, {}).get(b, 0)) for a, b in COMPILE_COUNTERS)


def torch_compile_events() -> int:
  try:
    from torch._dynamo.utils import counters  # pylint: disable=g-import-not-at-top
  except ImportError:  # A torch without Dynamo compiles nothing.
    return 0
  return compile_events(counters)


# ============================================================================
# Models (torch imported lazily: this module's tables import without it)
# ============================================================================


def build_model(name: str, num_classes: int = 10):
  """The torch.nn.Module for `name` (one of MODEL_NAMES)."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  class OptionA(nn.Module):
    """Parameter-free shortcut: subsample, zero-pad channels (akamaster)."""

    def __init__(self, planes: int):
      super().__init__()
      self.pad = planes // 4

    def forward(self, x):
      return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

  class BasicBlock(nn.Module):
    """conv3x3-BN-relu-conv3x3-BN + shortcut, relu."""

    def __init__(self, in_planes: int, planes: int, stride: int, option: str):
      super().__init__()
      self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(planes)
      self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
      self.bn2 = nn.BatchNorm2d(planes)
      self.shortcut = nn.Sequential()
      if stride != 1 or in_planes != planes:
        if option == "A":
          self.shortcut = OptionA(planes)
        else:
          self.shortcut = nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, stride, bias=False),
            nn.BatchNorm2d(planes),
          )

    def forward(self, x):
      out = F.relu(self.bn1(self.conv1(x)))
      out = self.bn2(self.conv2(out))
      return F.relu(out + self.shortcut(x))

  class ResNet(nn.Module):
    """Stem conv3x3-BN-relu, stages, global average pool, linear."""

    def __init__(self, stage_sizes, widths, option: str):
      super().__init__()
      self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
      self.bn1 = nn.BatchNorm2d(widths[0])
      layers, in_planes = [], widths[0]
      for i, (n, planes) in enumerate(zip(stage_sizes, widths)):
        for j in range(n):
          stride = 2 if i > 0 and j == 0 else 1
          layers.append(BasicBlock(in_planes, planes, stride, option))
          in_planes = planes
      self.layers = nn.Sequential(*layers)
      self.linear = nn.Linear(in_planes, num_classes)
      for m in self.modules():
        if isinstance(m, nn.Conv2d):
          nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
      out = F.relu(self.bn1(self.conv1(x)))
      out = self.layers(out)
      out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
      return self.linear(out)

  if name not in EXPECTED_PARAMS:
    raise ValueError(
      f"--model: {name!r} is not in the PyTorch reference;"
      f" valid: {', '.join(MODEL_NAMES)}"
    )
  if name == "resnet18":
    return ResNet((2, 2, 2, 2), (64, 128, 256, 512), "B")
  if name == "resnet34":
    return ResNet((3, 4, 6, 3), (64, 128, 256, 512), "B")
  n = (int(name[len("resnet") :]) - 2) // 6
  return ResNet((n, n, n), (16, 32, 64), "A")


def count_params(model) -> int:
  return sum(p.numel() for p in model.parameters())


def forward_macs(model, image_size: int = 32) -> int:
  """MACs of one forward pass of one image: Conv2d and Linear layers only
  (as superconv.models.forward_macs), counted with forward hooks."""
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  total = [0]

  def conv_hook(m, inputs, out):
    k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
    total[0] += out.shape[2] * out.shape[3] * m.out_channels * k

  def linear_hook(m, inputs, out):
    total[0] += m.in_features * m.out_features

  hooks = []
  for m in model.modules():
    if isinstance(m, nn.Conv2d):
      hooks.append(m.register_forward_hook(conv_hook))
    elif isinstance(m, nn.Linear):
      hooks.append(m.register_forward_hook(linear_hook))
  was_training = model.training
  model.eval()
  with torch.no_grad():
    model(
      torch.zeros(
        1, 3, image_size, image_size, device=next(model.parameters()).device
      )
    )
  model.train(was_training)
  for h in hooks:
    h.remove()
  return total[0]


# ============================================================================
# Data on the device and augmentation
# ============================================================================


def augment(images_u8, padding: int = 4):
  """Random crop of the zero-padded images + random horizontal flip.

  images_u8: uint8 [N, H, W, C] on the device. One gather does both: the
  flip reverses the crop's column indices.
  """
  import torch  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top

  n, h, w, _ = images_u8.shape
  dev = images_u8.device
  padded = F.pad(images_u8, (0, 0, padding, padding, padding, padding))
  dy = torch.randint(0, 2 * padding + 1, (n, 1), device=dev)
  dx = torch.randint(0, 2 * padding + 1, (n, 1), device=dev)
  rows = dy + torch.arange(h, device=dev)
  cols = dx + torch.arange(w, device=dev)
  flip = torch.rand(n, 1, device=dev) < 0.5
  cols = torch.where(flip, cols.flip(1), cols)
  batch = torch.arange(n, device=dev)[:, None, None]
  return padded[batch, rows[:, :, None], cols[:, None, :]]


def normalize(images_u8, mean, std):
  """uint8 NHWC -> float32 NCHW in channels_last memory, normalized."""
  x = (images_u8.float() / 255.0 - mean) / std
  return x.permute(0, 3, 1, 2)  # NCHW view of NHWC memory: channels_last.


# ============================================================================
# One setting
# ============================================================================


class Data:
  """The device-resident data of one (batch) that the settings share."""

  def __init__(self, args, batch: int, device: str):
    import torch  # pylint: disable=g-import-not-at-top

    g = torch.Generator().manual_seed(0)
    size = max(args.train_size, batch)
    self.images = torch.randint(
      0, 256, (size, 32, 32, 3), generator=g, dtype=torch.uint8
    ).to(device)
    self.labels = torch.randint(0, 10, (size,), generator=g).to(device)
    self.mean = torch.tensor(MEAN, device=device)
    self.std = torch.tensor(STD, device=device)
    torch.manual_seed(0)
    # NCHW view of NHWC memory (channels_last); each setting lays it out.
    self.fixed_x = normalize(augment(self.images[:batch]), self.mean, self.std)
    self.fixed_y = self.labels[:batch]


def base_row(args, model: str, batch: int, dtype: str, device: str, setting):
  """A row of ROW_KEYS with what is known before measuring."""
  import torch  # pylint: disable=g-import-not-at-top

  kind = (
    torch.cuda.get_device_name(torch.device(device))
    if device.startswith("cuda")
    else platform.processor() or "cpu"
  )
  row = dict.fromkeys(ROW_KEYS)
  row.update(
    framework="pytorch",
    model=model,
    global_batch=batch,
    dtype=dtype,
    parallel_seeds=1,
    devices=1,
    device_kind=kind,
    backend=device.split(":")[0],
    setting=setting,
    steps=args.steps,
    repeats=args.repeats,
    warmup=args.warmup,
    peak_tflops=common.peak_tflops(kind, dtype, args.peak_tflops),
    flags=[],
  )
  return row


class Unavailable:
  """A setting that could not be built: its row has the error; never run."""

  images_per_step = 0

  def __init__(self, row: dict):
    self.row = row


class Bench:
  """One setting of one row (a `bench_common.Participant`): its model,
  optimizer and the timed functions."""

  def __init__(
    self, args, model_name: str, batch: int, dtype: str, device: str, setting
  ):
    import torch  # pylint: disable=g-import-not-at-top

    self.torch = torch
    self.device = device
    self.batch = batch
    self.dtype = dtype
    self.args = args
    self.setting = setting
    self.images_per_step = batch
    compile_, self.channels_last = common.TORCH_SETTINGS[setting]
    self.row = base_row(args, model_name, batch, dtype, device, setting)
    torch.manual_seed(0)
    model = build_model(model_name).to(device)
    params = count_params(model)
    if params != EXPECTED_PARAMS[model_name]:
      raise AssertionError(
        f"{model_name}: {params:,} parameters, superconv"
        f" has {EXPECTED_PARAMS[model_name]:,}"
      )
    self.row["params"] = params
    self.row["forward_macs"] = forward_macs(model)
    self.row["train_gflops_per_image"] = 3 * self.row["forward_macs"] * 2 / 1e9
    if self.channels_last:
      model = model.to(memory_format=torch.channels_last)
    model.train()
    self.model = model
    try:
      self.opt = torch.optim.SGD(
        model.parameters(),
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        fused=True,
      )
      self.fused = True
    except (RuntimeError, TypeError, ValueError):
      self.opt = torch.optim.SGD(
        model.parameters(),
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
      )
      self.fused = False
    self.forward = model
    self.compiled = "eager"
    if compile_:
      try:
        self.forward = torch.compile(model, mode=args.compile_mode)
        self.compiled = f"torch.compile(mode={args.compile_mode})"
      except Exception as e:  # pylint: disable=broad-except
        self.compiled = f"eager (torch.compile failed: {_first_line(e)})"
    self.data = None
    self.fixed_x = self.fixed_y = None
    self.steps_per_epoch = max(args.train_size, batch) // batch
    self.perm = None
    self.step_count = 0
    self.row["settings"] = self.settings()

  def use(self, data: Data) -> None:
    self.data = data
    self.fixed_x = data.fixed_x.contiguous(
      memory_format=self.torch.channels_last
      if self.channels_last
      else self.torch.contiguous_format
    )
    self.fixed_y = data.fixed_y

  def sync(self):
    if self.device.startswith("cuda"):
      self.torch.cuda.synchronize()

  def _autocast(self):
    torch = self.torch
    if self.dtype == "bfloat16":
      return torch.autocast(
        device_type=self.device.split(":")[0], dtype=torch.bfloat16
      )
    return torch.autocast(device_type=self.device.split(":")[0], enabled=False)

  def train_step(self, x, y):
    """One SGD step; returns the loss (a device tensor, not synced)."""
    self.opt.zero_grad(set_to_none=True)
    with self._autocast():
      logits = self.forward(x)
    loss = self.torch.nn.functional.cross_entropy(logits.float(), y)
    loss.backward()
    self.opt.step()
    return loss.detach()

  def next_batch(self):
    """The next batch of the epoch's permutation, augmented on device."""
    d = self.data
    i = self.step_count % self.steps_per_epoch
    if i == 0:
      self.perm = self.torch.randperm(len(d.images), device=self.device)
    self.step_count += 1
    idx = self.perm[i * self.batch : (i + 1) * self.batch]
    x = normalize(augment(d.images[idx]), d.mean, d.std)
    if not self.channels_last:
      x = x.contiguous()
    return x, d.labels[idx]

  def bare_step(self):
    return self.train_step(self.fixed_x, self.fixed_y)

  def aug_step(self):
    return self.train_step(*self.next_batch())

  def first_step(self) -> float:
    """Runs (and times) the first step; falls back to eager if compiling
    fails there (torch.compile compiles lazily)."""
    t0 = time.perf_counter()
    try:
      self.bare_step()
      self.sync()
    except Exception as e:  # pylint: disable=broad-except
      if self.forward is self.model or _is_oom(e):
        raise
      self.compiled = f"eager (torch.compile failed: {_first_line(e)})"
      self.forward = self.model
      t0 = time.perf_counter()
      self.bare_step()
      self.sync()
    return time.perf_counter() - t0

  # --- bench_common.Participant ----------------------------------------------

  def _failed(self, e: BaseException) -> None:
    if not _is_oom(e):
      raise e
    self.row["error"] = "out of memory"

  def start(self, figure: str) -> bool:
    """The bare step: its first step (compile_s). The aug step: one untimed
    step, in case its input compiles anew."""
    try:
      if figure == "step":
        if self.row["compile_s"] is None:
          self.row["compile_s"] = self.first_step()
      else:
        self.aug_step()
        self.sync()
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
      return False
    self.row["settings"] = self.settings()
    return True

  def block(self, figure: str, steps: int):
    fn = self.bare_step if figure == "step" else self.aug_step
    before = torch_compile_events()
    try:
      t0 = time.perf_counter()
      for _ in range(steps):
        fn()
      self.sync()
      seconds = time.perf_counter() - t0
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
      return None
    return seconds, torch_compile_events() - before

  def stop(self, figure: str) -> None:
    del figure

  def loop(self):
    """(images, seconds) of each log interval of a plain loop, the first
    interval excluded."""
    every, intervals = self.args.log_every, self.args.loop_intervals
    marks = []
    try:
      for step in range(1, every * (intervals + 1) + 1):
        loss = self.aug_step()
        if step % every == 0:
          loss.item()  # Host sync, as a logging loop does.
          marks.append(time.perf_counter())
    except Exception as e:  # pylint: disable=broad-except
      self._failed(e)
      return None
    return [(self.batch * every, b - a) for a, b in zip(marks, marks[1:])]

  def settings(self) -> str:
    torch = self.torch
    parts = [f"torch {torch.__version__}", self.device, self.compiled]
    parts.append("channels_last" if self.channels_last else "NCHW")
    if self.dtype == "bfloat16":
      parts.append("bf16 autocast")
    elif self.device.startswith("cuda"):
      parts.append("tf32")
    parts.append("fused SGD" if self.fused else "SGD")
    return ", ".join(parts)


def _is_oom(e: BaseException) -> bool:
  import torch  # pylint: disable=g-import-not-at-top

  return isinstance(e, (torch.cuda.OutOfMemoryError, MemoryError))


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:160]


def participants(args, model: str, batch: int, dtype: str, device: str):
  """setting -> Bench (or Unavailable) for one (model, batch, dtype)."""
  import torch  # pylint: disable=g-import-not-at-top

  if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
  if model not in EXPECTED_PARAMS:
    out = {}
    for s in args.settings:
      out[s] = Unavailable(base_row(args, model, batch, dtype, device, s))
      out[s].row["error"] = "not in the PyTorch reference"
    return out
  out, data = {}, None
  for s in args.settings:
    try:
      out[s] = Bench(args, model, batch, dtype, device, s)
      data = data or Data(args, batch, device)
      out[s].use(data)
    except Exception as e:  # pylint: disable=broad-except
      if not _is_oom(e):
        raise
      out[s] = Unavailable(base_row(args, model, batch, dtype, device, s))
      out[s].row["error"] = "out of memory"
  return out


def finish(benches, device: str) -> None:
  """Peak memory into the rows, derived fields; frees the device."""
  import torch  # pylint: disable=g-import-not-at-top

  for b in benches.values():
    if device.startswith("cuda"):
      b.row["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    common.finish_row(b.row)
  if device.startswith("cuda"):
    torch.cuda.empty_cache()


# ============================================================================
# Command line, server
# ============================================================================


def _csv(kind):
  def parse(text):
    return [kind(v) for v in text.split(",") if v.strip()]

  return parse


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--model", type=_csv(str), default=["resnet56"])
  p.add_argument("--batch", type=_csv(int), default=[1000])
  p.add_argument("--dtype", type=_csv(str), default=["bfloat16"])
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument(
    "--warmup",
    type=int,
    default=None,
    help="steps per warm-up block (default: --steps; 0: none)",
  )
  p.add_argument(
    "--warmup-tolerance", type=float, default=common.WARMUP_TOLERANCE
  )
  p.add_argument(
    "--max-warmup-blocks", type=int, default=common.MAX_WARMUP_BLOCKS
  )
  p.add_argument("--train-size", type=int, default=50_000)
  p.add_argument("--log-every", type=int, default=50)
  p.add_argument("--loop-intervals", type=int, default=5)
  p.add_argument("--no-aug", action="store_true")
  p.add_argument("--no-loop", action="store_true")
  p.add_argument("--peak-tflops", type=float, default=None)
  p.add_argument("--lr", type=float, default=0.1)
  p.add_argument("--momentum", type=float, default=0.9)
  p.add_argument("--weight-decay", type=float, default=5e-4)
  p.add_argument(
    "--device",
    default=None,
    help="cuda, cuda:N or cpu (default: cuda if available)",
  )
  p.add_argument(
    "--settings",
    type=_csv(str),
    default=list(common.DEFAULT_TORCH_SETTINGS),
    help="comma list of: " + ", ".join(common.TORCH_SETTINGS),
  )
  p.add_argument(
    "--no-compile",
    action="store_true",
    help="drop the torch.compile settings (run eagerly only)",
  )
  p.add_argument(
    "--compile-mode",
    default="default",
    help="torch.compile mode, e.g. max-autotune",
  )
  p.add_argument(
    "--no-channels-last",
    action="store_true",
    help="drop the channels_last settings",
  )
  p.add_argument("--json", default=None)
  p.add_argument(
    "--serve",
    action="store_true",
    help="answer superconv.bench's requests on stdin (JSON lines)",
  )
  return p


def _args(argv):
  """Parsed and checked arguments: exit 2 with one line on bad input."""
  p = parser()
  args = p.parse_args(argv)
  for d in args.dtype:
    if d not in ("bfloat16", "float32"):
      p.error(f"--dtype: must be bfloat16 or float32, got {d!r}")
  for s in args.settings:
    if s not in common.TORCH_SETTINGS:
      p.error(
        f"--settings: unknown {s!r}; valid: {', '.join(common.TORCH_SETTINGS)}"
      )
  args.settings = [
    s
    for s in dict.fromkeys(args.settings)
    if not (args.no_compile and common.TORCH_SETTINGS[s][0])
    and not (args.no_channels_last and common.TORCH_SETTINGS[s][1])
  ]
  if not args.settings:
    p.error("--settings: none left after --no-compile/--no-channels-last")
  if args.warmup is None:
    args.warmup = args.steps
  if args.max_warmup_blocks < 2:
    p.error("--max-warmup-blocks: must be >= 2")
  return args


def _device(args) -> str:
  import torch  # pylint: disable=g-import-not-at-top

  device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
  if device.startswith("cuda"):
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")  # TF32 matmuls.
  return device


def main(argv=None) -> int:
  args = _args(argv)
  device = _device(args)
  if args.serve:
    return serve(args, device)
  rows = []
  for model in args.model:
    for batch in args.batch:
      for dtype in args.dtype:
        print(
          f"pytorch: {model}, batch {batch}, {dtype} on {device}...",
          file=sys.stderr,
          flush=True,
        )
        benches = participants(args, model, batch, dtype, device)
        common.measure_group(
          {f"pytorch {s}": b for s, b in benches.items()},
          common.Plan(
            args.steps,
            args.repeats,
            args.warmup,
            args.warmup_tolerance,
            args.max_warmup_blocks,
          ),
          figures=("step",) if args.no_aug else ("step", "aug_step"),
          loop=not args.no_loop,
          progress=lambda m: print(m, file=sys.stderr, flush=True),
        )
        finish(benches, device)
        rows.extend(b.row for b in benches.values())
        del benches
        if args.json:
          _write_json(args.json, rows, argv)
  print(common.format_table(rows, settings=True))
  for line in common.flag_warnings(rows):
    print(f"warning: {line}", file=sys.stderr)
  return 0


# The fields of a row that the server fills; superconv.bench fills the rest.
SERVER_KEYS = ("compile_s", "settings", "error", "peak_memory_bytes")


def serve(args, device: str) -> int:
  """Answers one JSON request per line of stdin with one JSON line.

  Requests ({"op": ...}): hello; setup (model, batch, dtype: builds every
  setting, replies their rows); start, block, loop (setting, figure,
  steps: the `bench_common.Participant` methods); finish (final fields,
  frees the models); quit. A failure replies {"fatal": why}. Everything
  else this process prints goes to stderr.
  """
  import torch  # pylint: disable=g-import-not-at-top

  replies = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  benches = {}

  def fields(setting):
    row = benches[setting].row
    return {k: row[k] for k in SERVER_KEYS}

  for line in sys.stdin:
    request = json.loads(line)
    op, setting = request.get("op"), request.get("setting")
    if op == "quit":
      break
    try:
      if op == "hello":
        reply = {
          "torch": f"torch {torch.__version__}",
          "device": device,
          "settings": args.settings,
        }
      elif op == "setup":
        benches = participants(
          args, request["model"], request["batch"], request["dtype"], device
        )
        reply = {"rows": {s: b.row for s, b in benches.items()}}
      elif op == "start":
        ok = benches[setting].start(request["figure"])
        reply = {"ok": ok, "row": fields(setting)}
      elif op == "block":
        block = benches[setting].block(request["figure"], request["steps"])
        reply = {"block": block, "row": fields(setting)}
      elif op == "loop":
        reply = {"loop": benches[setting].loop(), "row": fields(setting)}
      elif op == "finish":
        finish(benches, device)
        reply = {"rows": {s: fields(s) for s in benches}}
        benches = {}
      else:
        reply = {"fatal": f"unknown request {op!r}"}
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      reply = {"fatal": _first_line(e)}
    replies.write(json.dumps(reply) + "\n")
  return 0


def _write_json(path: str, rows, argv) -> None:
  payload = {
    "meta": {
      "argv": list(sys.argv[1:] if argv is None else argv),
      "python": platform.python_version(),
      "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    },
    "rows": rows,
  }
  with open(path + ".tmp", "w") as f:
    json.dump(payload, f, indent=2)
    f.write("\n")
  os.replace(path + ".tmp", path)


if __name__ == "__main__":
  sys.exit(main())
