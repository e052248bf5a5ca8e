"""Train step, devices, dtypes, evaluation and the command line."""

import json
import os
import subprocess
import sys
import textwrap

from conftest import tiny_config
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superconv import data as data_lib
from superconv import input_pipeline, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(config):
  return data_lib.load(
    config.dataset,
    synthetic_train_size=config.synthetic_train_size,
    synthetic_test_size=config.synthetic_test_size,
  )


def batch_loss(state, x, y):
  """Train-mode loss (batch statistics) of `state` on a fixed batch."""

  def loss(x, y):
    logits, _ = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return train.cross_entropy(logits, y, 10, 0.0).mean()

  # vmap over a device axis of size 1 binds the BatchNorm's axis name.
  return float(jax.vmap(loss, axis_name=train.AXIS)(x[None], y[None])[0])


def test_one_step_changes_parameters_and_lowers_the_loss():
  # In float64: the step's loss (pmapped, batch selected inside) and
  # batch_loss (vmapped) are two programs for one computation, equal up to
  # float64 rounding grown through ResNet-8 (2e-16 measured): 1e-10.
  # Data set = one batch, no augmentation: every step sees the same images.
  with jax.enable_x64(True):
    config = tiny_config(
      synthetic_train_size=16,
      crop_padding=0,
      random_flip=False,
      num_steps=1,
      dtype="float64",
    )
    dataset = load(config)
    run = train.setup(config, dataset)
    state = train.create_train_state(config, run.model, (32, 32, 3), run.tx)
    x = input_pipeline.normalize(
      jnp.asarray(dataset.train_images), run.aug.mean, run.aug.std, jnp.float64
    )
    y = jnp.asarray(dataset.train_labels)
    before = batch_loss(state, x, y)

    step = train.make_train_step(config, dataset, run.aug)
    new_state, metrics = step(
      input_pipeline.replicate_tree(state),
      input_pipeline.replicate(dataset.train_images),
      input_pipeline.replicate(dataset.train_labels),
    )
    new_state = train.unreplicate(new_state)
    after = batch_loss(new_state, x, y)
    changed = jax.tree.map(
      lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params
    )

  assert int(new_state.step) == 1
  assert new_state.params["head"]["kernel"].dtype == np.float64
  assert float(metrics["train_loss"][0]) == pytest.approx(before, rel=1e-10)
  assert float(metrics["learning_rate"][0]) == pytest.approx(0.1)
  assert float(metrics["momentum"][0]) == pytest.approx(0.9)
  assert all(jax.tree.leaves(changed))
  assert after < before - 0.05, (before, after)


def test_bfloat16_first_step_loss_within_one_percent_of_float32():
  losses = {}
  for dtype in ("float32", "bfloat16"):
    config = tiny_config(dtype=dtype)
    dataset = load(config)
    run = train.setup(config, dataset)
    state = train.create_train_state(config, run.model, (32, 32, 3), run.tx)
    x = input_pipeline.normalize(
      jnp.asarray(dataset.train_images[:16]), run.aug.mean, run.aug.std, dtype
    )
    losses[dtype] = batch_loss(state, x, jnp.asarray(dataset.train_labels[:16]))
  assert losses["bfloat16"] == pytest.approx(losses["float32"], rel=0.01)
  assert losses["bfloat16"] != losses["float32"]  # bf16 really ran.


def test_weight_decay_mask_excludes_batchnorm_and_bias_when_asked():
  config = tiny_config()
  dataset = load(config)
  run = train.setup(config, dataset)
  state = train.create_train_state(config, run.model, (32, 32, 3), run.tx)
  mask = train.decay_mask(state.params)
  flat = flax.traverse_util.flatten_dict(mask, sep="/")
  assert all(v for k, v in flat.items() if k.endswith("kernel"))
  assert not any(
    v for k, v in flat.items() if k.endswith("scale") or k.endswith("bias")
  )


