"""From host arrays to augmented device batches, without a per-step copy.

The whole data set is copied once to every local device (CIFAR is 150 MB of
uint8). Each training step then selects and augments its own batch on
device, inside the pmapped step, as a pure function of (seed, step):

  epoch     = step // steps_per_epoch
  order     = permutation(key(seed, epoch), num_train)        # new each epoch
  example j = order[(step % steps_per_epoch) * global_batch + j]
  crop/flip of example j drawn from key(seed, step, j)

where j is the example's position in the GLOBAL batch, so the batch and its
augmentation do not depend on how many devices share it, and a resumed run
sees exactly the data an uninterrupted one would have seen.

With several processes (hosts), each holds the whole data set in host
memory and copies it to its own local devices; the pmap axis index is
global (process-major), so every device still picks its own slice of the
global batch, and no data moves between hosts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

AXIS = "batch"  # The pmap axis name used throughout.

# Independent random streams derived from the seed.
_ORDER_STREAM = 1
_AUGMENT_STREAM = 2


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Static settings of the train-time input function."""

  global_batch: int
  steps_per_epoch: int
  mean: tuple[float, ...]  # Per-channel mean of the train split, [0, 1] units.
  std: tuple[float, ...]  # Per-channel std of the train split.
  crop_padding: int = 4
  random_flip: bool = True
  dtype: str = "float32"


def normalize(images: jax.Array, mean, std, dtype) -> jax.Array:
  """uint8 NHWC -> (x / 255 - mean) / std in `dtype` (computed in float32,
  or float64 for float64)."""
  work = jnp.promote_types(dtype, jnp.float32)
  x = images.astype(work) / 255.0
  x = (x - jnp.asarray(mean, work)) / jnp.asarray(std, work)
  return x.astype(dtype)


def _crop_and_flip(key, image, padding: int, flip: bool):
  """Random crop of a zero-padded image and random horizontal flip."""
  h, w, c = image.shape
  crop_key, flip_key = jax.random.split(key)
  if padding > 0:
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)))
    dy, dx = jax.random.randint(crop_key, (2,), 0, 2 * padding + 1)
    image = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))
  if flip:
    image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
  return image


def train_batch(
  images,
  labels,
  step,
  *,
  seed: int,
  aug: Augmentation,
  shard_index,
  num_shards: int,
):
  """This shard's part of the global batch of `step`, augmented.

  Args:
    images: uint8 [N, H, W, C], the whole train split (on this device).
    labels: int32 [N].
    step: the global step (traced).
    seed: the run's seed.
    aug: static augmentation settings.
    shard_index: which slice of the global batch (traced, e.g. the pmap
      axis index).
    num_shards: how many slices the global batch is split into.
  Returns:
    (x, y): normalized images in aug.dtype and labels for this shard.
  """
  local_batch = aug.global_batch // num_shards
  base = jax.random.key(seed)
  epoch = step // aug.steps_per_epoch
  order = jax.random.permutation(
    jax.random.fold_in(jax.random.fold_in(base, _ORDER_STREAM), epoch),
    images.shape[0],
  )
  first = (step % aug.steps_per_epoch) * aug.global_batch
  first = first + shard_index * local_batch
  idx = jax.lax.dynamic_slice(order, (first,), (local_batch,))
  x, y = images[idx], labels[idx]

  step_key = jax.random.fold_in(jax.random.fold_in(base, _AUGMENT_STREAM), step)
  positions = shard_index * local_batch + jnp.arange(local_batch)
  keys = jax.vmap(jax.random.fold_in, (None, 0))(step_key, positions)
  x = jax.vmap(_crop_and_flip, (0, 0, None, None))(
    keys, x, aug.crop_padding, aug.random_flip
  )
  return normalize(x, aug.mean, aug.std, aug.dtype), y


# --- Placing host arrays on the local devices (pmap layout) ----------------


def _pmap_sharding(ndim: int):
  devices = jax.local_devices()
  mesh = jax.sharding.Mesh(np.array(devices), (AXIS,))
  spec = jax.sharding.PartitionSpec(AXIS, *([None] * (ndim - 1)))
  return devices, jax.sharding.NamedSharding(mesh, spec)


def replicate(x: np.ndarray) -> jax.Array:
  """[...] -> [local_devices, ...], one copy per device, no host stacking."""
  x = np.asarray(x)
  devices, sharding = _pmap_sharding(x.ndim + 1)
  shards = [jax.device_put(x[None], d) for d in devices]
  return jax.make_array_from_single_device_arrays(
    (len(devices),) + x.shape, sharding, shards
  )


def replicate_tree(tree):
  """`replicate` on every leaf (e.g. a train state).

  Unlike flax.jax_utils.replicate, whose arrays live on a mesh with another
  axis name, the arrays then have the sharding of the pmapped step's output,
  so the second step does not trace and compile the step again.
  """
  return jax.tree.map(lambda x: replicate(np.asarray(x)), tree)


def shard(x: np.ndarray) -> jax.Array:
  """[local_devices, ...] -> array whose i-th row lives on local device i."""
  x = np.asarray(x)
  devices, sharding = _pmap_sharding(x.ndim)
  if x.shape[0] != len(devices):
    raise ValueError(f"leading axis {x.shape[0]} != {len(devices)} devices")
  shards = [jax.device_put(x[i : i + 1], d) for i, d in enumerate(devices)]
  return jax.make_array_from_single_device_arrays(x.shape, sharding, shards)


def eval_batches(
  images: np.ndarray, labels: np.ndarray, *, global_batch: int, num_devices: int
):
  """Pads the test set to whole batches and lays it out per device.

  Returns host arrays images [D, B, L, H, W, C], labels [D, B, L] and
  mask [D, B, L] (1 for a real image, 0 for padding), where D is the device
  count, B the number of batches and L the per-device batch. Every image
  appears exactly once with mask 1.
  """
  n = images.shape[0]
  num_batches = -(-n // global_batch)
  padded = num_batches * global_batch
  pad = padded - n
  mask = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
  images = np.concatenate(
    [images, np.zeros((pad,) + images.shape[1:], images.dtype)]
  )
  labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
  local = global_batch // num_devices

  def layout(a):
    a = a.reshape((num_batches, num_devices, local) + a.shape[1:])
    return np.swapaxes(a, 0, 1)

  return layout(images), layout(labels), layout(mask)
