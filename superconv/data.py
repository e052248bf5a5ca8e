"""Data sources: whole CIFAR-style data sets as uint8 NHWC arrays in memory.

A data set is named by a spec string (the `dataset` config key):

  synthetic          Deterministic random 32x32x3 images whose classes differ
                     in mean colour and coarse pattern (learnable); for tests.
  folder:<path>      An image folder `train/<class>/*`, `test/<class>/*`, as a
                     directory or a .tar / .tar.gz / .tgz / .tar.xz archive
                     (optionally wrapped in one top-level directory). Archives
                     are streamed, never extracted. Decoded arrays are cached
                     as .npy files (see `load`), so only the first load decodes.
  cifar:<path>       CIFAR-10 or CIFAR-100 in the python-pickle layout of
                     the original archives (the one torchvision reads):
                     cifar-10-python.tar.gz / cifar-100-python.tar.gz, or the
                     directory they extract to. Read as they are, no
                     TensorFlow and no network.
  cifar10            The original python-pickle archive in the cache
  cifar100           directory (`cache_dir`), its md5 checked against the
                     published one at each load; when absent, downloaded
                     there with the standard library (kept only if its md5
                     is right). Offline, fails within seconds.
  tfds:cifar10       Through tensorflow_datasets (the optional `tfds` extra),
  tfds:cifar100      imported only for these specs.

`check_spec` validates a spec cheaply before anything is loaded; `load` returns
a `Dataset`; `from_config` loads the one a config's data keys describe.
Every user-facing failure is a one-line `DataError` that names the config
key or path at fault and what would be valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import contextlib
import dataclasses
import functools
import glob
import hashlib
import http.client
import io
import json
import logging
import os
import pickle
import shutil
import socket
import tarfile
import tempfile
import threading
import time
import urllib.parse
import urllib.request
import zlib

import numpy as np
from PIL import Image

from superconv import storage

logger = logging.getLogger("superconv.data")

TFDS_NAMES = ("cifar10", "cifar100")
VALID_SPECS = (
  "cifar10, cifar100, cifar:<.tar.gz or dir>, tfds:cifar10, tfds:cifar100, "
  "folder:<dir or .tar[.gz|.xz]>, synthetic"
)
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz")
SPLITS = ("train", "test")

# CIFAR's download host: reachable <=> tfds can download CIFAR.
_DOWNLOAD_HOST = ("www.cs.toronto.edu", 443)
_PROBE_TIMEOUT_S = 3.0

# Bump when the cache layout or the decoding changes: old entries are ignored.
_CACHE_VERSION = 1
_CACHE_FILES = (
  "train_images.npy",
  "train_labels.npy",
  "test_images.npy",
  "test_labels.npy",
)
_CACHE_META = "meta.json"
_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 6 * 3600  # Leftovers of interrupted writes older than this go.

_SYNTHETIC_SEED = 20170101  # Fixed: synthetic data never depend on config.seed.


class DataError(ValueError):
  """A data set that cannot be loaded; a one-line, user-facing message that
  names the config key (`dataset`, `data_dir`, ...) or the path at fault and
  what would be valid."""

  def __init__(self, message: str):
    super().__init__(" ".join(str(message).split()))  # Always one line.


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
  """A whole data set in host memory."""

  name: str  # The spec it came from, e.g. "folder:/x/cifar.tar.xz".
  train_images: np.ndarray  # uint8 [N, H, W, C]
  train_labels: np.ndarray  # int32 [N]
  test_images: np.ndarray  # uint8 [M, H, W, C]
  test_labels: np.ndarray  # int32 [M]
  class_names: tuple[str, ...]

  def __post_init__(self):
    for split in SPLITS:
      images = getattr(self, f"{split}_images")
      labels = getattr(self, f"{split}_labels")
      if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
          f"{split}_images must be uint8 [N, H, W, C], got "
          f"{images.dtype} {images.shape}"
        )
      if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
        raise ValueError(
          f"{split}_labels must be int32 [{len(images)}], got "
          f"{labels.dtype} {labels.shape}"
        )
    if self.train_images.shape[1:] != self.test_images.shape[1:]:
      raise ValueError(
        f"train images {self.train_images.shape[1:]} and test "
        f"images {self.test_images.shape[1:]} differ in shape"
      )
    object.__setattr__(self, "class_names", tuple(self.class_names))

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return tuple(self.train_images.shape[1:])

  def channel_mean_std(self) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the TRAIN images in [0, 1] units.

    float32 arrays of shape [C]. Computed in chunks with float64 accumulation
    (the per-chunk sums of uint8 values and their squares are exact), so 50k
    CIFAR images take a fraction of a second and little extra memory.
    """
    images = self.train_images
    if len(images) == 0:
      raise ValueError("channel_mean_std of an empty train split")
    channels = images.shape[-1]
    flat = images.reshape(-1, channels)
    total = np.zeros(channels, np.float64)
    total_sq = np.zeros(channels, np.float64)
    chunk = 1 << 18  # Pixels per chunk: under 2 MB as uint16.
    for start in range(0, len(flat), chunk):
      # Channel-major copy: row sums over contiguous memory are ~10x faster
      # than column sums of an [n, 3] array.
      part = np.ascontiguousarray(flat[start : start + chunk].T).astype(
        np.uint16
      )
      total += part.sum(axis=1, dtype=np.float64)
      part *= part  # 255**2 = 65025 still fits uint16.
      total_sq += part.sum(axis=1, dtype=np.float64)
    count = float(len(flat))
    mean = total / count
    var = np.maximum(total_sq / count - mean * mean, 0.0)
    return (
      (mean / 255.0).astype(np.float32),
      (np.sqrt(var) / 255.0).astype(np.float32),
    )

  def __repr__(self) -> str:
    return (
      f"Dataset(name={self.name!r}, train={self.train_images.shape}, "
      f"test={self.test_images.shape}, num_classes={self.num_classes})"
    )


