"""What `superconv.bench` and benchmarks/pytorch_reference.py share.

Plain Python, the standard library only: the PyTorch reference runs where
JAX is not installed and loads this file by its path. Here are the row
format (`ROW_KEYS`, the table) and every decision about whether a timing
can be trusted, as pure functions over timings:

* **Warm-up until stable** (`warm_up`): blocks of steps until the last two
  blocks agree within `WARMUP_TOLERANCE` and nothing was compiled during
  either of them (PyTorch reports its `torch.compile` counters; JAX
  compiles ahead of time). A warm-up that has not settled after
  `MAX_WARMUP_BLOCKS` blocks is flagged, not hidden.
* **Interleaved repeats** (`interleave`): each participant of a row group
  (every JAX variant, every PyTorch setting of one model, batch and dtype)
  runs one timed block in turn, J P J P ..., so that the machine's drift
  hits all of them alike.
* **Spread**: (max - min) / median of the per-block rates of a figure; a
  figure whose spread is over `SPREAD_LIMIT` is flagged.
* **Consistency** (`consistency_flags`): the step with augmentation does
  strictly more work than the bare step, and the loop more than the step
  with augmentation, so their rates must be ordered (within
  `ORDER_SLACK`).

A row's `flags` lists what was found (ids below, `describe_flag` words
them); tables mark a flagged figure with '!'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
import dataclasses
import functools
import statistics
from typing import Protocol

# Every row (JAX in superconv.bench, PyTorch in the reference) has these
# keys; None where a value is unknown or was not measured.
ROW_KEYS = (
  "framework",  # "jax" | "pytorch"
  "model",
  "params",
  "global_batch",
  "dtype",
  # Replicas trained in one program (config.num_parallel_seeds); every
  # images/s below counts all of them (K x global_batch per step).
  "parallel_seeds",
  "devices",
  "device_kind",
  "backend",
  "conv_impl",  # superconv.conv implementation, resolved ('xla' | 'chunked').
  "setting",  # PyTorch: one of TORCH_SETTINGS; None for JAX.
  "settings",  # How the step was built (compiler, layout, ...).
  "compile_s",  # Seconds to compile the bare step.
  # Per figure: the median rate, the seconds of each timed block, the
  # spread of the block rates, the seconds of each warm-up block.
  "step_images_per_sec",
  "step_times_s",
  "step_spread",
  "step_warmup_s",  # Bare step.
  "aug_step_images_per_sec",
  "aug_step_times_s",
  "aug_step_spread",
  "aug_step_warmup_s",  # Step with augmentation.
  "loop_images_per_sec",
  "loop_times_s",  # Seconds of each timed log interval.
  "loop_spread",
  "loop_intervals",  # Training loop.
  "loop_step_ratio",  # loop / step images/s.
  "forward_macs",
  "train_gflops_per_image",
  "achieved_tflops",
  "peak_tflops",
  "mfu",  # From the bare step.
  "loop_mfu",  # From the loop.
  "peak_memory_bytes",
  "compiled_memory_bytes",
  "steps",
  "repeats",
  "warmup",  # Steps per warm-up block (0: no warm-up).
  "flags",  # What makes a figure untrustworthy (see `describe_flag`).
  "error",  # None, or why the row has no numbers (e.g. out of memory).
)

# The figures of a row, in the order they are measured.
FIGURES = ("step", "aug_step", "loop")
FIGURE_NAMES = {"step": "bare step", "aug_step": "aug step", "loop": "loop"}

# A figure whose block rates spread over more than this fraction of their
# median is flagged.
SPREAD_LIMIT = 0.10
# Warm-up ends when two consecutive blocks differ by at most this fraction
# (of the faster one) and neither compiled anything.
WARMUP_TOLERANCE = 0.10
MAX_WARMUP_BLOCKS = 10
# How far the rates of two figures may be in the wrong order before the row
# is flagged. The aug step runs the bare step's work plus batch selection
# and augmentation, and the loop runs the aug step plus the host loop and
# the metrics fetch, so their true rates are ordered: step >= aug >= loop.
# Measured medians still scatter: a figure whose own blocks agree within
# SPREAD_LIMIT (otherwise it is flagged already) has a median that noise
# can move by up to about that much, so two figures of (nearly) equal true
# rates, which is what the CPU measures (aug/step 0.97-1.04), may come out
# that far in the wrong order. More than that is not noise: it is
# compilation or another job inside a timed window (the case this guards
# against had the bare step 12 times slower than the aug step).
ORDER_SLACK = 0.10

# PyTorch settings: (torch.compile, channels_last memory format). A user
# picks whichever is fastest, so the comparison runs several.
TORCH_SETTINGS = {
  "eager": (False, False),
  "eager_cl": (False, True),
  "compile": (True, False),
  "compile_cl": (True, True),
}
DEFAULT_TORCH_SETTINGS = ("eager", "eager_cl", "compile_cl")

GIB = 2.0**30

# (seconds, compilations during the block) of one block of steps.
Block = tuple[float, int]

# Dense (no 2:4 sparsity) peak TFLOP/s of ONE device, matched in order by a
# lower-case substring of `device.device_kind`. float32: the rate XLA and
# cuDNN use for float32 convolutions by default on NVIDIA Ampere and later
# (TF32 tensor cores); TPUs run float32 matmuls as several bfloat16 passes
# and publish no float32 peak (None = unknown).
PEAK_TFLOPS: tuple[tuple[str, dict[str, float | None]], ...] = (
  ("h100 pcie", {"bfloat16": 756.0, "float32": 378.0}),
  ("h100", {"bfloat16": 989.0, "float32": 494.7}),  # SXM
  ("h200", {"bfloat16": 989.0, "float32": 494.7}),  # SXM
  ("a100", {"bfloat16": 312.0, "float32": 156.0}),  # SXM/PCIe
  ("tpu v4", {"bfloat16": 275.0, "float32": None}),
  ("tpu v5 lite", {"bfloat16": 197.0, "float32": None}),  # v5e
  ("tpu v5e", {"bfloat16": 197.0, "float32": None}),
  ("tpu v5p", {"bfloat16": 459.0, "float32": None}),
  ("tpu v5", {"bfloat16": 459.0, "float32": None}),  # v5p reports "TPU v5"
  ("tpu v6 lite", {"bfloat16": 918.0, "float32": None}),  # v6e (Trillium)
  ("tpu v6e", {"bfloat16": 918.0, "float32": None}),
)


def peak_tflops(
  device_kind: str, dtype: str, override: float | None = None
) -> float | None:
  """Peak dense TFLOP/s of one device of `device_kind` in `dtype`.

  `override` (--peak-tflops) wins; None when the device is not in
  PEAK_TFLOPS (e.g. CPUs) or has no published peak for `dtype`.
  """
  if override is not None:
    return float(override)
  kind = device_kind.lower()
  for key, peaks in PEAK_TFLOPS:
    if key in kind:
      return peaks.get(dtype)
  return None


def achieved_tflops(
  images_per_sec: float | None, gflops_per_image: float | None
) -> float | None:
  """Model TFLOP/s achieved at `images_per_sec` (all devices together)."""
  if images_per_sec is None or gflops_per_image is None:
    return None
  return images_per_sec * gflops_per_image / 1e3


def mfu(
  images_per_sec: float | None,
  gflops_per_image: float | None,
  peak_tflops_per_device: float | None,
  num_devices: int,
) -> float | None:
  """Model FLOPs utilization in [0, 1]: achieved / (peak x devices)."""
  tflops = achieved_tflops(images_per_sec, gflops_per_image)
  if tflops is None or not peak_tflops_per_device:
    return None
  return tflops / (peak_tflops_per_device * num_devices)


# ============================================================================
# Warm-up, interleaving, spread
# ============================================================================


def relative_spread(values: Sequence[float]) -> float | None:
  """(max - min) / median of `values`; None with fewer than two."""
  values = list(values)
  if len(values) < 2:
    return None
  median = statistics.median(values)
  return (max(values) - min(values)) / median if median > 0 else None


def settled(
  times: Sequence[float],
  compiles: Sequence[int],
  tolerance: float = WARMUP_TOLERANCE,
) -> bool:
  """Whether the last two blocks agree within `tolerance` and compiled
  nothing."""
  if len(times) < 2 or compiles[-1] or compiles[-2]:
    return False
  a, b = times[-2], times[-1]
  return max(a, b) <= (1 + tolerance) * min(a, b)


@dataclasses.dataclass(frozen=True)
class Warmup:
  times: tuple[float, ...]  # Seconds of each warm-up block.
  compiles: tuple[int, ...]  # Compilations during each block.
  settled: bool  # False: stopped at the cap, still changing.


def warm_up(
  run_block: Callable[[], Block | None],
  *,
  tolerance: float = WARMUP_TOLERANCE,
  max_blocks: int = MAX_WARMUP_BLOCKS,
) -> Warmup | None:
  """Runs warm-up blocks until `settled`, at most `max_blocks` of them.

  Not a fixed count: a block slowed by compilation (a first call,
  `torch.compile` compiling the forward, then the backward, or compiling
  again for a new input) neither agrees with the next one nor reports zero
  compilations, so the warm-up goes on past it. None when a block failed
  (`run_block` returned None).
  """
  times, compiles = [], []
  while len(times) < max_blocks:
    block = run_block()
    if block is None:
      return None
    times.append(float(block[0]))
    compiles.append(int(block[1]))
    if settled(times, compiles, tolerance):
      return Warmup(tuple(times), tuple(compiles), True)
  return Warmup(tuple(times), tuple(compiles), False)


def interleave(
  blocks: Mapping[str, Callable[[], Block | None]], repeats: int
) -> dict[str, list[Block] | None]:
  """`repeats` rounds of one block of each participant, in turn.

  A participant whose block fails (returns None) drops out: None.
  """
  out: dict[str, list[Block] | None] = {name: [] for name in blocks}
  for _ in range(repeats):
    for name, block in blocks.items():
      if out[name] is None:
        continue
      result = block()
      if result is None:
        out[name] = None
      else:
        out[name].append(result)
  return out


@dataclasses.dataclass(frozen=True)
class FigureResult:
  times_s: list[float]  # Seconds of each timed block.
  compiles: int  # Compilations during the timed blocks.
  warmup: Warmup | None  # None: no warm-up was asked for.


@dataclasses.dataclass(frozen=True)
class Plan:
  """How figures are timed: `repeats` timed blocks of `steps` steps, after
  warm-up blocks of `warmup_steps` steps (0: none) until `settled` within
  `tolerance`, at most `max_warmup_blocks` of them."""

  steps: int
  repeats: int
  warmup_steps: int
  tolerance: float = WARMUP_TOLERANCE
  max_warmup_blocks: int = MAX_WARMUP_BLOCKS


def measure_figure(
  blocks: Mapping[str, Callable[[int], Block | None]],
  plan: Plan,
  progress: Callable[[str], None] = lambda message: None,
) -> dict[str, FigureResult | None]:
  """Warms every participant up, then times them interleaved.

  `blocks[name](n)` runs n steps of a participant and returns (seconds,
  compilations during them), or None if it failed; a failed participant's
  result is None.
  """
  warm: dict[str, Warmup | None] = {}
  results: dict[str, FigureResult | None] = {}
  for name, block in blocks.items():
    if not plan.warmup_steps:
      warm[name] = None
      continue
    w = warm_up(
      functools.partial(block, plan.warmup_steps),
      tolerance=plan.tolerance,
      max_blocks=plan.max_warmup_blocks,
    )
    if w is None:
      results[name] = None
      continue
    warm[name] = w
    progress(
      f"{name}: warm-up {'settled' if w.settled else 'did NOT settle'}"
      f" after {len(w.times)} blocks of {plan.warmup_steps} steps"
      f" ({', '.join(f'{t:.3g}' for t in w.times)} s)"
    )
  timed = interleave(
    {name: functools.partial(blocks[name], plan.steps) for name in warm},
    plan.repeats,
  )
  for name, done in timed.items():
    results[name] = (
      None
      if done is None
      else FigureResult(
        [float(s) for s, _ in done], sum(int(c) for _, c in done), warm[name]
      )
    )
  return results


# ============================================================================
# Rows: figures, flags
# ============================================================================


def add_flags(row: dict, *flags: str) -> None:
  """Appends `flags` to row['flags'] (kept once each, in order)."""
  row["flags"] = list(dict.fromkeys(list(row.get("flags") or []) + [*flags]))


def apply_figure(
  row: dict, figure: str, result: FigureResult | None, images_per_block: int
) -> None:
  """Puts a measured figure (rate, times, spread, warm-up) in `row`.

  The rate is the images of a block over the median block time.
  """
  if result is None:
    return
  times = result.times_s
  row[f"{figure}_times_s"] = times
  row[f"{figure}_images_per_sec"] = images_per_block / statistics.median(times)
  row[f"{figure}_spread"] = relative_spread(
    [images_per_block / t for t in times]
  )
  if result.warmup is not None:
    row[f"{figure}_warmup_s"] = list(result.warmup.times)
    if not result.warmup.settled:
      add_flags(row, f"{figure}_warmup_unsettled")
  if result.compiles:
    add_flags(row, f"{figure}_compiled_while_timed")


def apply_loop(row: dict, intervals: Sequence[tuple[float, float]]) -> None:
  """Puts the loop's (images, seconds) per timed interval in `row`: the
  rate is total images / total seconds."""
  intervals = [(n, s) for n, s in intervals if n > 0 and s > 0]
  if not intervals:
    return
  row["loop_times_s"] = [s for _, s in intervals]
  row["loop_intervals"] = len(intervals)
  row["loop_images_per_sec"] = sum(n for n, _ in intervals) / sum(
    s for _, s in intervals
  )
  row["loop_spread"] = relative_spread([n / s for n, s in intervals])


def consistency_flags(
  row: dict, *, spread_limit: float = SPREAD_LIMIT, slack: float = ORDER_SLACK
) -> list[str]:
  """Flags of a row's figures: spreads over `spread_limit`, and rates out
  of the order their definitions impose (step >= aug >= loop) by more than
  `slack` (see ORDER_SLACK)."""
  flags = []
  for figure in FIGURES:
    spread = row.get(f"{figure}_spread")
    if spread is not None and spread > spread_limit:
      flags.append(f"{figure}_spread")
  step, aug, loop = (row.get(f"{f}_images_per_sec") for f in FIGURES)
  if step and aug and aug > step * (1 + slack):
    flags.append("step_slower_than_aug")
  if loop and aug and loop > aug * (1 + slack):
    flags.append("loop_faster_than_aug")
  elif loop and step and not aug and loop > step * (1 + slack):
    flags.append("loop_faster_than_step")
  return flags


def finish_flags(row: dict) -> dict:
  """Adds `consistency_flags` to the flags found while measuring."""
  add_flags(row, *consistency_flags(row))
  return row


def finish_row(row: dict) -> dict:
  """Fills the derived fields of a measured row: loop/step, TFLOP/s, MFU
  (from the bare step and from the loop), and the consistency flags."""
  step, loop = row["step_images_per_sec"], row["loop_images_per_sec"]
  gflops, peak, n = (
    row["train_gflops_per_image"],
    row["peak_tflops"],
    row["devices"],
  )
  row["loop_step_ratio"] = loop / step if step and loop else None
  row["achieved_tflops"] = achieved_tflops(step, gflops)
  row["mfu"] = mfu(step, gflops, peak, n)
  row["loop_mfu"] = mfu(loop, gflops, peak, n)
  return finish_flags(row)


# Flags that concern two figures; any other flag starts with its figure.
_PAIR_FLAGS = {
  "step_slower_than_aug": ("step", "aug_step"),
  "loop_faster_than_aug": ("loop", "aug_step"),
  "loop_faster_than_step": ("loop", "step"),
}


def flag_figures(flag: str) -> tuple[str, ...]:
  """The figures a flag puts in doubt."""
  if flag in _PAIR_FLAGS:
    return _PAIR_FLAGS[flag]
  for figure in sorted(FIGURES, key=len, reverse=True):
    if flag.startswith(figure + "_"):
      return (figure,)
  return FIGURES


def figure_flagged(row: dict, figure: str) -> bool:
  return any(figure in flag_figures(f) for f in row.get("flags") or ())


def describe_flag(row: dict, flag: str) -> str:
  """One phrase for `flag`, with the row's numbers."""

  def rate(figure):
    value = row.get(f"{figure}_images_per_sec")
    return "-" if value is None else f"{value:,.0f} img/s"

  if flag in _PAIR_FLAGS:
    fast, slow = (
      ("aug_step", "step")
      if flag == "step_slower_than_aug"
      else _PAIR_FLAGS[flag]
    )
    return (
      f"{FIGURE_NAMES[fast]} {rate(fast)} is faster than the"
      f" {FIGURE_NAMES[slow]} {rate(slow)} by more than {ORDER_SLACK:.0%},"
      " though it does more work (compilation or other load in a timed"
      " window?)"
    )
  figure = flag_figures(flag)[0]
  name = FIGURE_NAMES[figure]
  if flag.endswith("_spread"):
    spread = row.get(f"{figure}_spread") or 0.0
    return (
      f"{name} blocks spread {spread:.0%} of their median"
      f" (> {SPREAD_LIMIT:.0%}): the machine was not quiet"
    )
  if flag.endswith("_warmup_unsettled"):
    times = row.get(f"{figure}_warmup_s") or []
    last = ", ".join(f"{t:.3g}" for t in times[-3:])
    return (
      f"{name} warm-up never settled in {len(times)} blocks (last: {last} s)"
    )
  if flag.endswith("_compiled_while_timed"):
    return f"{name}: something was compiled during the timed blocks"
  return flag


