"""superconv.bench: FLOP counts, MFU, tables, batch search, JSON rows.

Correctness only: nothing here asserts a timing.
"""

import importlib.util
import json
import os
import sys

import jax
import numpy as np
import pytest

from superconv import bench, input_pipeline, models, train
from superconv import data as data_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- FLOPs, peaks, MFU -------------------------------------------------------


@pytest.mark.parametrize(
  "model, expected_macs",
  [
    ("resnet20", 40.6e6),
    ("resnet56", 125.5e6),
    ("resnet18", 555.4e6),
  ],
)
def test_forward_macs_and_training_flops(model, expected_macs):
  macs = models.forward_macs(model)
  assert macs == pytest.approx(expected_macs, rel=0.01)
  assert bench.train_gflops_per_image(model) == pytest.approx(6 * macs / 1e9)


def test_resnet56_trains_at_about_three_quarters_of_a_gflop_per_image():
  assert bench.train_gflops_per_image("resnet56") == pytest.approx(
    0.753, abs=1e-3
  )


@pytest.mark.parametrize(
  "kind, dtype, expected",
  [
    ("NVIDIA H200", "bfloat16", 989.0),
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.0),
    ("NVIDIA H100 80GB HBM3", "float32", 494.7),
    ("NVIDIA H100 PCIe", "bfloat16", 756.0),
    ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
    ("TPU v4", "bfloat16", 275.0),
    ("TPU v5 lite", "bfloat16", 197.0),
    ("TPU v5", "bfloat16", 459.0),
    ("TPU v5p", "bfloat16", 459.0),
    ("TPU v6 lite", "bfloat16", 918.0),
    ("TPU v4", "float32", None),
    ("cpu", "bfloat16", None),
    ("cpu", "float32", None),
  ],
)
def test_peak_tflops_table(kind, dtype, expected):
  assert bench.peak_tflops(kind, dtype) == expected


def test_peak_tflops_override_wins():
  assert bench.peak_tflops("cpu", "float32", 1.5) == 1.5
  assert bench.peak_tflops("NVIDIA H200", "bfloat16", 500) == 500.0


def test_mfu_arithmetic_on_a_fabricated_measurement():
  # 10,000 img/s of ResNet-56 (0.753 GFLOP/img) = 7.53 TFLOP/s.
  gflops = 0.753
  assert bench.achieved_tflops(10_000, gflops) == pytest.approx(7.53)
  assert bench.mfu(10_000, gflops, 989.0, 1) == pytest.approx(7.53 / 989)
  assert bench.mfu(10_000, gflops, 989.0, 2) == pytest.approx(7.53 / 1978)
  assert bench.mfu(10_000, gflops, None, 1) is None
  assert bench.mfu(None, gflops, 989.0, 1) is None

  row = bench.empty_row(
    framework="jax",
    model="resnet56",
    global_batch=1000,
    dtype="bfloat16",
    devices=2,
    train_gflops_per_image=gflops,
    peak_tflops=989.0,
    step_images_per_sec=40_000.0,
    loop_images_per_sec=30_000.0,
  )
  bench.finish_row(row)
  assert row["loop_step_ratio"] == pytest.approx(0.75)
  assert row["achieved_tflops"] == pytest.approx(30.12)
  assert row["mfu"] == pytest.approx(30.12 / 1978)
  assert row["loop_mfu"] == pytest.approx(22.59 / 1978)


def test_empty_row_refuses_unknown_keys():
  with pytest.raises(KeyError, match="bogus"):
    bench.empty_row(bogus=1)


# --- Tables ------------------------------------------------------------------


def test_table_has_every_column_and_dashes_for_unknowns():
  row = bench.empty_row(
    framework="jax",
    model="resnet56",
    global_batch=1000,
    dtype="bfloat16",
    parallel_seeds=4,
    devices=1,
    conv_impl="xla",
    compile_s=31.25,
    step_images_per_sec=41234.0,
    step_spread=0.031,
    aug_step_images_per_sec=39000.0,
    aug_step_spread=0.05,
    loop_images_per_sec=36500.0,
    train_gflops_per_image=0.753,
    peak_tflops=989.0,
    peak_memory_bytes=3 * 2**30,
  )
  bench.finish_row(row)
  oom = bench.empty_row(
    model="resnet18",
    global_batch=65536,
    dtype="float32",
    parallel_seeds=1,
    devices=1,
    error="out of memory",
  )
  table = bench.format_table([row, oom])
  lines = table.splitlines()
  for header in (
    "model",
    "batch",
    "dtype",
    "seeds",
    "dev",
    "conv",
    "bn",
    "setting",
    "compile s",
    "step img/s",
    "spread",
    "aug img/s",
    "loop img/s",
    "loop/step",
    "GFLOP/img",
    "TFLOP/s",
    "MFU",
    "peak GiB",
  ):
    assert header in lines[0]
  assert lines[0].count("spread") == 3  # One per figure.
  assert len(lines) == 4  # Header, rule, two rows.
  assert lines[2].split() == [
    "resnet56",
    "1000",
    "bfloat16",
    "4",
    "1",
    "xla",
    "-",  # bn: not given.
    "-",
    "31.2",
    "41,234",
    "3.1%",
    "39,000",
    "5.0%",
    "36,500",
    "-",
    "0.89",
    "0.753",
    "31.05",
    "3.1%",
    "3.00",
  ]
  assert row["flags"] == []  # Consistent figures, small spreads.
  assert lines[3].split()[:5] == ["resnet18", "65536", "float32", "1", "1"]
  assert lines[3].split().count("-") == 15
  assert lines[3].endswith("(out of memory)")
  # Fixed width: the numeric columns line up.
  assert len(lines[0]) == len(lines[2])


