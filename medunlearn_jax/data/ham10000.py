"""HAM10000 dermatoscopy as a TFDS dataset (array_record, no TensorFlow), grouped by lesion for unlearning.

Tschandl, Rosendahl and Kittler, "The HAM10000 dataset, a large collection of multi-source dermatoscopic
images of common pigmented skin lesions", Scientific Data 5, 180161 (2018). Licence CC BY-NC 4.0
(non-commercial). 10,015 images of 7,470 lesions, 7 diagnoses.

Raw layout, in `$MEDUNLEARN_DATA_DIR/ham10000/` (or `.../ham10000_8x8/`, the shared folder's name, when
`ham10000/` is absent) or `raw_dir`:

    HAM10000_metadata.csv               lesion_id, image_id, dx, dx_type, age, sex, localization
    and one image source, by default the first present in this order (`source` picks one explicitly):
    HAM10000_images_part_1/, _part_2/   the official <image_id>.jpg files (600x450 RGB)      -> 3 channels
    hmnist_28_28_RGB.csv                Kaggle "Skin Cancer MNIST" pixels (28x28x3)             -> 3 channels
    hmnist_28_28_L.csv                  (28x28 grey)                                            -> 1 channel
    hmnist_8_8_RGB.csv                  (8x8x3)                                                 -> 3 channels
    hmnist_8_8_L.csv                    (8x8 grey)                                              -> 1 channel

The hmnist CSVs have no id column: row i belongs to metadata row i. Their `label` column (Kaggle's code, see
`KAGGLE_LABEL`) is checked against the metadata's dx for every row, so a misaligned pair of files is a
DataError rather than silently wrong labels.

What this project's shared data has is `hmnist_8_8_L.csv`: the built dataset is then 8x8 grey pixels
upsampled (bilinear) to the requested size, e.g. 28 px; metadata["source"] and ["native_size"] say so.
Official jpgs are resized with area averaging, aspect ratio not kept.

There is no patient id in HAM10000; several photos of one lesion share a `lesion_id`, which is used as
`patient_id` for the seeded 70/10/20 lesion-disjoint split and for patient-level forgetting.

Builder `ham10000`, configs `<task>_<size>`: task `dx` (7 classes in `DX_CLASSES` order, that of
MedMNIST's DermaMNIST) or `binary` (malignant mel/bcc/akiec = 1 vs benign = 0), size 28/64/128/224.
Features: `id` (int64, the 0-based metadata row), `image` uint8 (S, S, C), `label` int64, `patient_id`
(= lesion_id), `sex` ('F'/'M'/''), `age` (float32, NaN unknown), `lesion_id`, `image_id`, `dx`, `dx_type`,
`localization`. Missing jpgs are skipped and counted (metadata["missing_images"]).
"""
from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from medunlearn_jax import errors
from medunlearn_jax.data import builder_base
from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.data import medmnist
from medunlearn_jax.data import paths
from medunlearn_jax.data import splits

FAMILY = 'ham10000'  # raw sub-folder and TFDS builder name
SHARED_FOLDER = 'ham10000_8x8'  # the shared data folder's name, used when `ham10000/` is absent
TASKS = ('dx', 'binary')
SIZES = splits.SIZES
METADATA_CSV = 'HAM10000_metadata.csv'
JPG_FOLDERS = ('HAM10000_images_part_1', 'HAM10000_images_part_2', 'HAM10000_images')
# source -> (pixel CSV or None for jpgs, native size, channels); dict order = automatic preference.
SOURCES: dict[str, tuple[str | None, int | None, int]] = {
    'jpg': (None, None, 3),
    'hmnist_28_28_RGB': ('hmnist_28_28_RGB.csv', 28, 3),
    'hmnist_28_28_L': ('hmnist_28_28_L.csv', 28, 1),
    'hmnist_8_8_RGB': ('hmnist_8_8_RGB.csv', 8, 3),
    'hmnist_8_8_L': ('hmnist_8_8_L.csv', 8, 1),
}
DX_CLASSES = ('akiec', 'bcc', 'bkl', 'df', 'mel', 'nv', 'vasc')
DX_NAMES = ('actinic keratoses and intraepithelial carcinoma', 'basal cell carcinoma',
            'benign keratosis-like lesions', 'dermatofibroma', 'melanoma', 'melanocytic nevi',
            'vascular lesions')