def test_eval_counts_every_test_image_once():
  # 40 test images, global eval batch 16: 3 batches, the last half padding.
  # In float64: the Evaluator (batches of 16, masked sums) and one direct
  # forward of the 40 images agree up to float64 rounding (1e-16 at most):
  # 1e-10. An image lost, counted twice or a padding image counted moves the
  # mean loss by about 1e-2.
  with jax.enable_x64(True):
    config = tiny_config(dtype="float64")
    dataset = load(config)
    run = train.setup(config, dataset)
    state = train.create_train_state(config, run.model, (32, 32, 3), run.tx)
    result = train.Evaluator(config, dataset, run.aug)(
      input_pipeline.replicate_tree(state)
    )
    logits = state.apply_fn(
      {"params": state.params, "batch_stats": state.batch_stats},
      input_pipeline.normalize(
        jnp.asarray(dataset.test_images), run.aug.mean, run.aug.std, jnp.float64
      ),
      train=False,
    )
    labels = jnp.asarray(dataset.test_labels)
    correct = int(jnp.sum(jnp.argmax(logits, -1) == labels))
    loss = float(train.cross_entropy(logits, labels, 10, 0.0).mean())
  assert logits.dtype == np.float64
  assert result["eval_examples"] == 40
  assert result["eval_accuracy"] == pytest.approx(correct / 40, abs=1e-12)
  assert result["eval_loss"] == pytest.approx(loss, rel=1e-10)


def _init_bytes(options):
  """Every leaf's bytes of the tiny run's initial state (ResNet-8: every
  kind of layer ResNet-20 has, quicker to compile), its initialization
  compiled with `options` (None: create_train_state's own)."""
  config = tiny_config()
  dataset = load(config)
  run = train.setup(config, dataset)
  if options is None:
    state = train.create_train_state(config, run.model, (32, 32, 3), run.tx)
  else:
    init = train._init_fn(config, run.model, (32, 32, 3), run.tx)
    state = jax.jit(init, compiler_options=options)(train.init_seeds(config))
  return [np.asarray(x).tobytes() for x in jax.tree.leaves(state)]


def test_the_initialization_has_the_bits_of_the_default_compilation():
  # On a CPU create_train_state compiles the initialization at LLVM -O1 (a
  # quarter of -O2's compile time); its state must be the default (-O2)
  # compilation's, bit for bit. Not a given: -O0 changes bits (measured).
  assert jax.default_backend() == "cpu"
  ours = _init_bytes(None)
  assert ours == _init_bytes({})
  assert ours != _init_bytes({"xla_backend_optimization_level": 0})


# --- Devices: 8 simulated CPU devices vs 1 --------------------------------

# In float64 (JAX_ENABLE_X64=1, config dtype float64: parameters, batch
# statistics and compute). 8 devices change only how the batch's sums are
# split and ordered (convolutions, BatchNorm statistics, the pmean), which
# float64 rounds at 1e-16; over 3 steps of ResNet-8 that grows to about
# 2e-15 relative to a leaf's norm (measured on 1 and 2 threads). Float32
# noise would be 1e-5 (ResNet-20) and a wrong shard, BatchNorm axis or
# missing pmean 1e-1, so 1e-10 separates the algorithm from rounding with
# margins of 1e3 on either side.
_DEVICES_TOLERANCE = 1e-10

_DEVICE_SCRIPT = textwrap.dedent("""
    import sys
    import flax, jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_train import tiny_config, load
    from superconv import input_pipeline, train
    config = tiny_config(dtype="float64")
    dataset = load(config)
    run = train.setup(config, dataset)
    state = train.create_train_state(config, run.model, (32, 32, 3), run.tx)
    state = input_pipeline.replicate_tree(state)
    step = train.make_train_step(config, dataset, run.aug)
    images = input_pipeline.replicate(dataset.train_images)
    labels = input_pipeline.replicate(dataset.train_labels)
    for _ in range(3):
      state, metrics = step(state, images, labels)
    state = jax.device_get(train.unreplicate(state))
    flat = flax.traverse_util.flatten_dict(
        {{"params": state.params, "batch_stats": state.batch_stats}}, sep="/")
    np.savez({out!r}, devices=jax.device_count(), **flat)
""")


