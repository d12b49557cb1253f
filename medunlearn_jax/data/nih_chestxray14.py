"""NIH ChestX-ray14 as a TFDS dataset (array_record, no TensorFlow), with patient metadata for unlearning.

Wang et al., "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised
Classification and Localization of Common Thorax Diseases", CVPR 2017. NIH Clinical Center; unrestricted use
with citation. The full release is 112,120 frontal chest X-rays (1024x1024 PNG) of 30,805 patients.

Raw layout (the official one), in `$MEDUNLEARN_DATA_DIR/nih_chestxray14/` or `raw_dir`:

    Data_Entry_2017.csv           Image Index, Finding Labels, Follow-up #, Patient ID, Patient Age,
                                  Patient Gender, View Position, ...
    images/<Image Index>.png      (or the release's images_001/images/... sub-folders)
    train_val_list.txt            optional official patient-disjoint lists; when both are present the
    test_list.txt                 test list is the test split and train/val are split by patient from the rest

Without the lists, train/val/test are a seeded 70/10/20 split of the patients (`splits.patient_split`).
CSV rows whose image file is absent are skipped, counted in the metadata (`missing_images`) and logged.

Builder `nih_chestxray14`, configs `<task>_<size>` with task `binary` ('No Finding' = 0 vs any of the 14
findings = 1) or `multilabel` (14-way multi-hot in `FINDINGS` order) and size 28/64/128/224. Images are
converted to grayscale (RGB/RGBA/16-bit -> L) and resized with PIL (area averaging when shrinking).
Features: `id` (int64, the 0-based data row of Data_Entry_2017.csv, so it never changes between builds),
`image` uint8 (S, S, 1), `label`, `patient_id` (8-digit text), `sex` ('F'/'M'/''), `age` (float32 years, NaN
unknown), `view` ('PA'/'AP'), `follow_up` (int64) and `image_name`.

    builder = nih_chestxray14.prepare('binary', 28)
    builder.as_data_source()['train'][0]
"""
from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import re
from typing import Any, Iterator, Mapping

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from medunlearn_jax import errors
from medunlearn_jax.data import builder_base
from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.data import paths
from medunlearn_jax.data import splits

FAMILY = 'nih_chestxray14'  # raw sub-folder and TFDS builder name
TASKS = ('binary', 'multilabel')
SIZES = splits.SIZES
CSV_NAME = 'Data_Entry_2017.csv'
TRAIN_VAL_LIST, TEST_LIST = 'train_val_list.txt', 'test_list.txt'
# The official label order (Wang et al. 2017; also ChestMNIST's).
FINDINGS = ('Atelectasis', 'Cardiomegaly', 'Effusion', 'Infiltration', 'Mass', 'Nodule', 'Pneumonia',
            'Pneumothorax', 'Consolidation', 'Edema', 'Emphysema', 'Fibrosis', 'Pleural_Thickening', 'Hernia')
NO_FINDING = 'No Finding'
BINARY_CLASSES = ('no finding', 'finding')
FRACTIONS = splits.DEFAULT_FRACTIONS
# With the official lists, val is this fraction of the train_val patients.
VAL_FRACTION_OF_TRAIN_VAL = 0.125
COLUMNS = ('Image Index', 'Finding Labels', 'Follow-up #', 'Patient ID', 'Patient Age', 'Patient Gender',
           'View Position')
HOMEPAGE = 'https://nihcc.app.box.com/v/ChestXray-NIHCC'
CITATION = r"""@inproceedings{wang2017chestxray,
  title={ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised Classification
         and Localization of Common Thorax Diseases},
  author={Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and Bagheri, Mohammadhadi and
          Summers, Ronald M},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  pages={2097--2106},
  year={2017}
}"""

_AGE = re.compile(r'^\s*(\d+(?:\.\d+)?)\s*([YMD]?)\s*$', re.IGNORECASE)
# The release has a handful of impossible ages (e.g. '414Y'); they are data-entry errors, so unknown.
_MAX_AGE = 120.0


def parse_age(value: str) -> float:
  """Years from the CSV's age field ('058Y', '7M', '20D' or a plain number); NaN when unknown/implausible."""
  m = _AGE.match(str(value))
  if not m:
    return float('nan')
  years = float(m.group(1)) / {'': 1.0, 'Y': 1.0, 'M': 12.0, 'D': 365.0}[m.group(2).upper()]
  return years if years <= _MAX_AGE else float('nan')


def _patient(value: str) -> str:
  v = str(value).strip()
  # Some copies of the CSV lost the zero padding ('1' for '00000001'); the image names keep 8 digits.
  return v.zfill(8) if v.isdigit() else v


@dataclasses.dataclass(frozen=True)
class Row:
  id: int
  image_name: str
  findings: tuple[str, ...]
  patient_id: str
  sex: str
  age: float
  view: str
  follow_up: int


