"""superconv.bench: FLOP counts, MFU, tables, batch search, JSON rows.

Correctness only: nothing here asserts a timing.
"""

import importlib.util
import json
import os

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
    aug_step_images_per_sec=39000.0,
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
    "compile s",
    "step img/s",
    "aug img/s",
    "loop img/s",
    "loop/step",
    "GFLOP/img",
    "TFLOP/s",
    "MFU",
    "peak GiB",
  ):
    assert header in lines[0]
  assert len(lines) == 4  # Header, rule, two rows.
  assert lines[2].split() == [
    "resnet56",
    "1000",
    "bfloat16",
    "4",
    "1",
    "xla",
    "31.2",
    "41,234",
    "39,000",
    "36,500",
    "0.89",
    "0.753",
    "31.05",
    "3.1%",
    "3.00",
  ]
  assert lines[3].split()[:5] == ["resnet18", "65536", "float32", "1", "1"]
  assert lines[3].split().count("-") == 10
  assert lines[3].endswith("(out of memory)")
  # Fixed width: the numeric columns line up.
  assert len(lines[0]) == len(lines[2])


def test_comparison_ratios():
  jax_row = bench.empty_row(
    framework="jax",
    model="resnet20",
    global_batch=512,
    dtype="bfloat16",
    step_images_per_sec=30_000.0,
    aug_step_images_per_sec=None,
    loop_images_per_sec=20_000.0,
  )
  torch_row = bench.empty_row(
    framework="pytorch",
    model="resnet20",
    global_batch=512,
    dtype="bfloat16",
    step_images_per_sec=20_000.0,
    aug_step_images_per_sec=15_000.0,
    loop_images_per_sec=25_000.0,
    settings="torch.compile",
  )
  other = dict(torch_row, global_batch=1024)
  (c,) = bench.compare_rows([jax_row], [other, torch_row])
  assert c["step_ratio"] == pytest.approx(1.5)
  assert c["aug_step_ratio"] is None
  assert c["loop_ratio"] == pytest.approx(0.8)
  table = bench.format_table([c], bench.COMPARE_COLUMNS)
  assert "torch step" in table and "1.50" in table and "0.80" in table


def test_loop_rate_excludes_the_first_interval():
  rows = [
    {"step": 50, "steps_per_sec": 1.0},  # Compile-time interval: ignored.
    {"step": 100, "steps_per_sec": 10.0},  # 50 steps in 5 s.
    {"step": 100, "eval_loss": 1.0},  # Eval rows have no rate.
    {"step": 150, "steps_per_sec": 5.0},  # 50 steps in 10 s.
  ]
  assert bench.loop_images_per_sec(rows, 128) == pytest.approx(128 * 100 / 15)
  assert bench.loop_images_per_sec(rows[:1], 128) is None


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
  assert ref.ROW_KEYS == bench.ROW_KEYS
  assert ref.PEAK_TFLOPS == bench.PEAK_TFLOPS
  assert [h for h, *_ in ref.TABLE_COLUMNS] == [
    h for h, *_ in bench.TABLE_COLUMNS
  ]
  for name in ("resnet20", "resnet56", "resnet18"):
    assert ref.EXPECTED_PARAMS[name] == bench.count_params(name)
  assert bench.count_params("resnet56") == 853_018


# --- Real runs: resnet20, global batch 8, float32, synthetic ------------------
#
# Both tests below compile the same programs (initial state, train step,
# bare step); one persistent compilation cache for the module lets the
# second test reuse the first one's compilations, whichever runs first.

TINY_ARGS = [
  "--model",
  "resnet20",
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
  # ResNet-20 step, stays near 1e-14 relative to a leaf's or metric's norm
  # (measured); float32 gives 1e-6 (and 2% on elements near zero), a wrong
  # batch or step 1e-1. 1e-10 keeps margins of 1e3 or more on either side.
  del compile_cache
  tolerance = 1e-10
  with jax.enable_x64(True):
    config = bench.bench_config(
      "resnet20", 8, "float64", train_size=16, loop_steps=2, log_every=1
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
    "resnet20",
    8,
    "float32",
  )
  assert row["params"] == 269_722
  assert row["devices"] == jax.local_device_count()
  assert row["conv_impl"] == (
    "chunked" if jax.default_backend() == "cpu" else "xla"
  )
  assert row["forward_macs"] == models.forward_macs("resnet20")
  assert row["train_gflops_per_image"] == pytest.approx(
    6 * row["forward_macs"] / 1e9
  )
  assert row["error"] is None
  assert len(row["step_times_s"]) == 1 and len(row["aug_step_times_s"]) == 1
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
  assert "step img/s" in table and "resnet20" in table


def test_parallel_seeds_rows_count_every_replica(tmp_path, compile_cache):
  del compile_cache
  out = tmp_path / "bench.json"
  status = bench.main(
    TINY_ARGS
    + [
      "--parallel-seeds",
      "1,2",
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
  assert [r["parallel_seeds"] for r in rows] == [1, 2]
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


def test_conv_impl_rows(tmp_path, capsys, compile_cache):
  del compile_cache
  out = tmp_path / "bench.json"
  status = bench.main(
    TINY_ARGS
    + [
      "--conv-impl",
      "xla,chunked",
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
  assert [r["conv_impl"] for r in rows] == ["xla", "chunked"]
  assert all(r["step_images_per_sec"] > 0 for r in rows)
  body = capsys.readouterr().out.splitlines()[2:]
  assert [line.split()[5] for line in body] == ["xla", "chunked"]


def test_conv_impl_must_be_known(capsys):
  with pytest.raises(SystemExit) as e:
    bench.main(TINY_ARGS + ["--conv-impl", "fast"])
  assert e.value.code == 2
  assert "--conv-impl: unknown 'fast'" in capsys.readouterr().err


def test_parallel_seeds_must_be_positive(capsys):
  with pytest.raises(SystemExit) as e:
    bench.main(TINY_ARGS + ["--parallel-seeds", "0"])
  assert e.value.code == 2
  assert "--parallel-seeds: every K must be >= 1" in capsys.readouterr().err