# ---------------------------------------------------------------------------
# Spec parsing and cheap validation.
# ---------------------------------------------------------------------------


def _parse(spec) -> tuple[str, str]:
  """(kind, argument) of a spec; raises DataError for unknown kinds."""
  if not isinstance(spec, str):
    raise DataError(
      f"dataset: must be a string, got {spec!r}; valid: {VALID_SPECS}"
    )
  spec = spec.strip()
  if spec == "synthetic":
    return "synthetic", ""
  if spec in CIFAR_LAYOUTS:
    return "cifar_download", spec
  for kind, examples in (
    (
      "cifar",
      "cifar:/data/cifar-10-python.tar.gz or cifar:/data/cifar-10-batches-py",
    ),
    ("folder", "folder:/data/cifar10 or folder:/data/cifar10.tar.xz"),
  ):
    if spec.startswith(kind + ":"):
      path = spec[len(kind) + 1 :].strip()
      if not path:
        raise DataError(f"dataset: {kind}: needs a path, e.g. {examples}")
      return kind, path
  if spec.startswith("tfds:"):
    name = spec[len("tfds:") :].strip()
    if name not in TFDS_NAMES:
      raise DataError(
        f"dataset: unknown tfds data set {name!r}; valid: "
        f"{', '.join('tfds:' + n for n in TFDS_NAMES)} (or {VALID_SPECS})"
      )
    return "tfds", name
  raise DataError(f"dataset: unknown {spec!r}; valid: {VALID_SPECS}")


def _visible(name: str) -> bool:
  return not name.startswith(".") and name != "__MACOSX"


def _find_folder_root(path: str) -> str:
  """The directory holding train/ and test/: `path` itself or its only child."""

  def has_splits(d):
    return all(os.path.isdir(os.path.join(d, s)) for s in SPLITS)

  if has_splits(path):
    return path
  try:
    children = sorted(e for e in os.listdir(path) if _visible(e))
  except OSError as e:
    raise DataError(
      f"dataset: cannot list folder {path}: {e.strerror or e}"
    ) from None
  subdirs = [c for c in children if os.path.isdir(os.path.join(path, c))]
  if len(subdirs) == 1 and has_splits(os.path.join(path, subdirs[0])):
    return os.path.join(path, subdirs[0])
  shown = ", ".join(children[:8]) + (", ..." if len(children) > 8 else "")
  raise DataError(
    f"dataset: folder {path} must contain train/<class>/ and "
    f"test/<class>/ image folders (directly or inside one "
    f"top-level directory); found: {shown or 'nothing'}"
  )


def _check_source_path(kind, path, find_root, suffixes, expected) -> str:
  """Absolute path of a valid `<kind>:<path>` source, a directory (checked
  by `find_root`) or an archive named with one of `suffixes`; raises
  DataError otherwise, `expected` saying what would be valid."""
  full = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(full):
    raise DataError(f"dataset: {kind} path {full} does not exist; {expected}")
  if os.path.isdir(full):
    find_root(full)
    return full
  if not os.path.isfile(full) or not full.lower().endswith(suffixes):
    raise DataError(
      f"dataset: {kind} path {full} is neither a directory nor "
      f"a {'/'.join(suffixes)} archive; {expected}"
    )
  if not os.access(full, os.R_OK):
    raise DataError(f"dataset: {kind} archive {full} is not readable")
  return full


def _check_folder_path(path: str) -> str:
  return _check_source_path(
    "folder",
    path,
    _find_folder_root,
    ARCHIVE_SUFFIXES,
    "expected a directory or a .tar/.tar.gz/.tgz/.tar.xz file in "
    "image-folder layout (train/<class>/*, test/<class>/*)",
  )


def check_spec(spec: str, *, data_dir: str | None = None) -> None:
  """Cheap validation BEFORE anything is loaded or written.

  Checks that the kind is known (see `VALID_SPECS`); for folders, that the
  path exists and is a directory in image-folder layout or a
  .tar/.tar.gz/.tgz/.tar.xz file; for `cifar:<path>`, that the path is a
  directory holding a CIFAR python-pickle layout or a readable .tar.gz/.tgz/
  .tar file; for tfds, that `data_dir`, when given and existing, is a
  directory. Raises DataError, e.g. "dataset: unknown 'foo'; valid: ...".
  """
  kind, arg = _parse(spec)
  if kind == "folder":
    _check_folder_path(arg)
  elif kind == "cifar":
    _check_cifar_path(arg)
  elif kind == "tfds" and data_dir:
    full = os.path.abspath(os.path.expanduser(data_dir))
    if os.path.exists(full) and not os.path.isdir(full):
      raise DataError(
        f"data_dir: {full} exists but is not a directory; set "
        f"--config.data_dir to a TFDS data directory"
      )


# ---------------------------------------------------------------------------
# Loading.
# ---------------------------------------------------------------------------


def load(
  spec: str,
  *,
  data_dir: str | None = None,
  cache_dir: str | None = None,
  synthetic_train_size: int = 1024,
  synthetic_test_size: int = 256,
  synthetic_num_classes: int = 10,
  download: bool = True,
) -> Dataset:
  """Loads the data set named by `spec` (see the module docstring).

  Args:
    spec: one of `VALID_SPECS` (see the module docstring).
    data_dir: TFDS data directory (tfds only; None or "" = $TFDS_DATA_DIR,
      else ~/tensorflow_datasets).
    cache_dir: where decoded image folders are cached and the cifar10 /
      cifar100 archives are downloaded to (None or "" = $SUPERCONV_CACHE_DIR,
      else ~/.cache/superconv).
    synthetic_train_size, synthetic_test_size, synthetic_num_classes: size of
      the synthetic data set.
    download: whether tfds may download a data set that is not prepared.

  Returns:
    The whole data set as uint8 NHWC images and int32 labels.

  Raises:
    DataError: with a one-line message naming the config key or path.
  """
  check_spec(spec, data_dir=data_dir)
  kind, arg = _parse(spec)
  name = spec.strip()
  start = time.perf_counter()
  if kind == "synthetic":
    ds = _load_synthetic(
      name, synthetic_train_size, synthetic_test_size, synthetic_num_classes
    )
    logger.info(
      "dataset %s: generated %d train + %d test images in %.2f s",
      name,
      len(ds.train_images),
      len(ds.test_images),
      time.perf_counter() - start,
    )
    return ds
  if kind == "folder":
    return _load_folder(name, arg, cache_dir)
  if kind == "cifar":
    return _load_cifar(name, arg)
  if kind == "cifar_download":
    return _load_cifar(name, _cifar_archive(arg, cache_dir))
  return _load_tfds(name, arg, data_dir, download)