def read_rows(raw_dir: pathlib.Path) -> list[Row]:
  """Every data row of Data_Entry_2017.csv, in file order; DataError for a missing file/column or label."""
  path = splits.require_file(raw_dir / CSV_NAME, f'the official NIH ChestX-ray14 label file {CSV_NAME}')
  rows = []
  known = set(FINDINGS) | {NO_FINDING}
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    splits.require_columns(path, reader.fieldnames, COLUMNS)
    for i, r in enumerate(reader):
      findings = tuple(x.strip() for x in r['Finding Labels'].split('|') if x.strip())
      unknown = set(findings) - known
      if unknown or not findings:
        raise errors.DataError(f'{path}: data row {i} has unknown finding label(s) {sorted(unknown) or ["<empty>"]}')
      try:
        follow_up = int(r['Follow-up #'])
      except ValueError as e:
        raise errors.DataError(f'{path}: data row {i} has a non-integer Follow-up # {r["Follow-up #"]!r}') from e
      rows.append(Row(id=i, image_name=r['Image Index'].strip(), findings=findings,
                      patient_id=_patient(r['Patient ID']), sex=splits.normalize_sex(r['Patient Gender']),
                      age=parse_age(r['Patient Age']), view=r['View Position'].strip().upper(),
                      follow_up=follow_up))
  if not rows:
    raise errors.DataError(f'{path} has no data rows')
  return rows


def image_index(raw_dir: pathlib.Path) -> dict[str, pathlib.Path]:
  """Image file name -> path, from `images/` and the release's `images_NNN/images/` folders."""
  index = {}
  for pattern in ('images/*.png', 'images_*/images/*.png', 'images_*/*.png'):
    for p in sorted(raw_dir.glob(pattern)):
      index.setdefault(p.name, p)
  return index


def _read_list(path: pathlib.Path) -> set[str]:
  return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def assign_splits(rows: list[Row], raw_dir: pathlib.Path, seed: int) -> tuple[np.ndarray, str]:
  """Split name per row ('' = not in the official lists) and a note on how the split was made."""
  pids = np.asarray([r.patient_id for r in rows])
  lists = [raw_dir / TRAIN_VAL_LIST, raw_dir / TEST_LIST]
  present = [p.is_file() for p in lists]
  if not any(present):
    return splits.patient_split(pids, FRACTIONS, seed), f'seeded patient split {FRACTIONS}'
  if not all(present):
    raise errors.DataError(f'found only one of {TRAIN_VAL_LIST} and {TEST_LIST} in {raw_dir}; '
                           'add the other official list or remove it to split by patient')
  train_val, test = _read_list(lists[0]), _read_list(lists[1])
  names = np.asarray([r.image_name for r in rows])
  in_test = np.isin(names, list(test))
  in_train_val = np.isin(names, list(train_val)) & ~in_test
  shared = np.intersect1d(pids[in_test], pids[in_train_val])
  if shared.size:
    raise errors.DataError(f'the official lists put images of {shared.size} patient(s) in both train_val and '
                           f'test, e.g. {shared[:3].tolist()}; splits would not be patient-disjoint')
  out = np.full(len(rows), '', dtype='<U5')
  out[in_test] = 'test'
  fr = (1.0 - VAL_FRACTION_OF_TRAIN_VAL, VAL_FRACTION_OF_TRAIN_VAL)
  out[in_train_val] = splits.patient_split(pids[in_train_val], fr, seed, names=('train', 'val'))
  return out, f'official {TEST_LIST}; {TRAIN_VAL_LIST} split by patient {fr}'


def _label(findings: tuple[str, ...], task: str) -> Any:
  if task == 'binary':
    return np.int64(0 if findings == (NO_FINDING,) else 1)
  return np.asarray([int(f in findings) for f in FINDINGS], dtype=np.int64)


NIHConfig = builder_base.TaskConfig


