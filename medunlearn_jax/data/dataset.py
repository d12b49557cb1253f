"""In-memory dataset splits: the one representation every stage (training, forget selection, evaluation) reads.

A TFDS builder of this project (see `medmnist.py`, `nih_chestxray14.py`, ...) writes array_record files;
`load_splits` reads them back through `tfds.data_source` (no TensorFlow) into a `Split` per split: images,
labels, the stable per-example `id`, and whatever metadata the source carries (sex, age, patient id...).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np

from medunlearn_jax import errors

# Feature names every builder of this project uses for the same meaning.
ID, IMAGE, LABEL = 'id', 'image', 'label'
SEX, AGE, PATIENT_ID = 'sex', 'age', 'patient_id'
# Sex is stored as a short string; '' means unknown.
SEX_VALUES = ('F', 'M')


def read_records(source: Any, rows: Sequence[int], directory: str) -> list[Any]:
  """`source.__getitems__(rows)`, with a damaged built file (a failing disk, a copy cut short) reported as a
  `DataError` that says which build to delete; array_record raises RuntimeError for a bad checksum or end."""
  try:
    return source.__getitems__(list(rows))
  except (RuntimeError, ValueError) as e:
    raise corrupt_build(directory, e) from e


def corrupt_build(directory: Any, error: BaseException) -> errors.DataError:
  """The one-line error for a built dataset that cannot be read back."""
  cause = ' '.join(str(error).split())[:200]
  return errors.DataError(f'the built dataset in {directory} cannot be read ({type(error).__name__}: {cause}); '
                          'delete that folder and run again to rebuild it from the raw files')


class SourceImages:
  """The images of a split, read on demand from a TFDS data source (array_record random access).

  Used in multi-process runs: every process holds ids, labels and metadata of the whole split (forget-set
  selection needs them) but reads only the image rows that it feeds to its own devices.
  Indexing with an array of positions returns a uint8 array; `subset` returns a lazy view.
  """

  def __init__(self, source: Any, rows: np.ndarray, image_shape: tuple[int, ...], directory: str = ''):
    self._source, self._rows, self._image_shape = source, np.asarray(rows, np.int64), tuple(image_shape)
    self._directory = directory  # The build's folder, named by the error for a damaged file.

  def __len__(self) -> int:
    return len(self._rows)

  @property
  def shape(self) -> tuple[int, ...]:
    return (len(self._rows), *self._image_shape)

  dtype = np.dtype(np.uint8)

  def subset(self, index: np.ndarray) -> 'SourceImages':
    return SourceImages(self._source, self._rows[index], self._image_shape, self._directory)

  def __getitem__(self, index) -> np.ndarray:
    rows = np.atleast_1d(self._rows[index])
    if rows.size == 0:
      return np.zeros((0, *self._image_shape), np.uint8)
    records = read_records(self._source, [int(r) for r in rows], self._directory)
    return np.stack([np.asarray(r[IMAGE], np.uint8) for r in records])


def _take(values: Any, index: np.ndarray) -> Any:
  return values.subset(index) if isinstance(values, SourceImages) else values[index]


@dataclasses.dataclass(frozen=True)
class Split:
  """One split held in host memory.

  Attributes:
    name: split name ('train', 'val', 'test', or a derived one such as 'retain', 'forget').
    ids: int64 (N,), stable example ids, unique across all splits of a dataset.
    images: uint8 (N, H, W, C).
    labels: int64 (N,) for single-label tasks, (N, L) multi-hot for multi-label tasks.
    meta: per-example metadata arrays of length N (e.g. 'sex' str, 'age' float32 with NaN unknown,
      'patient_id' str), only the fields the source has.
  """
  name: str
  ids: np.ndarray
  images: np.ndarray
  labels: np.ndarray
  meta: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    n = len(self.ids)
    for field, value in [('images', self.images), ('labels', self.labels), *self.meta.items()]:
      if len(value) != n:
        raise errors.DataError(f'split {self.name!r}: {field} has {len(value)} rows, ids has {n}')

  def __len__(self) -> int:
    return len(self.ids)

  def take(self, index: np.ndarray, name: str | None = None) -> Split:
    """The sub-split at positions `index` (integer positions or a boolean mask)."""
    return Split(name or self.name, self.ids[index], _take(self.images, index), self.labels[index],
                 {k: v[index] for k, v in self.meta.items()})

  def positions(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Positions of `ids` in this split; raises UserError naming ids that are not in it."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(self.ids, kind='stable')
    sorted_ids = self.ids[order]
    pos = np.searchsorted(sorted_ids, ids)
    pos = np.clip(pos, 0, max(len(sorted_ids) - 1, 0))
    found = sorted_ids[pos] == ids if len(sorted_ids) else np.zeros(len(ids), bool)
    if not np.all(found):
      missing = ids[~found]
      raise errors.UserError(f'{len(missing)} id(s) not in split {self.name!r}, e.g. {missing[:5].tolist()}')
    return order[pos]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and metrics need to know about a dataset."""
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  task: str  # 'binary', 'multi-class', 'ordinal' or 'multi-label'
  class_names: tuple[str, ...] = ()
  # A published test accuracy to hold an original model against (a sanity anchor), and where it is from.
  anchor_accuracy: float | None = None
  anchor_source: str = ''


def records_to_split(name: str, records: Sequence[Mapping[str, np.ndarray]],
                     images: SourceImages | None = None) -> Split:
  """Stacks decoded TFDS records (dicts of features) into a `Split`, sorted by id for determinism.

  With `images`, the records' images are left undecoded and read on demand from that source instead.
  """
  if not records:
    raise errors.DataError(f'split {name!r} is empty')
  ids = np.asarray([r[ID] for r in records], dtype=np.int64)
  if images is None:
    images = np.stack([np.asarray(r[IMAGE]) for r in records]).astype(np.uint8)
  labels = np.asarray([np.asarray(r[LABEL]) for r in records], dtype=np.int64)
  meta = {}
  for key in records[0]:
    if key in (ID, IMAGE, LABEL):
      continue
    values = [r[key] for r in records]
    if isinstance(values[0], (bytes, str, np.bytes_, np.str_)):
      meta[key] = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values])
    else:
      meta[key] = np.asarray(values)
  order = np.argsort(ids, kind='stable')
  split = Split(name, ids, images, labels, meta)
  return split.take(order)


def concat(splits: Sequence[Split], name: str) -> Split:
  """Concatenates splits that share the same metadata fields."""
  keys = set(splits[0].meta)
  return Split(name, np.concatenate([s.ids for s in splits]), np.concatenate([s.images for s in splits]),
               np.concatenate([s.labels for s in splits]),
               {k: np.concatenate([s.meta[k] for s in splits]) for k in keys})
