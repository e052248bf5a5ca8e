"""superconv.data: synthetic, image folders (dirs, archives, cache), the
original CIFAR archives (read, downloaded from loopback), tfds."""

import dataclasses
import hashlib
import http.server
import io
import json
import logging
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import types

import numpy as np
from PIL import Image
import pytest

from superconv import data
from superconv.data import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CLASSES = (
  "bird",
  "ant",
  "cat",
)  # Deliberately unsorted: labels follow sorted names.
SORTED = tuple(sorted(CLASSES))
N_TRAIN, N_TEST = 4, 2


def _pixels(split, cls, i):
  """A distinct, known 8x8 RGB image for (split, class, index)."""
  c = SORTED.index(cls)
  s = SPLIT_IDS[split]
  img = np.zeros((8, 8, 3), np.uint8)
  img[..., 0] = 10 * c + 1
  img[..., 1] = 50 * s + i
  img[..., 2] = np.arange(8, dtype=np.uint8)[None, :] * 30  # A column ramp.
  img[0, 0] = (200 + c, 100 + s, 150 + i)
  return img


SPLIT_IDS = {"train": 0, "test": 1}


def _write_folder(root, *, test_classes=CLASSES, sizes=None, mode="RGB"):
  """Writes train/<class>/NN.png and test/<class>/NN.png under root."""
  for split, n, classes in (
    ("train", N_TRAIN, CLASSES),
    ("test", N_TEST, test_classes),
  ):
    for cls in classes:
      d = root / split / cls
      d.mkdir(parents=True)
      for i in range(n):
        img = _pixels(split, cls, i)
        if sizes and (split, cls, i) in sizes:
          img = np.zeros(sizes[(split, cls, i)] + (3,), np.uint8)
        Image.fromarray(img).convert(mode).save(d / f"{i:02d}.png")
      (d / ".hidden.png").write_bytes(b"not an image")  # Must be ignored.
      (d / "notes.txt").write_text("ignored")  # Not an image extension.


def _expected(split):
  n = N_TRAIN if split == "train" else N_TEST
  images = np.stack(
    [_pixels(split, cls, i) for cls in SORTED for i in range(n)]
  )
  labels = np.repeat(np.arange(len(SORTED), dtype=np.int32), n)
  return images, labels


def _make_source(tmp_path, kind, wrapped, **kw):
  """A folder source of a kind: 'dir', '.tar', '.tar.gz', '.tgz', '.tar.xz'."""
  src = tmp_path / "src"
  base = src / "cifar-tiny" if wrapped else src
  base.mkdir(parents=True)
  _write_folder(base, **kw)
  if kind == "dir":
    return src
  archive = tmp_path / f"tiny{kind}"
  mode = {".tar": "w", ".tar.gz": "w:gz", ".tgz": "w:gz", ".tar.xz": "w:xz"}[
    kind
  ]
  with tarfile.open(archive, mode) as tf:
    for entry in sorted(os.listdir(src)):
      tf.add(src / entry, arcname=entry)
  return archive


def _assert_one_line(err):
  msg = str(err.value)
  assert "\n" not in msg and msg


# --- synthetic ----------------------------------------------------------------


def test_synthetic_shapes_dtypes_determinism():
  ds = data.load(
    "synthetic",
    synthetic_train_size=300,
    synthetic_test_size=70,
    synthetic_num_classes=7,
  )
  assert ds.name == "synthetic"
  assert (
    ds.train_images.shape == (300, 32, 32, 3)
    and ds.train_images.dtype == np.uint8
  )
  assert (
    ds.test_images.shape == (70, 32, 32, 3) and ds.test_images.dtype == np.uint8
  )
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  assert ds.num_classes == 7
  assert ds.class_names == tuple(f"class_{i}" for i in range(7))
  counts = np.bincount(ds.train_labels, minlength=7)
  assert counts.min() >= 300 // 7 and counts.max() <= 300 // 7 + 1  # Balanced.
  assert ds.test_labels.min() >= 0 and ds.test_labels.max() <= 6
  np.random.seed(123)  # Global numpy state must not matter.
  again = data.load(
    "synthetic",
    synthetic_train_size=300,
    synthetic_test_size=70,
    synthetic_num_classes=7,
  )
  for a, b in (
    (ds.train_images, again.train_images),
    (ds.train_labels, again.train_labels),
    (ds.test_images, again.test_images),
    (ds.test_labels, again.test_labels),
  ):
    np.testing.assert_array_equal(a, b)
  assert ds.train_images.std() > 10  # Not constant.


def test_synthetic_classes_are_learnable():
  """A nearest-class-mean classifier fit on train separates the test split."""
  ds = data.load("synthetic", synthetic_train_size=500, synthetic_test_size=200)
  x = ds.train_images.reshape(len(ds.train_images), -1).astype(np.float32)
  means = np.stack(
    [x[ds.train_labels == k].mean(0) for k in range(ds.num_classes)]
  )
  xt = ds.test_images.reshape(len(ds.test_images), -1).astype(np.float32)
  pred = np.argmin(((xt[:, None, :] - means[None]) ** 2).sum(-1), axis=1)
  assert (pred == ds.test_labels).mean() > 0.95


def test_synthetic_bad_size():
  with pytest.raises(DataError, match="synthetic_train_size") as err:
    data.load("synthetic", synthetic_train_size=0)
  _assert_one_line(err)


# --- channel statistics -------------------------------------------------------


