"""superconv.data: synthetic, image folders (dirs, archives, cache), tfds."""

import logging
import os
import sys
import tarfile
import types

import numpy as np
from PIL import Image
import pytest

from superconv import data
from superconv.data import DataError

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
  "spec", ["synthetic", "tfds:cifar10", "tfds:cifar100", " synthetic "]
)
def test_check_spec_valid(spec):
  data.check_spec(spec)


@pytest.mark.parametrize(
  "spec,match",
  [
    (
      "foo",
      "dataset: unknown 'foo'; valid: tfds:cifar10, tfds:cifar100, folder:",
    ),
    ("tfds:mnist", "dataset: unknown tfds data set 'mnist'"),
    ("folder:", "needs a path"),
    ("", "unknown"),
  ],
)
def test_check_spec_unknown(spec, match):
  with pytest.raises(DataError, match=match) as err:
    data.check_spec(spec)
  _assert_one_line(err)
  with pytest.raises(DataError):
    data.load(spec)


def test_check_spec_missing_and_wrong_paths(tmp_path):
  missing = tmp_path / "nope.tar.xz"
  with pytest.raises(DataError, match="does not exist") as err:
    data.check_spec(f"folder:{missing}")
  assert str(missing) in str(err.value)
  _assert_one_line(err)
  zipfile = tmp_path / "data.zip"
  zipfile.write_bytes(b"PK")
  with pytest.raises(DataError, match="neither a directory nor") as err:
    data.check_spec(f"folder:{zipfile}")
  _assert_one_line(err)
  with pytest.raises(DataError, match="data_dir"):
    data.check_spec("tfds:cifar10", data_dir=str(zipfile))


# --- tfds (never touches the network) -----------------------------------------


def test_tfds_not_prepared_no_download(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  empty = tmp_path / "tfds_empty"
  empty.mkdir()
  with pytest.raises(DataError) as err:
    data.load("tfds:cifar10", data_dir=str(empty), download=False)
  msg = str(err.value)
  assert str(empty) in msg and "folder:" in msg and msg.startswith("dataset:")
  _assert_one_line(err)


def test_tfds_data_dir_from_env(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "envtfds"))
  with pytest.raises(DataError, match=str(tmp_path / "envtfds")):
    data.load("tfds:cifar100", download=False)


def test_tfds_no_network_fails_fast(tmp_path, monkeypatch):
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


def test_tfds_not_installed(tmp_path, monkeypatch):
  data_dir = _prepare_fake(tmp_path, "cifar10")
  monkeypatch.setitem(
    sys.modules, "tensorflow_datasets", None
  )  # import -> ImportError
  with pytest.raises(
    DataError, match=r"pip install 'superconv\[tfds\]'"
  ) as err:
    data.load("tfds:cifar10", data_dir=str(data_dir), download=False)
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