# --- synthetic --------------------------------------------------------------


def _load_synthetic(
  name: str, train_size: int, test_size: int, num_classes: int
) -> Dataset:
  for key, value, low in (
    ("synthetic_train_size", train_size, 1),
    ("synthetic_test_size", test_size, 1),
    ("synthetic_num_classes", num_classes, 2),
  ):
    if (
      isinstance(value, bool)
      or not isinstance(value, (int, np.integer))
      or value < low
    ):
      raise DataError(f"{key}: must be an integer >= {low}, got {value!r}")
  # Class prototypes depend only on the number of classes: a flat colour plus
  # a coarse 4x4 pattern (8x8-pixel blocks), in float32 pixel units.
  rng = np.random.default_rng([_SYNTHETIC_SEED, num_classes])
  colours = rng.uniform(48.0, 208.0, size=(num_classes, 1, 1, 3))
  coarse = rng.normal(0.0, 32.0, size=(num_classes, 4, 4, 3))
  pattern = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2)
  prototypes = (colours + pattern).astype(np.float32)

  def split(stream: int, size: int):
    # Each split from its own stream: the test split does not change with the
    # train size and vice versa.
    rng = np.random.default_rng([_SYNTHETIC_SEED, num_classes, stream, size])
    labels = rng.permutation(np.arange(size) % num_classes).astype(np.int32)
    images = np.empty((size, 32, 32, 3), np.uint8)
    for lo in range(0, size, 4096):
      hi = min(size, lo + 4096)
      noise = rng.standard_normal((hi - lo, 32, 32, 3), dtype=np.float32)
      x = prototypes[labels[lo:hi]] + 24.0 * noise
      images[lo:hi] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    return images, labels

  train_images, train_labels = split(1, int(train_size))
  test_images, test_labels = split(2, int(test_size))
  return Dataset(
    name,
    train_images,
    train_labels,
    test_images,
    test_labels,
    tuple(f"class_{i}" for i in range(num_classes)),
  )


# --- folder -----------------------------------------------------------------


@functools.cache
def _image_extensions() -> dict[str, str]:
  """{'.jpg': 'JPEG', '.png': 'PNG', ...} for every format Pillow can read."""
  Image.init()
  return {
    ext.lower(): fmt
    for ext, fmt in Image.registered_extensions().items()
    if fmt in Image.OPEN
  }


def _decode_image(data: bytes, where: str) -> np.ndarray:
  """Decodes one encoded image to uint8 RGB [H, W, 3]; `where` names it."""
  # Trying the format its extension names first skips Pillow's probing of
  # other formats (half the time for small JPEGs); a misnamed file falls back.
  fmt = _image_extensions().get(os.path.splitext(where)[1].lower())
  try:
    try:
      im = Image.open(io.BytesIO(data), formats=(fmt,) if fmt else None)
    except Image.UnidentifiedImageError:
      if not fmt:
        raise
      im = Image.open(io.BytesIO(data))
    with im:
      if im.mode != "RGB":
        im = im.convert("RGB")
      return np.asarray(im, dtype=np.uint8)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
      f"dataset: cannot decode image {where}: {type(e).__name__}: {e}"
    ) from None


# One image of an image folder: (split, class, file name, display name).
_Key = tuple[str, str, str, str]


def _split_parts(relpath: str) -> list[str]:
  return [
    p for p in relpath.replace("\\", "/").split("/") if p not in ("", ".")
  ]


def _iter_directory(root: str, exts) -> Iterator[tuple[_Key, str, int, int]]:
  """(key, full path, size, mtime_ns) of every image under root/{train,test}."""
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    for cls_entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
      if not _visible(cls_entry.name) or not cls_entry.is_dir():
        continue
      for entry in sorted(os.scandir(cls_entry.path), key=lambda e: e.name):
        if (
          not _visible(entry.name)
          or not entry.is_file()
          or os.path.splitext(entry.name)[1].lower() not in exts
        ):
          continue
        st = entry.stat()
        key = (
          split,
          cls_entry.name,
          entry.name,
          os.path.join(split_dir, cls_entry.name, entry.name),
        )
        yield key, entry.path, st.st_size, st.st_mtime_ns


def _read_directory(files) -> Iterator[tuple[_Key, bytes]]:
  for key, path, _, _ in files:
    try:
      with open(path, "rb") as f:
        yield key, f.read()
    except OSError as e:
      raise DataError(
        f"dataset: cannot read {path}: {e.strerror or e}"
      ) from None


def _read_archive(path: str, exts) -> Iterator[tuple[_Key, bytes]]:
  """Streams (key, bytes) of the images in a tar archive, without extracting.

  Members are `<split>/<class>/<file>` or `<top>/<split>/<class>/<file>`;
  a mix, or several tops, is an error.
  """
  tops = set()
  try:
    with tarfile.open(path, "r:*") as tf:
      for member in tf:
        if not member.isfile():
          continue
        parts = _split_parts(member.name)
        if not parts or not all(_visible(p) for p in parts):
          continue
        if os.path.splitext(parts[-1])[1].lower() not in exts:
          continue
        if len(parts) == 3 and parts[0] in SPLITS:
          top = None
        elif len(parts) == 4 and parts[1] in SPLITS:
          top = parts[0]
        else:
          continue
        tops.add(top)
        if len(tops) > 1:
          shown = ", ".join(
            sorted("(none)" if t is None else t + "/" for t in tops)
          )
          raise DataError(
            f"dataset: archive {path} has train/ and test/ "
            f"under several top-level directories ({shown}); "
            f"expected one image-folder layout"
          )
        f = tf.extractfile(member)
        data = f.read() if f is not None else b""
        split, cls, fname = parts[-3:]
        yield (split, cls, fname, f"{path}:{member.name}"), data
  except (tarfile.TarError, EOFError, OSError) as e:
    raise DataError(
      f"dataset: cannot read archive {path}: {type(e).__name__}: {e}"
    ) from None


