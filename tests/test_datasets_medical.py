"""Medical TFDS builders (NIH ChestX-ray14, CheXpert, HAM10000) and the patient split, without TensorFlow.

Tiny synthetic trees in the official layouts (exact column names, some rows without an image) check ids,
splits, labels and metadata; the real subsets in ../shared/data are built at 28 px when present.
"""
import csv
import json
import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from medunlearn_jax import data as data_lib
from medunlearn_jax import errors
from medunlearn_jax.data import chexpert
from medunlearn_jax.data import ham10000
from medunlearn_jax.data import nih_chestxray14 as nih
from medunlearn_jax.data import splits

SHARED = pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'data'


def read(builder):
  return data_lib.read_splits(builder)


def assert_patient_disjoint(parts):
  seen = {}
  for name, split in parts.items():
    for pid in set(split.meta['patient_id']):
      assert seen.setdefault(pid, name) == name, f'patient {pid} in {seen[pid]} and {name}'
  all_ids = np.concatenate([s.ids for s in parts.values()])
  assert len(np.unique(all_ids)) == len(all_ids)


# ---------------------------------------------------------------------------------------------------------
# patient_split

def test_patient_split_is_patient_disjoint_seeded_and_order_free():
  pids = np.asarray([f'p{i % 37}' for i in range(200)])
  a = splits.patient_split(pids, seed=3)
  assert set(a) == {'train', 'val', 'test'}
  for p in np.unique(pids):
    assert len(set(a[pids == p])) == 1
  np.testing.assert_array_equal(a, splits.patient_split(pids, seed=3))
  assert not np.array_equal(a, splits.patient_split(pids, seed=4))
  perm = np.random.default_rng(0).permutation(len(pids))
  np.testing.assert_array_equal(splits.patient_split(pids[perm], seed=3), a[perm])
  per_split = {s: len(set(pids[a == s])) for s in ('train', 'val', 'test')}
  assert per_split == {'train': 26, 'val': 4, 'test': 7}


def test_patient_split_small_and_bad_fractions():
  assert sorted(splits.patient_split(['a', 'b', 'c'], seed=0)) == ['test', 'train', 'val']
  out = splits.patient_split(['a', 'b', 'c', 'd'], (0.875, 0.125), names=('train', 'val'))
  assert set(out) == {'train', 'val'}
  with pytest.raises(errors.ConfigError):
    splits.patient_split(['a'], (0.5, 0.4, 0.2))
  with pytest.raises(errors.ConfigError):
    splits.patient_split(['a'], (0.5, 0.5))


# ---------------------------------------------------------------------------------------------------------
# NIH ChestX-ray14

NIH_HEADER = ('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,'
              'OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],')
NIH_LABELS = ['No Finding', 'Cardiomegaly', 'Effusion|Infiltration', 'No Finding', 'Hernia|Mass|Nodule']


def make_nih(root: pathlib.Path, *, missing=(2, 9, 17), lists=False) -> pathlib.Path:
  """15 patients with 1-3 images each; rows in `missing` have no PNG. Patient 1's images are 28x28 L."""
  raw = root / 'nih_chestxray14'
  (raw / 'images').mkdir(parents=True)
  rng = np.random.default_rng(0)
  lines, row = [NIH_HEADER], 0
  for p in range(1, 16):
    for fu in range(1 + p % 3):
      name = f'{p:08d}_{fu:03d}.png'
      lines.append(f'{name},{NIH_LABELS[row % 5]},{fu:03d},{p:08d},{40 + p:03d}Y,{"MF"[p % 2]},'
                   f'{"PA" if row % 3 else "AP"},2500,2048,0.168,0.168')
      if row not in missing:
        if p == 1:
          Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), 'L').save(raw / 'images' / name)
        else:
          mode = ('RGB', 'RGBA')[row % 2]
          Image.fromarray(rng.integers(0, 256, (40, 36, len(mode)), dtype=np.uint8), mode).save(
              raw / 'images' / name)
      row += 1
  (raw / nih.CSV_NAME).write_text('\n'.join(lines) + '\n')
  if lists:
    names = [ln.split(',')[0] for ln in lines[1:]]
    test = [n for n in names if int(n[:8]) in (3, 4, 5)]
    (raw / nih.TEST_LIST).write_text('\n'.join(test) + '\n')
    (raw / nih.TRAIN_VAL_LIST).write_text('\n'.join(n for n in names if n not in test) + '\n')
  return raw


