r"""PyTorch reference for `python -m superconv.bench`: same models, same step.

  python benchmarks/pytorch_reference.py --model resnet56 --batch 1000 \
      --dtype bfloat16 --json torch.json

Runs in its own environment (torch is not a dependency of superconv; this
file imports neither superconv nor JAX):

  python3 -m venv .torchvenv
  .torchvenv/bin/pip install torch numpy
  python -m superconv.bench --compare-pytorch \
      --torch-python .torchvenv/bin/python

Models: the He et al. CIFAR ResNets (resnet20/32/44/56/110) with option A
shortcuts, as akamaster/pytorch_resnet_cifar10, and resnet18/34 as
kuangliu/pytorch-cifar; parameter counts are asserted equal to superconv's
(`EXPECTED_PARAMS`). Forward MACs are counted from the modules themselves
(forward hooks on every Conv2d and Linear), an independent check of
`superconv.models.forward_macs`.

The step: SGD (momentum 0.9, coupled weight decay on every parameter, as
superconv's default decay_bn_and_bias=True), softmax cross-entropy,
BatchNorm momentum 0.1 (= Flax 0.9), eps 1e-5. Fastest settings: channels_
last memory format, bfloat16 autocast for --dtype bfloat16 (float32
parameters, as superconv), TF32 for float32 on CUDA (what XLA uses by
default), cudnn.benchmark, a fused SGD where available, and
`torch.compile(model)` -- if compiling (or the first compiled step) fails,
the model runs eagerly and `settings` says why.

What is timed (as superconv.bench, see benchmarks/README.md):
* step: the step on one fixed, pre-augmented, normalized device batch.
* aug: the step plus selecting the batch from the device-resident uint8
  data set (a permutation per epoch) and random crop (4-pixel zero padding)
  + horizontal flip + normalization on the device.
* loop: a plain training loop of aug steps that reads the loss back to the
  host every --log-every steps (as superconv's loop fetches its metrics);
  images/s over all log intervals but the first.
Steps and blocks of --steps steps end with torch.cuda.synchronize() (CPU
ops are synchronous); a rate is the median of --repeats blocks. compile_s is
the wall time of the first step (compilation, autotuning and one step).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

# Same columns as superconv.bench.ROW_KEYS (tests/test_bench.py checks).
ROW_KEYS = (
  "framework",
  "model",
  "params",
  "global_batch",
  "dtype",
  "parallel_seeds",
  "devices",
  "device_kind",
  "backend",
  "conv_impl",
  "settings",
  "compile_s",
  "step_images_per_sec",
  "step_times_s",
  "aug_step_images_per_sec",
  "aug_step_times_s",
  "loop_images_per_sec",
  "loop_intervals",
  "loop_step_ratio",
  "forward_macs",
  "train_gflops_per_image",
  "achieved_tflops",
  "peak_tflops",
  "mfu",
  "loop_mfu",
  "peak_memory_bytes",
  "compiled_memory_bytes",
  "steps",
  "repeats",
  "warmup",
  "error",
)

# Same table as superconv.bench.PEAK_TFLOPS (tests/test_bench.py checks):
# dense peak TFLOP/s of one device, by lower-case substring of its name.
PEAK_TFLOPS = (
  ("h100 pcie", {"bfloat16": 756.0, "float32": 378.0}),
  ("h100", {"bfloat16": 989.0, "float32": 494.7}),
  ("h200", {"bfloat16": 989.0, "float32": 494.7}),
  ("a100", {"bfloat16": 312.0, "float32": 156.0}),
  ("tpu v4", {"bfloat16": 275.0, "float32": None}),
  ("tpu v5 lite", {"bfloat16": 197.0, "float32": None}),
  ("tpu v5e", {"bfloat16": 197.0, "float32": None}),
  ("tpu v5p", {"bfloat16": 459.0, "float32": None}),
  ("tpu v5", {"bfloat16": 459.0, "float32": None}),
  ("tpu v6 lite", {"bfloat16": 918.0, "float32": None}),
  ("tpu v6e", {"bfloat16": 918.0, "float32": None}),
)

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
GIB = 2.0**30


def peak_tflops(device_kind: str, dtype: str, override=None):
  """Peak dense TFLOP/s of one device (None if unknown)."""
  if override is not None:
    return float(override)
  kind = device_kind.lower()
  for key, peaks in PEAK_TFLOPS:
    if key in kind:
      return peaks.get(dtype)
  return None


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
# One row
# ============================================================================


class Bench:
  """Model, optimizer, data and the three timed functions of one row."""

  def __init__(
    self, args, model_name: str, batch: int, dtype: str, device: str
  ):
    import torch  # pylint: disable=g-import-not-at-top

    self.torch = torch
    self.device = device
    self.batch = batch
    self.dtype = dtype
    self.args = args
    torch.manual_seed(0)
    model = build_model(model_name).to(device)
    params = count_params(model)
    if params != EXPECTED_PARAMS[model_name]:
      raise AssertionError(
        f"{model_name}: {params:,} parameters, superconv"
        f" has {EXPECTED_PARAMS[model_name]:,}"
      )
    self.params = params
    self.macs = forward_macs(model)
    if not args.no_channels_last:
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
    self.compiled = "eager (--no-compile)"
    if not args.no_compile:
      try:
        self.forward = torch.compile(model, mode=args.compile_mode)
        self.compiled = f"torch.compile(mode={args.compile_mode})"
      except Exception as e:  # pylint: disable=broad-except
        self.compiled = f"eager (torch.compile failed: {_first_line(e)})"
    g = torch.Generator().manual_seed(0)
    size = max(args.train_size, batch)
    self.images = torch.randint(
      0, 256, (size, 32, 32, 3), generator=g, dtype=torch.uint8
    ).to(device)
    self.labels = torch.randint(0, 10, (size,), generator=g).to(device)
    self.mean = torch.tensor(MEAN, device=device)
    self.std = torch.tensor(STD, device=device)
    self.fixed_x = normalize(
      augment(self.images[:batch]), self.mean, self.std
    ).contiguous(
      memory_format=torch.contiguous_format
      if args.no_channels_last
      else torch.channels_last
    )
    self.fixed_y = self.labels[:batch]
    self.steps_per_epoch = size // batch
    self.perm = None
    self.step_count = 0

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
    i = self.step_count % self.steps_per_epoch
    if i == 0:
      self.perm = self.torch.randperm(len(self.images), device=self.device)
    self.step_count += 1
    idx = self.perm[i * self.batch : (i + 1) * self.batch]
    x = normalize(augment(self.images[idx]), self.mean, self.std)
    if self.args.no_channels_last:
      x = x.contiguous()
    return x, self.labels[idx]

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
      if self.forward is self.model:
        raise
      self.compiled = f"eager (torch.compile failed: {_first_line(e)})"
      self.forward = self.model
      t0 = time.perf_counter()
      self.bare_step()
      self.sync()
    return time.perf_counter() - t0

  def time_blocks(self, fn):
    for _ in range(self.args.warmup):
      fn()
    self.sync()
    times = []
    for _ in range(self.args.repeats):
      t0 = time.perf_counter()
      for _ in range(self.args.steps):
        fn()
      self.sync()
      times.append(time.perf_counter() - t0)
    return times

  def loop(self):
    """(images/s, intervals) of a plain loop; the first interval excluded."""
    every, intervals = self.args.log_every, self.args.loop_intervals
    marks = []
    for step in range(1, every * (intervals + 1) + 1):
      loss = self.aug_step()
      if step % every == 0:
        loss.item()  # Host sync, as a logging loop does.
        marks.append(time.perf_counter())
    seconds = marks[-1] - marks[0]
    return self.batch * every * (len(marks) - 1) / seconds, len(marks) - 1

  def settings(self) -> str:
    torch = self.torch
    parts = [f"torch {torch.__version__}", self.device, self.compiled]
    if not self.args.no_channels_last:
      parts.append("channels_last")
    if self.dtype == "bfloat16":
      parts.append("bf16 autocast")
    elif self.device.startswith("cuda"):
      parts.append("tf32")
    parts.append("fused SGD" if self.fused else "SGD")
    return ", ".join(parts)


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:160]


def _median_rate(batch: int, steps: int, times):
  return batch * steps / statistics.median(times)


def _mfu(rate, gflops, peak, n):
  if rate is None or not peak:
    return None
  return rate * gflops / 1e3 / (peak * n)


def bench_row(args, model: str, batch: int, dtype: str, device: str) -> dict:
  """Measures one (model, batch, dtype) row with the keys of ROW_KEYS."""
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
    steps=args.steps,
    repeats=args.repeats,
    warmup=args.warmup,
    peak_tflops=peak_tflops(kind, dtype, args.peak_tflops),
  )
  if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
  try:
    b = Bench(args, model, batch, dtype, device)
    row["params"], row["forward_macs"] = b.params, b.macs
    row["train_gflops_per_image"] = 3 * b.macs * 2 / 1e9
    row["compile_s"] = b.first_step()
    row["step_times_s"] = b.time_blocks(b.bare_step)
    row["step_images_per_sec"] = _median_rate(
      batch, args.steps, row["step_times_s"]
    )
    if not args.no_aug:
      row["aug_step_times_s"] = b.time_blocks(b.aug_step)
      row["aug_step_images_per_sec"] = _median_rate(
        batch, args.steps, row["aug_step_times_s"]
      )
    if not args.no_loop:
      row["loop_images_per_sec"], row["loop_intervals"] = b.loop()
    row["settings"] = b.settings()
    del b
  except torch.cuda.OutOfMemoryError:
    row["error"] = "out of memory"
  if device.startswith("cuda"):
    row["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated())
    torch.cuda.empty_cache()
  step, loop = row["step_images_per_sec"], row["loop_images_per_sec"]
  gflops, peak = row["train_gflops_per_image"], row["peak_tflops"]
  row["loop_step_ratio"] = loop / step if step and loop else None
  row["achieved_tflops"] = step * gflops / 1e3 if step else None
  row["mfu"] = _mfu(step, gflops, peak, 1)
  row["loop_mfu"] = _mfu(loop, gflops, peak, 1)
  return row


# ============================================================================
# Table and command line
# ============================================================================


def _fmt(value, spec: str) -> str:
  if value is None:
    return "-"
  if spec == "%":
    return f"{100 * value:.1f}%"
  if spec == "GiB":
    return f"{value / GIB:.2f}"
  return format(value, spec)


# (header, key, format spec, width); negative width = left-aligned.
TABLE_COLUMNS = (
  ("model", "model", "", -15),
  ("batch", "global_batch", "", 6),
  ("dtype", "dtype", "", -8),
  ("seeds", "parallel_seeds", "", 5),
  ("dev", "devices", "", 3),
  ("conv", "conv_impl", "", -7),
  ("compile s", "compile_s", ".1f", 9),
  ("step img/s", "step_images_per_sec", ",.0f", 10),
  ("aug img/s", "aug_step_images_per_sec", ",.0f", 10),
  ("loop img/s", "loop_images_per_sec", ",.0f", 10),
  ("loop/step", "loop_step_ratio", ".2f", 9),
  ("GFLOP/img", "train_gflops_per_image", ".3f", 9),
  ("TFLOP/s", "achieved_tflops", ".2f", 8),
  ("MFU", "mfu", "%", 6),
  ("peak GiB", "peak_memory_bytes", "GiB", 8),
)


def format_table(rows) -> str:
  """Fixed-width table with the columns of superconv.bench's."""

  def cell(text, width):
    return text.ljust(-width) if width < 0 else text.rjust(width)

  lines = [
    "  ".join(cell(h, w) for h, _, _, w in TABLE_COLUMNS),
    "  ".join("-" * abs(w) for _, _, _, w in TABLE_COLUMNS),
  ]
  for row in rows:
    line = "  ".join(
      cell(_fmt(row.get(k), s), w) for _, k, s, w in TABLE_COLUMNS
    )
    if row.get("error"):
      line += f"  ({row['error']})"
    if row.get("settings"):
      line += f"  [{row['settings']}]"
    lines.append(line.rstrip())
  return "\n".join(lines)


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
  p.add_argument("--warmup", type=int, default=3)
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
    "--no-compile", action="store_true", help="run eagerly (no torch.compile)"
  )
  p.add_argument(
    "--compile-mode",
    default="default",
    help="torch.compile mode, e.g. max-autotune",
  )
  p.add_argument("--no-channels-last", action="store_true")
  p.add_argument("--json", default=None)
  return p


def main(argv=None) -> int:
  args = parser().parse_args(argv)
  import torch  # pylint: disable=g-import-not-at-top

  device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
  if device.startswith("cuda"):
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")  # TF32 matmuls.
  for d in args.dtype:
    if d not in ("bfloat16", "float32"):
      sys.exit(f"--dtype: must be bfloat16 or float32, got {d!r}")
  rows = []
  for model in args.model:
    for batch in args.batch:
      for dtype in args.dtype:
        print(
          f"pytorch: {model}, batch {batch}, {dtype} on {device}...",
          file=sys.stderr,
          flush=True,
        )
        if model not in EXPECTED_PARAMS:
          row = dict.fromkeys(ROW_KEYS)
          row.update(
            framework="pytorch",
            model=model,
            global_batch=batch,
            dtype=dtype,
            error="not in the PyTorch reference",
          )
        else:
          row = bench_row(args, model, batch, dtype, device)
        rows.append(row)
        if args.json:
          _write_json(args.json, rows, argv)
  print(format_table(rows))
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