def test_channel_mean_std_matches_numpy():
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, size=(37, 5, 6, 3), dtype=np.uint8)
  imgs[..., 2] //= 4  # Different statistics per channel.
  ds = data.Dataset(
    "t", imgs, np.zeros(37, np.int32), imgs[:2], np.zeros(2, np.int32), ("a",)
  )
  mean, std = ds.channel_mean_std()
  x = imgs.astype(np.float64) / 255.0
  assert mean.dtype == np.float32 and std.dtype == np.float32
  assert mean.shape == (3,) and std.shape == (3,)
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-5)


def test_channel_mean_std_many_chunks():
  ds = data.load("synthetic", synthetic_train_size=1200, synthetic_test_size=1)
  mean, std = ds.channel_mean_std()  # 1.2M pixels: more than one chunk.
  x = ds.train_images.astype(np.float64) / 255.0
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-5)


# --- folder -------------------------------------------------------------------


@pytest.mark.parametrize(
  "kind,wrapped",
  [
    ("dir", False),
    ("dir", True),
    (".tar", False),
    (".tar.gz", True),
    (".tgz", False),
    (".tar.xz", False),
    (".tar.xz", True),
  ],
)
def test_folder_exact_pixels_and_labels(tmp_path, kind, wrapped):
  src = _make_source(tmp_path, kind, wrapped)
  spec = f"folder:{src}"
  data.check_spec(spec)
  ds = data.load(spec, cache_dir=str(tmp_path / "cache"))
  assert ds.name == spec
  assert ds.class_names == SORTED and ds.num_classes == 3
  for split in ("train", "test"):
    images, labels = _expected(split)
    got_images = getattr(ds, f"{split}_images")
    got_labels = getattr(ds, f"{split}_labels")
    assert got_images.dtype == np.uint8 and got_labels.dtype == np.int32
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)


@pytest.mark.parametrize("kind", ["dir", ".tar.xz"])
def test_folder_second_load_uses_cache(tmp_path, monkeypatch, caplog, kind):
  src = _make_source(tmp_path, kind, wrapped=kind == "dir")
  cache = tmp_path / "cache"
  spec = f"folder:{src}"
  first = data.load(spec, cache_dir=str(cache))
  entries = [e for e in os.listdir(cache) if not e.startswith(".")]
  assert len(entries) == 1 and not any(
    e.startswith(".tmp") for e in os.listdir(cache)
  )
  files = set(os.listdir(cache / entries[0]))
  assert {
    "train_images.npy",
    "train_labels.npy",
    "test_images.npy",
    "test_labels.npy",
    "meta.json",
  } <= files

  def no_decode(*args, **kwargs):
    raise AssertionError("decoded although cached")

  monkeypatch.setattr(data, "_decode_image", no_decode)
  with caplog.at_level(logging.INFO, logger="superconv.data"):
    second = data.load(spec, cache_dir=str(cache))
  assert "cache" in caplog.text
  assert second.class_names == first.class_names
  for field in ("train_images", "train_labels", "test_images", "test_labels"):
    np.testing.assert_array_equal(getattr(second, field), getattr(first, field))
    assert getattr(second, field).dtype == getattr(first, field).dtype


def test_folder_cache_invalidated_by_change(tmp_path):
  src = _make_source(tmp_path, "dir", wrapped=False)
  cache = tmp_path / "cache"
  data.load(f"folder:{src}", cache_dir=str(cache))
  new = np.full((8, 8, 3), 77, np.uint8)
  Image.fromarray(new).save(src / "train" / "ant" / "99.png")
  ds = data.load(f"folder:{src}", cache_dir=str(cache))
  assert len(ds.train_images) == 3 * N_TRAIN + 1
  np.testing.assert_array_equal(
    ds.train_images[N_TRAIN], new
  )  # ant/99 after ant/00..03
  assert len([e for e in os.listdir(cache) if not e.startswith(".")]) == 2


def test_folder_corrupt_cache_is_ignored(tmp_path):
  src = _make_source(tmp_path, ".tar", wrapped=False)
  cache = tmp_path / "cache"
  first = data.load(f"folder:{src}", cache_dir=str(cache))
  (entry,) = os.listdir(cache)
  (cache / entry / "train_images.npy").write_bytes(b"truncated")
  second = data.load(f"folder:{src}", cache_dir=str(cache))
  np.testing.assert_array_equal(second.train_images, first.train_images)
  third = data.load(
    f"folder:{src}", cache_dir=str(cache)
  )  # Rewritten cache works.
  np.testing.assert_array_equal(third.train_images, first.train_images)


def test_folder_unwritable_cache_warns_and_loads(tmp_path, caplog):
  src = _make_source(tmp_path, ".tar.gz", wrapped=False)
  blocker = tmp_path / "blocker"
  blocker.write_text("a file where the cache directory should be")
  with caplog.at_level(logging.WARNING, logger="superconv.data"):
    ds = data.load(f"folder:{src}", cache_dir=str(blocker / "cache"))
  assert "cache" in caplog.text
  np.testing.assert_array_equal(ds.test_images, _expected("test")[0])


def test_folder_cache_dir_from_env(tmp_path, monkeypatch):
  src = _make_source(tmp_path, ".tar", wrapped=False)
  monkeypatch.setenv("SUPERCONV_CACHE_DIR", str(tmp_path / "envcache"))
  data.load(f"folder:{src}")
  assert len(os.listdir(tmp_path / "envcache")) == 1


