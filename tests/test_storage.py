"""gs:// workdirs: every run file that is not Orbax's goes to the bucket.

No bucket is reachable here, so "gs" is served by a fake fsspec file system
that keeps each gs://bucket/key under a temporary directory. etils.epath
(which the run's file layer uses, as Orbax does) reaches it exactly as it
would reach gcsfs. Orbax's array writes go through TensorStore's own GCS
driver, which this fake cannot serve: checkpoint contents are not tested
here, only what superconv itself reads and writes.
"""

import json
import os
import sys

from etils.epath import backend as epath_backend
from etils.epath import gpath
import fsspec
from fsspec.implementations.local import LocalFileSystem
import pytest

from superconv import checkpoint, cli, metric_writer, storage


class _FakeGCS(LocalFileSystem):
  protocol = ("gs", "gcs")
  root = ""  # Set by the fixture: gs://b/k lives at <root>/b/k.

  def __init__(self, *args, **kwargs):
    kwargs.pop("finalize_on_close", None)
    # Buckets have no directories: writing a key needs no parent.
    super().__init__(*args, auto_mkdir=True, **kwargs)

  @classmethod
  def _strip_protocol(cls, path):
    path = fsspec.utils.stringify_path(path)
    for prefix in ("gs://", "gcs://"):
      if path.startswith(prefix):
        path = path[len(prefix) :]
    if not path.startswith(cls.root):
      path = os.path.join(cls.root, path.lstrip("/"))
    return path.rstrip("/") or "/"


@pytest.fixture
def bucket(tmp_path, monkeypatch):
  """The local directory behind gs://; the test's cwd is another one."""
  root = tmp_path / "buckets"
  root.mkdir()
  monkeypatch.setattr(_FakeGCS, "root", str(root))
  monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
  registry = sys.modules["fsspec.registry"]._registry  # pylint: disable=protected-access
  previous = {name: registry.get(name) for name in _FakeGCS.protocol}
  for name in _FakeGCS.protocol:
    fsspec.register_implementation(name, _FakeGCS, clobber=True)
  clear = type(epath_backend.fsspec_backend)._get_filesystem.cache_clear
  clear()
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  monkeypatch.chdir(cwd)
  yield root
  clear()
  for name, cls in previous.items():
    if cls is None:
      registry.pop(name, None)
    else:
      registry[name] = cls
  # Nothing went to a local ./gs:/... directory instead of the bucket.
  assert os.listdir(cwd) == []


def test_paths():
  assert storage.is_remote("gs://b/run") and not storage.is_remote("runs/x")
  assert storage.absolute("gs://b/run/") == "gs://b/run"
  assert storage.absolute("runs/x") == os.path.abspath("runs/x")
  assert (
    storage.join("gs://b/run", "checkpoints", "3") == "gs://b/run/checkpoints/3"
  )
  assert storage.basename("gs://b/run/checkpoints/3") == "3"


