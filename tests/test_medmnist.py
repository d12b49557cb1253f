"""MedMNIST TFDS builder and verified download helpers, on tiny synthetic files in the official format.

Downloads are served offline by an http.server thread on 127.0.0.1. One test builds the real
pneumoniamnist.npz from the shared data folder when that folder exists.
"""
from __future__ import annotations

import functools
import http.server
import pathlib
import socket
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from medunlearn_jax import errors
from medunlearn_jax.data import download
from medunlearn_jax.data import medmnist
from medunlearn_jax.data import paths

SHARED_MEDMNIST = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'medmnist'


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path):
  monkeypatch.delenv(paths.RAW_DIR_ENV, raising=False)
  monkeypatch.delenv(medmnist.URL_ENV, raising=False)
  monkeypatch.setenv(paths.TFDS_DIR_ENV, str(tmp_path / 'default_tfds'))


def write_npz(path: pathlib.Path, *, counts=(6, 3, 4), size=28, channels=1, num_classes=2, multi_label=0,
              seed=0) -> dict[str, np.ndarray]:
  """Writes a file in the exact official layout (key order, uint8, labels (N, 1) or (N, L))."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for split, n in zip(medmnist.SPLITS, counts):
    shape = (n, size, size) if channels == 1 else (n, size, size, channels)
    arrays[f'{split}_images'] = rng.integers(0, 256, shape, dtype=np.uint8)
  for split, n in zip(medmnist.SPLITS, counts):
    if multi_label:
      arrays[f'{split}_labels'] = rng.integers(0, 2, (n, multi_label), dtype=np.uint8)
    else:
      arrays[f'{split}_labels'] = (np.arange(n) % num_classes).astype(np.uint8).reshape(n, 1)
  path.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(path, **arrays)
  return arrays


def set_md5(monkeypatch, name: str, size: int, md5: str | None) -> None:
  monkeypatch.setitem(medmnist.INFO[name].md5, size, md5)


def assert_nothing_built(data_dir: pathlib.Path) -> None:
  assert not list(data_dir.rglob('incomplete*')), list(data_dir.rglob('*'))
  assert not (data_dir / 'medmnist').exists(), list(data_dir.rglob('*'))


def read_all(source) -> list[dict]:
  return [source[i] for i in range(len(source))]


# ---------------------------------------------------------------------------------------------------------
# Build and read back.

def test_build_and_read_back_grayscale(tmp_path, monkeypatch):
  raw, data_dir = tmp_path / 'raw', tmp_path / 'tfds'
  arrays = write_npz(raw / 'pneumoniamnist.npz', counts=(6, 3, 4))
  set_md5(monkeypatch, 'pneumoniamnist', 28, download.md5_of(raw / 'pneumoniamnist.npz'))

  builder = medmnist.prepare('pneumoniamnist', 28, raw_dir=raw, data_dir=data_dir, download=False)
  version_dir = data_dir / 'medmnist' / 'pneumoniamnist_28' / '1.0.0'
  assert (version_dir / 'dataset_info.json').is_file()
  assert builder.info.features['image'].shape == (28, 28, 1)

  sources = tfds.data_source('medmnist/pneumoniamnist_28', data_dir=data_dir)
  all_ids, offset = [], 0
  for split in medmnist.SPLITS:
    records = read_all(sources[split])
    n = len(arrays[f'{split}_labels'])
    assert len(records) == n
    ids = [int(r['id']) for r in records]
    assert ids == list(range(offset, offset + n))  # stored in id order
    for i, r in enumerate(records):
      assert r['image'].shape == (28, 28, 1) and r['image'].dtype == np.uint8
      np.testing.assert_array_equal(r['image'][..., 0], arrays[f'{split}_images'][i])
      assert int(r['label']) == int(arrays[f'{split}_labels'][i, 0])
    all_ids += ids
    offset += n
  assert len(set(all_ids)) == len(all_ids) == 13

  # The plain TFDS directory reader sees the same data, and a second prepare reuses the build.
  from_dir = tfds.builder_from_directory(str(version_dir)).as_data_source()
  assert {k: len(v) for k, v in from_dir.items()} == {'train': 6, 'val': 3, 'test': 4}
  (raw / 'pneumoniamnist.npz').unlink()
  again = medmnist.prepare('pneumoniamnist', 28, raw_dir=raw, data_dir=data_dir, download=False)
  assert len(again.as_data_source()['test']) == 4


def test_rgb_dataset_at_64px(tmp_path, monkeypatch):
  raw, data_dir = tmp_path / 'raw', tmp_path / 'tfds'
  arrays = write_npz(raw / 'retinamnist_64.npz', counts=(3, 2, 2), size=64, channels=3, num_classes=5)
  set_md5(monkeypatch, 'retinamnist', 64, download.md5_of(raw / 'retinamnist_64.npz'))

  builder = medmnist.prepare('retinamnist', 64, raw_dir=raw, data_dir=data_dir, download=False)
  test = read_all(builder.as_data_source()['test'])
  assert [int(r['id']) for r in test] == [5, 6]
  np.testing.assert_array_equal(np.stack([r['image'] for r in test]), arrays['test_images'])
  assert [int(r['label']) for r in test] == arrays['test_labels'][:, 0].tolist()

  info = medmnist.dataset_info('retinamnist', 64)
  assert info.image_shape == (64, 64, 3) and info.num_classes == 5 and info.task == 'ordinal'


def test_multi_label_chestmnist(tmp_path, monkeypatch):
  raw, data_dir = tmp_path / 'raw', tmp_path / 'tfds'
  arrays = write_npz(raw / 'chestmnist.npz', counts=(4, 2, 3), multi_label=14)
  set_md5(monkeypatch, 'chestmnist', 28, download.md5_of(raw / 'chestmnist.npz'))

  builder = medmnist.prepare('chestmnist', 28, raw_dir=raw, data_dir=data_dir, download=False)
  assert builder.info.features['label'].shape == (14,)
  val = read_all(builder.as_data_source()['val'])
  labels = np.stack([r['label'] for r in val])
  assert labels.dtype == np.int64 and labels.shape == (2, 14)
  np.testing.assert_array_equal(labels, arrays['val_labels'])
  assert [int(r['id']) for r in val] == [4, 5]

  info = medmnist.dataset_info('chestmnist', 28)
  assert info.task == 'multi-label' and info.num_classes == 14 and info.class_names[-1] == 'hernia'


def test_info_table_is_complete():
  assert set(medmnist.DATASETS) == {
      'pathmnist', 'chestmnist', 'dermamnist', 'octmnist', 'pneumoniamnist', 'retinamnist', 'breastmnist',
      'bloodmnist', 'tissuemnist', 'organamnist', 'organcmnist', 'organsmnist'}
  for info in medmnist.INFO.values():
    assert info.n_channels in (1, 3) and info.num_classes >= 2
    assert set(info.md5) == set(medmnist.SIZES)
    assert all(m is None or (len(m) == 32 and int(m, 16) >= 0) for m in info.md5.values())
  assert medmnist.file_name('breastmnist', 28) == 'breastmnist.npz'
  assert medmnist.file_name('breastmnist', 224) == 'breastmnist_224.npz'
  assert medmnist.file_url('breastmnist_224.npz') == (
      'https://zenodo.org/records/10519652/files/breastmnist_224.npz?download=1')
  assert len(medmnist.MedMNIST.BUILDER_CONFIGS) == 12 * 4


# ---------------------------------------------------------------------------------------------------------
# Bad input.

def test_wrong_md5_is_data_error_and_leaves_nothing(tmp_path, monkeypatch):
  raw, data_dir = tmp_path / 'raw', tmp_path / 'tfds'
  write_npz(raw / 'pneumoniamnist.npz')
  set_md5(monkeypatch, 'pneumoniamnist', 28, '0' * 32)
  with pytest.raises(errors.DataError, match='corrupt') as e:
    medmnist.prepare('pneumoniamnist', 28, raw_dir=raw, data_dir=data_dir, download=False)
  assert '0' * 32 in str(e.value) and download.md5_of(raw / 'pneumoniamnist.npz') in str(e.value)
  assert '\n' not in str(e.value)
  assert_nothing_built(data_dir)


def test_missing_file_without_download(tmp_path):
  raw, data_dir = tmp_path / 'raw', tmp_path / 'tfds'
  with pytest.raises(errors.DataError, match=paths.RAW_DIR_ENV) as e:
    medmnist.prepare('breastmnist', 28, raw_dir=raw, data_dir=data_dir, download=False)
  assert str(raw / 'breastmnist.npz') in str(e.value)
  assert_nothing_built(data_dir)


def test_unknown_dataset_or_size_is_user_error(tmp_path):
  with pytest.raises(errors.UserError, match='pneumoniamnist') as e:
    medmnist.prepare('mnist', 28, data_dir=tmp_path)
  assert not isinstance(e.value, errors.DataError)
  with pytest.raises(errors.UserError, match='28, 64, 128, 224'):
    medmnist.prepare('pneumoniamnist', 32, data_dir=tmp_path)
  with pytest.raises(errors.UserError):
    medmnist.dataset_info('organmnist3d', 28)
  assert not list(tmp_path.iterdir())


def test_wrong_shape_is_data_error(tmp_path, monkeypatch):
  raw, data_dir = tmp_path / 'raw', tmp_path / 'tfds'
  write_npz(raw / 'bloodmnist.npz', channels=1)  # BloodMNIST is RGB
  set_md5(monkeypatch, 'bloodmnist', 28, download.md5_of(raw / 'bloodmnist.npz'))
  with pytest.raises(errors.DataError, match=r'shape \(6, 28, 28\), expected \(N, 28, 28, 3\)'):
    medmnist.prepare('bloodmnist', 28, raw_dir=raw, data_dir=data_dir, download=False)
  assert_nothing_built(data_dir)


def test_label_out_of_range_is_data_error(tmp_path, monkeypatch):
  raw, data_dir = tmp_path / 'raw', tmp_path / 'tfds'
  write_npz(raw / 'breastmnist.npz', num_classes=3)  # BreastMNIST has 2 classes
  set_md5(monkeypatch, 'breastmnist', 28, download.md5_of(raw / 'breastmnist.npz'))
  with pytest.raises(errors.DataError, match='class indices 0..1'):
    medmnist.prepare('breastmnist', 28, raw_dir=raw, data_dir=data_dir, download=False)
  assert_nothing_built(data_dir)


def test_malformed_archive_is_data_error(tmp_path, monkeypatch):
  raw, data_dir = tmp_path / 'raw', tmp_path / 'tfds'
  raw.mkdir()
  (raw / 'breastmnist.npz').write_bytes(b'not a zip archive')
  set_md5(monkeypatch, 'breastmnist', 28, download.md5_of(raw / 'breastmnist.npz'))
  with pytest.raises(errors.DataError, match='not a readable .npz'):
    medmnist.prepare('breastmnist', 28, raw_dir=raw, data_dir=data_dir, download=False)
  arrays = write_npz(raw / 'breastmnist.npz')
  del arrays['val_labels']
  np.savez_compressed(raw / 'breastmnist.npz', **arrays)
  set_md5(monkeypatch, 'breastmnist', 28, download.md5_of(raw / 'breastmnist.npz'))
  with pytest.raises(errors.DataError, match='lacks the key.*val_labels'):
    medmnist.prepare('breastmnist', 28, raw_dir=raw, data_dir=data_dir, download=False)
  assert_nothing_built(data_dir)


def test_unknown_official_md5(tmp_path, monkeypatch):
  raw, data_dir = tmp_path / 'raw', tmp_path / 'tfds'
  set_md5(monkeypatch, 'octmnist', 128, None)
  monkeypatch.setenv(medmnist.URL_ENV, 'http://127.0.0.1:9')  # never contacted
  no_checksum = 'no official checksum known for octmnist_128.npz.*allow_unverified'
  with pytest.raises(errors.DataError, match=no_checksum):
    medmnist.prepare('octmnist', 128, raw_dir=raw, data_dir=data_dir, download=True)
  write_npz(raw / 'octmnist_128.npz', counts=(2, 1, 1), size=128, num_classes=4)
  with pytest.raises(errors.DataError, match='allow_unverified=True'):
    medmnist.prepare('octmnist', 128, raw_dir=raw, data_dir=data_dir)
  assert_nothing_built(data_dir)
  builder = medmnist.prepare('octmnist', 128, raw_dir=raw, data_dir=data_dir, allow_unverified=True)
  assert len(builder.as_data_source()['train']) == 2


# ---------------------------------------------------------------------------------------------------------
# Downloads, served offline from 127.0.0.1.

class _QuietHandler(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


@pytest.fixture
def served(tmp_path, monkeypatch):
  """A folder served over http on 127.0.0.1, set as the MedMNIST download base URL."""
  folder = tmp_path / 'served'
  folder.mkdir()
  server = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(_QuietHandler, directory=str(folder)))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  for var in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv(medmnist.URL_ENV, f'http://127.0.0.1:{server.server_address[1]}/')
  yield folder
  server.shutdown()
  server.server_close()
  thread.join(timeout=5)


def test_download_verified(tmp_path, monkeypatch, served):
  arrays = write_npz(served / 'pneumoniamnist.npz', counts=(3, 2, 2))
  md5 = download.md5_of(served / 'pneumoniamnist.npz')
  set_md5(monkeypatch, 'pneumoniamnist', 28, md5)
  data_dir = tmp_path / 'tfds'

  builder = medmnist.prepare('pneumoniamnist', 28, raw_dir=tmp_path / 'empty_raw', data_dir=data_dir)
  cache = data_dir / 'downloads' / 'medmnist'
  assert sorted(p.name for p in cache.iterdir()) == ['pneumoniamnist.npz']
  assert download.md5_of(cache / 'pneumoniamnist.npz') == md5
  train = read_all(builder.as_data_source()['train'])
  np.testing.assert_array_equal(np.stack([r['image'][..., 0] for r in train]), arrays['train_images'])

  # The verified cached copy is reused without the network.
  (served / 'pneumoniamnist.npz').unlink()
  again = download.locate_or_fetch('pneumoniamnist.npz', md5, raw_dir=None, cache_dir=cache, url=None,
                                   download=False)
  assert again == cache / 'pneumoniamnist.npz'


def test_download_with_corrupt_bytes(tmp_path, monkeypatch, served):
  write_npz(served / 'pneumoniamnist.npz')
  good_md5 = download.md5_of(served / 'pneumoniamnist.npz')
  set_md5(monkeypatch, 'pneumoniamnist', 28, good_md5)
  with open(served / 'pneumoniamnist.npz', 'r+b') as f:  # flip one byte in the middle
    f.seek(200)
    byte = f.read(1)
    f.seek(200)
    f.write(bytes([byte[0] ^ 0xFF]))
  data_dir = tmp_path / 'tfds'
  with pytest.raises(errors.DataError, match=f'MD5 mismatch.*expected {good_md5}, got [0-9a-f]{{32}}'):
    medmnist.prepare('pneumoniamnist', 28, raw_dir=tmp_path / 'empty_raw', data_dir=data_dir)
  cache = data_dir / 'downloads' / 'medmnist'
  assert not cache.exists() or not list(cache.iterdir())
  assert_nothing_built(data_dir)


def test_download_http_404(tmp_path, monkeypatch, served):
  set_md5(monkeypatch, 'dermamnist', 28, '0' * 32)
  with pytest.raises(errors.DataError, match='HTTP 404'):
    medmnist.prepare('dermamnist', 28, raw_dir=tmp_path / 'empty_raw', data_dir=tmp_path / 'tfds')
  assert_nothing_built(tmp_path / 'tfds')


def test_no_network_is_data_error(tmp_path):
  with socket.socket() as s:  # a free port that nobody listens on
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  dest = tmp_path / 'cache' / 'x.npz'
  with pytest.raises(errors.DataError, match=paths.RAW_DIR_ENV):
    download.fetch_verified(f'http://127.0.0.1:{port}/x.npz', dest, '0' * 32, timeout=5)
  assert not list((tmp_path / 'cache').iterdir())


# ---------------------------------------------------------------------------------------------------------
# The real official file, when the shared data folder is present.

def _official_table() -> dict[str, str]:
  """file name -> v3 MD5 from OFFICIAL_MD5_TABLE.txt (lines 'md5 file versions')."""
  table = {}
  for line in (SHARED_MEDMNIST / 'OFFICIAL_MD5_TABLE.txt').read_text().splitlines():
    parts = line.split()
    if len(parts) >= 3 and 'v3' in parts[2]:
      table[parts[1]] = parts[0]
  return table


def test_md5s_match_official_table():
  if not (SHARED_MEDMNIST / 'OFFICIAL_MD5_TABLE.txt').is_file():
    pytest.skip(f'{SHARED_MEDMNIST} is absent')
  checked = 0
  for file, md5 in _official_table().items():
    stem = file.removesuffix('.npz')
    name, _, size = stem.partition('_')
    if name in medmnist.INFO:
      assert medmnist.INFO[name].md5[int(size or 28)] == md5, file
      checked += 1
  assert checked >= 28


def test_real_pneumoniamnist(tmp_path):
  if not (SHARED_MEDMNIST / 'pneumoniamnist.npz').is_file():
    pytest.skip(f'{SHARED_MEDMNIST} is absent')
  assert download.md5_of(SHARED_MEDMNIST / 'pneumoniamnist.npz') == medmnist.INFO['pneumoniamnist'].md5[28]
  builder = medmnist.prepare('pneumoniamnist', 28, raw_dir=SHARED_MEDMNIST, data_dir=tmp_path / 'tfds',
                             download=False)
  sources = builder.as_data_source()
  assert {k: len(v) for k, v in sources.items()} == {'train': 4708, 'val': 524, 'test': 624}
  first_test = sources['test'][0]
  assert int(first_test['id']) == 4708 + 524 and first_test['image'].shape == (28, 28, 1)
  labels = np.asarray([sources['val'][i]['label'] for i in range(len(sources['val']))])
  assert np.bincount(labels).tolist() == [135, 389]


def test_lazy_images_read_on_demand_match_eager(tmp_path, synthetic_medmnist):
  """Multi-process runs read image rows on demand; they must equal the eagerly loaded split."""
  from medunlearn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from medunlearn_jax.data import dataset as ds_lib  # pylint: disable=g-import-not-at-top
  builder, _ = data_lib.prepare({'name': 'pneumoniamnist', 'image_size': 28})
  eager = data_lib.read_splits(builder)
  lazy = data_lib.read_splits(builder, lazy_images=True)
  for name in ('train', 'test'):
    assert isinstance(lazy[name].images, ds_lib.SourceImages)
    np.testing.assert_array_equal(lazy[name].ids, eager[name].ids)
    positions = np.array([5, 0, 17, 5])
    np.testing.assert_array_equal(lazy[name].images[positions], eager[name].images[positions])
    part = lazy[name].take(np.arange(3, 9), 'part')
    np.testing.assert_array_equal(part.images[np.arange(6)], eager[name].images[3:9])
  assert lazy['train'].images.shape == eager['train'].images.shape


def test_a_build_logged_to_a_file_has_no_progress_bar_escape_codes(tmp_path, synthetic_medmnist, capfd):
  # Not a terminal (pytest captures stderr, as a log file or a pipe would): TFDS's tqdm bars, whose cursor
  # movements would land in the log as raw "\x1b[A" codes, are off; the build still completes.
  from medunlearn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  from experiments.configs import default  # pylint: disable=g-import-not-at-top
  _, splits = data_lib.load(default.get_config().dataset)
  err = capfd.readouterr().err
  assert len(splits['train']) == 240 and '\x1b[' not in err and 'examples/s' not in err