def test_table_marks_flagged_figures():
  row = bench.empty_row(
    framework="pytorch",
    model="resnet20",
    global_batch=128,
    dtype="float32",
    setting="compile_cl",
    step_images_per_sec=61.0,
    step_spread=0.4,
    aug_step_images_per_sec=713.0,
    aug_step_spread=0.02,
    loop_images_per_sec=700.0,
    loop_spread=0.01,
    settings="torch.compile",
  )
  bench.finish_row(row)
  assert row["flags"] == ["step_spread", "step_slower_than_aug"]
  (line,) = bench.format_table([row], settings=True).splitlines()[2:]
  cells = line.split()
  # The bare and the aug step are in doubt; the loop is not.
  assert cells[7] == "compile_cl"
  assert cells[9:15] == ["61!", "40.0%", "713!", "2.0%", "700", "1.0%"]
  assert line.endswith("! step_spread step_slower_than_aug  [torch.compile]")


# The case that went unnoticed: PyTorch's compiled bare step timed while
# compiling (61 img/s beside its own aug step's 713), JAX at 406, PyTorch
# eager at 838 (NCHW) and 975 (channels_last) img/s.
def _measured(framework, setting=None, **rates):
  row = bench.empty_row(
    framework=framework,
    model="resnet20",
    global_batch=128,
    dtype="float32",
    setting=setting,
    settings=setting,
    conv_impl="chunked" if framework == "jax" else None,
    parallel_seeds=1 if framework == "jax" else None,
    flags=[],
  )
  for what, (rate, spread) in rates.items():
    row[f"{what}_images_per_sec"] = rate
    row[f"{what}_spread"] = spread
  return bench.finish_row(row)


def test_comparison_uses_the_fastest_setting_and_marks_doubtful_ratios():
  jax_row = _measured("jax", step=(406.0, 0.03), aug_step=(400.0, 0.02))
  torch_rows = [
    _measured("pytorch", "eager", step=(838.0, 0.04), aug_step=(800.0, 0.03)),
    _measured(
      "pytorch", "eager_cl", step=(975.0, 0.05), aug_step=(930.0, 0.04)
    ),
    _measured(
      "pytorch", "compile_cl", step=(61.0, 0.5), aug_step=(713.0, 0.02)
    ),
  ]
  other_batch = dict(torch_rows[1], global_batch=256, step_images_per_sec=1e6)
  (c,) = bench.compare_rows([jax_row], [other_batch, *torch_rows])
  assert c["step_fastest_torch"] == "eager_cl"
  assert c["step_ratio"] == pytest.approx(406 / 975)  # Not 406 / 61 = 6.7.
  assert c["aug_step_fastest_torch"] == "eager_cl"
  assert c["aug_step_ratio"] == pytest.approx(400 / 930)
  assert c["loop_ratio"] is None
  assert set(c["torch"]) == {"eager", "eager_cl", "compile_cl"}
  assert c["torch"]["eager"]["step_images_per_sec"] == 838.0
  # compile_cl's figures are in doubt, and it could really be the fastest:
  # both ratios are marked.
  assert c["flags"] == [
    "compile_cl:step_spread",
    "compile_cl:step_slower_than_aug",
  ]
  assert c["step_flagged"] and c["aug_step_flagged"]
  table = bench.format_table([c], bench.compare_columns([c]))
  header, _, line = table.splitlines()
  for name in ("jax step", "eager step", "eager_cl step", "compile_cl step"):
    assert name in header
  assert "406 ±3%" in line and "838 ±4%" in line and "975 ±5%" in line
  assert "61 ±50%!" in line  # The flagged setting's own cell.
  assert "0.42!" in line and "eager_cl" in line and "0.43!" in line
  warnings = bench.common.flag_warnings([jax_row, *torch_rows])
  assert len(warnings) == 1
  assert warnings[0].startswith(
    "pytorch resnet20 batch 128 float32 compile_cl:"
  )
  assert (
    "aug step 713 img/s is faster than the bare step 61 img/s" in (warnings[0])
  )