def row_label(row: dict) -> str:
  parts = [
    str(row.get("framework")),
    str(row.get("model")),
    f"batch {row.get('global_batch')}",
    str(row.get("dtype")),
  ]
  if row.get("setting"):
    parts.append(str(row["setting"]))
  if row.get("conv_impl"):
    parts.append(f"conv {row['conv_impl']}")
  if (row.get("parallel_seeds") or 1) > 1:
    parts.append(f"{row['parallel_seeds']} seeds")
  return " ".join(parts)


def flag_warnings(rows: Sequence[dict]) -> list[str]:
  """One warning line per flagged row."""
  return [
    f"{row_label(r)}: "
    + "; ".join(describe_flag(r, f) for f in r.get("flags") or ())
    for r in rows
    if r.get("flags")
  ]


# ============================================================================
# A row group: what both programs measure the same way
# ============================================================================


class Participant(Protocol):
  """One row being measured (a JAX variant, a PyTorch setting)."""

  row: dict
  images_per_step: int

  def start(self, figure: str) -> bool:
    """Prepares `figure` (compiles, runs its first step); False if it
    failed (the row's `error` says why)."""

  def block(self, figure: str, steps: int) -> Block | None:
    """Runs `steps` steps of `figure`, synchronized; None if it failed."""

  def stop(self, figure: str) -> None:
    """Frees what `start` prepared."""

  def loop(self) -> list[tuple[float, float]] | None:
    """(images, seconds) of each timed interval of the training loop."""