class NihChestXray14(builder_base.PatientBuilder):
  """NIH ChestX-ray14 (Wang et al., CVPR 2017) with patient id, sex, age, view and follow-up number.

  Extra constructor arguments (besides TFDS's `data_dir`, `config`, ...):
    raw_dir: the manual folder with Data_Entry_2017.csv and images/; default `$MEDUNLEARN_DATA_DIR/nih_chestxray14`.
    split_seed: seed of the patient split (recorded in the metadata).
  """
  name = FAMILY
  RAW_FAMILY = FAMILY
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Official layout; ids = CSV row; patient-disjoint splits.'}
  BUILDER_CONFIGS = [NIHConfig(name=f'{t}_{s}', task=t, image_size=s,
                               description=f'{t} task at {s}x{s} px, grayscale')
                     for t in TASKS for s in SIZES]

  def _info(self) -> tfds.core.DatasetInfo:
    task, size = self.builder_config.task, self.builder_config.image_size
    label = builder_base.label_feature(None if task == 'binary' else len(FINDINGS))
    features = builder_base.medical_features(size, 1, label, view=tfds.features.Text(),
                                             follow_up=tfds.features.Scalar(dtype=np.int64),
                                             image_name=tfds.features.Text())
    labels = ('0: No Finding, 1: any finding' if task == 'binary'
              else 'multi-hot over ' + ', '.join(FINDINGS))
    description = (
        f'NIH ChestX-ray14 (Wang et al., CVPR 2017), {task} task ({labels}), {size}x{size} grayscale. '
        'id = 0-based data row of Data_Entry_2017.csv; splits are patient-disjoint. Rows without an image '
        'file are skipped; metadata["missing_images"] counts them.')
    return tfds.core.DatasetInfo(builder=self, description=description, features=features,
                                 homepage=HOMEPAGE, citation=CITATION, disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # Manual data only.
    raw_dir = splits.resolve_raw_dir(FAMILY, self._raw_dir, None)
    rows = read_rows(raw_dir)
    split_of_row, how = assign_splits(rows, raw_dir, self._split_seed)
    files = image_index(raw_dir)
    missing = [r.image_name for r in rows if r.image_name not in files]
    splits.report_missing(FAMILY, missing, len(rows))
    usable = {s: [(r, files[r.image_name]) for r, sp in zip(rows, split_of_row)
                  if sp == s and r.image_name in files] for s in splits.SPLIT_NAMES}
    splits.check_usable(FAMILY, {s: len(v) for s, v in usable.items()}, raw_dir)
    unlisted = int(np.sum(split_of_row == ''))
    if unlisted:
      logging.warning('%s: %d rows are in neither official list and are skipped', FAMILY, unlisted)
    self.info.metadata.update({
        'rows': len(rows), 'missing_images': len(missing), 'missing_examples': missing[:20],
        'unlisted_rows': unlisted, 'split_seed': self._split_seed, 'split': how,
        'examples': {s: len(v) for s, v in usable.items()},
        'patients': {s: len({r.patient_id for r, _ in v}) for s, v in usable.items()}})
    return {s: self._generate_examples(v) for s, v in usable.items()}

  def _generate_examples(self, items: list[tuple[Row, pathlib.Path]]) -> Iterator[tuple[int, dict]]:
    task, size = self.builder_config.task, self.builder_config.image_size
    for row, path in items:
      yield row.id, {
          ds_lib.ID: row.id, ds_lib.IMAGE: splits.load_image(path, size, 1),
          ds_lib.LABEL: _label(row.findings, task), ds_lib.PATIENT_ID: row.patient_id, ds_lib.SEX: row.sex,
          ds_lib.AGE: np.float32(row.age), 'view': row.view, 'follow_up': row.follow_up,
          'image_name': row.image_name}


def dataset_info(task: str, image_size: int) -> ds_lib.DatasetInfo:
  """Model/metric facts of a task at a size; `name` is the TFDS name 'nih_chestxray14/<task>_<size>'."""
  task, size = splits.check_task_size(FAMILY, task, image_size, TASKS)
  if task == 'binary':
    return ds_lib.DatasetInfo(f'{FAMILY}/{task}_{size}', 2, (size, size, 1), 'binary', BINARY_CLASSES)
  return ds_lib.DatasetInfo(f'{FAMILY}/{task}_{size}', len(FINDINGS), (size, size, 1), 'multi-label', FINDINGS)


def prepare(task: str, image_size: int, *, raw_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None, split_seed: int = 0) -> tfds.core.DatasetBuilder:
  """Builds `nih_chestxray14/<task>_<size>` once (array_record) and returns its builder.

  NIH ChestX-ray14: Wang et al., CVPR 2017. Read back with `builder.as_data_source()`, without TensorFlow.

  Args:
    task: 'binary' (No Finding vs any finding) or 'multilabel' (14 findings).
    image_size: 28, 64, 128 or 224.
    raw_dir: folder with Data_Entry_2017.csv and images/; default `$MEDUNLEARN_DATA_DIR/nih_chestxray14`.
    data_dir: TFDS data dir; default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
    split_seed: seed of the patient split.

  Raises:
    errors.UserError: unknown task or size, or an existing build made with another split_seed.
    errors.DataError: missing folder, CSV, columns, or no usable image. Nothing half-built is left.
  """
  task, size = splits.check_task_size(FAMILY, task, image_size, TASKS)
  root = paths.tfds_data_dir(data_dir)
  builder = NihChestXray14(config=f'{task}_{size}', data_dir=os.fspath(root), raw_dir=raw_dir,
                           split_seed=split_seed)
  if not splits.is_built(builder):
    splits.resolve_raw_dir(FAMILY, raw_dir, paths.raw_dir(FAMILY))
  where = pathlib.Path(os.fspath(builder.data_path))
  return splits.build_or_reuse(
      builder, lambda meta: splits.check_option('split_seed', meta, int(split_seed), where))