def _assemble(source: str, items: Iterable[tuple[_Key, bytes]]):
  """Decodes (key, bytes) pairs into ((images, labels) per split, classes)."""
  decoded: dict[str, list[tuple[str, str, str, np.ndarray]]] = {
    s: [] for s in SPLITS
  }
  for (split, cls, fname, where), data in items:
    # Looked up at call time (so tests can replace it). Decoding is serial:
    # for 32x32 JPEGs about half the time is Python-level header parsing that
    # holds the GIL, and on 2 cores a thread pool measured slower.
    decoded[split].append((cls, fname, where, _decode_image(data, where)))
  classes = {s: sorted({c for c, _, _, _ in decoded[s]}) for s in SPLITS}
  if not decoded["train"] and not decoded["test"]:
    raise DataError(
      f"dataset: no images found in {source}; expected "
      f"train/<class>/<image> and test/<class>/<image> files"
    )
  if classes["train"] != classes["test"]:
    only_train = sorted(set(classes["train"]) - set(classes["test"]))
    only_test = sorted(set(classes["test"]) - set(classes["train"]))
    raise DataError(
      f"dataset: train and test class folders of {source} "
      f"differ: only in train: {only_train or 'none'}; only in "
      f"test: {only_test or 'none'}"
    )
  class_names = classes["train"]
  label_of = {c: i for i, c in enumerate(class_names)}
  shape = None
  out = {}
  for split in SPLITS:
    rows = sorted(decoded[split], key=lambda r: (r[0], r[1]))
    for _cls, _fname, where, image in rows:
      if shape is None:
        shape, first = image.shape, where
      elif image.shape != shape:
        raise DataError(
          f"dataset: image {where} is {image.shape[1]}x{image.shape[0]} but "
          f"{first} is {shape[1]}x{shape[0]}; all images of a folder data "
          f"set must have the same size"
        )
    images = np.empty((len(rows),) + shape, np.uint8)
    for i, row in enumerate(rows):
      images[i] = row[3]
    labels = np.fromiter((label_of[r[0]] for r in rows), np.int32, len(rows))
    out[split] = (images, labels)
    decoded[split] = []  # Free the per-image arrays early.
  return out, tuple(class_names)


def _default_cache_dir() -> str:
  return os.environ.get("SUPERCONV_CACHE_DIR") or os.path.join(
    os.path.expanduser("~"), ".cache", "superconv"
  )


def _cache_key(path: str, files=None) -> str:
  """Hash of the source's identity from stat only (no file contents)."""
  h = hashlib.sha256()
  h.update(f"superconv-folder-cache v{_CACHE_VERSION}\0{path}\0".encode())
  if files is None:  # An archive: its own size and mtime.
    st = os.stat(path)
    h.update(f"{st.st_size}\0{st.st_mtime_ns}".encode())
  else:  # A directory: the sorted (relpath, size, mtime) list of its images.
    for relpath, size, mtime_ns in sorted(files):
      h.update(f"{relpath}\0{size}\0{mtime_ns}\n".encode())
  return h.hexdigest()[:24]


def _cache_entry_name(path: str, key: str) -> str:
  base = os.path.basename(path.rstrip(os.sep)) or "root"
  base = "".join(c if c.isalnum() or c in "-_." else "_" for c in base)
  return f"folder-{base[:48]}-{key}"


def _read_cache(entry: str):
  """((images, labels) per split, class_names) from a cache entry, or None."""
  meta_path = os.path.join(entry, _CACHE_META)
  if not os.path.isfile(meta_path):
    return None
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    arrays = [
      np.load(os.path.join(entry, n), allow_pickle=False) for n in _CACHE_FILES
    ]
    if meta.get("version") != _CACHE_VERSION:
      raise ValueError(f"version {meta.get('version')}")
    shape = tuple(meta["image_shape"])
    for split, images, labels in (
      ("train", *arrays[:2]),
      ("test", *arrays[2:]),
    ):
      n = meta[f"num_{split}"]
      if (
        images.dtype != np.uint8
        or images.shape != (n,) + shape
        or labels.dtype != np.int32
        or labels.shape != (n,)
      ):
        raise ValueError(f"{split} arrays do not match {_CACHE_META}")
    return (
      {"train": tuple(arrays[:2]), "test": tuple(arrays[2:])},
      tuple(meta["class_names"]),
    )
  except (OSError, ValueError, KeyError, TypeError) as e:
    logger.warning(
      "ignoring unreadable data cache %s (%s); decoding again", entry, e
    )
    return None