MALIGNANT = ('mel', 'bcc', 'akiec')
BINARY_CLASSES = ('benign', 'malignant')
# The `label` column of the hmnist CSVs (the Kaggle kernel's code: mel sorts last under its wrong name).
KAGGLE_LABEL = {'akiec': 0, 'bcc': 1, 'bkl': 2, 'df': 3, 'nv': 4, 'vasc': 5, 'mel': 6}
COLUMNS = ('lesion_id', 'image_id', 'dx', 'dx_type', 'age', 'sex', 'localization')
FRACTIONS = splits.DEFAULT_FRACTIONS
HOMEPAGE = 'https://doi.org/10.7910/DVN/DBW86T'
CITATION = r"""@article{tschandl2018ham10000,
  title={The HAM10000 dataset, a large collection of multi-source dermatoscopic images of common pigmented
         skin lesions},
  author={Tschandl, Philipp and Rosendahl, Cliff and Kittler, Harald},
  journal={Scientific Data},
  volume={5},
  pages={180161},
  year={2018}
}"""

# Source of the last `prepare` per config, so that `dataset_info` agrees with it on the channel count.
_PREPARED_SOURCE: dict[str, str] = {}


def resolve_raw(raw_dir: str | os.PathLike | None) -> pathlib.Path | None:
  """raw_dir, or the default; a missing `.../ham10000` falls back to its sibling `.../ham10000_8x8`."""
  path = pathlib.Path(raw_dir).expanduser().resolve() if raw_dir is not None else paths.raw_dir(FAMILY)
  if path is not None and path.name == FAMILY and not (path / METADATA_CSV).is_file():
    shared = path.parent / SHARED_FOLDER
    if (shared / METADATA_CSV).is_file():
      return shared
  return path


def available_sources(raw_dir: pathlib.Path | None) -> list[str]:
  """The image sources present in raw_dir, most preferred first."""
  if raw_dir is None or not raw_dir.is_dir():
    return []
  out = []
  for name, (file, _, _) in SOURCES.items():
    present = (any((raw_dir / d).is_dir() for d in JPG_FOLDERS) if file is None else (raw_dir / file).is_file())
    if present:
      out.append(name)
  return out


def _check_source(source: str) -> str:
  if source != 'auto' and source not in SOURCES:
    raise errors.UserError(f'unknown HAM10000 source {source!r}; choose one of: auto, {", ".join(SOURCES)}')
  return source


def _version_dir(data_dir: str | os.PathLike | None, config: str) -> pathlib.Path:
  return paths.tfds_data_dir(data_dir) / FAMILY / config / str(Ham10000.VERSION)


def resolve_source(source: str, raw_dir: pathlib.Path | None, version_dir: pathlib.Path | None) -> str:
  """The source a build uses: explicit, else what an existing build used, else the best one present."""
  if _check_source(source) != 'auto':
    return source
  built = splits.built_metadata(version_dir) if version_dir is not None else None
  if built and built.get('source') in SOURCES:
    return built['source']
  found = available_sources(raw_dir)
  return found[0] if found else 'jpg'


@dataclasses.dataclass(frozen=True)
class Row:
  id: int
  lesion_id: str
  image_id: str
  dx: str
  dx_type: str
  age: float
  sex: str
  localization: str


def read_rows(raw_dir: pathlib.Path) -> list[Row]:
  """Every data row of HAM10000_metadata.csv, in file order."""
  path = splits.require_file(raw_dir / METADATA_CSV, f'the official HAM10000 metadata file {METADATA_CSV}')
  rows = []
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    splits.require_columns(path, reader.fieldnames, COLUMNS)
    for i, r in enumerate(reader):
      dx = r['dx'].strip()
      if dx not in DX_CLASSES:
        raise errors.DataError(f'{path}: data row {i} has unknown dx {dx!r}; expected one of {DX_CLASSES}')
      rows.append(Row(id=i, lesion_id=r['lesion_id'].strip(), image_id=r['image_id'].strip(), dx=dx,
                      dx_type=r['dx_type'].strip(), age=splits.parse_float(r['age']),
                      sex=splits.normalize_sex(r['sex']), localization=r['localization'].strip()))
  if not rows:
    raise errors.DataError(f'{path} has no data rows')
  return rows


