"""Test set-up: 8 fake CPU devices (before any JAX call) and shared synthetic-data helpers."""
import atexit
import os
import pathlib
import shutil
import tempfile

os.environ.setdefault('XLA_FLAGS', '')
import jax  # pylint: disable=g-import-not-at-top

jax.config.update('jax_num_cpu_devices', 8)
jax.config.update('jax_platforms', 'cpu')
if os.environ.get('MEDUNLEARN_TEST_COMPILE_CACHE', '1') == '1':
  # Tests build fresh jitted closures, so the same program is traced and compiled again and again; a
  # compilation cache private to this process (and the subprocesses it starts; one per pytest-xdist
  # worker, which never race on an entry) compiles each distinct program once. Removed at exit.
  _cache = tempfile.mkdtemp(prefix='medunlearn_jax_test_cache_')
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _cache
  jax.config.update('jax_compilation_cache_dir', _cache)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
  jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)

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


def write_medmnist_npz(path: pathlib.Path, *, counts=(240, 40, 40), size=28, channels=1, classes=2,
                       seed=0) -> None:
  """A learnable synthetic file in the official MedMNIST layout (uint8 images, labels of shape (N, 1))."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in zip(('train', 'val', 'test'), counts):
    labels = rng.integers(0, classes, n)
    shape = (n, size, size) + ((channels,) if channels == 3 else ())
    noise = rng.normal(0, 25, shape)
    shift = (60 + 120 * labels / max(classes - 1, 1)).reshape((n,) + (1,) * (len(shape) - 1))
    arrays[f'{split}_images'] = np.clip(noise + shift, 0, 255).astype(np.uint8)
    arrays[f'{split}_labels'] = labels.reshape(n, 1).astype(np.uint8)
  np.savez_compressed(path, **{k: arrays[k] for k in (
      'train_images', 'val_images', 'test_images', 'train_labels', 'val_labels', 'test_labels')})


@pytest.fixture
def synthetic_medmnist(tmp_path, monkeypatch) -> pathlib.Path:
  """A synthetic `pneumoniamnist.npz` under a raw-data root, with env vars pointing at it (no network)."""
  from medunlearn_jax.data import download, medmnist, paths  # pylint: disable=g-import-not-at-top
  raw = tmp_path / 'raw'
  (raw / 'medmnist').mkdir(parents=True)
  write_medmnist_npz(raw / 'medmnist' / 'pneumoniamnist.npz')
  monkeypatch.setitem(medmnist.INFO['pneumoniamnist'].md5, 28,
                      download.md5_of(raw / 'medmnist' / 'pneumoniamnist.npz'))
  monkeypatch.setenv(paths.RAW_DIR_ENV, str(raw))
  monkeypatch.setenv(paths.TFDS_DIR_ENV, str(tmp_path / 'tfds'))
  monkeypatch.setenv(medmnist.URL_ENV, 'http://127.0.0.1:9/')  # Never reach the internet from tests.
  return raw