def _write_cache(
  cache_dir: str, entry: str, source: str, splits, class_names
) -> bool:
  """Writes a cache entry atomically (temp dir + rename); False on failure."""
  tmp = None
  try:
    os.makedirs(cache_dir, exist_ok=True)
    _remove_stale_tmp(cache_dir)
    tmp = tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=cache_dir)
    arrays = [a for s in SPLITS for a in splits[s]]
    for fname, array in zip(_CACHE_FILES, arrays):
      np.save(os.path.join(tmp, fname), array, allow_pickle=False)
    meta = {
      "version": _CACHE_VERSION,
      "source": source,
      "class_names": list(class_names),
      "num_train": int(len(splits["train"][0])),
      "num_test": int(len(splits["test"][0])),
      "image_shape": list(splits["train"][0].shape[1:]),
      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with open(os.path.join(tmp, _CACHE_META), "w") as f:
      json.dump(meta, f, indent=1)
    if os.path.isdir(entry):  # Unreadable leftover (checked by the caller).
      shutil.rmtree(entry, ignore_errors=True)
    try:
      os.rename(tmp, entry)
    except OSError:
      if os.path.isfile(os.path.join(entry, _CACHE_META)):
        shutil.rmtree(tmp, ignore_errors=True)  # A concurrent load won.
        return True
      raise
    return True
  except OSError as e:
    logger.warning(
      "cannot write the data cache in %s (%s: %s); continuing "
      "without it (set --config.cache_dir or SUPERCONV_CACHE_DIR "
      "to a writable directory to cache decoded images)",
      cache_dir,
      type(e).__name__,
      e.strerror or e,
    )
    if tmp is not None:
      shutil.rmtree(tmp, ignore_errors=True)
    return False


def _remove_stale_tmp(cache_dir: str) -> None:
  """Removes temp dirs and files of writes interrupted long ago."""
  now = time.time()
  for path in glob.glob(os.path.join(cache_dir, _TMP_PREFIX + "*")):
    try:
      if now - os.stat(path).st_mtime > _STALE_TMP_S:
        if os.path.isdir(path):
          shutil.rmtree(path, ignore_errors=True)
        else:
          os.remove(path)
    except OSError:
      pass


def _load_folder(name: str, path: str, cache_dir: str | None) -> Dataset:
  start = time.perf_counter()
  path = _check_folder_path(path)
  exts = _image_extensions()
  if os.path.isdir(path):
    root = _find_folder_root(path)
    files = list(_iter_directory(root, exts))
    key = _cache_key(
      path,
      [(os.path.relpath(p, path), size, mtime) for _, p, size, mtime in files],
    )
  else:
    files = None
    key = _cache_key(path)
  cache_dir = os.path.abspath(
    os.path.expanduser(cache_dir or _default_cache_dir())
  )
  entry = os.path.join(cache_dir, _cache_entry_name(path, key))

  cached = _read_cache(entry)
  if cached is not None:
    splits, class_names = cached
    logger.info(
      "dataset %s: loaded %d train + %d test images from cache %s in %.2f s",
      name,
      len(splits["train"][0]),
      len(splits["test"][0]),
      entry,
      time.perf_counter() - start,
    )
  else:
    items = (
      _read_directory(files) if files is not None else _read_archive(path, exts)
    )
    splits, class_names = _assemble(path, items)
    decoded_s = time.perf_counter() - start
    cached_ok = _write_cache(cache_dir, entry, path, splits, class_names)
    logger.info(
      "dataset %s: decoded %d train + %d test images (%s, %d "
      "classes) from %s in %.1f s%s",
      name,
      len(splits["train"][0]),
      len(splits["test"][0]),
      "x".join(map(str, splits["train"][0].shape[1:])),
      len(class_names),
      path,
      decoded_s,
      f"; cached in {entry}" if cached_ok else "",
    )
  return Dataset(name, *splits["train"], *splits["test"], class_names)


# --- cifar: the original python-pickle archives -------------------------------


@dataclasses.dataclass(frozen=True)
class CifarLayout:
  """The python-pickle layout of one of the original CIFAR archives."""

  title: str  # "CIFAR-10".
  archive: str  # File name of the published archive.
  md5: str  # Its published md5 (the one torchvision checks too).
  train: tuple[str, ...]  # The pickled train batches, in order.
  test: str  # The pickled test batch.
  meta: str  # The pickle holding the class names.
  labels_key: str  # Label list in each batch.
  names_key: str  # Class-name list in the meta pickle.

  @property
  def files(self) -> tuple[str, ...]:
    return (*self.train, self.test, self.meta)


CIFAR_LAYOUTS = {
  "cifar10": CifarLayout(
    title="CIFAR-10",
    archive="cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a",
    train=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test="test_batch",
    meta="batches.meta",
    labels_key="labels",
    names_key="label_names",
  ),
  "cifar100": CifarLayout(  # The 100 fine labels; the 20 coarse ones unused.
    title="CIFAR-100",
    archive="cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85",
    train=("train",),
    test="test",
    meta="meta",
    labels_key="fine_labels",
    names_key="fine_label_names",
  ),
}
# cifar10 / cifar100 download <base URL><archive name>; a mirror with the same
# file names can stand in through $SUPERCONV_CIFAR_URL.
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR_URL_ENV = "SUPERCONV_CIFAR_URL"
_DOWNLOAD_TIMEOUT_S = 30.0  # Per socket operation, once the host answered.
_CIFAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")
_CIFAR_SIDE = 32

# The only globals a CIFAR batch pickle needs (numpy arrays, as written by
# any numpy version); a pickle naming anything else is refused, so reading an
# archive cannot run code.
_PICKLE_GLOBALS = frozenset(
  {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
  }
)


class _BatchUnpickler(pickle.Unpickler):
  def find_class(self, module, name):
    if (module, name) not in _PICKLE_GLOBALS:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    return super().find_class(module, name)


def _cifar_hint(layout: CifarLayout) -> str:
  return (
    f"the python-pickle layout of {layout.archive} ("
    + ", ".join(layout.files)
    + ")"
  )


def _layout_of(names) -> CifarLayout | None:
  """The layout whose files are all among `names`, or None."""
  names = set(names)
  for layout in CIFAR_LAYOUTS.values():
    if set(layout.files) <= names:
      return layout
  return None


_CIFAR_EXPECTED = (
  "expected cifar-10-python.tar.gz, cifar-100-python.tar.gz or the "
  "directory one extracts to (data_batch_1..5, test_batch, batches.meta; or "
  "train, test, meta)"
)


def _find_cifar_dir(path: str) -> tuple[str, CifarLayout]:
  """(directory holding the batches, layout): `path` or its one child."""
  try:
    layout = _layout_of(os.listdir(path))
    if layout is not None:
      return path, layout
    children = sorted(
      c
      for c in os.listdir(path)
      if _visible(c) and os.path.isdir(os.path.join(path, c))
    )
    found = [
      (os.path.join(path, c), layout)
      for c in children
      if (layout := _layout_of(os.listdir(os.path.join(path, c))))
    ]
  except OSError as e:
    raise DataError(f"dataset: cannot list {path}: {e.strerror or e}") from None
  if len(found) == 1:
    return found[0]
  if found:
    raise DataError(
      f"dataset: {path} holds several CIFAR directories ("
      + ", ".join(os.path.basename(d) for d, _ in found)
      + "); name one of them with cifar:<dir>"
    )
  raise DataError(
    f"dataset: no CIFAR python-pickle batches in {path} (directly or in one "
    f"subdirectory); {_CIFAR_EXPECTED}"
  )


def _check_cifar_path(path: str) -> str:
  return _check_source_path(
    "cifar", path, _find_cifar_dir, _CIFAR_SUFFIXES, _CIFAR_EXPECTED
  )


def _read_cifar_archive(path: str) -> tuple[CifarLayout, dict]:
  """(layout, {file: (where, bytes)}) of the batches in a CIFAR tar archive.

  The batches lie at the top of the archive or in one directory (the
  originals: cifar-10-batches-py/, cifar-100-python/); read in one pass.
  """
  wanted = {f for layout in CIFAR_LAYOUTS.values() for f in layout.files}
  by_top: dict[str, dict] = {}
  try:
    with tarfile.open(path, "r:*") as tf:
      for member in tf:
        parts = _split_parts(member.name)
        if (
          not member.isfile()
          or not 1 <= len(parts) <= 2
          or parts[-1] not in wanted
          or not all(_visible(p) for p in parts)
        ):
          continue
        f = tf.extractfile(member)
        top = parts[0] if len(parts) == 2 else ""
        by_top.setdefault(top, {})[parts[-1]] = (
          f"{path}:{member.name}",
          f.read() if f is not None else b"",
        )
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise DataError(
      f"dataset: cannot read archive {path}: {type(e).__name__}: {e}"
    ) from None
  found = [
    (top, layout, files)
    for top, files in sorted(by_top.items())
    if (layout := _layout_of(files)) is not None
  ]
  if len(found) == 1:
    _, layout, files = found[0]
    return layout, files
  if found:
    raise DataError(
      f"dataset: archive {path} holds several CIFAR directories ("
      + ", ".join(top or "(top level)" for top, _, _ in found)
      + ")"
    )
  raise DataError(
    f"dataset: archive {path} holds no complete CIFAR python-pickle batches "
    f"(at its top or in one directory); {_CIFAR_EXPECTED}"
  )


def _unpickle(data: bytes, where: str) -> dict:
  """A CIFAR batch or meta pickle as a dict with str keys."""
  try:
    # latin1: the originals were pickled by Python 2, whose byte strings
    # (the keys, the names, the array buffers) map to str byte for byte.
    obj = _BatchUnpickler(io.BytesIO(data), encoding="latin1").load()
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
      f"dataset: cannot read {where}: not a CIFAR python pickle "
      f"({type(e).__name__}: {e})"
    ) from None
  if not isinstance(obj, dict):
    raise DataError(
      f"dataset: {where} holds a {type(obj).__name__}, not the dict of a "
      f"CIFAR python pickle"
    )
  return {
    k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()
  }