def _start_training_on(devices: int, tmp_path):
  """(process, output file) of the 3 steps on `devices` devices."""
  out = str(tmp_path / f"params_{devices}.npz")
  env = dict(
    os.environ,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    JAX_PLATFORMS="cpu",
    JAX_ENABLE_X64="1",
  )
  script = _DEVICE_SCRIPT.format(tests=os.path.join(REPO, "tests"), out=out)
  return subprocess.Popen(
    [sys.executable, "-c", script], env=env, cwd=REPO
  ), out


def _trained(started) -> dict:
  proc, out = started
  assert proc.wait(timeout=600) == 0
  return dict(np.load(out))


def test_eight_devices_match_one_device_after_three_steps(tmp_path):
  # Both at once: each compiles on its own core.
  started = [_start_training_on(n, tmp_path) for n in (1, 8)]
  one, eight = (_trained(s) for s in started)
  assert int(one.pop("devices")) == 1 and int(eight.pop("devices")) == 8
  assert one.keys() == eight.keys()
  for key in one:
    ref = one[key]
    assert ref.dtype == eight[key].dtype == np.float64, key
    diff = np.linalg.norm(eight[key] - ref) / max(np.linalg.norm(ref), 1e-300)
    assert diff <= _DEVICES_TOLERANCE, (key, diff)
  # The head bias starts at zero: it moved, so the comparison means something.
  assert np.abs(one["params/head/bias"]).max() > 1e-3


# --- The command line -------------------------------------------------------