def test_folder_converts_modes_to_rgb(tmp_path):
  src = _make_source(tmp_path, "dir", wrapped=False, mode="L")
  ds = data.load(f"folder:{src}", cache_dir=str(tmp_path / "cache"))
  assert ds.train_images.shape == (3 * N_TRAIN, 8, 8, 3)
  gray = ds.train_images
  np.testing.assert_array_equal(gray[..., 0], gray[..., 1])


def test_folder_mismatched_classes(tmp_path):
  src = _make_source(
    tmp_path, ".tar.xz", wrapped=True, test_classes=("ant", "bird")
  )
  with pytest.raises(DataError, match="only in train: \\['cat'\\]") as err:
    data.load(f"folder:{src}", cache_dir=str(tmp_path / "cache"))
  assert str(src) in str(err.value)
  _assert_one_line(err)


@pytest.mark.parametrize("kind", ["dir", ".tar"])
def test_folder_mixed_sizes_names_first_offender(tmp_path, kind):
  sizes = {("train", "bird", 2): (8, 9), ("test", "ant", 0): (4, 4)}
  src = _make_source(tmp_path, kind, wrapped=False, sizes=sizes)
  with pytest.raises(DataError, match="same size") as err:
    data.load(f"folder:{src}", cache_dir=str(tmp_path / "cache"))
  assert os.path.join("train", "bird", "02.png") in str(err.value)
  _assert_one_line(err)


def test_folder_undecodable_image(tmp_path):
  src = _make_source(tmp_path, "dir", wrapped=False)
  (src / "train" / "cat" / "bad.jpg").write_bytes(b"\xff\xd8 garbage")
  with pytest.raises(DataError, match="bad.jpg") as err:
    data.load(f"folder:{src}", cache_dir=str(tmp_path / "cache"))
  _assert_one_line(err)


def test_folder_bad_layout(tmp_path):
  (tmp_path / "src" / "images").mkdir(parents=True)
  with pytest.raises(DataError, match="train/<class>") as err:
    data.check_spec(f"folder:{tmp_path / 'src'}")
  _assert_one_line(err)


def test_folder_archive_without_images(tmp_path):
  archive = tmp_path / "empty.tar"
  (tmp_path / "readme.txt").write_text("hi")
  with tarfile.open(archive, "w") as tf:
    tf.add(tmp_path / "readme.txt", arcname="readme.txt")
  with pytest.raises(DataError, match="no images") as err:
    data.load(f"folder:{archive}", cache_dir=str(tmp_path / "cache"))
  _assert_one_line(err)


def test_folder_not_an_archive(tmp_path):
  bogus = tmp_path / "bogus.tar.xz"
  bogus.write_bytes(b"this is not xz")
  with pytest.raises(DataError, match="bogus.tar.xz") as err:
    data.load(f"folder:{bogus}", cache_dir=str(tmp_path / "cache"))
  _assert_one_line(err)


# --- spec errors --------------------------------------------------------------


@pytest.mark.parametrize(
  "spec",
  [
    "synthetic",
    "tfds:cifar10",
    "tfds:cifar100",
    " synthetic ",
    "cifar10",
    "cifar100",
  ],
)
def test_check_spec_valid(spec):
  data.check_spec(spec)


@pytest.mark.parametrize(
  "spec,match",
  [
    (
      "foo",
      "dataset: unknown 'foo'; valid: cifar10, cifar100, cifar:<.tar.gz or "
      "dir>, tfds:cifar10, tfds:cifar100, folder:",
    ),
    ("tfds:mnist", "dataset: unknown tfds data set 'mnist'"),
    ("folder:", "needs a path"),
    ("cifar10:x", "unknown 'cifar10:x'"),
    ("", "unknown"),
  ],
)
def test_check_spec_unknown(spec, match):
  with pytest.raises(DataError, match=match) as err:
    data.check_spec(spec)
  _assert_one_line(err)
  with pytest.raises(DataError):
    data.load(spec)


@pytest.mark.parametrize("kind", ["folder", "cifar"])
def test_check_spec_missing_and_wrong_paths(tmp_path, kind):
  with pytest.raises(DataError, match="needs a path") as err:
    data.check_spec(f"{kind}:")
  _assert_one_line(err)
  missing = tmp_path / "nope.tar.gz"
  with pytest.raises(DataError, match="does not exist") as err:
    data.check_spec(f"{kind}:{missing}")
  assert str(missing) in str(err.value)
  _assert_one_line(err)
  zipfile = tmp_path / "data.zip"
  zipfile.write_bytes(b"PK")
  with pytest.raises(DataError, match="neither a directory nor") as err:
    data.check_spec(f"{kind}:{zipfile}")
  _assert_one_line(err)
  with pytest.raises(DataError, match="data_dir"):
    data.check_spec("tfds:cifar10", data_dir=str(zipfile))


# --- tfds: error paths (no network), with a stand-in module -------------------
#
# These paths end before tfds.load, so a stand-in tensorflow_datasets that
# fails when called tests them with or without the tfds extra; the real
# package runs in test_tfds_real_mock_data_through_main below.


def _stand_in_tfds(monkeypatch):
  stand_in = types.ModuleType("tensorflow_datasets")

  def load(*args, **kwargs):
    raise AssertionError("tfds.load reached on an error path")

  stand_in.load = load
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", stand_in)


def test_tfds_not_prepared_no_download(tmp_path, monkeypatch):
  _stand_in_tfds(monkeypatch)
  empty = tmp_path / "tfds_empty"
  empty.mkdir()
  with pytest.raises(DataError) as err:
    data.load("tfds:cifar10", data_dir=str(empty), download=False)
  msg = str(err.value)
  assert msg.startswith(f"dataset: tfds:cifar10 is not prepared in {empty}")
  assert "--config.dataset=cifar10 / cifar:<path>" in msg and "folder:" in msg
  _assert_one_line(err)