def _entry(batch: dict, key: str, where: str, layout: CifarLayout):
  if key not in batch:
    raise DataError(
      f"dataset: {where} has no {key!r} entry (it has: "
      f"{', '.join(sorted(map(str, batch))) or 'nothing'}); expected "
      f"{_cifar_hint(layout)}"
    )
  return batch[key]


def _cifar_batch(batch: dict, where: str, layout: CifarLayout, num_classes):
  """(uint8 NHWC images, int32 labels) of one pickled batch."""
  flat = np.asarray(_entry(batch, "data", where, layout))
  labels = np.asarray(_entry(batch, layout.labels_key, where, layout))
  pixels = 3 * _CIFAR_SIDE * _CIFAR_SIDE
  if flat.dtype != np.uint8 or flat.ndim != 2 or flat.shape[1] != pixels:
    raise DataError(
      f"dataset: {where}: 'data' is {flat.dtype} {list(flat.shape)}; "
      f"expected uint8 [N, {pixels}] (3x32x32 channel-major rows)"
    )
  if labels.shape != (len(flat),) or (
    labels.size and labels.dtype.kind not in "iu"
  ):
    raise DataError(
      f"dataset: {where}: {layout.labels_key!r} is {labels.dtype} "
      f"{list(labels.shape)}; expected {len(flat)} integer labels"
    )
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise DataError(
      f"dataset: {where}: label {int(bad[0])} is outside [0, {num_classes}) "
      f"({num_classes} class names in {layout.meta})"
    )
  images = flat.reshape(-1, 3, _CIFAR_SIDE, _CIFAR_SIDE).transpose(0, 2, 3, 1)
  return images, labels.astype(np.int32)


