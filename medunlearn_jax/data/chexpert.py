"""CheXpert (frontal images) as a TFDS dataset (array_record, no TensorFlow), with patient metadata.

Irvin et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert Comparison",
AAAI 2019. Stanford ML Group; research use under the CheXpert dataset licence (download after registration).

Raw layout, in `$MEDUNLEARN_DATA_DIR/chexpert/` or `raw_dir`: the unpacked `CheXpert-v1.0/` or
`CheXpert-v1.0-small/` folder, or its contents directly:

    train.csv, valid.csv       Path, Sex, Age, Frontal/Lateral, AP/PA, then the 14 observations
    train/patient00001/study1/view1_frontal.jpg, ...   (the `Path` column starts with the folder name)

Only frontal images are kept (`Frontal/Lateral` == 'Frontal'). Observations are 1.0 (positive), 0.0
(negative), -1.0 (uncertain) or blank (not mentioned = negative). The uncertainty policy is part of the config:
`multilabel_uones` (-1 -> 1), `multilabel_uzeros` (-1 -> 0), `multilabel_ignore` (-1 kept as -1, so a loss
must mask labels < 0); Irvin et al. compare these policies. `binary` is 'No Finding' (0) vs any finding (1),
read from the 'No Finding' column, which does not depend on the policy.

Splits: the official `valid.csv` (radiologist-consensus labels, patients disjoint from train.csv) is `test`;
the patients of `train.csv` are split 87.5/12.5 into `train`/`val` with a seeded patient split. Patient ids
come from the path (`patient00001`). Rows whose image file is absent are skipped and counted
(metadata["missing_images"]).

Builder `chexpert_frontal` (not `chexpert`, which is TFDS's own builder of the full dataset), configs
`<task>_<size>` for task in `TASKS` and size 28/64/128/224; images are grayscale (S, S, 1), resized with PIL
without keeping the aspect ratio. Features: `id` (int64: train.csv data row i -> i, valid.csv row i ->
VALID_ID_OFFSET + i, stable because it counts every row, frontal or not), `image`, `label` (int64 scalar, or
(14,) in `OBSERVATIONS` order), `patient_id`, `sex` ('F'/'M'/''), `age` (float32, NaN unknown), `view`
('AP'/'PA'/...), `frontal` (bool, always True here) and `path` (the CSV's Path).
"""
from __future__ import annotations

import csv
import dataclasses
import os
import pathlib
import re
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from medunlearn_jax import errors
from medunlearn_jax.data import builder_base
from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.data import paths
from medunlearn_jax.data import splits

FAMILY = 'chexpert'  # raw sub-folder
BUILDER_NAME = 'chexpert_frontal'
POLICIES = ('uones', 'uzeros', 'ignore')
TASKS = ('binary',) + tuple(f'multilabel_{p}' for p in POLICIES)
SIZES = splits.SIZES
FOLDERS = ('CheXpert-v1.0-small', 'CheXpert-v1.0')
OBSERVATIONS = ('No Finding', 'Enlarged Cardiomediastinum', 'Cardiomegaly', 'Lung Opacity', 'Lung Lesion',
                'Edema', 'Consolidation', 'Pneumonia', 'Atelectasis', 'Pneumothorax', 'Pleural Effusion',
                'Pleural Other', 'Fracture', 'Support Devices')
BINARY_CLASSES = ('no finding', 'finding')
COLUMNS = ('Path', 'Sex', 'Age', 'Frontal/Lateral', 'AP/PA') + OBSERVATIONS
VALID_ID_OFFSET = 1_000_000  # train.csv has 223,414 rows
TRAIN_VAL_FRACTIONS = (0.875, 0.125)
HOMEPAGE = 'https://stanfordmlgroup.github.io/competitions/chexpert/'
CITATION = r"""@inproceedings{irvin2019chexpert,
  title={CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and Expert Comparison},
  author={Irvin, Jeremy and Rajpurkar, Pranav and Ko, Michael and Yu, Yifan and Ciurea-Ilcus, Silviana and
          Chute, Chris and Marklund, Henrik and Haghgoo, Behzad and Ball, Robyn and Shpanskaya, Katie and
          others},
  booktitle={Proceedings of the AAAI Conference on Artificial Intelligence},
  volume={33},
  pages={590--597},
  year={2019}
}"""