def test_nih_build_ids_labels_metadata(tmp_path):
  raw = make_nih(tmp_path)
  builder = nih.prepare('binary', 28, raw_dir=raw, data_dir=tmp_path / 'tfds')
  parts = read(builder)
  assert sum(len(s) for s in parts.values()) == 30 - 3
  assert_patient_disjoint(parts)
  meta = builder.info.metadata
  assert meta['missing_images'] == 3 and meta['rows'] == 30 and meta['split_seed'] == 0
  rows = list(csv.reader(open(raw / nih.CSV_NAME)))[1:]
  assert meta['missing_examples'] == [rows[i][0] for i in (2, 9, 17)]
  every = data_lib.ds_lib.concat(list(parts.values()), 'all')
  assert sorted(set(range(30)) - set(every.ids)) == [2, 9, 17]
  for i, (id_, name) in enumerate(zip(every.ids, every.meta['image_name'])):
    row = rows[id_]  # id = data row of the CSV
    assert row[0] == name
    assert every.labels[i] == (0 if row[1] == 'No Finding' else 1)
    assert every.meta['patient_id'][i] == row[3] and every.meta['view'][i] == row[6]
    assert every.meta['sex'][i] == row[5] and every.meta['age'][i] == float(row[4][:3])
    assert every.meta['follow_up'][i] == int(row[2])
  assert every.images.shape[1:] == (28, 28, 1) and every.images.dtype == np.uint8
  # A 28x28 grayscale source image is stored unchanged.
  first = every.images[list(every.meta['image_name']).index('00000001_000.png')]
  np.testing.assert_array_equal(first[..., 0], np.asarray(Image.open(raw / 'images' / '00000001_000.png')))
  # Metadata round trip through plain TFDS (no TensorFlow).
  source = tfds.data_source('nih_chestxray14/binary_28', data_dir=tmp_path / 'tfds')
  assert sorted(source) == ['test', 'train', 'val']
  assert tfds.builder('nih_chestxray14/binary_28', data_dir=tmp_path / 'tfds').info.metadata['missing_images'] == 3
  assert nih.dataset_info('binary', 28).num_classes == 2


def test_nih_ids_and_splits_stable_across_builds(tmp_path):
  raw = make_nih(tmp_path / 'a')
  full = make_nih(tmp_path / 'b', missing=())
  one = read(nih.prepare('binary', 28, raw_dir=raw, data_dir=tmp_path / 't1'))
  two = read(nih.prepare('binary', 28, raw_dir=raw, data_dir=tmp_path / 't2'))
  more = read(nih.prepare('binary', 28, raw_dir=full, data_dir=tmp_path / 't3'))
  for name in one:
    np.testing.assert_array_equal(one[name].ids, two[name].ids)
    np.testing.assert_array_equal(one[name].images, two[name].images)
    # Images added later get their own rows' ids; nothing already there changes id or split.
    assert set(one[name].ids) <= set(more[name].ids)
    kept = more[name].take(np.isin(more[name].ids, one[name].ids))
    np.testing.assert_array_equal(one[name].meta['image_name'], kept.meta['image_name'])
  # Reusing the build; another split seed on the same folder is refused.
  again = nih.prepare('binary', 28, raw_dir=raw, data_dir=tmp_path / 't1')
  assert again.info.metadata['split_seed'] == 0
  with pytest.raises(errors.UserError, match='split_seed'):
    nih.prepare('binary', 28, raw_dir=raw, data_dir=tmp_path / 't1', split_seed=1)


def test_nih_multilabel_and_official_lists(tmp_path):
  raw = make_nih(tmp_path, lists=True)
  builder = nih.prepare('multilabel', 28, raw_dir=raw, data_dir=tmp_path / 'tfds')
  parts = read(builder)
  assert set(parts['test'].meta['patient_id']) == {'00000003', '00000004', '00000005'}
  assert_patient_disjoint(parts)
  every = data_lib.ds_lib.concat(list(parts.values()), 'all')
  assert every.labels.shape[1:] == (14,)
  rows = list(csv.reader(open(raw / nih.CSV_NAME)))[1:]
  for id_, multi_hot in zip(every.ids, every.labels):
    findings = set(rows[id_][1].split('|')) - {'No Finding'}
    assert {nih.FINDINGS[i] for i in np.flatnonzero(multi_hot)} == findings
  assert every.labels.sum(axis=0)[nih.FINDINGS.index('Hernia')] > 0
  assert 'official' in builder.info.metadata['split']
  info = nih.dataset_info('multilabel', 64)
  assert (info.num_classes, info.task, info.image_shape) == (14, 'multi-label', (64, 64, 1))