def _load_cifar(name: str, path: str) -> Dataset:
  start = time.perf_counter()
  path = _check_cifar_path(path)
  if os.path.isdir(path):
    root, layout = _find_cifar_dir(path)
    files = {}
    for f in layout.files:
      where = os.path.join(root, f)
      try:
        with open(where, "rb") as fh:
          files[f] = (where, fh.read())
      except OSError as e:
        raise DataError(
          f"dataset: cannot read {where}: {e.strerror or e}"
        ) from None
  else:
    layout, files = _read_cifar_archive(path)
  meta_where = files[layout.meta][0]
  names = _entry(
    _unpickle(files.pop(layout.meta)[1], meta_where),
    layout.names_key,
    meta_where,
    layout,
  )
  if not isinstance(names, (list, tuple)) or len(names) < 2:
    raise DataError(
      f"dataset: {meta_where}: {layout.names_key!r} must list the class "
      f"names, got {type(names).__name__}"
    )
  class_names = tuple(
    n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names
  )
  splits = {}
  for split, batches in (("train", layout.train), ("test", (layout.test,))):
    parts = []
    for b in batches:
      where, raw = files.pop(b)  # Frees the raw bytes batch by batch.
      parts.append(
        _cifar_batch(_unpickle(raw, where), where, layout, len(class_names))
      )
    splits[split] = tuple(np.concatenate(a) for a in zip(*parts))
  ds = Dataset(name, *splits["train"], *splits["test"], class_names)
  logger.info(
    "dataset %s: read %d train + %d test images (%s, %d classes) from %s "
    "in %.1f s",
    name,
    len(ds.train_images),
    len(ds.test_images),
    layout.title,
    ds.num_classes,
    path,
    time.perf_counter() - start,
  )
  return ds


def _md5(path: str) -> str:
  digest = hashlib.md5()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _cifar_archive(name: str, cache_dir: str | None) -> str:
  """Path of the verified original archive for spec `name` (cifar10 or
  cifar100) in the cache directory, downloaded there first if absent."""
  layout = CIFAR_LAYOUTS[name]
  cache_dir = os.path.abspath(
    os.path.expanduser(cache_dir or _default_cache_dir())
  )
  target = os.path.join(cache_dir, layout.archive)
  if os.path.isfile(target):
    digest = _md5(target)
    if digest != layout.md5:
      raise DataError(
        f"dataset: {name}: {target} has md5 {digest}, not the published "
        f"{layout.md5}; delete it to download it again, or read that copy "
        f"with --config.dataset=cifar:{target}"
      )
    return target
  _download(name, layout, target)
  return target


def _first_hop(url: str) -> tuple[str, int]:
  """(host, port) that a urllib request for `url` connects to first: the
  proxy that urllib takes from the environment, else the URL's host."""
  parts = urllib.parse.urlsplit(url)
  if parts.scheme not in ("http", "https") or not parts.hostname:
    raise DataError(f"{CIFAR_URL_ENV}: {url} is not an http(s) URL")
  proxy = urllib.request.getproxies().get(parts.scheme)
  if proxy and not urllib.request.proxy_bypass(parts.hostname):
    proxy_parts = urllib.parse.urlsplit(
      proxy if "://" in proxy else "http://" + proxy
    )
    if proxy_parts.hostname:
      return proxy_parts.hostname, proxy_parts.port or 80
  default_port = 443 if parts.scheme == "https" else 80
  return parts.hostname, parts.port or default_port


def _download(name: str, layout: CifarLayout, target: str) -> None:
  """Downloads the archive to `target` atomically, checking its md5 first.

  A temp file in the same directory, renamed to `target` only once its md5
  is the published one: `target` is never partial, and a failed download
  leaves nothing behind. Unreachable host: fails after a short probe.
  """
  url = (os.environ.get(CIFAR_URL_ENV) or CIFAR_URL).rstrip("/") + "/"
  url += layout.archive
  alternatives = (
    f"copy {layout.archive} there, or use "
    f"--config.dataset=cifar:<path to {layout.archive} or its extracted "
    f"directory>, folder:<dir or .tar.xz> (an image-folder copy) or "
    f"tfds:{name}"
  )
  address = _first_hop(url)
  if not _can_reach(address, _PROBE_TIMEOUT_S):
    raise DataError(
      f"dataset: {name}: {target} does not exist and cannot be downloaded "
      f"(no network: {address[0]}:{address[1]} unreachable); {alternatives}"
    )
  directory = os.path.dirname(target)
  created = not os.path.isdir(directory)
  tmp = None
  start = time.perf_counter()
  try:
    with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
      logger.info(
        "dataset %s: downloading %s (%s bytes) to %s",
        name,
        url,
        response.headers.get("Content-Length", "?"),
        target,
      )
      os.makedirs(directory, exist_ok=True)
      _remove_stale_tmp(directory)
      fd, tmp = tempfile.mkstemp(
        prefix=_TMP_PREFIX, suffix="-" + layout.archive, dir=directory
      )
      digest = hashlib.md5()
      with os.fdopen(fd, "wb") as f:
        while chunk := response.read(1 << 20):
          digest.update(chunk)
          f.write(chunk)
    if digest.hexdigest() != layout.md5:
      raise DataError(
        f"dataset: {name}: {url} arrived with md5 {digest.hexdigest()}, not "
        f"the published {layout.md5}; nothing was kept; {alternatives}"
      )
    os.replace(tmp, target)
    tmp = None
  except (OSError, http.client.HTTPException) as e:
    raise DataError(
      f"dataset: {name}: cannot download {url} to {target} "
      f"({type(e).__name__}: {e}); {alternatives}"
    ) from None
  finally:
    if tmp is not None:
      with contextlib.suppress(OSError):
        os.remove(tmp)
    if created and not os.path.exists(target):
      with contextlib.suppress(OSError):
        os.rmdir(directory)  # Only if empty: nothing of ours is left.
  logger.info(
    "dataset %s: downloaded and verified %s in %.1f s",
    name,
    target,
    time.perf_counter() - start,
  )


# --- tfds -------------------------------------------------------------------


def _tfds_data_dir(data_dir: str | None) -> str:
  d = (
    data_dir
    or os.environ.get("TFDS_DATA_DIR")
    or os.path.join("~", "tensorflow_datasets")
  )
  return storage.absolute(os.path.expanduser(d))  # gs://... as it is.