def test_metrics_rows_reach_the_bucket_and_resume_truncates(bucket):
  writer = metric_writer.MetricWriter("gs://b/run")
  for step in (10, 20, 30):
    writer.write({"step": step, "train_loss": 1.0 / step})
    # Every row is in the bucket as soon as it is written.
    rows = [
      json.loads(l)
      for l in (bucket / "b/run/metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in rows] == list(range(10, step + 1, 10))
  writer.close()
  assert metric_writer.read_jsonl("gs://b/run/metrics.jsonl")[-1] == {
    "step": 30,
    "train_loss": pytest.approx(1 / 30),
  }
  # Resuming from step 20 drops row 30, which the resumed run logs again.
  writer = metric_writer.MetricWriter("gs://b/run", resume_from_step=20)
  assert [r["step"] for r in writer.previous_rows] == [10, 20]
  writer.write({"step": 30, "train_loss": 0.5})
  writer.close()
  assert [
    (r["step"], r["train_loss"])
    for r in metric_writer.read_jsonl("gs://b/run/metrics.jsonl")
  ] == [(10, 0.1), (20, 0.05), (30, 0.5)]


def test_a_torn_last_line_in_the_bucket_is_dropped_on_resume(bucket, caplog):
  (bucket / "b/run").mkdir(parents=True)
  metrics = bucket / "b/run/metrics.jsonl"
  metrics.write_text('{"step": 10}\n{"step": 20}\n{"step": 30, "train_lo')
  with caplog.at_level("WARNING", logger="superconv"):
    writer = metric_writer.MetricWriter("gs://b/run", resume_from_step=20)
  assert "gs://b/run/metrics.jsonl: line 3 not valid JSON" in caplog.text
  # Repaired before any new row is written.
  assert metrics.read_text() == '{"step": 10}\n{"step": 20}\n'
  writer.write({"step": 30, "train_loss": 0.5})
  writer.close()
  assert metric_writer.scan_jsonl("gs://b/run/metrics.jsonl") == (
    [{"step": 10}, {"step": 20}, {"step": 30, "train_loss": 0.5}],
    [],
  )


def test_config_json_reaches_the_bucket(bucket):
  from superconv import config as config_lib  # pylint: disable=g-import-not-at-top
  from superconv import train  # pylint: disable=g-import-not-at-top

  config = config_lib.base_config()
  config.seed = 7
  train.write_config(config, "gs://b/run")
  saved = json.loads((bucket / "b/run/config.json").read_text())
  assert saved["seed"] == 7 and saved["model"] == config.model
  assert not (bucket / "b/run/config.json.tmp").exists()


def test_check_workdir_probes_the_bucket_and_leaves_nothing(bucket):
  assert cli.check_workdir("gs://b/new/run/") == "gs://b/new/run"
  assert not any(p.is_file() for p in bucket.rglob("*"))
  (bucket / "b").mkdir(exist_ok=True)
  (bucket / "b/file").write_text("x")
  with pytest.raises(ValueError, match="gs://b/file exists and is not a"):
    cli.check_workdir("gs://b/file")


def test_check_workdir_without_a_gs_file_system_names_the_extra(monkeypatch):
  def missing(path):
    raise ImportError("Install gcsfs to access Google Storage")

  monkeypatch.setattr(storage, "_epath", missing)
  with pytest.raises(ValueError, match=r"superconv\[gcs\]"):
    cli.check_workdir("gs://b/run")


def _plant_step(directory, complete: bool):
  directory.mkdir(parents=True)
  for item in ("state", "config"):
    (directory / item).mkdir()
  if complete:
    (directory / checkpoint.COMMIT_MARKER).write_text("")


def test_checkpoint_scan_and_set_aside_in_the_bucket(bucket):
  root = bucket / "b/run/checkpoints"
  _plant_step(root / "100", complete=True)
  _plant_step(root / "200", complete=False)  # No commit marker.
  (root / "300.orbax-checkpoint-tmp-17").mkdir()
  steps, incomplete = checkpoint.scan("gs://b/run")
  assert steps == [100]
  assert sorted(i.path for i in incomplete) == [
    "gs://b/run/checkpoints/200",
    "gs://b/run/checkpoints/300.orbax-checkpoint-tmp-17",
  ]
  checkpoint.set_aside("gs://b/run", incomplete)
  assert sorted(os.listdir(root)) == ["100"]
  assert sorted(os.listdir(bucket / "b/run/checkpoints_incomplete")) == [
    "200",
    "300.orbax-checkpoint-tmp-17",
  ]
  assert checkpoint.scan("gs://b/run") == ([100], [])


def test_tfds_data_dir_in_the_bucket(bucket):
  from superconv import data  # pylint: disable=g-import-not-at-top

  assert data._tfds_data_dir("gs://b/tfds") == "gs://b/tfds"  # pylint: disable=protected-access
  assert not data._tfds_prepared("gs://b/tfds", "cifar10")  # pylint: disable=protected-access
  info = bucket / "b/tfds/cifar10/3.0.2/dataset_info.json"
  info.parent.mkdir(parents=True)
  info.write_text("{}")
  assert data._tfds_prepared("gs://b/tfds", "cifar10")  # pylint: disable=protected-access
  assert not data._tfds_prepared("gs://b/tfds", "cifar100")  # pylint: disable=protected-access