def test_nih_errors_leave_nothing_behind(tmp_path):
  data_dir = tmp_path / 'tfds'
  with pytest.raises(errors.UserError, match='binary, multilabel'):
    nih.prepare('triage', 28, raw_dir=tmp_path, data_dir=data_dir)
  with pytest.raises(errors.UserError, match='28, 64, 128, 224'):
    nih.prepare('binary', 32, raw_dir=tmp_path, data_dir=data_dir)
  with pytest.raises(errors.DataError, match='does not exist'):
    nih.prepare('binary', 28, raw_dir=tmp_path / 'absent', data_dir=data_dir)
  (tmp_path / 'empty').mkdir()
  with pytest.raises(errors.DataError, match='Data_Entry_2017.csv'):
    nih.prepare('binary', 28, raw_dir=tmp_path / 'empty', data_dir=data_dir)
  raw = make_nih(tmp_path / 'none', missing=range(100))
  with pytest.raises(errors.DataError, match='none of the rows'):
    nih.prepare('binary', 28, raw_dir=raw, data_dir=data_dir)
  assert not (data_dir / nih.FAMILY).exists()
  # A corrupt image fails the build while examples are being written: still nothing half-built.
  raw = make_nih(tmp_path / 'corrupt')
  (raw / 'images' / '00000004_000.png').write_bytes(b'not a png')
  with pytest.raises(errors.DataError, match='cannot read image .*00000004_000.png'):
    nih.prepare('binary', 28, raw_dir=raw, data_dir=data_dir)
  assert not (data_dir / nih.FAMILY).exists()
  # Rows whose image is missing are fine as long as some remain.
  builder = nih.prepare('binary', 28, raw_dir=make_nih(tmp_path / 'ok'), data_dir=data_dir)
  assert splits.is_built(builder)


# ---------------------------------------------------------------------------------------------------------
# CheXpert

def make_chexpert(root: pathlib.Path, folder: str = 'CheXpert-v1.0-small') -> pathlib.Path:
  """12 train patients (frontal + some lateral views), 2 valid patients; one frontal jpg missing."""
  base = root / folder
  rng = np.random.default_rng(1)
  header = list(chexpert.COLUMNS)
  for csv_name, sub, patients in (('train.csv', 'train', range(1, 13)), ('valid.csv', 'valid', (64541, 64542))):
    rows = []
    for p in patients:
      for view, frontal in (('view1_frontal', True), ('view2_lateral', False)):
        if not frontal and p % 2:
          continue
        rel = f'{folder}/{sub}/patient{p:05d}/study1/{view}.jpg'
        obs = [''] * 14
        obs[0] = '1.0' if p % 3 == 0 else ''
        obs[2] = '-1.0' if p % 3 == 1 else ('1.0' if p % 3 == 2 else '0.0')
        obs[10] = '1.0' if p % 4 == 0 else ''
        rows.append([rel, ('Female', 'Male', 'Unknown')[p % 3], str(50 + p % 40), 'Frontal' if frontal else 'Lateral',
                     ('AP' if p % 2 else 'PA') if frontal else '', *obs])
        if not (p == 7 and frontal):
          path = root / rel
          path.parent.mkdir(parents=True, exist_ok=True)
          Image.fromarray(rng.integers(0, 256, (40, 32), dtype=np.uint8), 'L').save(path)
    with open(base / csv_name, 'w', newline='') as f:
      csv.writer(f).writerows([header, *rows])
  return base