def read_pixels(raw_dir: pathlib.Path, source: str, rows: list[Row]) -> np.ndarray:
  """uint8 (N, s, s) or (N, s, s, 3) from an hmnist CSV, after checking it is aligned with the metadata."""
  file, size, channels = SOURCES[source]
  path = splits.require_file(raw_dir / file, f'the Kaggle Skin Cancer MNIST file {file}')
  with open(path, newline='') as f:
    header = next(csv.reader(f), [])
  n_pixels = size * size * channels
  pixel_columns = [c for c in header if c.startswith('pixel')]
  if len(pixel_columns) != n_pixels:
    raise errors.DataError(f'{path} has {len(pixel_columns)} pixel columns, expected {n_pixels} for {source}')
  try:
    table = np.loadtxt(path, delimiter=',', skiprows=1, dtype=np.int64, ndmin=2)
  except ValueError as e:
    raise errors.DataError(f'{path} is not a numeric CSV: {e}') from e
  if len(table) != len(rows):
    raise errors.DataError(f'{path} has {len(table)} rows but {METADATA_CSV} has {len(rows)}; the files are '
                           'joined by row position and must have the same rows')
  pixel_idx = [i for i, c in enumerate(header) if c.startswith('pixel')]
  pixels = table[:, pixel_idx]
  if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
    raise errors.DataError(f'{path} has pixel values outside 0..255')
  if 'label' in header:
    labels = table[:, header.index('label')]
    expected = np.asarray([KAGGLE_LABEL[r.dx] for r in rows])
    bad = np.flatnonzero(labels != expected)
    if bad.size:
      raise errors.DataError(f'{path} is not aligned with {METADATA_CSV}: {bad.size} row(s) have a label that '
                             f'does not match dx, first at data row {bad[0]}')
  shape = (len(rows), size, size) if channels == 1 else (len(rows), size, size, 3)
  return pixels.astype(np.uint8).reshape(shape)