def measure_group(
  participants: Mapping[str, Participant],
  plan: Plan,
  *,
  figures: Sequence[str] = ("step", "aug_step"),
  loop: bool = True,
  progress: Callable[[str], None] = lambda message: None,
) -> None:
  """Measures the rows of `participants` together, filling their rows.

  Per figure: every participant is started and warmed up, then their timed
  blocks are interleaved. The loops run after, one participant after the
  other. Finally each row gets its consistency flags.
  """
  for figure in figures:
    live = {}
    for name, p in participants.items():
      if p.row.get("error") is None:
        progress(f"{name}: {FIGURE_NAMES[figure]}: starting")
        if p.start(figure):
          live[name] = p
    results = measure_figure(
      {name: functools.partial(p.block, figure) for name, p in live.items()},
      plan,
      progress,
    )
    for name, p in live.items():
      apply_figure(
        p.row, figure, results.get(name), p.images_per_step * plan.steps
      )
      p.stop(figure)
  if loop:
    for name, p in participants.items():
      if p.row.get("error") is None:
        progress(f"{name}: loop")
        intervals = p.loop()
        if intervals:
          apply_loop(p.row, intervals)
  for p in participants.values():
    finish_flags(p.row)


# ============================================================================
# Tables
# ============================================================================


def num(fmt: str):
  return lambda v: "-" if v is None else format(v, fmt)


