"""Data sources: whole CIFAR-style data sets as uint8 NHWC arrays in memory.

A data set is named by a spec string (the `dataset` config key):

  synthetic          Deterministic random 32x32x3 images whose classes differ
                     in mean colour and coarse pattern (learnable); for tests.
  folder:<path>      An image folder `train/<class>/*`, `test/<class>/*`, as a
                     directory or a .tar / .tar.gz / .tgz / .tar.xz archive
                     (optionally wrapped in one top-level directory). Archives
                     are streamed, never extracted. Decoded arrays are cached
                     as .npy files (see `load`), so only the first load decodes.
  tfds:cifar10       Through tensorflow_datasets (the optional `tfds` extra),
  tfds:cifar100      imported only for these specs.

`check_spec` validates a spec cheaply before anything is loaded; `load` returns
a `Dataset`. Every user-facing failure is a one-line `DataError` that names the
config key or path at fault and what would be valid.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
import dataclasses
import functools
import glob
import hashlib
import io
import json
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import threading
import time

import numpy as np
from PIL import Image

from superconv import storage

logger = logging.getLogger("superconv.data")

TFDS_NAMES = ("cifar10", "cifar100")
VALID_SPECS = (
  "tfds:cifar10, tfds:cifar100, folder:<dir or .tar[.gz|.xz]>, synthetic"
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
  if spec.startswith("tfds:"):
    name = spec[len("tfds:") :].strip()
    if name not in TFDS_NAMES:
      raise DataError(
        f"dataset: unknown tfds data set {name!r}; valid: "
        f"{', '.join('tfds:' + n for n in TFDS_NAMES)} (or "
        f"folder:<dir or .tar[.gz|.xz]>, synthetic)"
      )
    return "tfds", name
  if spec.startswith("folder:"):
    path = spec[len("folder:") :].strip()
    if not path:
      raise DataError(
        "dataset: folder: needs a path, e.g. "
        "folder:/data/cifar10 or folder:/data/cifar10.tar.xz"
      )
    return "folder", path
  raise DataError(f"dataset: unknown {spec!r}; valid: {VALID_SPECS}")


def _is_archive_name(path: str) -> bool:
  return path.lower().endswith(ARCHIVE_SUFFIXES)


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


def _check_folder_path(path: str) -> str:
  """Absolute path of a valid folder source; raises DataError otherwise."""
  full = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(full):
    raise DataError(
      f"dataset: folder path {full} does not exist; expected a "
      f"directory or a .tar/.tar.gz/.tgz/.tar.xz file in "
      f"image-folder layout (train/<class>/*, test/<class>/*)"
    )
  if os.path.isdir(full):
    _find_folder_root(full)
    return full
  if not os.path.isfile(full) or not _is_archive_name(full):
    raise DataError(
      f"dataset: folder path {full} is neither a directory nor "
      f"a .tar/.tar.gz/.tgz/.tar.xz archive"
    )
  if not os.access(full, os.R_OK):
    raise DataError(f"dataset: folder archive {full} is not readable")
  return full


def check_spec(spec: str, *, data_dir: str | None = None) -> None:
  """Cheap validation BEFORE anything is loaded or written.

  Checks that the kind is known ('tfds:cifar10', 'tfds:cifar100',
  'folder:<path>', 'synthetic'); for folders, that the path exists and is a
  directory in image-folder layout or a .tar/.tar.gz/.tgz/.tar.xz file; for
  tfds, that `data_dir`, when given and existing, is a directory. Raises
  DataError, e.g. "dataset: unknown 'foo'; valid: tfds:cifar10, ...".
  """
  kind, arg = _parse(spec)
  if kind == "folder":
    _check_folder_path(arg)
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
    spec: 'tfds:cifar10' | 'tfds:cifar100' | 'folder:<path>' | 'synthetic'.
    data_dir: TFDS data directory (tfds only; None or "" = $TFDS_DATA_DIR,
      else ~/tensorflow_datasets).
    cache_dir: where decoded image folders are cached (folder only; None or
      "" = $SUPERCONV_CACHE_DIR, else ~/.cache/superconv).
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
  now = time.time()
  for path in glob.glob(os.path.join(cache_dir, _TMP_PREFIX + "*")):
    try:
      if now - os.stat(path).st_mtime > _STALE_TMP_S:
        shutil.rmtree(path, ignore_errors=True)
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
  data_dir = _tfds_data_dir(data_dir)
  prepared = _tfds_prepared(data_dir, name)
  folder_hint = (
    f"prepare it there, set --config.data_dir / TFDS_DATA_DIR, "
    f"or use --config.dataset=folder:<dir or .tar.xz> with an "
    f"image-folder copy of {name.upper().replace('CIFAR', 'CIFAR-')}"
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
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(
      f"dataset: {spec} needs tensorflow_datasets, which is not "
      f"installed ({e}); pip install 'superconv[tfds]', or use "
      f"--config.dataset=folder:<dir or .tar.xz> or "
      f"--config.dataset=synthetic"
    ) from None
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
