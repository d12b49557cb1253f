"""Test set-up: 8 fake CPU devices (before any JAX call) and shared synthetic-data helpers."""
import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '')
import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_platforms', 'cpu')

import numpy as np  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from medunlearn_jax.data import dataset as ds_lib  # pylint: disable=g-import-not-at-top

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


def synthetic_split(n: int, *, size: int = 8, channels: int = 1, classes: int = 2, seed: int = 0,
                    id_offset: int = 0, name: str = 'train') -> ds_lib.Split:
  """A learnable toy split: the class shifts the mean brightness of the image."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, classes, n)
  base = rng.normal(0, 30, (n, size, size, channels)) + 60 + 120 * labels[:, None, None, None] / max(classes - 1, 1)
  images = np.clip(base, 0, 255).astype(np.uint8)
  sex = np.where(rng.random(n) < 0.5, 'F', 'M')
  return ds_lib.Split(name, np.arange(id_offset, id_offset + n, dtype=np.int64), images, labels.astype(np.int64),
                      {'sex': sex})


@pytest.fixture
def shared_data() -> pathlib.Path:
  if not SHARED_DATA.is_dir():
    pytest.skip(f'real data folder {SHARED_DATA} is absent')
  return SHARED_DATA