def jpg_index(raw_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """image_id -> jpg path over the official image folders."""
  index = {}
  for folder in JPG_FOLDERS:
    for p in sorted((raw_dir / folder).glob('*.jpg')):
      index.setdefault(p.stem, p)
  return index


def _label(dx: str, task: str) -> np.int64:
  return np.int64(int(dx in MALIGNANT) if task == 'binary' else DX_CLASSES.index(dx))


HAMConfig = builder_base.TaskConfig


class Ham10000(builder_base.LocalBuilder):
  """HAM10000 (Tschandl et al., Sci. Data 2018) with lesion id (as patient id), sex, age and site.

  Extra constructor arguments (besides TFDS's `data_dir`, `config`, ...):
    raw_dir: the manual folder; default `$MEDUNLEARN_DATA_DIR/ham10000` (or `.../ham10000_8x8`).
    split_seed: seed of the lesion split (recorded in the metadata).
    source: 'auto' or one of `SOURCES`; decides the channel count (recorded in the metadata).
  """
  name = FAMILY
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'jpg or hmnist sources; ids = metadata row; lesion-disjoint splits.'}
  BUILDER_CONFIGS = [HAMConfig(name=f'{t}_{s}', task=t, image_size=s, description=f'{t} task at {s}x{s} px')
                     for t in TASKS for s in SIZES]

  def __init__(self, *, raw_dir: str | os.PathLike | None = None, split_seed: int = 0, source: str = 'auto',
               **kwargs):
    self._raw_dir = resolve_raw(raw_dir)
    self._split_seed = int(split_seed)
    config = kwargs.get('config') or self.BUILDER_CONFIGS[0].name
    config = getattr(config, 'name', config)
    # The channel count is part of the features, which TFDS needs before reading an existing build: take
    # the source that build used when there is one.
    version_dir = _version_dir(kwargs.get('data_dir'), config) if isinstance(config, str) else None
    self._source = resolve_source(source, self._raw_dir, version_dir)
    super().__init__(**kwargs)

  @property
  def source(self) -> str:
    return self._source

  def _info(self) -> tfds.core.DatasetInfo:
    task, size = self.builder_config.task, self.builder_config.image_size
    channels = SOURCES[self._source][2]
    features = builder_base.medical_features(
        size, channels, builder_base.label_feature(None), lesion_id=tfds.features.Text(),
        image_id=tfds.features.Text(), dx=tfds.features.Text(), dx_type=tfds.features.Text(),
        localization=tfds.features.Text())
    labels = ('0: benign, 1: malignant (mel, bcc, akiec)' if task == 'binary'
              else '; '.join(f'{i}: {c}' for i, c in enumerate(DX_CLASSES)))
    description = (
        f'HAM10000 (Tschandl et al., Sci. Data 2018), {task} task ({labels}), {size}x{size}x{channels} from '
        f'source {self._source}. patient_id = lesion_id; splits are lesion-disjoint. Licence CC BY-NC 4.0.')
    return tfds.core.DatasetInfo(builder=self, description=description, features=features,
                                 homepage=HOMEPAGE, citation=CITATION, disable_shuffling=True,
                                 license='CC BY-NC 4.0', metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # Manual data only.
    raw_dir = splits.resolve_raw_dir(FAMILY, self._raw_dir, None)
    rows = read_rows(raw_dir)
    assigned = splits.patient_split([r.lesion_id for r in rows], FRACTIONS, self._split_seed)
    file, native, _ = SOURCES[self._source]
    missing: list[str] = []
    if file is None:
      index = jpg_index(raw_dir)
      missing = [r.image_id for r in rows if r.image_id not in index]
      items = [(r, s, index[r.image_id]) for r, s in zip(rows, assigned) if r.image_id in index]
    else:
      pixels = read_pixels(raw_dir, self._source, rows)
      items = [(r, s, p) for r, s, p in zip(rows, assigned, pixels)]
    splits.report_missing(FAMILY, missing, len(rows))
    usable = {s: [(r, x) for r, sp, x in items if sp == s] for s in splits.SPLIT_NAMES}
    splits.check_usable(FAMILY, {s: len(v) for s, v in usable.items()}, raw_dir)
    self.info.metadata.update({
        'rows': len(rows), 'missing_images': len(missing), 'missing_examples': missing[:20],
        'split_seed': self._split_seed, 'split': f'seeded lesion split {FRACTIONS}', 'source': self._source,
        'native_size': native or 'original jpg', 'channels': SOURCES[self._source][2],
        'examples': {s: len(v) for s, v in usable.items()},
        'patients': {s: len({r.lesion_id for r, _ in v}) for s, v in usable.items()}})
    return {s: self._generate_examples(v) for s, v in usable.items()}

  def _generate_examples(self, items: list[tuple[Row, Any]]) -> Iterator[tuple[int, dict]]:
    task, size = self.builder_config.task, self.builder_config.image_size
    channels = SOURCES[self._source][2]
    for row, x in items:
      image = (splits.load_image(x, size, channels) if isinstance(x, pathlib.Path)
               else splits.array_to_image(x, size))
      yield row.id, {
          ds_lib.ID: row.id, ds_lib.IMAGE: image, ds_lib.LABEL: _label(row.dx, task),
          ds_lib.PATIENT_ID: row.lesion_id, ds_lib.SEX: row.sex, ds_lib.AGE: np.float32(row.age),
          'lesion_id': row.lesion_id, 'image_id': row.image_id, 'dx': row.dx, 'dx_type': row.dx_type,
          'localization': row.localization}


def dataset_info(task: str, image_size: int, *, source: str = 'auto', raw_dir: str | os.PathLike | None = None,
                 data_dir: str | os.PathLike | None = None,
                 builder: tfds.core.DatasetBuilder | None = None) -> ds_lib.DatasetInfo:
  """Model/metric facts of a task at a size; `name` is the TFDS name 'ham10000/<task>_<size>'.

  The channel count depends on the image source: taken from `builder` when given, else from the last
  `prepare` of this config in this process, else from an existing build or the files in the raw folder.
  """
  task, size = splits.check_task_size(FAMILY, task, image_size, TASKS)
  config = f'{task}_{size}'
  if builder is not None:
    channels = int(builder.info.features[ds_lib.IMAGE].shape[-1])
  else:
    if _check_source(source) == 'auto' and config in _PREPARED_SOURCE:
      source = _PREPARED_SOURCE[config]
    channels = SOURCES[resolve_source(source, resolve_raw(raw_dir), _version_dir(data_dir, config))][2]
  if task == 'binary':
    return ds_lib.DatasetInfo(f'{FAMILY}/{config}', 2, (size, size, channels), 'binary', BINARY_CLASSES)
  # DermaMNIST holds these images (its own split) under the same 7 diagnoses.
  return ds_lib.DatasetInfo(f'{FAMILY}/{config}', len(DX_CLASSES), (size, size, channels), 'multi-class',
                            DX_CLASSES, anchor_accuracy=medmnist.PUBLISHED_RESNET18_28['dermamnist'],
                            anchor_source=f'DermaMNIST, {medmnist.PUBLISHED_SOURCE}; the same HAM10000 images, '
                            'another split')


def prepare(task: str, image_size: int, *, raw_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None, split_seed: int = 0,
            source: str = 'auto') -> tfds.core.DatasetBuilder:
  """Builds `ham10000/<task>_<size>` once (array_record) and returns its builder.

  HAM10000: Tschandl et al., Sci. Data 2018. Read back with `builder.as_data_source()`, without TensorFlow.

  Args:
    task: 'dx' (7 diagnoses) or 'binary' (malignant vs benign).
    image_size: 28, 64, 128 or 224.
    raw_dir: the manual folder; default `$MEDUNLEARN_DATA_DIR/ham10000`, or `.../ham10000_8x8` when the
      former has no metadata file.
    data_dir: TFDS data dir; default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
    split_seed: seed of the lesion split.
    source: 'auto' (official jpgs if present, else the largest hmnist CSV) or one of `SOURCES`.

  Raises:
    errors.UserError: unknown task, size or source, or an existing build made with another split_seed or
      (explicitly requested) source.
    errors.DataError: missing folder, metadata CSV, image source, misaligned CSVs, or no usable image.
      Nothing half-built is left.
  """
  task, size = splits.check_task_size(FAMILY, task, image_size, TASKS)
  _check_source(source)
  root = paths.tfds_data_dir(data_dir)
  raw = resolve_raw(raw_dir)
  builder = Ham10000(config=f'{task}_{size}', data_dir=os.fspath(root), raw_dir=raw, split_seed=split_seed,
                     source=source)
  where = pathlib.Path(os.fspath(builder.data_path))

  def check_built(meta):
    splits.check_option('split_seed', meta, int(split_seed), where)
    if source != 'auto':
      splits.check_option('source', meta, source, where)

  if not splits.is_built(builder):
    raw = splits.resolve_raw_dir(FAMILY, raw, None)
    splits.require_file(raw / METADATA_CSV, f'the official HAM10000 metadata file {METADATA_CSV}')
    found = available_sources(raw)
    if not found:
      raise errors.DataError(f'no HAM10000 images in {raw}: expected {" or ".join(JPG_FOLDERS[:2])} folders or '
                             f'one of {", ".join(f for f, _, _ in SOURCES.values() if f)}')
    if builder.source not in found:
      raise errors.DataError(f'HAM10000 source {builder.source!r} is not in {raw} (found: {", ".join(found)})')
  builder = splits.build_or_reuse(builder, check_built)
  _PREPARED_SOURCE[f'{task}_{size}'] = builder.source
  return builder