def test_chexpert_small_layout_policies_and_ids(tmp_path):
  make_chexpert(tmp_path / 'raw')
  data_dir = tmp_path / 'tfds'
  builders = {t: chexpert.prepare(t, 28, raw_dir=tmp_path / 'raw', data_dir=data_dir)
              for t in ('binary', 'multilabel_uzeros', 'multilabel_ignore')}
  builders['multilabel_uones'] = chexpert.prepare('multilabel', 28, raw_dir=tmp_path / 'raw' / 'CheXpert-v1.0-small',
                                                  data_dir=data_dir, uncertainty='ones')
  parts = {t: read(b) for t, b in builders.items()}
  meta = builders['binary'].info.metadata
  assert meta['missing_images'] == 1 and meta['frontal_rows'] == 14
  binary = parts['binary']
  assert_patient_disjoint(binary)
  assert set(binary['test'].meta['patient_id']) == {'patient64541', 'patient64542'}
  assert np.all(binary['test'].ids >= chexpert.VALID_ID_OFFSET)
  every = data_lib.ds_lib.concat(list(binary.values()), 'all')
  assert len(every) == 13 and np.all(every.meta['frontal'])
  assert 'patient00007' not in set(every.meta['patient_id'])
  train_rows = list(csv.reader(open(tmp_path / 'raw' / 'CheXpert-v1.0-small' / 'train.csv')))[1:]
  for i, id_ in enumerate(every.ids):
    if id_ < chexpert.VALID_ID_OFFSET:
      row = train_rows[id_]
      assert row[0] == every.meta['path'][i] and row[3] == 'Frontal'
      assert every.labels[i] == (0 if row[5] == '1.0' else 1)
      assert every.meta['sex'][i] == {'Female': 'F', 'Male': 'M', 'Unknown': ''}[row[1]]
      assert every.meta['age'][i] == float(row[2]) and every.meta['view'][i] == row[4]
  # Cardiomegaly of patient00001 is uncertain (-1).
  def cardio(task):
    s = data_lib.ds_lib.concat(list(parts[task].values()), 'all')
    return s.labels[list(s.meta['patient_id']).index('patient00001'), 2]
  assert (cardio('multilabel_uones'), cardio('multilabel_uzeros'), cardio('multilabel_ignore')) == (1, 0, -1)
  assert parts['multilabel_uones']['train'].labels.shape[1:] == (14,)
  assert chexpert.dataset_info('multilabel', 224, uncertainty='zeros').name == 'chexpert_frontal/multilabel_uzeros_224'


def test_chexpert_full_and_renamed_layouts(tmp_path):
  make_chexpert(tmp_path / 'full', folder='CheXpert-v1.0')
  builder = chexpert.prepare('binary', 28, raw_dir=tmp_path / 'full', data_dir=tmp_path / 't1')
  assert builder.info.metadata['source'] == 'CheXpert-v1.0' and builder.info.metadata['missing_images'] == 1
  # The unpacked folder renamed: CSV paths still start with the original name.
  (tmp_path / 'full' / 'CheXpert-v1.0').rename(tmp_path / 'renamed')
  parts = read(chexpert.prepare('binary', 28, raw_dir=tmp_path / 'renamed', data_dir=tmp_path / 't2'))
  assert sum(len(s) for s in parts.values()) == 13


def test_chexpert_errors(tmp_path):
  with pytest.raises(errors.UserError, match='uncertainty'):
    chexpert.prepare('multilabel', 28, raw_dir=tmp_path, data_dir=tmp_path / 't', uncertainty='maybe')
  with pytest.raises(errors.UserError, match='choose one of'):
    chexpert.prepare('pneumonia', 28, raw_dir=tmp_path, data_dir=tmp_path / 't')
  with pytest.raises(errors.DataError, match='train.csv'):
    chexpert.prepare('binary', 28, raw_dir=tmp_path, data_dir=tmp_path / 't')


# ---------------------------------------------------------------------------------------------------------
# HAM10000

HAM_DX = ['bkl', 'nv', 'mel', 'bcc', 'akiec', 'df', 'vasc', 'nv']


def make_ham(raw: pathlib.Path, *, jpg_missing=(4, 11), csvs=('hmnist_8_8_L', 'hmnist_28_28_RGB'),
             jpgs=True, shift_labels=False):
  """30 images of 16 lesions; jpgs in part_1/part_2 (two missing) and hmnist CSVs aligned by row."""
  raw.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(2)
  rows = []
  for i in range(30):
    lesion = i // 2 if i < 28 else 14 + (i - 28)
    rows.append([f'HAM_{lesion:07d}', f'ISIC_{i + 24300:07d}', HAM_DX[lesion % 8], 'histo',
                 '' if i == 5 else f'{30 + 5 * (lesion % 9)}.0', ('male', 'female', 'unknown')[lesion % 3],
                 'back'])
  with open(raw / ham10000.METADATA_CSV, 'w', newline='') as f:
    csv.writer(f).writerows([list(ham10000.COLUMNS), *rows])
  if jpgs:
    for i, r in enumerate(rows):
      if i not in jpg_missing:
        folder = raw / ham10000.JPG_FOLDERS[i % 2]
        folder.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (45, 60, 3), dtype=np.uint8), 'RGB').save(folder / f'{r[1]}.jpg')
  pixels = {}
  for name in csvs:
    file, size, channels = ham10000.SOURCES[name]
    n = size * size * channels
    px = rng.integers(0, 256, (30, n))
    labels = [ham10000.KAGGLE_LABEL[r[2]] for r in rows]
    if shift_labels:
      labels = labels[1:] + labels[:1]
    with open(raw / file, 'w', newline='') as f:
      csv.writer(f).writerows([[f'pixel{j:04d}' for j in range(n)] + ['label'],
                               *[[*p, lab] for p, lab in zip(px, labels)]])
    pixels[name] = px.astype(np.uint8)
  return rows, pixels