def test_comparison_of_trusted_rows_has_no_marks():
  jax_row = _measured("jax", step=(406.0, 0.03), loop=(390.0, 0.02))
  torch_row = _measured("pytorch", "eager", step=(838.0, 0.04))
  (c,) = bench.compare_rows([jax_row], [torch_row])
  assert c["step_ratio"] == pytest.approx(406 / 838)
  assert c["loop_ratio"] is None  # PyTorch measured no loop.
  assert c["flags"] == [] and not c["step_flagged"]
  line = bench.format_table([c], bench.compare_columns([c])).splitlines()[2]
  assert "!" not in line and "0.48" in line


def test_loop_rate_excludes_the_first_interval():
  rows = [
    {"step": 50, "steps_per_sec": 1.0},  # Compile-time interval: ignored.
    {"step": 100, "steps_per_sec": 10.0},  # 50 steps in 5 s.
    {"step": 100, "eval_loss": 1.0},  # Eval rows have no rate.
    {"step": 150, "steps_per_sec": 5.0},  # 50 steps in 10 s.
  ]
  assert bench.loop_images_per_sec(rows, 128) == pytest.approx(128 * 100 / 15)
  assert bench.loop_images_per_sec(rows[:1], 128) is None


# --- Trusting a timing: warm-up, interleaving, spread, flags ----------------
#
# Synthetic timings only: fake participants run on a fake clock.

common = bench.common


class FakeClock:
  def __init__(self):
    self.now = 0.0


class FakeBench:
  """A participant whose steps cost what `costs(figure, i)` says (the i-th
  step of that figure, counted from its first) on a fake clock; steps in
  `compiling` also count a compilation, like torch.compile's counters."""

  def __init__(self, name, calls, costs, compiling=(), batch=128, loop=None):
    self.name, self.calls, self.costs = name, calls, costs
    self.compiling = set(compiling)
    self.clock = FakeClock()
    self.compilations = 0
    self.done = {"step": 0, "aug_step": 0}
    self.images_per_step = batch
    self._loop = loop
    self.row = bench.empty_row(
      framework="pytorch", model="resnet20", global_batch=batch, flags=[]
    )

  def step(self, figure):
    i = self.done[figure]
    self.done[figure] += 1
    self.clock.now += self.costs(figure, i)
    if (figure, i) in self.compiling:
      self.compilations += 1

  def start(self, figure):
    self.calls.append((self.name, "start", figure))
    return True

  def block(self, figure, steps):
    self.calls.append((self.name, figure, steps))
    t0, c0 = self.clock.now, self.compilations
    for _ in range(steps):
      self.step(figure)
    return self.clock.now - t0, self.compilations - c0

  def stop(self, figure):
    self.calls.append((self.name, "stop", figure))

  def loop(self):
    self.calls.append((self.name, "loop"))
    return self._loop


def test_relative_spread():
  assert common.relative_spread([100.0, 110.0, 90.0]) == pytest.approx(0.2)
  assert common.relative_spread([5.0, 5.0]) == 0.0
  assert common.relative_spread([5.0]) is None


def test_warm_up_goes_on_until_two_blocks_agree_and_nothing_compiled():
  blocks = iter(
    [(60.0, 2), (20.0, 1), (1.30, 0), (1.02, 0), (1.0, 0), (1.0, 0)]
  )
  w = common.warm_up(lambda: next(blocks), tolerance=0.1, max_blocks=10)
  assert w.settled
  assert w.times == (60.0, 20.0, 1.30, 1.02, 1.0)  # 1.30 vs 1.02: 27% apart.
  # Equal times are not enough while something still compiles.
  blocks = iter([(1.0, 1), (1.0, 1), (1.0, 0), (1.0, 0), (1.0, 0)])
  w = common.warm_up(lambda: next(blocks), tolerance=0.1, max_blocks=10)
  assert w.settled and w.compiles == (1, 1, 0, 0)


def test_warm_up_that_never_settles_stops_at_the_cap_unsettled():
  blocks = iter([(1.0, 0), (2.0, 0)] * 10)
  w = common.warm_up(lambda: next(blocks), tolerance=0.1, max_blocks=7)
  assert not w.settled and len(w.times) == 7


def test_interleave_alternates_the_participants():
  calls = []

  def block(name):
    return lambda: calls.append(name) or (1.0, 0)

  times = common.interleave({"jax": block("jax"), "torch": block("torch")}, 3)
  assert calls == ["jax", "torch"] * 3
  assert times["jax"] == [(1.0, 0)] * 3