def test_tfds_data_dir_from_env(tmp_path, monkeypatch):
  _stand_in_tfds(monkeypatch)
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "envtfds"))
  with pytest.raises(DataError, match=str(tmp_path / "envtfds")):
    data.load("tfds:cifar100", download=False)


def test_tfds_no_network_fails_fast(tmp_path, monkeypatch):
  _stand_in_tfds(monkeypatch)

  def unreachable(address, timeout=None):
    assert address == ("www.cs.toronto.edu", 443) and timeout <= 5
    raise OSError("network is unreachable")

  monkeypatch.setattr(data.socket, "create_connection", unreachable)
  with pytest.raises(DataError, match="cannot be downloaded") as err:
    data.load("tfds:cifar10", data_dir=str(tmp_path), download=True)
  assert str(tmp_path) in str(err.value) and "folder:" in str(err.value)


def _prepare_fake(tmp_path, name):
  d = tmp_path / "tfds" / name / "3.0.2"
  d.mkdir(parents=True)
  (d / "dataset_info.json").write_text("{}")
  return tmp_path / "tfds"


@pytest.mark.parametrize("prepared", [True, False])
def test_tfds_not_installed_is_said_first(tmp_path, monkeypatch, prepared):
  """A missing package is the message, before any data_dir or network check."""
  data_dir = _prepare_fake(tmp_path, "cifar10") if prepared else tmp_path

  def no_probe(*args, **kwargs):
    raise AssertionError("probed the network before the import check")

  monkeypatch.setattr(data.socket, "create_connection", no_probe)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # ImportError
  with pytest.raises(DataError) as err:
    data.load("tfds:cifar10", data_dir=str(data_dir), download=True)
  msg = str(err.value)
  assert msg.startswith(
    "dataset: tfds:cifar10 needs tensorflow_datasets, which is not installed"
  )
  assert "pip install 'superconv[tfds]'" in msg
  assert "--config.dataset=cifar10 (the original archive" in msg
  _assert_one_line(err)


def test_tfds_prepared_through_fake_module(tmp_path, monkeypatch):
  """The tfds branch's conversions, with a stand-in tensorflow_datasets."""
  data_dir = _prepare_fake(tmp_path, "cifar100")
  rng = np.random.default_rng(0)
  splits = {
    s: {
      "image": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
      "label": rng.integers(0, 100, n).astype(np.int64),
    }
    for s, n in (("train", 6), ("test", 3))
  }
  calls = []

  def fake_load(name, *, split, batch_size, data_dir, download, with_info):
    calls.append(
      dict(
        name=name,
        split=split,
        batch_size=batch_size,
        data_dir=data_dir,
        download=download,
      )
    )
    info = types.SimpleNamespace(
      features={
        "label": types.SimpleNamespace(names=[f"c{i}" for i in range(100)])
      }
    )
    return [splits[s] for s in split], info

  fake = types.ModuleType("tensorflow_datasets")
  fake.load = fake_load
  fake.as_numpy = lambda x: x
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", fake)
  ds = data.load("tfds:cifar100", data_dir=str(data_dir))
  assert calls == [
    dict(
      name="cifar100",
      split=["train", "test"],
      batch_size=-1,
      data_dir=str(data_dir),
      download=False,
    )
  ]
  assert ds.num_classes == 100 and ds.class_names[:2] == ("c0", "c1")
  assert ds.train_labels.dtype == np.int32 and ds.test_labels.dtype == np.int32
  np.testing.assert_array_equal(ds.train_labels, splits["train"]["label"])
  np.testing.assert_array_equal(ds.test_images, splits["test"]["image"])


def test_folder_misnamed_extension_still_decodes(tmp_path):
  src = _make_source(tmp_path, "dir", wrapped=False)
  png = src / "train" / "cat" / "00.png"
  png.rename(png.with_suffix(".jpg"))  # PNG bytes under a .jpg name.
  ds = data.load(f"folder:{src}", cache_dir=str(tmp_path / "cache"))
  np.testing.assert_array_equal(ds.train_images, _expected("train")[0])


# --- cifar: the original python-pickle archives -------------------------------


