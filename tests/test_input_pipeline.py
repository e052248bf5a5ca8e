"""On-device batching and augmentation: a pure function of (seed, step)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from superconv import input_pipeline

N, H, W, C = 40, 8, 8, 3


def _data():
  rng = np.random.default_rng(0)
  images = rng.integers(1, 256, size=(N, H, W, C), dtype=np.uint8)
  labels = np.arange(N, dtype=np.int32)  # label = index: shows which image.
  return images, labels


def _aug(**kw):
  settings = dict(
    global_batch=8,
    steps_per_epoch=N // 8,
    mean=(0.0,) * C,
    std=(1.0,) * C,
    crop_padding=0,
    random_flip=False,
    dtype="float32",
  )
  settings.update(kw)
  return input_pipeline.Augmentation(**settings)


def _batch(step, aug, seed=0, shard_index=0, num_shards=1):
  images, labels = _data()
  fn = jax.jit(
    lambda s, i: input_pipeline.train_batch(
      jnp.asarray(images),
      jnp.asarray(labels),
      s,
      seed=seed,
      aug=aug,
      shard_index=i,
      num_shards=num_shards,
    )
  )
  x, y = fn(step, shard_index)
  return np.asarray(x), np.asarray(y)


def test_each_epoch_is_a_permutation_and_epochs_differ():
  aug = _aug()
  epoch0 = np.concatenate([_batch(s, aug)[1] for s in range(5)])
  epoch1 = np.concatenate([_batch(s, aug)[1] for s in range(5, 10)])
  assert sorted(epoch0) == list(range(N))
  assert sorted(epoch1) == list(range(N))
  assert not np.array_equal(epoch0, epoch1)


def test_batch_is_a_pure_function_of_seed_and_step():
  aug = _aug(crop_padding=4, random_flip=True)
  x1, y1 = _batch(7, aug, seed=3)
  x2, y2 = _batch(7, aug, seed=3)
  np.testing.assert_array_equal(x1, x2)
  np.testing.assert_array_equal(y1, y2)
  x3, _ = _batch(7, aug, seed=4)
  assert not np.array_equal(x1, x3)


def test_shards_concatenate_to_the_global_batch():
  aug = _aug(crop_padding=4, random_flip=True)
  x_all, y_all = _batch(3, aug)
  parts = [_batch(3, aug, shard_index=i, num_shards=4) for i in range(4)]
  np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x_all)
  np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y_all)


def test_crop_pads_with_zeros_and_flip_mirrors():
  images, _ = _data()
  aug = _aug(crop_padding=2, random_flip=True)
  x, y = _batch(0, aug)
  saw_padding = saw_flip = False
  for img, idx in zip(x, y):
    src = images[idx].astype(np.float32) / 255.0
    found = False
    for flipped in (False, True):
      ref = src[:, ::-1] if flipped else src
      padded = np.pad(ref, ((2, 2), (2, 2), (0, 0)))
      for dy in range(5):
        for dx in range(5):
          if np.allclose(padded[dy : dy + H, dx : dx + W], img):
            found = True
            saw_flip |= flipped
            saw_padding |= (dy, dx) != (2, 2)
    assert found, "augmented image is not a crop of the padded original"
  assert saw_padding and saw_flip


def test_normalize_uses_channel_statistics():
  x = jnp.full((1, 2, 2, 3), 255, jnp.uint8)
  out = input_pipeline.normalize(
    x, (0.5, 0.25, 0.0), (0.5, 0.25, 2.0), jnp.bfloat16
  )
  assert out.dtype == jnp.bfloat16
  np.testing.assert_allclose(
    np.asarray(out[0, 0, 0], np.float32), [1.0, 3.0, 0.5]
  )


@pytest.mark.parametrize("n,batch,devices", [(10, 4, 2), (12, 4, 4), (3, 8, 1)])
def test_eval_batches_cover_every_image_once(n, batch, devices):
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
  labels = np.arange(n, dtype=np.int32)
  imgs, labs, mask = input_pipeline.eval_batches(
    images, labels, global_batch=batch, num_devices=devices
  )
  assert imgs.shape[:3] == (devices, -(-n // batch), batch // devices)
  real = labs[mask == 1]
  assert sorted(real.tolist()) == list(range(n))
  assert mask.sum() == n