def test_ham_from_jpg_folders(tmp_path):
  rows, _ = make_ham(tmp_path / 'ham10000')
  builder = ham10000.prepare('dx', 28, raw_dir=tmp_path / 'ham10000', data_dir=tmp_path / 'tfds')
  assert builder.info.metadata['source'] == 'jpg' and builder.info.metadata['missing_images'] == 2
  parts = read(builder)
  assert_patient_disjoint(parts)
  every = data_lib.ds_lib.concat(list(parts.values()), 'all')
  assert len(every) == 28 and every.images.shape[1:] == (28, 28, 3)
  assert 4 not in every.ids and 11 not in every.ids
  for i, id_ in enumerate(every.ids):
    r = rows[id_]
    assert (every.meta['lesion_id'][i], every.meta['image_id'][i], every.meta['dx'][i]) == (r[0], r[1], r[2])
    assert every.meta['patient_id'][i] == r[0]
    assert every.labels[i] == ham10000.DX_CLASSES.index(r[2])
    assert every.meta['sex'][i] == {'male': 'M', 'female': 'F', 'unknown': ''}[r[5]]
    assert (np.isnan(every.meta['age'][i]) if r[4] == '' else every.meta['age'][i] == float(r[4]))
  assert ham10000.dataset_info('dx', 28).image_shape == (28, 28, 3)


def test_ham_from_hmnist_csvs(tmp_path):
  rows, pixels = make_ham(tmp_path / 'raw', jpgs=False)
  # The automatic choice prefers 28x28 RGB over 8x8 grey.
  rgb = ham10000.prepare('binary', 28, raw_dir=tmp_path / 'raw', data_dir=tmp_path / 'tfds')
  assert rgb.info.metadata['source'] == 'hmnist_28_28_RGB'
  every = data_lib.ds_lib.concat(list(read(rgb).values()), 'all')
  assert len(every) == 30 and rgb.info.metadata['missing_images'] == 0
  np.testing.assert_array_equal(every.images, pixels['hmnist_28_28_RGB'][every.ids].reshape(-1, 28, 28, 3))
  assert list(every.labels) == [int(rows[i][2] in ham10000.MALIGNANT) for i in every.ids]
  grey = ham10000.prepare('dx', 64, raw_dir=tmp_path / 'raw', data_dir=tmp_path / 'tfds', source='hmnist_8_8_L')
  parts = read(grey)
  assert parts['train'].images.shape[1:] == (64, 64, 1)
  assert ham10000.dataset_info('dx', 64).image_shape == (64, 64, 1)
  assert ham10000.dataset_info('dx', 64, builder=grey).image_shape == (64, 64, 1)
  # Same rows, same lesion split, whatever the source.
  for name, split in read(ham10000.prepare('dx', 28, raw_dir=tmp_path / 'raw', data_dir=tmp_path / 'tfds',
                                          source='hmnist_8_8_L')).items():
    np.testing.assert_array_equal(split.ids, parts[name].ids)
  with pytest.raises(errors.UserError, match='source'):
    ham10000.prepare('dx', 64, raw_dir=tmp_path / 'raw', data_dir=tmp_path / 'tfds', source='hmnist_28_28_RGB')