class _Py2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Pickles str and bytes as Python 2 byte strings (opcodes U / T), and
  numpy under its pre-2.0 module name, as in the original CIFAR files."""

  dispatch = dict(pickle._Pickler.dispatch)  # pylint: disable=protected-access

  def save_py2_string(self, obj):
    raw = obj.encode("latin1") if isinstance(obj, str) else obj
    if len(raw) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
    self.memoize(obj)

  dispatch[str] = save_py2_string
  dispatch[bytes] = save_py2_string


def _py2_pickle(obj) -> bytes:
  out = io.BytesIO()
  _Py2Pickler(out, protocol=2).dump(obj)
  raw = out.getvalue()
  # numpy >= 2 names its reconstructor numpy._core; the originals say
  # numpy.core (GLOBAL opcodes are newline-terminated text).
  return raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def _cifar_flat(images):
  """NHWC uint8 -> the files' rows: 1024 red, 1024 green, 1024 blue values,
  each plane row-major."""
  return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _make_cifar(root, title, per_class_train=2, per_class_test=1):
  """Writes a tiny CIFAR-10 or CIFAR-100 in the original layout under root.

  Returns (directory, .tar.gz, expected dict): the batch directory
  (cifar-10-batches-py or cifar-100-python), an archive of it as published,
  and the NHWC images, labels and class names a loader must return.
  """
  ten = title == "CIFAR-10"
  num_classes = 10 if ten else 100
  rng = np.random.default_rng(num_classes)
  expected = {"class_names": tuple(f"name{i:03d}" for i in range(num_classes))}
  for split, per_class in (
    ("train", per_class_train),
    ("test", per_class_test),
  ):
    labels = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    images = rng.integers(0, 256, (len(labels), 32, 32, 3), dtype=np.uint8)
    expected[split] = (images, labels.astype(np.int32))
  top = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
  top.mkdir(parents=True)

  def write(name, images, labels):
    entry = {
      "batch_label": f"{name} of the tiny {title}",
      ("labels" if ten else "fine_labels"): [int(x) for x in labels],
      "data": _cifar_flat(images),
      "filenames": [f"{name}_{i}.png" for i in range(len(labels))],
    }
    if not ten:
      entry["coarse_labels"] = [int(x) // 5 for x in labels]
    (top / name).write_bytes(_py2_pickle(entry))

  train_images, train_labels = expected["train"]
  if ten:
    chunks = np.array_split(np.arange(len(train_labels)), 5)
    for i, idx in enumerate(chunks, 1):
      write(f"data_batch_{i}", train_images[idx], train_labels[idx])
    write("test_batch", *expected["test"])
    meta = {"label_names": list(expected["class_names"]), "num_vis": 3072}
    (top / "batches.meta").write_bytes(_py2_pickle(meta))
  else:
    write("train", train_images, train_labels)
    write("test", *expected["test"])
    meta = {
      "fine_label_names": list(expected["class_names"]),
      "coarse_label_names": [f"coarse{i}" for i in range(20)],
    }
    (top / "meta").write_bytes(_py2_pickle(meta))
  (top / "readme.html").write_text("<html></html>")  # In the originals too.
  archive = root / (
    "cifar-10-python.tar.gz" if ten else "cifar-100-python.tar.gz"
  )
  with tarfile.open(archive, "w:gz") as tf:
    tf.add(top, arcname=top.name)
  return top, archive, expected


@pytest.fixture(scope="module")
def cifar(tmp_path_factory):
  """{title: (batch dir, .tar.gz, expected)} for CIFAR-10 and CIFAR-100."""
  root = tmp_path_factory.mktemp("cifar")
  return {
    title: _make_cifar(root / title, title)
    for title in ("CIFAR-10", "CIFAR-100")
  }


def _assert_dataset(ds, expected):
  assert ds.class_names == expected["class_names"]
  assert ds.num_classes == len(expected["class_names"])
  for split in ("train", "test"):
    images = getattr(ds, f"{split}_images")
    labels = getattr(ds, f"{split}_labels")
    assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(images, expected[split][0])
    np.testing.assert_array_equal(labels, expected[split][1])


@pytest.mark.parametrize("title", ["CIFAR-10", "CIFAR-100"])
@pytest.mark.parametrize("form", ["dir", "parent", "tar.gz", "tar"])
def test_cifar_exact_pixels_labels_and_stats(cifar, tmp_path, title, form):
  top, archive, expected = cifar[title]
  if form == "dir":  # cifar:<the extracted batch directory>
    source = top
  elif form == "parent":  # cifar:<the directory it was extracted into>
    source = top.parent
  elif form == "tar.gz":
    source = archive
  else:  # An uncompressed .tar with the batches at its top level.
    source = tmp_path / "flat.tar"
    with tarfile.open(source, "w") as tf:
      for f in sorted(os.listdir(top)):
        tf.add(top / f, arcname=f)
  spec = f"cifar:{source}"
  data.check_spec(spec)
  ds = data.load(spec)
  assert ds.name == spec
  _assert_dataset(ds, expected)
  # The normalization statistics, as for every source: train images only.
  mean, std = ds.channel_mean_std()
  x = expected["train"][0].astype(np.float64) / 255.0
  np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-5)


def test_cifar_row_layout_is_channel_major(tmp_path):
  """Pixels placed by hand in the documented row layout land where the
  CIFAR page says: first 1024 values the red plane, row-major, etc."""
  top, _, expected = _make_cifar(tmp_path, "CIFAR-10", per_class_train=1)
  row = np.zeros(3072, np.uint8)
  row[1] = 200  # Red, row 0, column 1.
  row[1024 + 32] = 100  # Green, row 1, column 0.
  row[2048 + 1023] = 50  # Blue, row 31, column 31.
  entry = {"data": row[None], "labels": [7], "batch_label": "hand-made"}
  (top / "test_batch").write_bytes(_py2_pickle(entry))
  ds = data.load(f"cifar:{top}")
  image = ds.test_images[0]
  assert ds.test_labels.tolist() == [7]
  assert image[0, 1, 0] == 200 and image[1, 0, 1] == 100
  assert image[31, 31, 2] == 50 and int(image.sum()) == 350
  np.testing.assert_array_equal(ds.train_images, expected["train"][0])


def test_cifar_reads_python3_pickles(tmp_path):
  """Batches re-pickled by Python 3 (str or bytes keys, protocol 5) load."""
  top, _, expected = _make_cifar(tmp_path, "CIFAR-100")
  with open(top / "train", "rb") as f:
    entry = pickle.load(f, encoding="latin1")
  (top / "train").write_bytes(
    pickle.dumps({k.encode(): v for k, v in entry.items()}, protocol=5)
  )
  _assert_dataset(data.load(f"cifar:{top}"), expected)


def _evil_pickle(marker):
  class Evil:
    def __reduce__(self):
      return (open, (str(marker), "w"))

  return pickle.dumps({"data": Evil(), "labels": []}, protocol=2)


@pytest.mark.parametrize(
  "damage,match",
  [
    ("no_labels", "has no 'labels' entry"),
    ("label_range", "label 10 is outside \\[0, 10\\)"),
    ("bad_shape", "expected uint8 \\[N, 3072\\]"),
    ("not_a_pickle", "not a CIFAR python pickle"),
    ("evil", "refusing to load"),
  ],
)
def test_cifar_damaged_batch(tmp_path, damage, match):
  top, _, _ = _make_cifar(tmp_path, "CIFAR-10")
  batch = top / "data_batch_3"
  rows = np.zeros((2, 3072), np.uint8)
  marker = tmp_path / "pickle-ran-code"
  batch.write_bytes(
    {
      "no_labels": lambda: _py2_pickle({"data": rows}),
      "label_range": lambda: _py2_pickle({"data": rows, "labels": [0, 10]}),
      "bad_shape": lambda: _py2_pickle(
        {"data": rows[:, :3000], "labels": [0, 1]}
      ),
      "not_a_pickle": lambda: b"\x80\x02 truncated",
      "evil": lambda: _evil_pickle(marker),
    }[damage]()
  )
  with pytest.raises(DataError, match=match) as err:
    data.load(f"cifar:{top}")
  assert str(batch) in str(err.value)
  _assert_one_line(err)
  assert not marker.exists()


def test_cifar_no_batches(tmp_path):
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no CIFAR python-pickle batches") as err:
    data.check_spec(f"cifar:{tmp_path / 'empty'}")
  _assert_one_line(err)
  incomplete = tmp_path / "incomplete.tar.gz"
  (tmp_path / "empty" / "data_batch_1").write_bytes(b"")
  with tarfile.open(incomplete, "w:gz") as tf:
    tf.add(
      tmp_path / "empty" / "data_batch_1",
      arcname="cifar-10-batches-py/data_batch_1",
    )
  with pytest.raises(DataError, match="no complete CIFAR") as err:
    data.load(f"cifar:{incomplete}")
  _assert_one_line(err)


def test_cifar_two_layouts_in_one_directory_is_ambiguous(cifar, tmp_path):
  for title in ("CIFAR-10", "CIFAR-100"):
    top = cifar[title][0]
    shutil.copytree(top, tmp_path / top.name)
  with pytest.raises(DataError, match="several CIFAR directories") as err:
    data.check_spec(f"cifar:{tmp_path}")
  assert "cifar-100-python" in str(err.value)
  _assert_one_line(err)


# --- cifar10 / cifar100: download into the cache (loopback only) -------------


class _ArchiveServer:
  """An HTTP server on 127.0.0.1 serving {path: bytes}; counts requests."""

  def __init__(self, files):
    self.files, self.requests = files, []
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # noqa: N802 (the http.server API)
        server.requests.append(self.path)
        body = server.files.get(self.path)
        if body is None:
          self.send_error(404)
          return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

      def log_message(self, *args):
        del args

    self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror/"
    self.thread = threading.Thread(
      target=self.httpd.serve_forever, args=(0.05,), daemon=True
    )
    self.thread.start()

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()
    self.thread.join(10)


@pytest.fixture
def archive_server(cifar, monkeypatch):
  archive = cifar["CIFAR-10"][1]
  server = _ArchiveServer(
    {"/mirror/cifar-10-python.tar.gz": archive.read_bytes()}
  )
  monkeypatch.setenv(data.CIFAR_URL_ENV, server.url)
  for var in ("http_proxy", "HTTP_PROXY"):
    monkeypatch.delenv(var, raising=False)
  yield server
  server.close()


def _closed_port():
  """A loopback port nothing listens on (bound, then released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _tiny_md5(monkeypatch, cifar):
  """Makes the tiny CIFAR-10 archive's md5 the published one."""
  digest = hashlib.md5(cifar["CIFAR-10"][1].read_bytes()).hexdigest()
  layout = dataclasses.replace(data.CIFAR_LAYOUTS["cifar10"], md5=digest)
  monkeypatch.setitem(data.CIFAR_LAYOUTS, "cifar10", layout)


def test_cifar_published_md5s():
  # The values torchvision's CIFAR10 / CIFAR100 check (tgz_md5).
  assert data.CIFAR_LAYOUTS["cifar10"].md5 == "c58f30108f718f92721af3b95e74349a"
  assert (
    data.CIFAR_LAYOUTS["cifar100"].md5 == "eb9058c3a382ffc7106e4002c42a8d85"
  )
  assert data.CIFAR_URL + "cifar-10-python.tar.gz" == (
    "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
  )


def test_cifar10_downloads_once_into_the_cache(
  cifar, archive_server, monkeypatch, tmp_path
):
  _tiny_md5(monkeypatch, cifar)
  cache = tmp_path / "cache"
  data.check_spec("cifar10")
  ds = data.load("cifar10", cache_dir=str(cache))
  assert ds.name == "cifar10"
  _assert_dataset(ds, cifar["CIFAR-10"][2])
  assert archive_server.requests == ["/mirror/cifar-10-python.tar.gz"]
  assert os.listdir(cache) == ["cifar-10-python.tar.gz"]  # No temp left.
  assert (cache / "cifar-10-python.tar.gz").read_bytes() == (
    cifar["CIFAR-10"][1].read_bytes()
  )
  again = data.load("cifar10", cache_dir=str(cache))  # From the cache.
  assert len(archive_server.requests) == 1
  np.testing.assert_array_equal(again.test_images, ds.test_images)


def test_cifar10_cache_dir_from_env(
  cifar, archive_server, monkeypatch, tmp_path
):
  _tiny_md5(monkeypatch, cifar)
  monkeypatch.setenv("SUPERCONV_CACHE_DIR", str(tmp_path / "envcache"))
  data.load("cifar10")
  assert os.listdir(tmp_path / "envcache") == ["cifar-10-python.tar.gz"]


def test_cifar10_wrong_md5_keeps_nothing(cifar, archive_server, tmp_path):
  cache = tmp_path / "cache"
  with pytest.raises(DataError) as err:  # The real md5 is not the tiny one's.
    data.load("cifar10", cache_dir=str(cache))
  msg = str(err.value)
  _assert_one_line(err)
  actual = hashlib.md5(cifar["CIFAR-10"][1].read_bytes()).hexdigest()
  assert (
    f"md5 {actual}, not the published c58f30108f718f92721af3b95e74349a" in msg
  )
  assert "nothing was kept" in msg and "cifar:<path" in msg
  assert not cache.exists()  # Not even the directory it created.


def test_cifar10_cached_copy_with_wrong_md5(tmp_path, monkeypatch):
  monkeypatch.setenv(data.CIFAR_URL_ENV, f"http://127.0.0.1:{_closed_port()}/")
  cache = tmp_path / "cache"
  cache.mkdir()
  (cache / "cifar-10-python.tar.gz").write_bytes(b"not the archive")
  with pytest.raises(DataError, match="not the published") as err:
    data.load("cifar10", cache_dir=str(cache))
  assert f"cifar:{cache / 'cifar-10-python.tar.gz'}" in str(err.value)
  _assert_one_line(err)


def test_cifar100_http_error(archive_server, tmp_path):
  cache = tmp_path / "cache"
  with pytest.raises(DataError, match="HTTP Error 404") as err:
    data.load("cifar100", cache_dir=str(cache))
  assert archive_server.url + "cifar-100-python.tar.gz" in str(err.value)
  _assert_one_line(err)
  assert not cache.exists()


def test_cifar10_offline_names_the_path_and_alternatives(tmp_path, monkeypatch):
  port = _closed_port()
  monkeypatch.setenv(data.CIFAR_URL_ENV, f"http://127.0.0.1:{port}/")
  cache = tmp_path / "cache"
  with pytest.raises(DataError) as err:
    data.load("cifar10", cache_dir=str(cache))
  _assert_one_line(err)
  assert str(err.value) == (
    f"dataset: cifar10: {cache}/cifar-10-python.tar.gz does not exist and "
    f"cannot be downloaded (no network: 127.0.0.1:{port} unreachable); copy "
    "cifar-10-python.tar.gz there, or use --config.dataset=cifar:<path to "
    "cifar-10-python.tar.gz or its extracted directory>, folder:<dir or "
    ".tar.xz> (an image-folder copy) or tfds:cifar10"
  )
  assert not cache.exists()


def test_cifar_offline_through_main_exits_2_writing_nothing(tmp_path):
  cache = tmp_path / "cache"
  result = _launch(
    tmp_path,
    ["plain"],
    os.path.join(REPO, "configs", "quick.py"),
    "--config.dataset=cifar100",
    SUPERCONV_CACHE_DIR=str(cache),
    **{data.CIFAR_URL_ENV: f"http://127.0.0.1:{_closed_port()}/"},
  )
  assert result.returncode == 2, result.stderr
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith(
    f"superconv: error: dataset: cifar100: {cache}/cifar-100-python.tar.gz "
    "does not exist and cannot be downloaded"
  )
  assert os.listdir(tmp_path) == ["launcher.py"]  # No workdir, no cache.


# --- tfds: the real package, offline, through superconv.main ------------------

# Runs superconv.main's entry point in this process after preparing it:
#   launcher.py plain <main args>
#     as `python -m superconv.main` does;
#   launcher.py hide <main args>
#     without tensorflow_datasets;
#   launcher.py mock N DATA_DIR RECORD <main args>
#     with DATA_DIR/cifar10/<version>/ holding the metadata that preparing
#     CIFAR-10 writes (dataset_info.json with N examples per split,
#     features.json, label.labels.txt) but no records, inside
#     tfds.testing.mock_data(N, data_dir=DATA_DIR), which serves random
#     examples for them; RECORD gets what data.load returned.
_LAUNCHER = """
import json
import sys

mode = sys.argv.pop(1)
if mode in ("plain", "hide"):
  if mode == "hide":
    sys.modules["tensorflow_datasets"] = None  # import -> ImportError
  from superconv import main

  main.run()
num_examples, data_dir, record = int(sys.argv.pop(1)), *sys.argv[1:3]
del sys.argv[1:3]
import os

import tensorflow_datasets as tfds
from superconv import data, main

builder = tfds.builder("cifar10", data_dir=data_dir)
# As the builder's download_and_prepare does: names from the archive, sizes
# from the records written.
builder.info.features["label"].names = NAMES
builder.info.set_splits(
  tfds.core.SplitDict(
    [
      tfds.core.SplitInfo(name=split, shard_lengths=[num_examples], num_bytes=0)
      for split in ("train", "test")
    ]
  )
)
os.makedirs(builder.data_dir)
builder.info.write_to_directory(builder.data_dir)
builder.info.features.save_metadata(builder.data_dir)

real_load = data.load


def load(spec, **kwargs):
  ds = real_load(spec, **kwargs)
  with open(record, "w") as f:
    json.dump(
      {
        "name": ds.name,
        "class_names": list(ds.class_names),
        "num_classes": ds.num_classes,
        **{
          f"{split}_{key}": value
          for split in ("train", "test")
          for key, value in (
            ("shape", list(getattr(ds, f"{split}_images").shape)),
            ("dtype", str(getattr(ds, f"{split}_images").dtype)),
            ("label_dtype", str(getattr(ds, f"{split}_labels").dtype)),
            ("label_min", int(getattr(ds, f"{split}_labels").min())),
            ("label_max", int(getattr(ds, f"{split}_labels").max())),
            ("pixel_std", float(getattr(ds, f"{split}_images").std())),
          )
        },
      },
      f,
    )
  return ds


data.load = load
with tfds.testing.mock_data(num_examples=num_examples, data_dir=data_dir):
  main.run()
"""

_CIFAR10_NAMES = [
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
]


_TFDS_CONFIG = """
from superconv import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.dataset = "tfds:cifar10"
  c.tfds_download = False
  c.model = "resnet20"
  c.dtype = "float32"
  c.batch_size = 16
  c.eval_batch_size = 16
  c.num_steps = 6  # Two epochs of 48 images.
  c.schedule.name = "constant"
  c.schedule.max_lr = 0.05
  c.schedule.cycle_momentum = False
  c.log_every_steps = 3
  c.eval_every_epochs = 1.0
  c.checkpoint_every_steps = 6
  return c
"""


def _require_tfds():
  """Skips without the tfds extra, except where SUPERCONV_REQUIRE_TFDS=1
  (.ci/run sets it): there a missing package fails the test."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  if importlib.util.find_spec("tensorflow_datasets") is not None:
    return
  if os.environ.get("SUPERCONV_REQUIRE_TFDS") == "1":
    pytest.fail(
      "SUPERCONV_REQUIRE_TFDS=1 but tensorflow_datasets is not installed "
      "(pip install -e '.[tfds]')"
    )
  pytest.skip("needs the tfds extra: pip install -e '.[test,tfds]'")


def _launch(tmp_path, mode, config, *flags, **env):
  """Runs `launcher.py <mode...> --config <config> --workdir tmp_path/run
  <flags>` in a subprocess; `env`: extra environment variables."""
  launcher = tmp_path / "launcher.py"
  launcher.write_text(f"NAMES = {_CIFAR10_NAMES!r}\n{_LAUNCHER}")
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2", **env)
  env.pop("TFDS_DATA_DIR", None)
  args = ["--config", str(config), "--workdir", str(tmp_path / "run"), *flags]
  return subprocess.run(
    [sys.executable, str(launcher), *mode, *args],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=400,
  )


def test_tfds_real_mock_data_through_main(tmp_path):
  """tfds:cifar10 through the real tensorflow_datasets (tfds.load with
  batch_size=-1, as_numpy, the ClassLabel names) under tfds.testing.mock_data:
  no files, no network; a few training steps and an evaluation."""
  _require_tfds()
  # Prepared metadata, so superconv passes download=False and never probes
  # the network; mock_data serves the examples.
  data_dir = tmp_path / "tfds"
  workdir, record = tmp_path / "run", tmp_path / "record.json"
  config = tmp_path / "tiny_tfds.py"
  config.write_text(_TFDS_CONFIG)
  n = 48  # Train and test split each (mock_data yields the same examples).
  result = _launch(
    tmp_path,
    ["mock", str(n), str(data_dir), str(record)],
    config,
    f"--config.data_dir={data_dir}",
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "final: test accuracy" in result.stdout
  assert f"loaded {n} train + {n} test images from tfds" in result.stderr
  got = json.loads(record.read_text())
  assert got["name"] == "tfds:cifar10"
  assert got["class_names"] == _CIFAR10_NAMES and got["num_classes"] == 10
  for split in ("train", "test"):
    assert got[f"{split}_shape"] == [n, 32, 32, 3]
    assert got[f"{split}_dtype"] == "uint8"
    assert got[f"{split}_label_dtype"] == "int32"
    assert 0 <= got[f"{split}_label_min"] <= got[f"{split}_label_max"] < 10
    assert got[f"{split}_pixel_std"] > 10  # Random images, not a constant.
  rows = [
    json.loads(line)
    for line in (workdir / "metrics.jsonl").read_text().splitlines()
  ]
  assert [r["step"] for r in rows if "train_loss" in r] == [3, 6]
  evals = [r for r in rows if "eval_accuracy" in r]
  assert [r["step"] for r in evals] == [3, 6]
  assert all(r["eval_examples"] == n for r in evals)
  assert all(np.isfinite(r["train_loss"]) for r in rows if "train_loss" in r)


def test_tfds_missing_through_main_exits_2_writing_nothing(tmp_path):
  """The plain-install command of the README, without tensorflow_datasets."""
  result = _launch(
    tmp_path, ["hide"], os.path.join(REPO, "configs", "default.py")
  )
  assert result.returncode == 2, result.stderr
  (line,) = result.stderr.strip().splitlines()
  assert line.startswith(
    "superconv: error: dataset: tfds:cifar10 needs tensorflow_datasets, which"
    " is not installed"
  )
  assert "pip install 'superconv[tfds]'" in line
  assert os.listdir(tmp_path) == ["launcher.py"]  # No workdir.
