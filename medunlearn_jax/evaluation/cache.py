"""The per-example output cache: one table per model from which every reported metric is computed.

One prediction pass per model (`engine.predict_split`, one compiled program shared by all models) gives the
logits of every evaluated split; `build_cache` turns them into flat columns, one row per (split, example):

  id          int64 (N,)        stable example id
  split       str (N,)          'retain', 'forget', 'val', 'test'
  label       int64 (N,)        class id; multi-label tasks: (N, L) in {0, 1, -1 = ignored}
  logits      float32 (N, C)
  loss        float64 (N,)      softmax cross-entropy; multi-label: mean sigmoid BCE over known labels
  pred        int64 (N,)        argmax class; multi-label: (N, L) 1 where the logit is > 0
  correct     bool (N,)         pred == label; multi-label: every known label right (exact match)
  confidence  float64 (N,)      softmax probability of the true class; multi-label: exp(-loss)
  entropy     float64 (N,)      predictive entropy (nats); multi-label: mean binary entropy
  <meta>      (N,)              every metadata field of the dataset: 'sex' ('F'/'M', '' unknown), 'age'
                                (float, NaN unknown), 'patient_id', ...

The original model's cache also carries the training-set difficulty (`add_difficulty`), NaN outside the
training rows (retain ∪ forget):

  difficulty_loss           the original model's loss (higher = harder)
  difficulty_margin         minus its confidence margin (`slices.margin_difficulty`)
  difficulty_learned_epoch  first epoch from which the example stays learned (needs per-epoch correctness)
  correct_per_epoch         int8 (N, E): 1/0 correct after epoch e, -1 not recorded

Caches are saved one file per model, `workdir/outputs/<model>.npz` (numpy, no pickles), written atomically.
"""
from __future__ import annotations

import os
import pathlib
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from scipy import special

from medunlearn_jax import errors
from medunlearn_jax.evaluation import metrics
from medunlearn_jax.evaluation import slices

CORE_COLUMNS = ('id', 'split', 'label', 'logits', 'loss', 'pred', 'correct', 'confidence', 'entropy')
DIFFICULTY_COLUMNS = ('difficulty_loss', 'difficulty_margin', 'difficulty_learned_epoch', 'correct_per_epoch')
TRAINING_SPLITS = ('retain', 'forget')
FORMAT_KEY, FORMAT = '__format__', 'medunlearn-outputs-v1'

if TYPE_CHECKING:  # The data package imports TFDS; reading caches (the report CLI) must not need it.
  from medunlearn_jax.data import dataset as ds_lib  # pylint: disable=g-import-not-at-top

Cache = dict[str, np.ndarray]