def pct(v):
  return "-" if v is None else f"{100 * v:.1f}%"


def gib(v):
  return "-" if v is None else f"{v / GIB:.2f}"


def rate_cell(row: dict, figure: str, prefix: str = "") -> str | None:
  """'1,234' ('1,234!' when a flag concerns the figure); None if unknown.

  `prefix` reads `{prefix}{figure}_images_per_sec` (comparison rows).
  """
  value = row.get(f"{prefix}{figure}_images_per_sec")
  if value is None:
    return None
  return f"{value:,.0f}" + ("!" if figure_flagged(row, figure) else "")


# (header, row key or function of the row, formatter, width); a negative
# width is left-aligned.
TABLE_COLUMNS = (
  ("model", "model", str, -15),
  ("batch", "global_batch", str, 6),
  ("dtype", "dtype", str, -8),
  ("seeds", "parallel_seeds", str, 5),
  ("dev", "devices", str, 3),
  ("conv", "conv_impl", str, -7),
  ("setting", "setting", str, -10),
  ("compile s", "compile_s", num(".1f"), 9),
  ("step img/s", lambda r: rate_cell(r, "step"), str, 10),
  ("spread", "step_spread", pct, 6),
  ("aug img/s", lambda r: rate_cell(r, "aug_step"), str, 10),
  ("spread", "aug_step_spread", pct, 6),
  ("loop img/s", lambda r: rate_cell(r, "loop"), str, 10),
  ("spread", "loop_spread", pct, 6),
  ("loop/step", "loop_step_ratio", num(".2f"), 9),
  ("GFLOP/img", "train_gflops_per_image", num(".3f"), 9),
  ("TFLOP/s", "achieved_tflops", num(".2f"), 8),
  ("MFU", "mfu", pct, 6),
  ("peak GiB", "peak_memory_bytes", gib, 8),
)


def _cell(text: str, width: int) -> str:
  return text.ljust(-width) if width < 0 else text.rjust(width)


def format_table(
  rows: Sequence[dict], columns=TABLE_COLUMNS, *, settings: bool = False
) -> str:
  """Fixed-width table of rows, one line per row, '-' for unknown values.

  After the columns a row shows its `error`, its flags ('! ...') and, with
  `settings`, its `settings`.
  """
  lines = ["  ".join(_cell(h, w) for h, _, _, w in columns).rstrip()]
  lines.append(
    "  ".join(
      "-" * abs(w) if abs(w) >= len(h) else "-" * len(h)
      for h, _, _, w in columns
    )
  )
  for row in rows:
    cells = []
    for header, key, fmt, width in columns:
      value = key(row) if callable(key) else row.get(key)
      text = "-" if value is None else fmt(value)
      cells.append(
        _cell(text, max(abs(width), len(header)) * (1 if width > 0 else -1))
      )
    line = "  ".join(cells)
    if row.get("error"):
      line += f"  ({row['error']})"
    if row.get("flags"):
      line += "  ! " + " ".join(row["flags"])
    if settings and row.get("settings"):
      line += f"  [{row['settings']}]"
    lines.append(line.rstrip())
  return "\n".join(lines)