def run_main(args, *, devices=1, timeout=600):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
  )
  return subprocess.run(
    [sys.executable, "-m", "superconv.main", *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


_BAD_OVERRIDES = [
  ("--config.no_such_key=1", "no_such_key"),
  ("--config.schedule.no_such_key=1", "schedule.no_such_key"),
  ("--config.batch_size=abc", "batch_size"),
  ("--config.batch_size=12", "batch_size"),  # 8 devices
  ("--config.num_epochs=-1", "num_epochs"),
  ("--config.model=resnet7", "model"),
  ("--config.dataset=imagenet", "dataset"),
  ("--config.dtype=float16", "dtype"),
  ("--config.dtype=float64", "dtype"),  # Without JAX_ENABLE_X64=1.
  ("--config.conv_impl=fast", "conv_impl"),
]


@pytest.fixture(scope="module")
def bad_override_runs(tmp_path_factory):
  """{override: (exit status, stderr, workdir)}, every run started at once:
  each only starts up, reads its flags and exits."""
  root = tmp_path_factory.mktemp("bad_overrides")
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    JAX_ENABLE_X64="0",
    XLA_FLAGS="--xla_force_host_platform_device_count=8",
  )
  procs = {}
  for i, (override, _) in enumerate(_BAD_OVERRIDES):
    workdir = root / f"run{i}"
    args = ["--config", "configs/quick.py", "--workdir", str(workdir)]
    procs[override] = (
      workdir,
      subprocess.Popen(
        [sys.executable, "-m", "superconv.main", *args]
        + ["--config.dataset=synthetic", override],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
      ),
    )
  runs = {}
  try:
    for override, (workdir, proc) in procs.items():
      _, stderr = proc.communicate(timeout=300)
      runs[override] = proc.returncode, stderr, workdir
  finally:
    for _, proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return runs


@pytest.mark.parametrize("override,key", _BAD_OVERRIDES)
def test_bad_override_exits_nonzero_naming_the_key(
  override, key, bad_override_runs
):
  returncode, stderr, workdir = bad_override_runs[override]
  assert returncode == 2, stderr
  lines = stderr.strip().splitlines()
  assert len(lines) == 1, stderr
  assert key in lines[0]
  assert not workdir.exists()


def tiny_main_args(workdir, **overrides) -> list[str]:
  """configs/quick.py with ResNet-8 on 64 synthetic images, batch 16 (4
  steps/epoch)."""
  settings = {
    "model": "resnet8",
    "dataset": "synthetic",
    "synthetic_train_size": 64,
    "synthetic_test_size": 40,
    "batch_size": 16,
    "eval_batch_size": 16,
    "num_steps": 8,
    "log_every_steps": 2,
    "eval_every_epochs": 1,
    "checkpoint_every_steps": 4,
    **overrides,
  }
  return [
    "--config",
    "configs/quick.py",
    "--workdir",
    str(workdir),
    *(f"--config.{k}={v}" for k, v in settings.items()),
  ]


def test_main_trains_logs_and_resumes(tmp_path):
  workdir = tmp_path / "run"
  args = tiny_main_args(workdir)
  result = run_main(args, devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "final: test accuracy" in result.stdout

  saved = json.loads((workdir / "config.json").read_text())
  assert saved["model"] == "resnet8" and saved["num_steps"] == 8
  rows = [json.loads(l) for l in (workdir / "metrics.jsonl").open()]
  train_rows = [r for r in rows if "train_loss" in r]
  eval_rows = [r for r in rows if "eval_accuracy" in r]
  assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
  assert [r["step"] for r in eval_rows] == [4, 8]  # 4 steps per epoch.
  for r in train_rows:
    assert {
      "epoch",
      "train_accuracy",
      "learning_rate",
      "momentum",
      "steps_per_sec",
      "examples_seen",
      "wall_time",
    } <= r.keys()
    assert r["examples_seen"] == 16 * r["step"]
    assert r["epoch"] == r["step"] / 4
  assert all(r["eval_examples"] == 40 for r in eval_rows)
  # one_cycle from configs/quick.py: peak 0.4 at 25% of 8 steps.
  assert max(r["learning_rate"] for r in train_rows) <= 0.4 + 1e-6
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "8"]
  assert any(
    f.startswith("events") for f in os.listdir(workdir / "tensorboard")
  )

  # The same command again: already complete, reports the same accuracy.
  again = run_main(args, devices=2)
  assert again.returncode == 0, again.stderr[-3000:]
  final = [l for l in result.stdout.splitlines() if l.startswith("final:")]
  final_again = [l for l in again.stdout.splitlines() if l.startswith("final:")]
  assert final == final_again
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == len(rows)


def test_validation_size_holds_out_train_images_as_the_eval_set():
  config = tiny_config(validation_size=16)
  full = load(config)
  dataset = data_lib.from_config(config)
  assert dataset.train_images.shape[0] == 64 - 16
  assert dataset.test_images.shape[0] == 16
  train_rows = {img.tobytes() for img in full.train_images}
  test_rows = {img.tobytes() for img in full.test_images}
  held_out = {img.tobytes() for img in dataset.test_images}
  kept = {img.tobytes() for img in dataset.train_images}
  assert held_out <= train_rows and not held_out & test_rows
  assert not held_out & kept


# ---------------------------------------------------------------------------
# Seeds in parallel (config.num_parallel_seeds)
# ---------------------------------------------------------------------------


def _train_steps(config, dataset, run, steps: int):
  """(final host state, per-step host metrics) of `steps` pmapped steps."""
  state = input_pipeline.replicate_tree(
    train.create_train_state(config, run.model, (32, 32, 3), run.tx)
  )
  step = train.make_train_step(config, dataset, run.aug)
  images = input_pipeline.replicate(dataset.train_images)
  labels = input_pipeline.replicate(dataset.train_labels)
  metrics = []
  for _ in range(steps):
    state, m = step(state, images, labels)
    metrics.append(jax.device_get(train.unreplicate(m)))
  return jax.device_get(train.unreplicate(state)), metrics


def test_parallel_seeds_equal_separate_runs():
  # One-cycle moves LR and momentum every step; 3 steps of 16 of the 32
  # images. In float32 the vmapped convolutions sum in another order and, on
  # 16 random-noise images, the gradient is hypersensitive (measured on
  # ResNet-20: a 1e-7 relative perturbation of the initial parameters moves
  # grad_norm by 2e-4 at once and by 1% two steps later), so the check runs
  # in float64: the same amplification of float64 rounding (1e-16) stays
  # near 1e-15 on ResNet-8 (measured on 1 and 2 threads), while a wrong
  # seed, batch or augmentation changes everything by ~1e-1. 1e-10 relative
  # (to a value, or to a whole state part's norm) keeps margins of 1e3 on
  # either side.
  tolerance = 1e-10
  schedule = {
    "name": "one_cycle",
    "max_lr": 0.02,
    "pct_start": 0.75,
    "cycle_momentum": True,
  }
  sizes = {"synthetic_train_size": 32, "num_steps": 3, "dtype": "float64"}
  with jax.enable_x64(True):
    config = tiny_config(num_parallel_seeds=3, seed=5, **sizes)
    config.schedule.update(schedule)
    dataset = load(config)
    run = train.setup(config, dataset)
    stacked, metrics = _train_steps(config, dataset, run, 3)
    assert train.replica_seeds(config) == [5, 6, 7]
    assert np.shape(stacked.step) == (3,) and list(stacked.step) == [3, 3, 3]
    assert np.shape(metrics[0]["train_loss"]) == (3,)
    assert stacked.params["head"]["kernel"].dtype == np.float64

    def flat(tree):
      return np.concatenate(
        [np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)]
      )

    finals = []
    for k, seed in enumerate((5, 6, 7)):
      one = tiny_config(seed=seed, **sizes)
      one.schedule.update(schedule)
      single, single_metrics = _train_steps(one, dataset, run, 3)
      finals.append(single)
      for i, m in enumerate(single_metrics):
        for key in (
          "train_loss",
          "train_accuracy",
          "grad_norm",
          "learning_rate",
          "momentum",
        ):
          assert float(metrics[i][key][k]) == pytest.approx(
            float(m[key]), rel=tolerance
          ), (seed, i, key)
      replica = jax.tree.map(lambda x, k=k: x[k], stacked)
      for part in ("params", "batch_stats", "opt_state"):
        a, b = flat(getattr(replica, part)), flat(getattr(single, part))
        assert a.shape == b.shape
        assert np.linalg.norm(a - b) <= tolerance * np.linalg.norm(b), (
          seed,
          part,
        )
  # The replicas are really different runs (own init and data).
  a, b = (np.ravel(f.params["head"]["kernel"]) for f in finals[:2])
  assert np.max(np.abs(a - b)) > 1e-2