def per_example(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """loss, pred, correct, confidence, entropy of each example; multi-label when `labels` is 2-D."""
  labels = np.asarray(labels)
  if labels.ndim == 2:
    return metrics.multilabel_per_example(logits, labels)
  pred = metrics.predictions(logits)
  return {'loss': metrics.per_example_loss(logits, labels), 'pred': pred, 'correct': pred == labels,
          'confidence': metrics.true_class_confidence(logits, labels), 'entropy': metrics.entropy(logits)}


def _missing_like(values: np.ndarray, n: int) -> np.ndarray:
  """n 'unknown' entries of a metadata column's type: '' for strings, NaN for numbers."""
  if values.dtype.kind in 'US':
    return np.full(n, '', dtype=values.dtype)
  if values.dtype.kind in 'fiub':
    return np.full(n, np.nan)
  raise errors.DataError(f'metadata of dtype {values.dtype} cannot be cached (strings or numbers only)')


def _as_storable(values: np.ndarray) -> np.ndarray:
  """Object arrays (e.g. Python strings) would need pickling; they are stored as unicode strings."""
  values = np.asarray(values)
  return values.astype(str) if values.dtype == object else values


def build_cache(logits_by_split: Mapping[str, np.ndarray], splits: Mapping[str, ds_lib.Split]) -> Cache:
  """One model's cache from its logits on each split and the splits themselves (ids, labels, metadata).

  Args:
    logits_by_split: {split name: (N_split, C) logits}, rows in the split's order.
    splits: {split name: Split}, holding at least the splits of `logits_by_split`.

  Returns:
    The columns of the module docstring, rows grouped by split in the order of `logits_by_split`.
  """
  names = list(logits_by_split)
  parts = [splits[s] for s in names]
  for name, split in zip(names, parts):
    if np.shape(logits_by_split[name])[0] != len(split):
      raise ValueError(f'split {name!r}: {np.shape(logits_by_split[name])[0]} logits for {len(split)} examples')
  labels = np.concatenate([np.asarray(s.labels, np.int64) for s in parts])
  logits = np.concatenate([np.asarray(logits_by_split[s], np.float32) for s in names])
  cache: Cache = {
      'id': np.concatenate([np.asarray(s.ids, np.int64) for s in parts]),
      'split': np.concatenate([np.full(len(s), name) for name, s in zip(names, parts)]),
      'label': labels,
      'logits': logits,
  }
  cache.update(per_example(logits, labels))
  fields = sorted({k for s in parts for k in s.meta})
  for field in fields:
    if field in CORE_COLUMNS or field in DIFFICULTY_COLUMNS or field == FORMAT_KEY:
      raise errors.DataError(f'metadata field {field!r} clashes with a column of the output cache')
    example = next(_as_storable(s.meta[field]) for s in parts if field in s.meta)
    columns = [_as_storable(s.meta[field]) if field in s.meta else _missing_like(example, len(s)) for s in parts]
    cache[field] = np.concatenate(columns)
  return cache


def is_multilabel(cache: Mapping[str, np.ndarray]) -> bool:
  return np.asarray(cache['label']).ndim == 2


def meta_fields(cache: Mapping[str, np.ndarray]) -> list[str]:
  """The dataset's metadata columns held by a cache ('sex', 'age', 'patient_id', ...)."""
  reserved = set(CORE_COLUMNS) | set(DIFFICULTY_COLUMNS) | {FORMAT_KEY}
  return [k for k in cache if k not in reserved]


def take(cache: Mapping[str, np.ndarray], index: np.ndarray) -> Cache:
  """The rows at `index` (positions or a boolean mask) of every column."""
  return {k: np.asarray(v)[index] for k, v in cache.items()}


def rows(cache: Mapping[str, np.ndarray], split: str) -> Cache:
  """The rows of one split."""
  return take(cache, np.asarray(cache['split']) == split)


def splits_of(cache: Mapping[str, np.ndarray]) -> list[str]:
  """Split names in the order their rows appear."""
  names = np.asarray(cache['split'])
  _, first = np.unique(names, return_index=True)
  return [str(names[i]) for i in sorted(first)]


def split_view(cache: Mapping[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
  """{split: {'ids', 'labels', 'logits', and every other column}}: the per-split layout of earlier files."""
  out = {}
  for name in splits_of(cache):
    part = rows(cache, name)
    view = {k: v for k, v in part.items() if k not in ('id', 'label', 'split')}
    out[name] = dict(view, ids=part['id'], labels=part['label'])
  return out


def _training_mask(cache: Mapping[str, np.ndarray], training_splits: Sequence[str]) -> np.ndarray:
  mask = np.isin(np.asarray(cache['split']), list(training_splits))
  if not mask.any():
    raise errors.UserError(f'the cache holds no training rows (splits {list(training_splits)}) to score '
                           f'difficulty on; it holds {splits_of(cache)}')
  return mask


def add_difficulty(cache: Mapping[str, np.ndarray], correct_per_epoch: np.ndarray | None = None,
                   epoch_ids: np.ndarray | None = None, *,
                   training_splits: Sequence[str] = TRAINING_SPLITS) -> Cache:
  """The original model's cache with per-example difficulty of the training set (retain ∪ forget) added.

  Difficulty scores, higher = harder, NaN outside the training rows:
    * difficulty_loss: the original model's loss (the 'loss' column);
    * difficulty_margin: minus the confidence margin p_y - max_{j != y} p_j (`slices.margin_difficulty`;
      multi-label: minus the mean over known labels of 2 p_true - 1, the same margin per binary label);
    * difficulty_learned_epoch: with `correct_per_epoch`, the first epoch from which the example stays
      correctly classified (`slices.first_stable_learned_epoch`, after Toneva et al., ICLR 2019); E when it
      is wrong after the last epoch; NaN without per-epoch data.

  Args:
    cache: the original (fully trained) model's cache; it must be the original model's, as the scores
      describe how hard each example was to learn from the full training set.
    correct_per_epoch: optional (E, M) bool, whether training example m was right after epoch e.
    epoch_ids: (M,) ids of the columns of `correct_per_epoch`; default: the cache's training rows, in order.
    training_splits: the splits whose rows form the training set.
  """
  out = dict(cache)
  train = _training_mask(cache, training_splits)
  n = len(cache['id'])
  loss = np.full(n, np.nan)
  loss[train] = cache['loss'][train]
  margin = np.full(n, np.nan)
  logits, labels = np.asarray(cache['logits'])[train], np.asarray(cache['label'])[train]
  if is_multilabel(cache):
    known = labels >= 0
    p_true = np.where(labels == 1, special.expit(logits), special.expit(-logits))
    margin[train] = -np.sum((2.0 * p_true - 1.0) * known, axis=1) / np.maximum(known.sum(axis=1), 1)
  else:
    margin[train] = slices.margin_difficulty(logits, labels)
  out['difficulty_loss'], out['difficulty_margin'] = loss, margin
  learned = np.full(n, np.nan)
  if correct_per_epoch is not None:
    correct = np.asarray(correct_per_epoch, dtype=bool)
    if correct.ndim != 2:
      raise ValueError(f'correct_per_epoch must be (epochs, examples), got shape {correct.shape}')
    ids = np.asarray(cache['id'])[train] if epoch_ids is None else np.asarray(epoch_ids, np.int64)
    if ids.shape != correct.shape[1:]:
      raise ValueError(f'correct_per_epoch has {correct.shape[1]} examples but {ids.shape[0]} ids')
    column = {int(i): c for c, i in enumerate(ids)}
    train_rows = np.flatnonzero(train)
    cols = np.asarray([column.get(int(i), -1) for i in np.asarray(cache['id'])[train_rows]], np.int64)
    if not (cols >= 0).any():
      raise errors.UserError('correct_per_epoch covers none of the training examples of the cache')
    rows_hit, cols = train_rows[cols >= 0], cols[cols >= 0]
    learned[rows_hit] = slices.first_stable_learned_epoch(correct[:, cols])
    history = np.full((n, correct.shape[0]), -1, np.int8)
    history[rows_hit] = correct[:, cols].T
    out['correct_per_epoch'] = history
  out['difficulty_learned_epoch'] = learned
  return out


def check_aligned(caches: Mapping[str, Mapping[str, np.ndarray]]) -> None:
  """All caches must describe the same rows (ids and splits in the same order), or metrics would compare
  different examples across models."""
  items = list(caches.items())
  if not items:
    raise errors.UserError('no model outputs to evaluate')
  ref_name, ref = items[0]
  for name, cache in items[1:]:
    if not (np.array_equal(cache['id'], ref['id']) and np.array_equal(cache['split'], ref['split'])):
      raise errors.DataError(f'outputs of {name!r} and {ref_name!r} hold different examples; re-run the '
                             'evaluation so that every model is predicted on the same splits')


def save_cache(path: str | os.PathLike, cache: Mapping[str, np.ndarray]) -> None:
  """Writes a cache as .npz (no pickles), atomically: a temporary file renamed over the target."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {k: _as_storable(v) for k, v in cache.items()}
  arrays[FORMAT_KEY] = np.asarray(FORMAT)
  tmp = path.with_name(path.name + '.tmp')
  with open(tmp, 'wb') as f:  # A file object keeps numpy from appending '.npz' to the temporary name.
    np.savez(f, **arrays)
  os.replace(tmp, path)


def load_cache(path: str | os.PathLike) -> Cache:
  """Reads `save_cache`'s file back (numpy arrays, no pickles)."""
  path = pathlib.Path(path)
  if not path.exists():
    raise errors.DataError(f'no model outputs at {path}; run the experiment (or its evaluation) first')
  with np.load(path, allow_pickle=False) as data:
    if FORMAT_KEY not in data.files or str(data[FORMAT_KEY]) != FORMAT:
      raise errors.DataError(f'{path} is not a {FORMAT} output cache (written by an older version?); '
                             're-run the experiment on its workdir to rewrite the outputs')
    return {k: data[k] for k in data.files if k != FORMAT_KEY}