def _tfds_prepared(data_dir: str, name: str) -> bool:
  if storage.is_remote(data_dir):
    from etils import epath  # pylint: disable=g-import-not-at-top

    try:
      return any(epath.Path(data_dir).glob(f"{name}/*/dataset_info.json"))
    except Exception as e:  # pylint: disable=broad-except
      text = str(e).strip().splitlines()[0] if str(e).strip() else ""
      raise DataError(
        f"dataset: cannot list {data_dir} ({type(e).__name__}: {text})"
      ) from None
  return bool(
    glob.glob(
      os.path.join(glob.escape(data_dir), name, "*", "dataset_info.json")
    )
  )


def _can_reach(address: tuple[str, int], timeout: float) -> bool:
  """Whether a TCP connection to `address` opens within ~timeout seconds.

  Runs in a daemon thread so that a slow DNS lookup (not covered by the
  socket timeout) cannot stall the caller either.
  """
  result = []

  def probe():
    try:
      socket.create_connection(address, timeout=timeout).close()
      result.append(True)
    except OSError:
      result.append(False)

  thread = threading.Thread(
    target=probe, name="superconv-net-probe", daemon=True
  )
  thread.start()
  thread.join(timeout + 2.0)
  return bool(result and result[0])


def _load_tfds(
  spec: str, name: str, data_dir: str | None, download: bool
) -> Dataset:
  start = time.perf_counter()
  # The package first: without it nothing else about tfds matters.
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
      f"dataset: {spec} needs tensorflow_datasets, which is not installed "
      f"({e}); pip install 'superconv[tfds]', or use "
      f"--config.dataset={name} (the original archive, no TensorFlow), "
      f"cifar:<path>, folder:<dir or .tar.xz> or synthetic"
    ) from None
  data_dir = _tfds_data_dir(data_dir)
  prepared = _tfds_prepared(data_dir, name)
  folder_hint = (
    f"prepare it there, set --config.data_dir / TFDS_DATA_DIR, "
    f"or use --config.dataset={name} / cifar:<path> (the original "
    f"python-pickle archive) or folder:<dir or .tar.xz> (an image-folder "
    f"copy)"
  )
  if not prepared:
    if not download:
      raise DataError(
        f"dataset: {spec} is not prepared in {data_dir} and "
        f"downloading is off (tfds_download=False); "
        f"{folder_hint}"
      )
    if not _can_reach(_DOWNLOAD_HOST, _PROBE_TIMEOUT_S):
      raise DataError(
        f"dataset: {spec} is not prepared in {data_dir} and "
        f"cannot be downloaded (no network: "
        f"{_DOWNLOAD_HOST[0]}:{_DOWNLOAD_HOST[1]} unreachable); "
        f"{folder_hint}"
      )
  try:
    # Prepared data are read with download=False: tfds never touches the
    # network then, so a load cannot hang.
    (train, test), info = tfds.load(
      name,
      split=["train", "test"],
      batch_size=-1,
      data_dir=data_dir,
      download=download and not prepared,
      with_info=True,
    )
    train, test = tfds.as_numpy(train), tfds.as_numpy(test)
    class_names = tuple(info.features["label"].names)
  except Exception as e:  # pylint: disable=broad-except
    message = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise DataError(
      f"dataset: {spec} failed to load from {data_dir}: "
      f"{type(e).__name__}: {message}; {folder_hint}"
    ) from e
  arrays = []
  for split in (train, test):
    arrays.append(np.asarray(split["image"], dtype=np.uint8))
    arrays.append(np.asarray(split["label"]).astype(np.int32))
  ds = Dataset(spec, *arrays, class_names)
  logger.info(
    "dataset %s: loaded %d train + %d test images from tfds in %s in %.1f s",
    spec,
    len(ds.train_images),
    len(ds.test_images),
    data_dir,
    time.perf_counter() - start,
  )
  return ds


# ============================================================================
# Validation split (tuning never looks at the test set)
# ============================================================================


def validation_indices(
  num_train: int, size: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """(kept train indices, validation indices) of a train split of num_train.

  The validation indices are the last `size` entries of
  `np.random.default_rng(seed).permutation(num_train)`; the kept training
  indices are the rest, in their original order. Both depend only on
  (num_train, size, seed), never on config.seed, so every candidate of a
  tuning grid and every seed sees the same split.
  """
  if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
    raise ValueError(f"validation_size: must be an integer, got {size!r}")
  if not 0 < size < num_train:
    raise ValueError(
      f"validation_size: must be in [1, {num_train - 1}] for"
      f" a train split of {num_train} images, got {size}"
    )
  permutation = np.random.default_rng(seed).permutation(num_train)
  cut = num_train - int(size)
  return np.sort(permutation[:cut]), permutation[cut:]


def split_validation(dataset: Dataset, size: int, seed: int = 0) -> Dataset:
  """The dataset with `size` train images held out as its evaluation set.

  The returned Dataset trains on the remaining train images and its
  `test_*` arrays are the held-out images: a run built on it never trains
  on what it evaluates on and never sees a test image. Per-channel
  normalization statistics (computed from `train_images`) follow the
  reduced train split. size = 0 returns `dataset` itself.
  """
  if size == 0:
    return dataset
  keep, held_out = validation_indices(len(dataset.train_images), size, seed)
  return dataclasses.replace(
    dataset,
    name=f"{dataset.name}:validation={size}",
    train_images=dataset.train_images[keep],
    train_labels=dataset.train_labels[keep],
    test_images=dataset.train_images[held_out],
    test_labels=dataset.train_labels[held_out],
  )


def from_config(config) -> Dataset:
  """The data set a config trains and evaluates on (its data keys).

  With config.validation_size > 0, that many train images (a fixed split,
  `split_validation`) are held out and replace the test set, so tuning
  never looks at test images.
  """
  dataset = load(
    config.dataset,
    data_dir=config.data_dir or None,
    cache_dir=config.cache_dir or None,
    synthetic_train_size=config.synthetic_train_size,
    synthetic_test_size=config.synthetic_test_size,
    download=config.tfds_download,
  )
  if config.get("validation_size", 0):
    dataset = split_validation(dataset, config.validation_size)
  return dataset