def test_pytorch_warm_up_waits_for_compilation_then_blocks_interleave():
  calls = []
  # JAX: compiled ahead of time, steady at 0.5 s a step.
  jax_ = FakeBench("jax", calls, lambda f, i: 0.5)

  # PyTorch: the first two steps compile (forward, then backward: 30 s
  # each), the next three are still slow (caches: 2 s), then 0.25 s.
  def torch_cost(figure, i):
    return 30.0 if i < 2 else 2.0 if i < 5 else 0.25

  torch_ = FakeBench(
    "torch", calls, torch_cost, compiling={("step", 0), ("step", 1)}
  )
  common.measure_group(
    {"jax": jax_, "torch": torch_},
    common.Plan(steps=4, repeats=5, warmup_steps=2),
    figures=("step",),
    loop=False,
  )
  # Blocks of 2 steps: 60 s (2 compilations), 4 s, 2.25 s, 0.5 s, 0.5 s:
  # the warm-up stops only once two blocks agree with no compilation.
  assert torch_.row["step_warmup_s"] == [60.0, 4.0, 2.25, 0.5, 0.5]
  assert jax_.row["step_warmup_s"] == [1.0, 1.0]
  # Then the timed blocks alternate, JAX first, after both warm-ups.
  timed = [(n, f) for n, f, *rest in calls if rest == [4]]
  assert timed == [("jax", "step"), ("torch", "step")] * 5
  first_timed = calls.index(("jax", "step", 4))
  assert all(c[2] == 2 for c in calls[:first_timed] if c[1] == "step")
  for row, rate in ((jax_.row, 128 / 0.5), (torch_.row, 128 / 0.25)):
    assert row["step_images_per_sec"] == pytest.approx(rate)
    assert row["step_times_s"] == [4 * 128 / rate] * 5
    assert row["step_spread"] == 0.0
    assert row["flags"] == []


def test_compilation_inside_the_timed_blocks_is_flagged():
  calls = []
  # Settles on a plateau (0.25 s), then compiles again in the 3rd timed
  # block (a new input shape, say).
  torch_ = FakeBench(
    "torch",
    calls,
    lambda f, i: 5.0 if i in (0, 11) else 0.25,
    compiling={("step", 0), ("step", 11)},
  )
  common.measure_group(
    {"torch": torch_},
    common.Plan(steps=2, repeats=5, warmup_steps=2),
    figures=("step",),
    loop=False,
  )
  assert torch_.row["step_warmup_s"] == [5.25, 0.5, 0.5]
  assert "step_compiled_while_timed" in torch_.row["flags"]
  assert "step_spread" in torch_.row["flags"]