_PATIENT = re.compile(r'(patient\d+)')


def task_name(task: str, uncertainty: str | None = None) -> str:
  """Config task from a task and an optional policy: ('multilabel', 'zeros') -> 'multilabel_uzeros'.

  'multilabel' alone means U-Ones. `uncertainty` accepts 'ones'/'zeros'/'ignore' (or 'uones'/'uzeros').
  """
  if uncertainty is not None:
    policy = {'ones': 'uones', 'zeros': 'uzeros', 'u-ones': 'uones', 'u-zeros': 'uzeros'}.get(
        str(uncertainty).lower(), str(uncertainty).lower())
    if policy not in POLICIES:
      raise errors.UserError(f'unknown CheXpert uncertainty policy {uncertainty!r}; choose one of: '
                             'ones, zeros, ignore')
    if task == 'multilabel':
      return f'multilabel_{policy}'
    if task.startswith('multilabel_') and task != f'multilabel_{policy}':
      raise errors.UserError(f'task {task!r} contradicts uncertainty={uncertainty!r}')
    if task == 'binary':
      raise errors.UserError("the uncertainty policy applies to the multilabel tasks, not 'binary'")
  return 'multilabel_uones' if task == 'multilabel' else task


def locate(raw_dir: pathlib.Path) -> pathlib.Path:
  """The folder holding train.csv and valid.csv: raw_dir itself or its CheXpert-v1.0[-small] folder.

  With both folders present the small one wins: its ~390 px images are plenty for <= 224 px and decode
  far faster.
  """
  for candidate in (raw_dir, *(raw_dir / f for f in FOLDERS)):
    if (candidate / 'train.csv').is_file():
      return candidate
  raise errors.DataError(f'expected CheXpert train.csv and valid.csv in {raw_dir} or in its '
                         f'{" or ".join(FOLDERS)} folder, found none')


def image_path(csv_dir: pathlib.Path, path: str) -> pathlib.Path:
  """Where the image of a CSV `Path` is: the path starts with the dataset folder's name."""
  parts = pathlib.PurePosixPath(path).parts
  if parts and parts[0] == csv_dir.name:
    return csv_dir.parent / path
  if parts and parts[0] in ('train', 'valid', 'test'):
    return csv_dir / path
  # The folder was renamed after unpacking: drop its old name.
  return csv_dir.joinpath(*parts[1:])


def _observation(value: str) -> int:
  v = str(value).strip()
  return int(float(v)) if v else 0  # blank = not mentioned = negative


def _label(obs: tuple[int, ...], task: str) -> Any:
  if task == 'binary':
    return np.int64(0 if obs[0] == 1 else 1)
  policy = task.split('_', 1)[1]
  uncertain = {'uones': 1, 'uzeros': 0, 'ignore': -1}[policy]
  return np.asarray([uncertain if o == -1 else o for o in obs], dtype=np.int64)


@dataclasses.dataclass(frozen=True)
class Row:
  id: int
  path: str
  observations: tuple[int, ...]
  patient_id: str
  sex: str
  age: float
  view: str
  frontal: bool


def read_rows(csv_path: pathlib.Path, id_offset: int) -> list[Row]:
  """All data rows of one CheXpert CSV (frontal and lateral), in file order."""
  splits.require_file(csv_path, 'the official CheXpert label file')
  rows = []
  with open(csv_path, newline='') as f:
    reader = csv.DictReader(f)
    splits.require_columns(csv_path, reader.fieldnames, COLUMNS)
    for i, r in enumerate(reader):
      m = _PATIENT.search(r['Path'])
      if not m:
        raise errors.DataError(f'{csv_path}: data row {i} has no patientNNNNN in its Path {r["Path"]!r}')
      try:
        obs = tuple(_observation(r[c]) for c in OBSERVATIONS)
      except ValueError as e:
        raise errors.DataError(f'{csv_path}: data row {i} has a non-numeric observation: {e}') from e
      if any(o not in (-1, 0, 1) for o in obs):
        raise errors.DataError(f'{csv_path}: data row {i} has observations outside -1/0/1: {obs}')
      rows.append(Row(id=id_offset + i, path=r['Path'].strip(), observations=obs, patient_id=m.group(1),
                      sex=splits.normalize_sex(r['Sex']), age=splits.parse_float(r['Age']),
                      view=(r['AP/PA'] or '').strip().upper(),
                      frontal=r['Frontal/Lateral'].strip().lower() == 'frontal'))
  return rows


