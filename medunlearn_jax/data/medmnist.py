"""MedMNIST (2D) as a TFDS dataset, built from the official, MD5-verified `.npz` release files.

MedMNIST v2 (Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image
classification", Scientific Data 10, 41, 2023) collects 12 pre-processed 2D medical image classification
datasets; MedMNIST+ (v3, Zenodo record 10519652) adds 64, 128 and 224 pixel versions of every 2D dataset.

Raw files are the official release files, named `<name>.npz` (28 px) or `<name>_<size>.npz` (64/128/224 px),
with the keys `train_images, val_images, test_images, train_labels, val_labels, test_labels` (uint8; images
(N, S, S) for grayscale or (N, S, S, 3) for RGB; labels (N, 1), or (N, 14) multi-hot for ChestMNIST). They are
taken from `$MEDUNLEARN_DATA_DIR/medmnist/` (or the `raw_dir` argument) when present, otherwise downloaded
from Zenodo into `<tfds data dir>/downloads/medmnist/`; either way the MD5 must equal the official one.

The TFDS builder `medmnist` has one config per dataset and size, `<dataset>_<size>` (e.g.
`pneumoniamnist_28`), with the features `id` (int64, unique across splits: train row i -> i, val row i ->
n_train + i, test row i -> n_train + n_val + i), `image` (uint8 (S, S, C), C = 1 for grayscale) and `label`
(int64 scalar, or int64 (14,) multi-hot for ChestMNIST), and the splits `train`, `val`, `test`, written as
array_record files so that `tfds.data_source` reads them without TensorFlow:

    builder = medmnist.prepare('pneumoniamnist', 28)
    sources = builder.as_data_source()          # or tfds.data_source('medmnist/pneumoniamnist_28')
    sources['train'][0]  # {'id': 0, 'image': uint8 (28, 28, 1), 'label': 0 or 1}
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import shutil
import zipfile
import zlib
from typing import Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from medunlearn_jax import errors
from medunlearn_jax.data import builder_base
from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.data import download as download_lib
from medunlearn_jax.data import paths

log = logging.getLogger(__name__)

FAMILY = 'medmnist'  # raw sub-folder of MEDUNLEARN_DATA_DIR, TFDS builder name and download cache sub-folder
SIZES = (28, 64, 128, 224)
SPLITS = ('train', 'val', 'test')
# MedMNIST+ (v3) release on Zenodo; every 2D file of every size is there.
BASE_URL = 'https://zenodo.org/records/10519652/files'
URL_ENV = 'MEDUNLEARN_MEDMNIST_URL'  # overrides BASE_URL (e.g. a mirror, or a local server in tests)
HOMEPAGE = 'https://medmnist.com/'

CITATION = r"""@article{medmnistv2,
  title={MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image classification},
  author={Yang, Jiancheng and Shi, Rui and Wei, Donglai and Liu, Zequan and Zhao, Lin and Ke, Bilian and
          Pfister, Hanspeter and Ni, Bingbing},
  journal={Scientific Data},
  volume={10},
  number={1},
  pages={41},
  year={2023},
  publisher={Nature Publishing Group UK London}
}
@inproceedings{medmnistv1,
  title={MedMNIST Classification Decathlon: A Lightweight AutoML Benchmark for Medical Image Analysis},
  author={Yang, Jiancheng and Shi, Rui and Ni, Bingbing},
  booktitle={IEEE 18th International Symposium on Biomedical Imaging (ISBI)},
  pages={191--195},
  year={2021}
}"""

MULTI_CLASS, BINARY, MULTI_LABEL, ORDINAL = 'multi-class', 'binary', 'multi-label', 'ordinal'


@dataclasses.dataclass(frozen=True)
class MedMNISTInfo:
  """What the official MedMNIST `INFO` table says about one 2D dataset.

  Attributes:
    name: dataset name, e.g. 'pneumoniamnist'.
    task: 'multi-class', 'binary', 'multi-label' (ChestMNIST) or 'ordinal' (RetinaMNIST).
    n_channels: 1 (grayscale) or 3 (RGB).
    class_names: one name per class (per label for multi-label), index = label value.
    n_samples: official train/val/test counts (the same for every image size).
    md5: official MD5 of the release file per image size; None where no official checksum is known.
    license: licence of the data.
  """
  name: str
  task: str
  n_channels: int
  class_names: tuple[str, ...]
  n_samples: Mapping[str, int]
  md5: dict[int, str | None]
  license: str = 'CC BY 4.0'

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  @property
  def multi_label(self) -> bool:
    return self.task == MULTI_LABEL


def _info(name, task, n_channels, class_names, n_samples, md5s, license='CC BY 4.0') -> MedMNISTInfo:
  return MedMNISTInfo(name, task, n_channels, tuple(class_names), dict(zip(SPLITS, n_samples)),
                      dict(zip(SIZES, md5s)), license)


_ORGANS = ('bladder', 'femur-left', 'femur-right', 'heart', 'kidney-left', 'kidney-right', 'liver',
           'lung-left', 'lung-right', 'pancreas', 'spleen')

# Transcribed from the official `medmnist/info.py` of MedMNIST v3.0.2 (github.com/MedMNIST/MedMNIST @
# 3bb56be69bca38e5f105b21e4d6482b91354d3a4); MD5s in the order 28, 64, 128, 224 px. The 28/64 px values and
# the pneumonia/retina/breast 128/224 px values listed in shared/data/medmnist/OFFICIAL_MD5_TABLE.txt agree
# with it (the test suite checks this when the shared folder is present). OrganA/C/S use the v3 files, whose
# 28 px MD5 and counts differ from v2.
INFO: dict[str, MedMNISTInfo] = {i.name: i for i in [
    _info('pathmnist', MULTI_CLASS, 3,
          ['adipose', 'background', 'debris', 'lymphocytes', 'mucus', 'smooth muscle', 'normal colon mucosa',
           'cancer-associated stroma', 'colorectal adenocarcinoma epithelium'],
          (89996, 10004, 7180),
          ('a8b06965200029087d5bd730944a56c1', '55aa9c1e0525abe5a6b9d8343a507616',
           'ac42d08fb904d92c244187169d1fd1d9', '2c51a510bcdc9cf8ddb2af93af1eadec')),
    _info('chestmnist', MULTI_LABEL, 1,
          ['atelectasis', 'cardiomegaly', 'effusion', 'infiltration', 'mass', 'nodule', 'pneumonia',
           'pneumothorax', 'consolidation', 'edema', 'emphysema', 'fibrosis', 'pleural', 'hernia'],
          (78468, 11219, 22433),
          ('02c8a6516a18b556561a56cbdd36c4a8', '9de6cd0b934ebb5b7426cfba5efbae16',
           'db107e5590b27930b62dbaf558aebee3', '45bd33e6f06c3e8cdb481c74a89152aa')),
    _info('dermamnist', MULTI_CLASS, 3,
          ['actinic keratoses and intraepithelial carcinoma', 'basal cell carcinoma',
           'benign keratosis-like lesions', 'dermatofibroma', 'melanoma', 'melanocytic nevi',
           'vascular lesions'],
          (7007, 1003, 2005),
          ('0744692d530f8e62ec473284d019b0c7', 'b70a2f5635c6199aeaa28c31d7202e1f',
           '2defd784463fa5243564e855ed717de1', '8974907d8e169bef5f5b96bc506ae45d'),
          license='CC BY-NC 4.0'),
    _info('octmnist', MULTI_CLASS, 1,
          ['choroidal neovascularization', 'diabetic macular edema', 'drusen', 'normal'],
          (97477, 10832, 1000),
          ('c68d92d5b585d8d81f7112f81e2d0842', 'e229e9440236b774d9f0dfef9d07bdaf',
           '0a97e76651ace45c5d943ee3f65b63ae', 'abc493b6d529d5de7569faaef2773ba3')),
    _info('pneumoniamnist', BINARY, 1, ['normal', 'pneumonia'],
          (4708, 524, 624),
          ('28209eda62fecd6e6a2d98b1501bb15f', '8f4eceb4ccffa70c672198ea285246c6',
           '05b46931834c231683c68f40c47b2971', 'd6a3c71de1b945ea11211b03746c1fe1')),
    _info('retinamnist', ORDINAL, 3, ['0', '1', '2', '3', '4'],
          (1080, 120, 400),
          ('bd4c0672f1bba3e3a89f0e4e876791e4', 'afda852cc34dcda56f86ad2b2457dbcc',
           'e48e916a24454daf90583d4e6efb1a18', 'eae7e3b6f3fcbda4ae613ebdcbe35348')),
    _info('breastmnist', BINARY, 1, ['malignant', 'normal, benign'],
          (546, 78, 156),
          ('750601b1f35ba3300ea97c75c52ff8f6', '742edef2a1fd1524b2efff4bd7ba9364',
           '363e4b3f8d712e9b5de15470a2aaadf1', 'b56378a6eefa9fed602bb16d192d4c8b')),
    _info('bloodmnist', MULTI_CLASS, 3,
          ['basophil', 'eosinophil', 'erythroblast',
           'immature granulocytes(myelocytes, metamyelocytes and promyelocytes)', 'lymphocyte', 'monocyte',
           'neutrophil', 'platelet'],
          (11959, 1712, 3421),
          ('7053d0359d879ad8a5505303e11de1dc', '2b94928a2ae4916078ca51e05b6b800b',
           'adace1e0ed228fccda1f39692059dd4c', 'b718ff6835fcbdb22ba9eacccd7b2601')),
    _info('tissuemnist', MULTI_CLASS, 1,
          ['Collecting Duct, Connecting Tubule', 'Distal Convoluted Tubule', 'Glomerular endothelial cells',
           'Interstitial endothelial cells', 'Leukocytes', 'Podocytes', 'Proximal Tubule Segments',
           'Thick Ascending Limb'],
          (165466, 23640, 47280),
          ('ebe78ee8b05294063de985d821c1c34b', '123ece2eba09d0aa5d698fda57103344',
           '61b955355d7425a89687b06cca3ce0c2', 'b077128c4a949f0a4eb01517f9037b9c')),
    _info('organamnist', MULTI_CLASS, 1, _ORGANS,
          (34561, 6491, 17778),
          ('68e3f8846a6bd62f0c9bf841c0d9eacc', '2dcccc29b88e6da5a01161ef20cda288',
           'eeae80d0a227a8d099027e1b3cfd3b60', '50747347e05c87dd3aaf92c49f9f3170')),
    _info('organcmnist', MULTI_CLASS, 1, _ORGANS,
          (12975, 2392, 8216),
          ('b9ceb9546e10131b32923c5bbeaea2b1', '3ce34a8724ea6f548e6db4744d03b6a9',
           '773c1f009daa3fe5d9a2a201b2a7ed94', '050f5e875dc056f6768abf94ec9995d1')),
    _info('organsmnist', MULTI_CLASS, 1, _ORGANS,
          (13932, 2452, 8827),
          ('9ab87b696fb54e2a387ebe992d6ed5f1', '53a6d115339d874c25e309a994ff46d3',
           'ded0c5fa01a95dc4978b956f613e9b8e', 'b354719e553fbbb2513d5533f52a4cb1')),
]}
DATASETS = tuple(INFO)


def _check(name: str, image_size: int) -> MedMNISTInfo:
  """The INFO entry of `name`; UserError listing the valid choices for an unknown dataset or size."""
  key = str(name).strip().lower()
  if key not in INFO:
    raise errors.UserError(f'unknown MedMNIST dataset {name!r}; choose one of: {", ".join(DATASETS)}')
  if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size not in SIZES:
    raise errors.UserError(
        f'unsupported MedMNIST image size {image_size!r}; choose one of: {", ".join(map(str, SIZES))}')
  return INFO[key]


def config_name(name: str, image_size: int) -> str:
  """TFDS config name of a dataset at a size, e.g. 'pneumoniamnist_28'."""
  info = _check(name, image_size)
  return f'{info.name}_{int(image_size)}'


def file_name(name: str, image_size: int) -> str:
  """Official release file name: '<name>.npz' at 28 px, '<name>_<size>.npz' otherwise."""
  info = _check(name, image_size)
  return f'{info.name}.npz' if image_size == 28 else f'{info.name}_{int(image_size)}.npz'


def file_url(name_of_file: str) -> str:
  """Download address of a release file; the base is `$MEDUNLEARN_MEDMNIST_URL` or `BASE_URL`."""
  base = os.environ.get(URL_ENV) or BASE_URL
  return f'{base.rstrip("/")}/{name_of_file}?download=1'


# Test accuracy of ResNet-18 (28) in the MedMNIST v2 benchmark (Yang et al., Sci. Data 2023, Table 2).
PUBLISHED_RESNET18_28 = {'pneumoniamnist': 0.854, 'breastmnist': 0.863, 'retinamnist': 0.524,
                         'dermamnist': 0.735}
PUBLISHED_SOURCE = 'MedMNIST v2, ResNet-18 at 28 px'


def dataset_info(name: str, image_size: int) -> ds_lib.DatasetInfo:
  """Model/metric facts of a dataset at a size; `name` of the result is the TFDS name 'medmnist/<config>'."""
  info = _check(name, image_size)
  size = int(image_size)
  return ds_lib.DatasetInfo(name=f'{FAMILY}/{info.name}_{size}', num_classes=info.num_classes,
                            image_shape=(size, size, info.n_channels), task=info.task,
                            class_names=info.class_names, anchor_accuracy=PUBLISHED_RESNET18_28.get(info.name),
                            anchor_source=PUBLISHED_SOURCE if info.name in PUBLISHED_RESNET18_28 else '')


# ---------------------------------------------------------------------------------------------------------
# Reading and validating an official .npz without loading all images at once.

_KEYS = tuple(f'{s}_{k}' for k in ('images', 'labels') for s in SPLITS)
_ROWS_PER_READ = 2048
# What a damaged or non-standard archive raises while it is read (only possible with allow_unverified).
_READ_ERRORS = (KeyError, ValueError, EOFError, OSError, zipfile.BadZipFile, zlib.error)


def _open_npz(path: pathlib.Path):
  try:
    npz = np.load(path, allow_pickle=False)
  except Exception as e:  # BadZipFile, ValueError, OSError...
    raise errors.DataError(f'{path} is not a readable .npz file: {e}') from e
  if not isinstance(npz, np.lib.npyio.NpzFile):
    raise errors.DataError(f'{path} is a single array, not an .npz archive with the keys {", ".join(_KEYS)}')
  missing = [k for k in _KEYS if k not in npz.files]
  if missing:
    npz.close()
    raise errors.DataError(f'{path} lacks the key(s) {", ".join(missing)} (it has {", ".join(npz.files)})')
  return npz


def _array_header(npz, key: str, path: pathlib.Path) -> tuple[tuple[int, ...], np.dtype]:
  """Shape and dtype of one array of the archive, read from its .npy header only."""
  with npz.zip.open(f'{key}.npy') as f:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
      shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
      shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
    else:
      raise errors.DataError(f'{path}: {key} uses the unsupported .npy format version {version}')
  if fortran_order:
    raise errors.DataError(f'{path}: {key} is stored in Fortran order; expected the official C-order file')
  return tuple(shape), dtype


def _iter_image_rows(npz, key: str, n: int, row_shape: tuple[int, ...],
                     path: pathlib.Path) -> Iterator[np.ndarray]:
  """Yields the uint8 images of `key` one by one, reading `_ROWS_PER_READ` rows at a time."""
  row_bytes = int(np.prod(row_shape))
  with npz.zip.open(f'{key}.npy') as f:
    version = np.lib.format.read_magic(f)
    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                   else np.lib.format.read_array_header_2_0)
    read_header(f)
    for start in range(0, n, _ROWS_PER_READ):
      count = min(_ROWS_PER_READ, n - start)
      want = count * row_bytes
      buf = f.read(want)
      if len(buf) != want:
        raise errors.DataError(f'{path}: {key} is truncated at row {start + len(buf) // row_bytes} of {n}')
      yield from np.frombuffer(buf, dtype=np.uint8).reshape((count, *row_shape))


def _load_labels(npz, split: str, n_images: int, info: MedMNISTInfo, path: pathlib.Path) -> np.ndarray:
  """The labels of a split as int64, (N,) or (N, 14) multi-hot, after checking shape and range."""
  key = f'{split}_labels'
  labels = npz[key]
  if labels.dtype.kind not in 'iub':
    raise errors.DataError(f'{path}: {key} has dtype {labels.dtype}, expected integer labels')
  if info.multi_label:
    expected = f'({n_images}, {info.num_classes})'
    ok = labels.shape == (n_images, info.num_classes)
  else:
    expected = f'({n_images}, 1)'
    ok = labels.shape in ((n_images, 1), (n_images,))
  if not ok:
    raise errors.DataError(f'{path}: {key} has shape {labels.shape}, expected {expected}')
  labels = labels.astype(np.int64).reshape((n_images, info.num_classes) if info.multi_label else (n_images,))
  high = 1 if info.multi_label else info.num_classes - 1
  if labels.size and (labels.min() < 0 or labels.max() > high):
    raise errors.DataError(f'{path}: {key} has values in [{labels.min()}, {labels.max()}], expected '
                           + ('0/1 multi-hot labels' if info.multi_label else f'class indices 0..{high}'))
  return labels


def _validate(path: pathlib.Path, info: MedMNISTInfo, size: int) -> dict[str, np.ndarray]:
  """Checks every array of the archive (keys, shapes, dtypes, label values); returns labels per split."""
  try:
    return _validate_unchecked(path, info, size)
  except errors.DataError:
    raise
  except _READ_ERRORS as e:
    raise errors.DataError(f'{path} is not a valid MedMNIST .npz file: {type(e).__name__}: {e}') from e


def _validate_unchecked(path: pathlib.Path, info: MedMNISTInfo, size: int) -> dict[str, np.ndarray]:
  image_shape = (size, size) if info.n_channels == 1 else (size, size, 3)
  labels = {}
  with _open_npz(path) as npz:
    for split in SPLITS:
      key = f'{split}_images'
      shape, dtype = _array_header(npz, key, path)
      if dtype != np.uint8:
        raise errors.DataError(f'{path}: {key} has dtype {dtype}, expected uint8')
      if len(shape) != 1 + len(image_shape) or tuple(shape[1:]) != image_shape:
        expected = ', '.join(map(str, image_shape))
        raise errors.DataError(f'{path}: {key} has shape {shape}, expected (N, {expected}) for {info.name} '
                               f'at {size} px')
      labels[split] = _load_labels(npz, split, shape[0], info, path)
  counts = {s: len(v) for s, v in labels.items()}
  if counts != dict(info.n_samples):
    log.info('%s: split sizes %s differ from the official %s', path, counts, dict(info.n_samples))
  return labels


# ---------------------------------------------------------------------------------------------------------
# TFDS builder.

@dataclasses.dataclass(eq=False)
class MedMNISTConfig(tfds.core.BuilderConfig):
  """One MedMNIST dataset at one image size."""
  dataset: str = ''
  image_size: int = 28


class MedMNIST(builder_base.LocalBuilder):
  """TFDS builder for the 2D MedMNIST datasets (MedMNIST v2, Yang et al., Scientific Data 2023), all sizes.

  Extra constructor arguments (besides TFDS's `data_dir`, `config`, `version`, ...):
    raw_dir: folder holding the official `.npz` files; default `$MEDUNLEARN_DATA_DIR/medmnist`.
    download: whether a file missing from `raw_dir` may be downloaded from Zenodo (MD5-verified) into
      `<data_dir>/downloads/medmnist/`.
    allow_unverified: use a file in `raw_dir` whose official MD5 is unknown (never downloaded).
  """
  name = FAMILY
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Official MedMNIST+ (v3, Zenodo 10519652) files; stable ids across splits.'}
  BUILDER_CONFIGS = [
      MedMNISTConfig(name=f'{name}_{size}', dataset=name, image_size=size,
                     description=(f'{name} at {size}x{size} px ({INFO[name].task}, '
                                  f'{INFO[name].n_channels} channel(s))'))
      for name in DATASETS for size in SIZES
  ]

  def __init__(self, *, raw_dir: str | os.PathLike | None = None, download: bool = True,
               allow_unverified: bool = False, **kwargs):
    self._raw_dir = (pathlib.Path(raw_dir).expanduser().resolve() if raw_dir is not None
                     else paths.raw_dir(FAMILY))
    self._download = bool(download)
    self._allow_unverified = bool(allow_unverified)
    super().__init__(**kwargs)

  @property
  def medmnist_info(self) -> MedMNISTInfo:
    return INFO[self.builder_config.dataset]

  @property
  def cache_dir(self) -> pathlib.Path:
    """Where downloaded release files are kept: `<data_dir>/downloads/medmnist/`."""
    return pathlib.Path(os.fspath(self.data_dir_root)) / 'downloads' / FAMILY

  def _info(self) -> tfds.core.DatasetInfo:
    info, size = self.medmnist_info, self.builder_config.image_size
    label = (tfds.features.Tensor(shape=(info.num_classes,), dtype=np.int64) if info.multi_label
             else tfds.features.Scalar(dtype=np.int64))
    features = tfds.features.FeaturesDict({
        ds_lib.ID: tfds.features.Scalar(dtype=np.int64),
        # Raw bytes: array_record already compresses each record, so zlib on top saves nothing and costs
        # decode time; the default encoding would store every pixel as an int64.
        ds_lib.IMAGE: tfds.features.Tensor(shape=(size, size, info.n_channels), dtype=np.uint8,
                                           encoding=tfds.features.Encoding.BYTES),
        ds_lib.LABEL: label,
    })
    classes = '; '.join(f'{i}: {c}' for i, c in enumerate(info.class_names))
    description = (
        f'MedMNIST {info.name} at {size}x{size} px, {info.task} task over {info.num_classes} '
        f'{"labels" if info.multi_label else "classes"} ({classes}). Built from the official MD5-verified '
        f'release file {file_name(info.name, size)}. `id` is unique across splits (train rows, then val, '
        f'then test). Licence: {info.license}. MedMNIST v2: Yang et al., Scientific Data 2023.')
    return tfds.core.DatasetInfo(
        builder=self, description=description, features=features,
        supervised_keys=(ds_lib.IMAGE, ds_lib.LABEL), disable_shuffling=True,
        homepage=HOMEPAGE, citation=CITATION, license=info.license)

  def _split_generators(self, dl_manager):
    del dl_manager  # files are located and verified by `download.locate_or_fetch`
    info, size = self.medmnist_info, self.builder_config.image_size
    name = file_name(info.name, size)
    path = download_lib.locate_or_fetch(
        name, info.md5.get(size), raw_dir=self._raw_dir, cache_dir=self.cache_dir, url=file_url(name),
        download=self._download, allow_unverified=self._allow_unverified, family=FAMILY)
    labels = _validate(path, info, size)
    generators, offset = {}, 0
    for split in SPLITS:
      generators[split] = self._generate_examples(path, split, labels[split], offset)
      offset += len(labels[split])
    return generators

  def _generate_examples(self, path: pathlib.Path, split: str, labels: np.ndarray, id_offset: int):
    info, size = self.medmnist_info, self.builder_config.image_size
    row_shape = (size, size, info.n_channels)
    try:
      with _open_npz(path) as npz:
        rows = _iter_image_rows(npz, f'{split}_images', len(labels), row_shape, path)
        for i, (image, label) in enumerate(zip(rows, labels)):
          example_id = id_offset + i
          yield example_id, {ds_lib.ID: example_id, ds_lib.IMAGE: image, ds_lib.LABEL: label}
    except _READ_ERRORS as e:
      raise errors.DataError(f'{path}: reading {split}_images failed: {type(e).__name__}: {e}') from e


# ---------------------------------------------------------------------------------------------------------
# Entry point.

def _is_built(builder: tfds.core.DatasetBuilder) -> bool:
  return (pathlib.Path(os.fspath(builder.data_path)) / 'dataset_info.json').is_file()


def _rmdir_if_empty(path: pathlib.Path) -> None:
  try:
    path.rmdir()
  except OSError:
    pass


def _clean_failed_build(version_dir: pathlib.Path, data_root: pathlib.Path,
                        existed: Mapping[pathlib.Path, bool]) -> None:
  """Removes what a failed build left: TFDS's incomplete.* dirs and the folders this build created.

  Verified files in the download cache are kept (they are complete and checked).
  """
  config_dir, family_dir = version_dir.parent, version_dir.parent.parent
  for leftover in config_dir.glob('incomplete.*'):
    shutil.rmtree(leftover, ignore_errors=True)
  if version_dir.exists() and not (version_dir / 'dataset_info.json').exists():
    shutil.rmtree(version_dir, ignore_errors=True)
  if not existed[config_dir]:
    _rmdir_if_empty(config_dir)
  if not existed[family_dir]:  # TFDS wrote only `.config/metadata.json` there before failing
    shutil.rmtree(family_dir / '.config', ignore_errors=True)
    _rmdir_if_empty(family_dir)
  downloads = data_root / 'downloads'
  if not existed[downloads]:
    for sub in (downloads / 'extracted', downloads / FAMILY, downloads):
      _rmdir_if_empty(sub)
  if not existed[data_root]:
    _rmdir_if_empty(data_root)


def prepare(name: str, image_size: int, *, raw_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None, download: bool = True,
            allow_unverified: bool = False) -> tfds.core.DatasetBuilder:
  """Builds `medmnist/<name>_<image_size>` in the TFDS data dir (once) and returns its builder.

  MedMNIST v2: Yang et al., Scientific Data 2023. The dataset is read back with `builder.as_data_source()`
  or `tfds.data_source('medmnist/<name>_<size>', data_dir=...)`, without TensorFlow.

  Args:
    name: a MedMNIST 2D dataset, one of `DATASETS` (e.g. 'pneumoniamnist').
    image_size: 28, 64, 128 or 224.
    raw_dir: folder holding the official `.npz` files; default `$MEDUNLEARN_DATA_DIR/medmnist`.
    data_dir: TFDS data dir; default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
    download: whether a file missing from `raw_dir` may be downloaded (MD5-verified) from Zenodo.
    allow_unverified: accept a local file for which no official MD5 is known.

  Returns:
    The builder; if the dataset was already built (its `dataset_info.json` exists) nothing is rebuilt.

  Raises:
    errors.UserError: unknown dataset or size.
    errors.DataError: missing, corrupt or malformed raw file, or a failed download. No partially built
      dataset folder is left behind.
  """
  config = config_name(name, image_size)
  raw = pathlib.Path(raw_dir).expanduser().resolve() if raw_dir is not None else paths.raw_dir(FAMILY)
  root = paths.tfds_data_dir(data_dir)
  builder = MedMNIST(config=config, data_dir=os.fspath(root), raw_dir=raw, download=download,
                     allow_unverified=allow_unverified)
  if _is_built(builder):
    return builder
  version_dir = pathlib.Path(os.fspath(builder.data_path))
  existed = {p: p.exists() for p in (version_dir.parent, version_dir.parent.parent, root / 'downloads', root)}
  try:
    builder.download_and_prepare(
        file_format='array_record',
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  except BaseException:
    _clean_failed_build(version_dir, root, existed)
    raise
  return builder