def test_unsettled_warm_up_is_flagged_and_worded():
  calls = []
  p = FakeBench("torch", calls, lambda f, i: 1.0 if (i // 2) % 2 else 2.0)
  common.measure_group(
    {"torch": p},
    common.Plan(steps=2, repeats=5, warmup_steps=2, max_warmup_blocks=6),
    figures=("step",),
    loop=False,
  )
  assert len(p.row["step_warmup_s"]) == 6
  assert p.row["flags"][0] == "step_warmup_unsettled"
  (line,) = common.flag_warnings([p.row])
  assert "bare step warm-up never settled in 6 blocks" in line


@pytest.mark.parametrize(
  "step_s, aug_s, loop_s, expected",
  [
    # Stable and consistent: aug and loop slightly slower than the step.
    ((1.00, 1.02, 0.99, 1.01, 1.00), (1.05,) * 5, 1.1, []),
    # Noise may put aug up to 10% ahead of the step: allowed.
    ((1.00,) * 5, (1 / 1.09,) * 5, 1 / 1.09, []),
    # One block 30% slow: the spread is over 10%.
    ((1.0, 1.0, 1.3, 1.0, 1.0), (1.05,) * 5, 1.1, ["step_spread"]),
    # The bare step 2x slower than the step that does more work.
    ((1.0,) * 5, (0.5,) * 5, 0.55, ["step_slower_than_aug"]),
    # The loop (aug step + host work) faster than the aug step.
    ((1.0,) * 5, (1.0,) * 5, 0.8, ["loop_faster_than_aug"]),
  ],
)
def test_row_flags_from_synthetic_timings(step_s, aug_s, loop_s, expected):
  calls = []
  blocks = {"step": iter(step_s), "aug_step": iter(aug_s)}
  p = FakeBench(
    "jax",
    calls,
    lambda f, i: 1.0,
    batch=100,
    loop=[(100 * 5, 5 * loop_s)] * 3,  # 3 intervals of 5 steps.
  )
  warm = {"step": 2, "aug_step": 2}  # Two agreeing warm-up blocks first.

  def block(figure, steps):
    if warm[figure]:
      warm[figure] -= 1
      return 1.0, 0
    return next(blocks[figure]), 0

  p.block = block
  common.measure_group(
    {"jax": p},
    common.Plan(steps=1, repeats=5, warmup_steps=1),
    figures=("step", "aug_step"),
  )
  assert p.row["flags"] == expected
  assert p.row["step_images_per_sec"] == pytest.approx(100 / sorted(step_s)[2])
  assert p.row["loop_images_per_sec"] == pytest.approx(100 / loop_s)
  assert p.row["loop_spread"] == 0.0 and p.row["loop_intervals"] == 3


def test_flags_name_the_figures_they_doubt():
  assert common.flag_figures("aug_step_spread") == ("aug_step",)
  assert common.flag_figures("step_warmup_unsettled") == ("step",)
  assert common.flag_figures("step_slower_than_aug") == ("step", "aug_step")
  assert common.flag_figures("loop_faster_than_step") == ("loop", "step")


# --- The largest batch ------------------------------------------------------


@pytest.mark.parametrize(
  "threshold", [1, 2, 3, 7, 8, 9, 100, 511, 512, 513, 1000, 4095, 4096]
)
@pytest.mark.parametrize("start", [1, 8, 256])
def test_find_max_batch_finds_the_exact_threshold(threshold, start):
  tried = []

  def fits(b):
    tried.append(b)
    return b <= threshold

  best, trials = bench.find_max_batch(fits, start=start, limit=4096)
  assert best == threshold
  assert trials == [(b, b <= threshold) for b in tried]
  assert len(set(tried)) == len(tried)  # Nothing tried twice.
  assert max(tried) <= 4096
  assert len(tried) <= 2 * 13 + 1  # Doubling then bisection: logarithmic.


@pytest.mark.parametrize(
  "threshold, expected",
  [(0, 0), (7, 0), (8, 8), (20, 16), (1000, 1000), (1001, 1000), (10**9, 4096)],
)
def test_find_max_batch_respects_the_multiple_and_the_limit(
  threshold, expected
):
  tried = []

  def fits(b):
    tried.append(b)
    return b <= threshold

  best, _ = bench.find_max_batch(fits, start=64, limit=4100, multiple=8)
  assert best == expected
  assert all(b % 8 == 0 and 8 <= b <= 4096 for b in tried)


def test_find_max_batch_rejects_a_limit_below_the_multiple():
  with pytest.raises(ValueError):
    bench.find_max_batch(lambda b: True, start=1, limit=4, multiple=8)


def test_out_of_memory_errors_are_recognized():
  assert bench.is_out_of_memory(
    RuntimeError(
      "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123"
    )
  )
  assert bench.is_out_of_memory(MemoryError())
  assert not bench.is_out_of_memory(ValueError("shapes do not match"))


# --- The PyTorch reference agrees on tables (imports without torch) --------


def _reference():
  path = os.path.join(REPO, "benchmarks", "pytorch_reference.py")
  spec = importlib.util.spec_from_file_location("pytorch_reference", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_pytorch_reference_has_the_same_rows_peaks_and_params():
  ref = _reference()
  # It loads superconv/bench_common.py by path: the same rows, peaks and
  # table, without JAX.
  assert ref.ROW_KEYS == bench.ROW_KEYS
  assert ref.common.PEAK_TFLOPS == bench.PEAK_TFLOPS
  assert ref.common.TORCH_SETTINGS == bench.common.TORCH_SETTINGS
  for name in ("resnet20", "resnet56", "resnet18"):
    assert ref.EXPECTED_PARAMS[name] == bench.count_params(name)
  assert bench.count_params("resnet56") == 853_018


def test_pytorch_compile_events_count_every_compilation():
  ref = _reference()
  # torch._dynamo.utils.counters after one compiled train step (forward and
  # backward graphs), as torch 2.13 fills them.
  counters = {
    "frames": {"total": 1, "ok": 1},
    "stats": {"calls_captured": 6, "unique_graphs": 1},
    "aot_autograd": {"total": 1, "ok": 1},
    "inductor": {"fxgraph_cache_miss": 2, "extern_calls": 7},
  }
  assert ref.compile_events(counters) == 4
  counters["frames"]["total"] = 2  # A recompilation.
  assert ref.compile_events(counters) == 5
  assert ref.compile_events({}) == 0


def test_pytorch_reference_settings_flags():
  ref = _reference()
  assert ref._args([]).settings == ["eager", "eager_cl", "compile_cl"]
  assert ref._args(["--no-compile"]).settings == ["eager", "eager_cl"]
  args = ref._args(["--no-channels-last", "--settings", "eager,compile"])
  assert args.settings == ["eager", "compile"]
  assert args.warmup == args.steps == 20


def test_pytorch_reference_rejects_unknown_settings(capsys):
  with pytest.raises(SystemExit) as e:
    _reference()._args(["--settings", "eager,fast"])
  assert e.value.code == 2
  assert "--settings: unknown 'fast'" in capsys.readouterr().err


# --- Real runs: resnet8, global batch 8, float32, synthetic -------------------
#
# Both tests below compile the same programs (initial state, train step,
# bare step); one persistent compilation cache for the module lets the
# second test reuse the first one's compilations, whichever runs first.

TINY_ARGS = [
  "--model",
  "resnet8",
  "--batch",
  "8",
  "--dtype",
  "float32",
  "--train-size",
  "16",
  "--log-every",
  "1",
  "--loop-intervals",
  "1",
]


@pytest.fixture(scope="module")
def compile_cache():
  with bench.fresh_compile_cache() as directory:
    yield directory


def test_bare_step_matches_the_train_step_on_the_same_batch(compile_cache):
  # In float64: the two programs differ only in where the batch is selected
  # and augmented (inside the step or before it), so XLA may fuse and order
  # the sums differently. Float64 rounding (1e-16), grown through one
  # ResNet-8 step, stays near 2e-15 relative to a leaf's or metric's norm
  # (measured on 1 and 2 threads); float32 gives 1e-6 (and 2% on elements
  # near zero, measured on ResNet-20), a wrong batch or step 1e-1. 1e-10
  # keeps margins of 1e3 or more on either side.
  del compile_cache
  tolerance = 1e-10
  with jax.enable_x64(True):
    config = bench.bench_config(
      "resnet8", 8, "float64", train_size=16, loop_steps=2, log_every=1
    )
    dataset = data_lib.load(
      "synthetic", synthetic_train_size=16, synthetic_test_size=8
    )
    run = train.setup(config, dataset)
    init = bench.initial_state(config, run, dataset)

    real = train.make_train_step(config, dataset, run.aug)
    real_state, real_metrics = real(
      input_pipeline.replicate_tree(init),
      input_pipeline.replicate(dataset.train_images),
      input_pipeline.replicate(dataset.train_labels),
    )
    # The batch the real step trained on: step 0's, augmented.
    x, y = bench.fixed_batch(dataset, run.aug, seed=config.seed, step=0)
    bare = bench.make_bare_step(config, dataset.num_classes)
    bare_state, bare_metrics = bare(input_pipeline.replicate_tree(init), x, y)
    bare_state, real_state, bare_metrics, real_metrics = jax.device_get(
      (bare_state, real_state, bare_metrics, real_metrics)
    )

  def assert_close(got, want, name):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, name
    diff = np.linalg.norm(np.float64(got) - np.float64(want))
    assert diff <= tolerance * np.linalg.norm(np.float64(want)), (name, diff)

  assert int(bare_state.step[0]) == int(real_state.step[0]) == 1
  assert set(bare_metrics) == set(real_metrics)
  for key in real_metrics:
    assert_close(bare_metrics[key], real_metrics[key], key)
  assert real_state.params["head"]["kernel"].dtype == np.float64
  parts = ("params", "batch_stats", "opt_state")
  for part in parts:
    leaves = jax.tree_util.tree_leaves_with_path(getattr(real_state, part))
    for (path, want), got in zip(
      leaves, jax.tree.leaves(getattr(bare_state, part))
    ):
      assert_close(got, want, part + jax.tree_util.keystr(path))
  # The step did something: parameters moved.
  moved = jax.tree.map(
    lambda a, b: float(np.abs(a[0] - b).max()), bare_state.params, init.params
  )
  assert max(jax.tree.leaves(moved)) > 0


# --- A tiny real run: the JSON rows have the documented keys ----------------


def test_tiny_run_writes_the_documented_json(tmp_path, capsys, compile_cache):
  del compile_cache
  out = tmp_path / "bench.json"
  status = bench.main(
    TINY_ARGS
    + [
      "--steps",
      "2",
      "--repeats",
      "1",
      "--warmup",
      "1",
      "--no-compile-cache",
      "--json",
      str(out),
    ]
  )
  assert status == 0
  payload = json.loads(out.read_text())
  (row,) = payload["rows"]
  assert tuple(row) == bench.ROW_KEYS
  assert row["framework"] == "jax"
  assert (row["model"], row["global_batch"], row["dtype"]) == (
    "resnet8",
    8,
    "float32",
  )
  assert row["params"] == 75_290
  assert row["devices"] == jax.local_device_count()
  assert row["conv_impl"] == (
    "chunked" if jax.default_backend() == "cpu" else "xla"
  )
  assert row["forward_macs"] == models.forward_macs("resnet8")
  assert row["train_gflops_per_image"] == pytest.approx(
    6 * row["forward_macs"] / 1e9
  )
  assert row["error"] is None
  assert len(row["step_times_s"]) == 1 and len(row["aug_step_times_s"]) == 1
  assert row["step_spread"] is None  # One block has no spread.
  for what in ("step", "aug_step"):  # 2 steps of 8 images in the block.
    (seconds,) = row[f"{what}_times_s"]
    assert row[f"{what}_images_per_sec"] == pytest.approx(8 * 2 / seconds)
  assert isinstance(row["flags"], list)
  # Warm-up: blocks of --warmup 1 step until two agree, within the cap.
  for what in ("step", "aug_step"):
    assert 2 <= len(row[f"{what}_warmup_s"]) <= common.MAX_WARMUP_BLOCKS
  assert len(row["loop_times_s"]) == row["loop_intervals"] == 1
  for key in (
    "compile_s",
    "step_images_per_sec",
    "aug_step_images_per_sec",
    "loop_images_per_sec",
    "loop_step_ratio",
    "achieved_tflops",
  ):
    assert row[key] > 0, key
  assert row["loop_intervals"] == 1
  assert row["achieved_tflops"] == pytest.approx(
    row["step_images_per_sec"] * row["train_gflops_per_image"] / 1e3
  )
  if jax.default_backend() == "cpu":
    assert row["peak_tflops"] is None and row["mfu"] is None
    assert row["peak_memory_bytes"] is None
  assert payload["meta"]["backend"] == jax.default_backend()
  table = capsys.readouterr().out
  assert "step img/s" in table and "resnet8" in table


def test_parallel_seeds_rows_count_every_replica(tmp_path, compile_cache):
  del compile_cache
  out = tmp_path / "bench.json"
  status = bench.main(
    TINY_ARGS
    + [
      "--parallel-seeds",
      "2",
      "--steps",
      "2",
      "--repeats",
      "1",
      "--warmup",
      "1",
      "--no-compile-cache",
      "--json",
      str(out),
    ]
  )
  assert status == 0
  rows = json.loads(out.read_text())["rows"]
  # (One seed's rows: test_tiny_run_writes_the_documented_json.)
  assert [r["parallel_seeds"] for r in rows] == [2]
  for row in rows:
    k = row["parallel_seeds"]
    # Each step trains K global batches of 8 images: images/s = K * 8 *
    # steps / the median block time.
    for what in ("step", "aug_step"):
      (seconds,) = row[f"{what}_times_s"]
      assert row[f"{what}_images_per_sec"] == pytest.approx(
        k * 8 * 2 / seconds
      ), (k, what)
    assert row["loop_images_per_sec"] > 0
    assert row["achieved_tflops"] == pytest.approx(
      row["step_images_per_sec"] * row["train_gflops_per_image"] / 1e3
    )


def test_conv_and_bn_impl_rows(tmp_path, capsys, compile_cache):
  del compile_cache
  out = tmp_path / "bench.json"
  status = bench.main(
    TINY_ARGS
    + [
      "--conv-impl",
      "xla,chunked",
      "--bn-impl",
      "flax,fused",
      "--steps",
      "1",
      "--repeats",
      "1",
      "--warmup",
      "0",
      "--no-aug",
      "--no-loop",
      "--no-compile-cache",
      "--json",
      str(out),
    ]
  )
  assert status == 0
  rows = json.loads(out.read_text())["rows"]
  impls = [("xla", "flax"), ("xla", "fused")]
  impls += [("chunked", "flax"), ("chunked", "fused")]
  assert [(r["conv_impl"], r["bn_impl"]) for r in rows] == impls
  assert all(r["step_images_per_sec"] > 0 for r in rows)
  body = capsys.readouterr().out.splitlines()[2:]
  assert [tuple(line.split()[5:7]) for line in body] == impls


@pytest.mark.parametrize(
  "flags, message",
  [
    (["--conv-impl", "fast"], "--conv-impl: unknown 'fast'"),
    (["--bn-impl", "fast"], "--bn-impl: unknown 'fast'"),
    (["--parallel-seeds", "0"], "--parallel-seeds: every K must be >= 1"),
    (
      ["--torch-settings", "eager,fastest"],
      "--torch-settings: unknown 'fastest'",
    ),
    (["--max-warmup-blocks", "1"], "--max-warmup-blocks: must be >= 2"),
  ],
)
def test_bad_flags_are_refused(capsys, flags, message):
  with pytest.raises(SystemExit) as e:
    bench.main(TINY_ARGS + flags)
  assert e.value.code == 2
  assert message in capsys.readouterr().err


# --- --compare-pytorch against a fake reference (no torch) -----------------
#
# A stand-in for `pytorch_reference.py --serve`: the same JSON-lines
# requests, scripted timings. Its compiled setting compiles during its first
# two blocks (60 s, then 20 s) and then runs a 1-step block in 0.5 s; its
# eager setting runs one in 2 s. It logs every request.

FAKE_REFERENCE = r"""
import json, sys
log = open(sys.argv[sys.argv.index("--log") + 1], "a")
settings = sys.argv[sys.argv.index("--settings") + 1].split(",")
blocks = {s: 0 for s in settings}
out = sys.stdout
for line in sys.stdin:
  request = json.loads(line)
  log.write(line)
  log.flush()
  op, s = request["op"], request.get("setting")
  if op == "quit":
    break
  if op == "hello":
    reply = {"torch": "fake torch"}
  elif op == "setup":
    reply = {"rows": {s: {
      "framework": "pytorch", "model": request["model"],
      "global_batch": request["batch"], "dtype": request["dtype"],
      "setting": s, "settings": "fake " + s, "devices": 1, "flags": [],
      "forward_macs": None} for s in settings}}
  elif op == "start":
    reply = {"ok": True, "row": {"compile_s": 1.5}}
  elif op == "block":
    i = blocks[s]
    blocks[s] += 1
    if s == "compile_cl":
      seconds, compiles = ([60.0, 20.0][i], 2) if i < 2 else (0.5, 0)
    else:
      seconds, compiles = 2.0, 0
    reply = {"block": [seconds * request["steps"], compiles], "row": {}}
  elif op == "finish":
    reply = {"rows": {s: {"peak_memory_bytes": None} for s in settings}}
  else:
    reply = {"fatal": "unexpected " + op}
  out.write(json.dumps(reply) + "\n")
  out.flush()
"""


def test_compare_pytorch_waits_for_compilation_and_interleaves(
  tmp_path, capsys, compile_cache
):
  del compile_cache
  script = tmp_path / "fake_reference.py"
  script.write_text(FAKE_REFERENCE)
  requests = tmp_path / "requests.jsonl"
  out = tmp_path / "bench.json"
  status = bench.main(
    TINY_ARGS
    + [
      "--steps",
      "1",
      "--repeats",
      "3",
      "--warmup",
      "1",
      "--no-aug",
      "--no-loop",
      "--no-compile-cache",
      "--compare-pytorch",
      "--torch-python",
      sys.executable,
      "--torch-script",
      str(script),
      "--torch-settings",
      "eager,compile_cl",
      "--torch-args",
      f"--log {requests}",
      "--json",
      str(out),
    ]
  )
  assert status == 0
  payload = json.loads(out.read_text())
  jax_row, eager, compiled = payload["rows"]
  assert (jax_row["framework"], eager["setting"], compiled["setting"]) == (
    "jax",
    "eager",
    "compile_cl",
  )
  for row in (jax_row, eager, compiled):
    assert tuple(row) == bench.ROW_KEYS
  # The compiled setting's warm-up went past its compiling blocks.
  assert compiled["step_warmup_s"] == [60.0, 20.0, 0.5, 0.5]
  assert compiled["step_times_s"] == [0.5] * 3
  assert compiled["step_images_per_sec"] == pytest.approx(8 / 0.5)
  assert compiled["flags"] == [] and eager["flags"] == []
  assert eager["step_images_per_sec"] == pytest.approx(8 / 2.0)
  assert (
    compiled["compile_s"] == 1.5 and compiled["settings"] == "fake compile_cl"
  )
  (c,) = payload["comparison"]
  assert c["step_fastest_torch"] == "compile_cl"
  assert c["step_ratio"] == pytest.approx(jax_row["step_images_per_sec"] / 16)
  # Warm-up blocks first, then the timed blocks in turn (JAX's between
  # them, in this process).
  blocks = [
    (r["setting"], r["steps"])
    for r in map(json.loads, requests.read_text().splitlines())
    if r["op"] == "block"
  ]
  assert (
    blocks
    == [("eager", 1)] * 2
    + [("compile_cl", 1)] * 4
    + [
      ("eager", 1),
      ("compile_cl", 1),
    ]
    * 3
  )
  tables = capsys.readouterr().out
  assert "compile_cl step" in tables and "[fake eager]" in tables


def test_compare_pytorch_that_cannot_start_is_an_error(tmp_path, capsys):
  status = bench.main(
    TINY_ARGS
    + [
      "--compare-pytorch",
      "--torch-python",
      str(tmp_path / "no-python"),
      "--json",
      str(tmp_path / "bench.json"),
    ]
  )
  assert status == 2
  err = capsys.readouterr().err
  assert "superconv.bench: error: --torch-python: cannot run" in err
  assert not (tmp_path / "bench.json").exists()  # Nothing measured.