CheXpertConfig = builder_base.TaskConfig


class ChexpertFrontal(builder_base.PatientBuilder):
  """CheXpert frontal radiographs (Irvin et al., AAAI 2019) with patient id, sex, age and view.

  Extra constructor arguments (besides TFDS's `data_dir`, `config`, ...):
    raw_dir: the manual folder (see module docstring); default `$MEDUNLEARN_DATA_DIR/chexpert`.
    split_seed: seed of the train/val patient split (recorded in the metadata).
  """
  name = BUILDER_NAME
  RAW_FAMILY = FAMILY
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Frontal images; valid.csv as test; ids = CSV rows; patient-disjoint splits.'}
  BUILDER_CONFIGS = [CheXpertConfig(name=f'{t}_{s}', task=t, image_size=s,
                                    description=f'{t} task at {s}x{s} px, grayscale, frontal views')
                     for t in TASKS for s in SIZES]

  def _info(self) -> tfds.core.DatasetInfo:
    task, size = self.builder_config.task, self.builder_config.image_size
    label = builder_base.label_feature(None if task == 'binary' else len(OBSERVATIONS))
    features = builder_base.medical_features(size, 1, label, view=tfds.features.Text(),
                                             frontal=tfds.features.Scalar(dtype=np.bool_),
                                             path=tfds.features.Text())
    labels = ('0: No Finding, 1: any finding' if task == 'binary' else
              f'multi-hot over {", ".join(OBSERVATIONS)}; uncertain -> {task.split("_", 1)[1]}')
    description = (
        f'CheXpert frontal radiographs (Irvin et al., AAAI 2019), {task} task ({labels}), {size}x{size} '
        'grayscale. valid.csv is the test split; train.csv is split by patient into train/val. Rows '
        'without an image file are skipped; metadata["missing_images"] counts them.')
    return tfds.core.DatasetInfo(builder=self, description=description, features=features,
                                 homepage=HOMEPAGE, citation=CITATION, disable_shuffling=True,
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # Manual data only.
    raw_dir = splits.resolve_raw_dir(FAMILY, self._raw_dir, None)
    csv_dir = locate(raw_dir)
    train_rows = read_rows(csv_dir / 'train.csv', 0)
    test_rows = read_rows(csv_dir / 'valid.csv', VALID_ID_OFFSET)
    if not train_rows:
      raise errors.DataError(f'{csv_dir / "train.csv"} has no data rows')
    # Split on every train.csv patient (lateral-only ones too) so the assignment depends only on the CSV.
    assigned = splits.patient_split([r.patient_id for r in train_rows], TRAIN_VAL_FRACTIONS,
                                    self._split_seed, names=('train', 'val'))
    shared = sorted({r.patient_id for r in train_rows} & {r.patient_id for r in test_rows})
    if shared:
      raise errors.DataError(f'train.csv and valid.csv share {len(shared)} patient(s), e.g. {shared[:3]}; '
                             'splits would not be patient-disjoint')
    candidates = ([(r, s) for r, s in zip(train_rows, assigned) if r.frontal]
                  + [(r, 'test') for r in test_rows if r.frontal])
    missing, usable = [], {s: [] for s in splits.SPLIT_NAMES}
    for row, split in candidates:
      path = image_path(csv_dir, row.path)
      if path.is_file():
        usable[split].append((row, path))
      else:
        missing.append(row.path)
    splits.report_missing(BUILDER_NAME, missing, len(candidates))
    splits.check_usable(BUILDER_NAME, {s: len(v) for s, v in usable.items()}, raw_dir)
    self.info.metadata.update({
        'rows': len(train_rows) + len(test_rows), 'frontal_rows': len(candidates),
        'missing_images': len(missing), 'missing_examples': missing[:20], 'split_seed': self._split_seed,
        'split': f'valid.csv = test; train.csv split by patient {TRAIN_VAL_FRACTIONS}',
        'source': csv_dir.name, 'examples': {s: len(v) for s, v in usable.items()},
        'patients': {s: len({r.patient_id for r, _ in v}) for s, v in usable.items()}})
    return {s: self._generate_examples(v) for s, v in usable.items()}

  def _generate_examples(self, items: list[tuple[Row, pathlib.Path]]) -> Iterator[tuple[int, dict]]:
    task, size = self.builder_config.task, self.builder_config.image_size
    for row, path in items:
      yield row.id, {
          ds_lib.ID: row.id, ds_lib.IMAGE: splits.load_image(path, size, 1),
          ds_lib.LABEL: _label(row.observations, task), ds_lib.PATIENT_ID: row.patient_id,
          ds_lib.SEX: row.sex, ds_lib.AGE: np.float32(row.age), 'view': row.view, 'frontal': row.frontal,
          'path': row.path}


def _resolve(task: str, image_size: int, uncertainty: str | None) -> tuple[str, int]:
  choices = TASKS + ('multilabel',)
  if task not in choices:
    raise errors.UserError(f'unknown CheXpert task {task!r}; choose one of: {", ".join(choices)}')
  return splits.check_task_size(FAMILY, task_name(task, uncertainty), image_size, TASKS)


def dataset_info(task: str, image_size: int, *, uncertainty: str | None = None) -> ds_lib.DatasetInfo:
  """Model/metric facts of a task at a size; `name` is the TFDS name 'chexpert_frontal/<task>_<size>'."""
  task, size = _resolve(task, image_size, uncertainty)
  name = f'{BUILDER_NAME}/{task}_{size}'
  if task == 'binary':
    return ds_lib.DatasetInfo(name, 2, (size, size, 1), 'binary', BINARY_CLASSES)
  return ds_lib.DatasetInfo(name, len(OBSERVATIONS), (size, size, 1), 'multi-label', OBSERVATIONS)


def prepare(task: str, image_size: int, *, raw_dir: str | os.PathLike | None = None,
            data_dir: str | os.PathLike | None = None, split_seed: int = 0,
            uncertainty: str | None = None) -> tfds.core.DatasetBuilder:
  """Builds `chexpert_frontal/<task>_<size>` once (array_record) and returns its builder.

  CheXpert: Irvin et al., AAAI 2019. Read back with `builder.as_data_source()`, without TensorFlow.

  Args:
    task: 'binary', 'multilabel' (= U-Ones) or one of 'multilabel_uones', 'multilabel_uzeros',
      'multilabel_ignore'.
    image_size: 28, 64, 128 or 224.
    raw_dir: the manual folder; default `$MEDUNLEARN_DATA_DIR/chexpert`.
    data_dir: TFDS data dir; default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`.
    split_seed: seed of the train/val patient split.
    uncertainty: policy for uncertain (-1) labels with task 'multilabel': 'ones', 'zeros' or 'ignore'.

  Raises:
    errors.UserError: unknown task, policy or size, or an existing build made with another split_seed.
    errors.DataError: missing folder, CSVs, columns, or no usable image. Nothing half-built is left.
  """
  task, size = _resolve(task, image_size, uncertainty)
  root = paths.tfds_data_dir(data_dir)
  builder = ChexpertFrontal(config=f'{task}_{size}', data_dir=os.fspath(root), raw_dir=raw_dir,
                            split_seed=split_seed)
  if not splits.is_built(builder):
    locate(splits.resolve_raw_dir(FAMILY, raw_dir, paths.raw_dir(FAMILY)))
  where = pathlib.Path(os.fspath(builder.data_path))
  return splits.build_or_reuse(
      builder, lambda meta: splits.check_option('split_seed', meta, int(split_seed), where))