def test_main_with_parallel_seeds_logs_each_replica_as_a_run(tmp_path):
  workdir = tmp_path / "run"
  args = tiny_main_args(
    workdir, log_every_steps=4, seed=1, num_parallel_seeds=2
  )
  result = run_main(args, devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  finals = [l for l in result.stdout.splitlines() if l.startswith("final")]
  assert [l.split(":")[0] for l in finals] == [
    "final (seed 1)",
    "final (seed 2)",
  ]
  assert "[seed 2] step 8/8" in result.stdout
  top = json.loads((workdir / "config.json").read_text())
  assert top["seed"] == 1 and top["num_parallel_seeds"] == 2
  accuracies = []
  for seed in (1, 2):
    run_dir = workdir / f"seed={seed}"
    saved = json.loads((run_dir / "config.json").read_text())
    # The config of the separate run this replica equals.
    assert saved == {**top, "seed": seed, "num_parallel_seeds": 1}
    rows = [json.loads(l) for l in (run_dir / "metrics.jsonl").open()]
    assert [(r["step"], "eval_accuracy" in r) for r in rows] == [
      (4, False),
      (4, True),
      (8, False),
      (8, True),
    ]
    accuracies.append(rows[-1]["eval_accuracy"])
    line = f"final (seed {seed}): test accuracy {accuracies[-1]:.4f}"
    assert any(l.startswith(line) for l in finals)
  assert not (workdir / "metrics.jsonl").exists()
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4", "8"]

  # Evaluating the checkpoint gives each replica's accuracy again.
  ev = subprocess.run(
    [
      sys.executable,
      "-m",
      "superconv.evaluate",
      "--workdir",
      str(workdir),
      "--json",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert ev.returncode == 0, ev.stderr[-3000:]
  replicas = json.loads(ev.stdout.strip().splitlines()[-1])["replicas"]
  assert [r["seed"] for r in replicas] == [1, 2]
  # A count of 40 images, on 1 device instead of 2: equal unless an image's
  # top two logits are within float32 rounding (1e-6) of each other.
  for r, accuracy in zip(replicas, accuracies):
    assert r["eval_accuracy"] == pytest.approx(accuracy, abs=1e-6)