def test_ham_errors_and_shared_folder_name(tmp_path):
  make_ham(tmp_path / 'bad', jpgs=False, csvs=('hmnist_8_8_L',), shift_labels=True)
  with pytest.raises(errors.DataError, match='not aligned'):
    ham10000.prepare('dx', 28, raw_dir=tmp_path / 'bad', data_dir=tmp_path / 'tfds')
  assert not (tmp_path / 'tfds' / ham10000.FAMILY).exists()
  with pytest.raises(errors.UserError, match='dx, binary'):
    ham10000.dataset_info('grade', 28)
  with pytest.raises(errors.UserError, match='unknown HAM10000 source'):
    ham10000.prepare('dx', 28, raw_dir=tmp_path / 'bad', data_dir=tmp_path / 'tfds', source='png')
  (tmp_path / 'nojpg').mkdir()
  (tmp_path / 'nojpg' / ham10000.METADATA_CSV).write_text(','.join(ham10000.COLUMNS) + '\n')
  with pytest.raises(errors.DataError, match='no HAM10000 images'):
    ham10000.prepare('dx', 28, raw_dir=tmp_path / 'nojpg', data_dir=tmp_path / 'tfds')
  # `$MEDUNLEARN_DATA_DIR/ham10000` falls back to the shared folder name `ham10000_8x8`.
  make_ham(tmp_path / 'root' / 'ham10000_8x8', jpgs=False, csvs=('hmnist_8_8_L',))
  builder = ham10000.prepare('dx', 28, raw_dir=tmp_path / 'root' / 'ham10000', data_dir=tmp_path / 'tfds2')
  assert builder.info.metadata['source'] == 'hmnist_8_8_L'


# ---------------------------------------------------------------------------------------------------------
# The real subsets in ../shared/data (skipped when absent).

@pytest.fixture(scope='module')
def real_data_dir(tmp_path_factory):
  if not SHARED.is_dir():
    pytest.skip(f'real data folder {SHARED} is absent')
  return tmp_path_factory.mktemp('tfds_real')


def test_real_nih_subset(real_data_dir):
  raw = SHARED / 'nih_chestxray14'
  if not raw.is_dir():
    pytest.skip(f'{raw} is absent')
  builder = nih.prepare('binary', 28, raw_dir=raw, data_dir=real_data_dir)
  meta = builder.info.metadata
  assert (meta['rows'], meta['missing_images']) == (1142, 142)
  parts = read(builder)
  assert_patient_disjoint(parts)
  every = data_lib.ds_lib.concat(list(parts.values()), 'all')
  assert len(every) == 1000 and len(set(every.meta['patient_id'])) == 264
  assert dict(zip(*np.unique(every.meta['sex'], return_counts=True))) == {'F': 509, 'M': 491}
  assert dict(zip(*np.unique(every.meta['view'], return_counts=True))) == {'AP': 363, 'PA': 637}
  assert int(np.sum(every.labels == 0)) == 500
  assert np.nanmin(every.meta['age']) == 25 and np.nanmax(every.meta['age']) == 94
  assert every.images.shape[1:] == (28, 28, 1) and every.images.std() > 10


def _check_real_ham10000(builder, channels: int) -> None:
  """What both shared HAM10000 folders must give: all 10,015 images, lesion-disjoint splits, official counts."""
  parts = read(builder)
  assert_patient_disjoint(parts)
  every = data_lib.ds_lib.concat(list(parts.values()), 'all')
  assert len(every) == 10015 and len(set(every.meta['lesion_id'])) == 7470
  counts = dict(zip(*np.unique(every.meta['dx'], return_counts=True)))
  assert counts == {'nv': 6705, 'mel': 1113, 'bkl': 1099, 'bcc': 514, 'akiec': 327, 'vasc': 142, 'df': 115}
  assert dict(zip(*np.unique(every.meta['sex'], return_counts=True))) == {'M': 5406, 'F': 4552, '': 57}
  assert int(np.isnan(every.meta['age']).sum()) == 57
  assert every.images.shape[1:] == (28, 28, channels) and every.images.std() > 10
  assert json.loads((pathlib.Path(builder.data_dir) / 'metadata.json').read_text())['channels'] == channels


def test_real_ham10000_8x8(real_data_dir):
  raw = SHARED / 'ham10000_8x8'
  if not raw.is_dir():
    pytest.skip(f'{raw} is absent')
  builder = ham10000.prepare('dx', 28, raw_dir=raw, data_dir=real_data_dir)
  meta = builder.info.metadata
  assert (meta['rows'], meta['source'], meta['native_size']) == (10015, 'hmnist_8_8_L', 8)
  _check_real_ham10000(builder, channels=1)


def test_real_ham10000_200x150_rgb(tmp_path):
  """The shared folder of all 10,015 official images at 200x150 RGB, which the builder now finds first."""
  raw = SHARED / 'ham10000'
  if not raw.is_dir():
    pytest.skip(f'{raw} is absent')
  builder = ham10000.prepare('dx', 28, raw_dir=raw, data_dir=tmp_path)
  meta = builder.info.metadata
  assert (meta['rows'], meta['source'], meta['missing_images']) == (10015, 'jpg', 0)
  _check_real_ham10000(builder, channels=3)
