"""The Python API (superconv.api, docs/python_api.md) and the configs."""

import fnmatch
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib

import numpy as np
import pytest

import superconv
from superconv import checkpoint, lr_range_test

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOC = os.path.join(REPO, "docs", "python_api.md")


def _snippets() -> list[str]:
  with open(DOC) as f:
    return re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)


@pytest.fixture(scope="module")
def documented_run(tmp_path_factory):
  """The namespace of docs/python_api.md's first snippet, run in a tmp dir."""
  cwd = os.getcwd()
  os.chdir(tmp_path_factory.mktemp("api"))
  try:
    namespace = {}
    exec(compile(_snippets()[0], DOC, "exec"), namespace)  # noqa: S102
    namespace["cwd"] = os.getcwd()
  finally:
    os.chdir(cwd)
  return namespace


def test_the_documented_snippet_returns_the_final_metrics_and_history(
  documented_run,
):
  result = documented_run["result"]
  config = documented_run["config"]
  workdir = os.path.join(documented_run["cwd"], "runs", "api_demo")
  assert os.path.samefile(result.workdir, workdir)
  # The history is metrics.jsonl, row for row.
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    assert result.history == [json.loads(line) for line in f]
  train_steps = [r["step"] for r in result.history if "train_loss" in r]
  eval_rows = [r for r in result.history if "eval_accuracy" in r]
  every = config.log_every_steps
  assert train_steps == list(range(every, config.num_steps + 1, every))
  assert [r["step"] for r in eval_rows] == [config.num_steps]
  # The final metrics are the last evaluation's, on every test image.
  (final,) = result.final
  assert final["seed"] == config.seed
  assert final["eval_examples"] == config.synthetic_test_size
  assert final["eval_loss"] == eval_rows[-1]["eval_loss"]
  assert final["eval_accuracy"] == eval_rows[-1]["eval_accuracy"]
  assert 0.0 <= final["eval_accuracy"] <= 1.0
  # The final state is the last complete checkpoint.
  assert result.checkpoint_step == config.num_steps
  assert checkpoint.scan(workdir)[0][-1] == config.num_steps
  assert os.path.samefile(
    result.checkpoint_dir, checkpoint.checkpoint_dir(workdir)
  )
  _, variables, saved = result.load_checkpoint()
  assert saved.num_steps == config.num_steps and saved.model == "resnet20"
  # The snippet's model applies to the saved variables: 10 class logits.
  model = documented_run["model"]
  logits = model.apply(variables, np.zeros((2, 32, 32, 3)), train=False)
  assert logits.shape == (2, 10) and np.all(np.isfinite(logits))


def test_the_api_releases_the_workdir_lock(documented_run):
  # Another process can take the lock at once (lock.LockError otherwise).
  workdir = os.path.join(documented_run["cwd"], "runs", "api_demo")
  code = (
    "import sys; from superconv import lock; lock.acquire(sys.argv[1], 't')"
  )
  out = subprocess.run(
    [sys.executable, "-c", code, workdir], capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr[-2000:]


def test_a_second_call_resumes_and_changes_nothing(documented_run):
  result = documented_run["result"]
  again = superconv.train_and_evaluate(documented_run["config"], result.workdir)
  assert again.final == result.final
  assert again.history == result.history
  assert again.checkpoint_step == result.checkpoint_step


def test_bad_input_is_one_line_naming_the_key_and_writes_nothing(tmp_path):
  config = superconv.configs.get("quick")
  config.dataset = "synthetic"
  config.batch_size = 0
  with pytest.raises(ValueError, match=r"^batch_size") as e:
    superconv.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(e.value)
  assert not (tmp_path / "run").exists()


def test_the_range_test_returns_suggestions_and_a_figure_leaving_nothing():
  config = superconv.configs.get("lr_range_test:exponential")
  config.update(
    dataset="synthetic",
    synthetic_train_size=64,
    synthetic_test_size=32,
    batch_size=16,
    eval_batch_size=16,
  )
  config.range_test.update(num_steps=12, skip_start=0.0, skip_end=1)
  before = set(os.listdir(tempfile.gettempdir()))
  test = superconv.lr_range_test(config)
  left = set(os.listdir(tempfile.gettempdir())) - before
  assert not [n for n in left if n.startswith("superconv_range_test_")]
  assert test.workdir is None
  assert set(test.suggestions) == set(lr_range_test.SUGGESTIONS)
  assert test.summary["steps_planned"] == 12
  assert len(test.rows) == test.summary["steps_run"]
  # The LRs rise geometrically from min_lr to max_lr over the planned steps.
  assert test.rows[0]["lr"] == pytest.approx(config.range_test.min_lr)
  if test.recommendation is not None:
    rec = test.recommendation
    assert rec["min_lr"] == pytest.approx(rec["max_lr"] / rec["div_factor"])
  # The figure holds the loss curve: its x data are the rows' LRs.
  ax = test.figure.axes[0]
  lrs = [row["lr"] for row in test.rows]
  assert any(np.allclose(line.get_xdata(), lrs) for line in ax.get_lines()), (
    "no loss curve over the tested LRs"
  )


def test_shipped_configs_load_by_name_and_match_the_repository_files():
  names = superconv.configs.names()
  assert "quick" in names and "study_cpu" in names
  for name in names:
    repo_file = os.path.join(REPO, "configs", f"{name}.py")
    assert os.path.samefile(repo_file, superconv.configs.path(name))
  assert superconv.configs.get("quick").model == "resnet20"
  assert superconv.configs.get("study_cpu:onecycle").schedule.name == (
    "one_cycle"
  )
  with pytest.raises(ValueError, match="'nope': no shipped config.*quick"):
    superconv.configs.get("nope")


def test_the_configs_are_packaged():
  # A non-editable install has the configs: superconv.configs is a package
  # (an __init__.py) that pyproject's packages.find includes.
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    find = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]
  assert any(fnmatch.fnmatch("superconv.configs", p) for p in find["include"])
  assert os.path.isfile(os.path.join(REPO, "superconv/configs/__init__.py"))


def test_import_superconv_loads_no_jax():
  code = (
    "import sys, superconv; c = superconv.configs.get('quick');"
    " print(sorted(m for m in sys.modules if m.split('.')[0] in"
    " ('jax', 'flax', 'optax')))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    capture_output=True,
    text=True,
    check=True,
    cwd=REPO,
  )
  assert out.stdout.strip() == "[]"
