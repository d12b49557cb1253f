"""Forget-set selectors: the named ways a deletion request picks training examples, chosen in the config.

Every selector has the signature

    fn(train: Split, *, seed: int, difficulty: np.ndarray | None, **params) -> forget.ForgetManifest

and returns a manifest built (and validated) by `forget.make_manifest`: the forget ids, their count and
sha256, the selector name, its parameters and the seed. Validation errors are `errors.UserError`s with one
clear line, raised before anything is written.

* `random_fraction` (fraction) / `random_count` (count): uniformly random images.
* `patient_fraction` (fraction of patients) / `patient_count` (count of patients): all images of randomly
  chosen patients.
* `class` (label; fraction or count within the class, default all): images of one class (multi-label: the
  images positive for that label).
* `sex` (sex 'F'/'M'; fraction of the whole training set or count; matched): random images of one sex.
* `age_range` (min_age, max_age, inclusive; fraction or count within the range, default all).
* `difficulty` (arm 'easiest'/'hardest'/'random'; fraction or count, default a tercile): by difficulty score.
* `id_file` (path, allow_partial_patients): the image ids listed in a text or JSON file.
* `patient_file` (path): all images of the patients listed in a text or JSON file.

`sex` with `matched=True` uses min(requested, #F images, #M images) for both sexes, so an F arm and an M arm
run with the same fraction are the same size and can be compared. `difficulty` needs a per-example score
aligned with `train` (higher = harder, e.g. a loss or a memorisation score). Patient-level selections (and an
`id_file` whose ids cover whole patients) record the patient ids in the manifest, so `forget.check_disjoint`
also checks that no image of a forgotten patient stays in the retain set.

    manifest = selectors.select(splits['train'], {'selector': 'sex', 'sex': 'F', 'fraction': 0.1,
                                                  'matched': True}, seed=0)
"""
from __future__ import annotations

import hashlib
import inspect
import json
import numbers
import os
import pathlib
import zlib
from typing import Any, Callable, Mapping

import numpy as np

from medunlearn_jax import errors
from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.data import forget

Selector = Callable[..., forget.ForgetManifest]
_REGISTRY: dict[str, Selector] = {}
# Arguments every selector receives from `select`, not from the config.
_COMMON = ('train', 'seed', 'difficulty')
ARMS = ('easiest', 'hardest', 'random')


def register(name: str) -> Callable[[Selector], Selector]:
  """Decorator adding a selector to the registry under `name`."""
  def wrap(fn: Selector) -> Selector:
    if name in _REGISTRY:
      raise ValueError(f'selector {name!r} registered twice')
    _REGISTRY[name] = fn
    return fn
  return wrap


def names() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


def get(name: str) -> Selector:
  """The selector registered as `name`; UserError listing the choices otherwise."""
  if name not in _REGISTRY:
    raise errors.UserError(f'unknown forget selector {name!r}; choose one of: {", ".join(names())}')
  return _REGISTRY[name]


def _params_of(fn: Selector) -> tuple[set[str], set[str]]:
  """(all config params, required config params) of a selector."""
  params = [p for p in inspect.signature(fn).parameters.values()
            if p.name not in _COMMON and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
  return {p.name for p in params}, {p.name for p in params if p.default is inspect.Parameter.empty}


def select(train: ds_lib.Split, config_like: Mapping[str, Any], *, seed: int,
           difficulty: np.ndarray | None = None, ignore_unused: bool = False) -> forget.ForgetManifest:
  """Dispatches on `config_like['selector']`, passing the other keys as parameters.

  Keys whose value is None are dropped, so one config schema can carry the fields of several selectors.
  With `ignore_unused`, keys the selector does not take are dropped too (an experiment config carries the
  fields of every selector; its keys are already checked by the locked ConfigDict), and a `count` that is
  set replaces the config's `fraction`.
  A ConfigDict is accepted as well as a Mapping.

  Raises:
    errors.UserError: no or unknown selector, an unknown or missing parameter, or any validation error
      of the selection itself.
  """
  cfg = config_like.to_dict() if hasattr(config_like, 'to_dict') else dict(config_like)
  name = cfg.pop('selector', None)
  if not name:
    raise errors.UserError(f'the forget config names no selector; choose one of: {", ".join(names())}')
  fn = get(str(name))
  params = {k: v for k, v in cfg.items() if v is not None}
  accepted, required = _params_of(fn)
  if ignore_unused:
    params = {k: v for k, v in params.items() if k in accepted}
    if params.get('count') is not None and 'fraction' in params:
      # An experiment config always carries a fraction (its default); a count, when set, replaces it.
      del params['fraction']
  unknown = sorted(set(params) - accepted)
  if unknown:
    raise errors.UserError(f'forget selector {name!r} does not take {unknown}; it takes {sorted(accepted)}')
  missing = sorted(required - set(params))
  if missing:
    raise errors.UserError(f'forget selector {name!r} needs {missing}')
  return fn(train, seed=seed, difficulty=difficulty, **params)


# ---------------------------------------------------------------------------------------------------------
# Parameter checks and sampling.

def _rng(seed: int, name: str) -> np.random.Generator:
  # A stream per selector name: the same seed used by two selectors does not give correlated draws.
  return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]))


def _fraction(value: Any, what: str) -> float:
  if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) <= 1.0:
    raise errors.UserError(f'{what} must be a number in (0, 1], got {value!r}')
  return float(value)


def _count(value: Any, what: str) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
    raise errors.UserError(f'{what} must be a positive integer, got {value!r}')
  return int(value)


def _size(fraction: Any, count: Any, total: int, what: str, default: int | None = None) -> int:
  """How many to pick: round(fraction * total) (at least 1) or count; exactly one of them unless default."""
  if fraction is not None and count is not None:
    raise errors.UserError(f'{what}: give fraction or count, not both')
  if fraction is not None:
    return max(1, int(round(_fraction(fraction, f'{what}: fraction') * total)))
  if count is not None:
    return _count(count, f'{what}: count')
  if default is None:
    raise errors.UserError(f'{what}: give a fraction or a count')
  return default


def _pick(rng: np.random.Generator, pool: np.ndarray, k: int, what: str) -> np.ndarray:
  """k items drawn without replacement from the sorted pool (so the result does not depend on row order)."""
  pool = np.sort(np.asarray(pool))
  if k > len(pool):
    raise errors.UserError(f'{what}: asked for {k} but only {len(pool)} are available')
  return rng.choice(pool, size=k, replace=False)


def _meta(train: ds_lib.Split, key: str, why: str) -> np.ndarray:
  if key not in train.meta:
    raise errors.UserError(f'{why} needs {key!r} metadata, which split {train.name!r} does not have '
                           f'(it has {sorted(train.meta) or "none"})')
  return np.asarray(train.meta[key])


def _patients(train: ds_lib.Split, why: str) -> np.ndarray:
  return _meta(train, ds_lib.PATIENT_ID, why).astype(str)


def _patient_manifest(train: ds_lib.Split, chosen: np.ndarray, selector: str, params: Mapping[str, Any],
                      seed: int) -> forget.ForgetManifest:
  pids = train.meta[ds_lib.PATIENT_ID].astype(str)
  ids = train.ids[np.isin(pids, chosen)]
  return forget.make_manifest(train, ids, selector=selector, params=params, seed=seed, patient_ids=chosen)


# ---------------------------------------------------------------------------------------------------------
# Image-level random.

@register('random_fraction')
def random_fraction(train: ds_lib.Split, *, seed: int, difficulty: np.ndarray | None = None,
                    fraction: float) -> forget.ForgetManifest:
  """A uniformly random fraction of the training images (`forget.select_random_fraction`)."""
  del difficulty
  return forget.select_random_fraction(train, fraction, seed)


@register('random_count')
def random_count(train: ds_lib.Split, *, seed: int, difficulty: np.ndarray | None = None,
                 count: int) -> forget.ForgetManifest:
  """`count` uniformly random training images."""
  del difficulty
  k = _count(count, 'random_count: count')
  ids = _pick(_rng(seed, 'random_count'), train.ids, k, 'random_count')
  return forget.make_manifest(train, ids, selector='random_count', params={'count': k}, seed=seed)


# ---------------------------------------------------------------------------------------------------------
# Patient-level random.

def _random_patients(train: ds_lib.Split, seed: int, name: str, fraction: Any, count: Any,
                     ) -> forget.ForgetManifest:
  pids = _patients(train, name)
  # An empty id means "unknown patient": it is not one person who could ask to be forgotten.
  pool = np.unique(pids[pids != ''])
  if fraction is not None:
    k = max(1, int(round(_fraction(fraction, f'{name}: fraction') * len(pool))))
    params = {'fraction': float(fraction)}
  else:
    k = _count(count, f'{name}: count')
    params = {'count': k}
  chosen = _pick(_rng(seed, name), pool, k, f'{name} (patients)')
  return _patient_manifest(train, chosen, name, params, seed)


@register('patient_fraction')
def patient_fraction(train: ds_lib.Split, *, seed: int, difficulty: np.ndarray | None = None,
                     fraction: float) -> forget.ForgetManifest:
  """All images of a random fraction of the training patients."""
  del difficulty
  return _random_patients(train, seed, 'patient_fraction', fraction, None)


@register('patient_count')
def patient_count(train: ds_lib.Split, *, seed: int, difficulty: np.ndarray | None = None,
                  count: int) -> forget.ForgetManifest:
  """All images of `count` random training patients."""
  del difficulty
  return _random_patients(train, seed, 'patient_count', None, count)


# ---------------------------------------------------------------------------------------------------------
# By class, sex, age.

@register('class')
def by_class(train: ds_lib.Split, *, seed: int, difficulty: np.ndarray | None = None, label: int,
             fraction: float | None = None, count: int | None = None) -> forget.ForgetManifest:
  """Images of class `label` (multi-label: images positive for label `label`), all or a random part.

  Forgetting a whole class of a single-label task is refused by `make_manifest` (the retain set would lack
  that class); pass a fraction or count below the class size.
  """
  del difficulty
  if isinstance(label, bool) or not isinstance(label, numbers.Integral):
    raise errors.UserError(f'class: label must be an integer class index, got {label!r}')
  label = int(label)
  n_classes = train.labels.shape[1] if train.labels.ndim == 2 else None
  if n_classes is not None and not 0 <= label < n_classes:
    raise errors.UserError(f'class: label must be in 0..{n_classes - 1} for this multi-label task, got {label}')
  in_class = train.labels[:, label] == 1 if n_classes is not None else train.labels == label
  pool = train.ids[in_class]
  if pool.size == 0:
    raise errors.UserError(f'class: the training split has no image of class {label}')
  k = _size(fraction, count, len(pool), 'class', default=len(pool))
  ids = _pick(_rng(seed, 'class'), pool, k, f'class {label}')
  params = {'label': label, **({'fraction': float(fraction)} if fraction is not None else {}),
            **({'count': int(count)} if count is not None else {})}
  return forget.make_manifest(train, ids, selector='class', params=params, seed=seed)


def _sex_value(sex: Any) -> str:
  v = {'f': 'F', 'female': 'F', 'm': 'M', 'male': 'M'}.get(str(sex).strip().lower())
  if v is None:
    raise errors.UserError(f"sex: sex must be 'F' or 'M', got {sex!r}")
  return v


@register('sex')
def by_sex(train: ds_lib.Split, *, seed: int, difficulty: np.ndarray | None = None, sex: str,
           fraction: float | None = None, count: int | None = None,
           matched: bool = False) -> forget.ForgetManifest:
  """Random images of patients of one sex; `fraction` is of the whole training set (e.g. 10 %).

  With `matched=True` the size is min(requested, #F images, #M images): the same for both sexes, so the F
  and M arms of a comparison forget equally many images.
  """
  del difficulty
  value = _sex_value(sex)
  sexes = _meta(train, ds_lib.SEX, 'the sex selector').astype(str)
  k = _size(fraction, count, len(train), 'sex')
  available = {s: int(np.sum(sexes == s)) for s in ds_lib.SEX_VALUES}
  if matched:
    k = min(k, *available.values())
    if k == 0:
      raise errors.UserError(f'sex: matched arms need images of both sexes, the training split has {available}')
  elif k > available[value]:
    raise errors.UserError(f'sex: asked for {k} images of sex {value} but the training split has '
                           f'{available[value]}; lower the fraction or use matched=True')
  ids = _pick(_rng(seed, f'sex/{value}'), train.ids[sexes == value], k, f'sex {value}')
  params = {'sex': value, 'matched': bool(matched),
            **({'fraction': float(fraction)} if fraction is not None else {}),
            **({'count': int(count)} if count is not None else {})}
  return forget.make_manifest(train, ids, selector='sex', params=params, seed=seed)


@register('age_range')
def age_range(train: ds_lib.Split, *, seed: int, difficulty: np.ndarray | None = None,
              min_age: float | None = None, max_age: float | None = None, fraction: float | None = None,
              count: int | None = None) -> forget.ForgetManifest:
  """Images of patients aged min_age..max_age (inclusive; unknown ages never match), all or a random part."""
  del difficulty
  if min_age is None and max_age is None:
    raise errors.UserError('age_range: give min_age, max_age or both')
  for name, value in (('min_age', min_age), ('max_age', max_age)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
      raise errors.UserError(f'age_range: {name} must be a number, got {value!r}')
  lo = -np.inf if min_age is None else float(min_age)
  hi = np.inf if max_age is None else float(max_age)
  if lo > hi:
    raise errors.UserError(f'age_range: min_age {lo} is above max_age {hi}')
  ages = _meta(train, ds_lib.AGE, 'the age_range selector').astype(np.float64)
  with np.errstate(invalid='ignore'):
    in_range = np.isfinite(ages) & (ages >= lo) & (ages <= hi)
  pool = train.ids[in_range]
  if pool.size == 0:
    raise errors.UserError(f'age_range: no training image has an age in [{lo}, {hi}]')
  k = _size(fraction, count, len(pool), 'age_range', default=len(pool))
  ids = _pick(_rng(seed, 'age_range'), pool, k, 'age_range')
  params = {name: cast(v) for name, v, cast in (('min_age', min_age, float), ('max_age', max_age, float),
                                                ('fraction', fraction, float), ('count', count, int))
            if v is not None}
  return forget.make_manifest(train, ids, selector='age_range', params=params, seed=seed)


# ---------------------------------------------------------------------------------------------------------
# By difficulty.

@register('difficulty')
def by_difficulty(train: ds_lib.Split, *, seed: int, difficulty: np.ndarray | None = None, arm: str,
                  fraction: float | None = None, count: int | None = None,
                  per_class: bool = False) -> forget.ForgetManifest:
  """The easiest, hardest or a random tercile (by default) of the training images by difficulty score.

  `difficulty[i]` scores `train` row i, higher = harder; ties are broken by id so the choice is
  deterministic. The 'random' arm (same size, random images) is the control and needs no scores.
  With `per_class` the same fraction is taken within every class (single-label tasks): on imbalanced data
  the globally hardest examples are often all of a minority class, which would leave it out of the retain set.
  """
  if arm not in ARMS:
    raise errors.UserError(f'difficulty: arm must be one of {ARMS}, got {arm!r}')
  k = _size(fraction, count, len(train), 'difficulty', default=max(1, int(round(len(train) / 3))))
  params: dict[str, Any] = {'arm': arm, **({'fraction': float(fraction)} if fraction is not None else {}),
                            **({'count': int(count)} if count is not None else {})}
  if arm == 'random':
    ids = _pick(_rng(seed, 'difficulty'), train.ids, k, 'difficulty (random)')
    return forget.make_manifest(train, ids, selector='difficulty', params=params, seed=seed)
  if difficulty is None:
    raise errors.UserError(f'difficulty: arm {arm!r} needs per-example difficulty scores, none were given')
  scores = np.asarray(difficulty, dtype=np.float64)
  if scores.shape != (len(train),):
    raise errors.UserError(f'difficulty: scores have shape {scores.shape}, expected ({len(train)},) aligned '
                           'with the training split')
  if not np.all(np.isfinite(scores)):
    raise errors.UserError(f'difficulty: {int(np.sum(~np.isfinite(scores)))} score(s) are NaN or infinite')
  if k > len(train):
    raise errors.UserError(f'difficulty: asked for {k} of {len(train)} training images')
  def extreme(rows: np.ndarray, n: int) -> np.ndarray:
    order = rows[np.lexsort((train.ids[rows], scores[rows]))]  # ascending score, then id
    return order[:n] if arm == 'easiest' else order[len(order) - n:]

  if per_class:
    if train.labels.ndim != 1:
      raise errors.UserError('difficulty: per_class needs a single-label task')
    share = k / len(train)
    pos = np.concatenate([extreme(rows, int(round(share * len(rows))))
                          for rows in (np.flatnonzero(train.labels == c) for c in np.unique(train.labels))])
    params['per_class'] = True
  else:
    pos = extreme(np.arange(len(train)), k)
  params['scores_sha256'] = hashlib.sha256(scores.astype('<f8').tobytes()).hexdigest()
  return forget.make_manifest(train, train.ids[pos], selector='difficulty', params=params, seed=seed)


# ---------------------------------------------------------------------------------------------------------
# Explicit requests from a file.

def _read_entries(path: str | os.PathLike, key: str) -> tuple[list[Any], str]:
  """Entries of a request file and the file's sha256.

  Text: ids separated by newlines, commas or spaces; '#' starts a comment. JSON: a list, or an object with
  a `key` list (so a forget manifest, which has 'ids', can be replayed as a request).
  """
  p = pathlib.Path(path).expanduser()
  if not p.is_file():
    raise errors.UserError(f'forget request file {p} does not exist')
  raw = p.read_bytes()
  text = raw.decode('utf-8', errors='replace')
  stripped = text.lstrip()
  if p.suffix.lower() == '.json' or stripped[:1] in ('[', '{'):
    try:
      data = json.loads(text)
    except json.JSONDecodeError as e:
      raise errors.UserError(f'forget request file {p} is not valid JSON: {e}') from e
    if isinstance(data, Mapping):
      if key not in data:
        raise errors.UserError(f'forget request file {p} is a JSON object without a {key!r} list')
      data = data[key]
    if not isinstance(data, list):
      raise errors.UserError(f'forget request file {p} must hold a JSON list of {key}')
    entries = data
  else:
    entries = []
    for line in text.splitlines():
      line = line.split('#', 1)[0]
      entries += [t for t in line.replace(',', ' ').split() if t]
  if not entries:
    raise errors.UserError(f'forget request file {p} lists no {key}')
  return entries, hashlib.sha256(raw).hexdigest()


def _duplicates(values: np.ndarray) -> np.ndarray:
  unique, counts = np.unique(values, return_counts=True)
  return unique[counts > 1]


def _as_id(entry: Any, path: str) -> int:
  if isinstance(entry, bool) or (isinstance(entry, float) and not entry.is_integer()):
    raise errors.UserError(f'forget request file {path} must list integer ids, found {entry!r}')
  try:
    return int(entry)
  except (TypeError, ValueError) as e:
    raise errors.UserError(f'forget request file {path} must list integer ids, found {entry!r}') from e


@register('id_file')
def id_file(train: ds_lib.Split, *, seed: int, difficulty: np.ndarray | None = None, path: str,
            allow_partial_patients: bool = False) -> forget.ForgetManifest:
  """The image ids listed in a file: a real-world deletion request.

  When the split has patient ids, a request that names only some images of a patient is refused unless
  `allow_partial_patients=True`; a complete request records its patients in the manifest.
  """
  del difficulty
  entries, sha = _read_entries(path, 'ids')
  ids = np.asarray([_as_id(e, path) for e in entries], dtype=np.int64)
  dup = _duplicates(ids)
  if dup.size:
    raise errors.UserError(f'forget request file {path} lists {dup.size} id(s) twice, e.g. {dup[:10].tolist()}')
  unknown = np.setdiff1d(ids, train.ids)
  if unknown.size:
    raise errors.UserError(f'forget request file {path} names {unknown.size} id(s) not in the training split: '
                           f'{unknown[:10].tolist()}{" ..." if unknown.size > 10 else ""}')
  patients: tuple[str, ...] = ()
  if ds_lib.PATIENT_ID in train.meta and not allow_partial_patients:
    patients = forget.check_patients_complete(train, ids)
  params = {'path': str(path), 'file_sha256': sha, 'allow_partial_patients': bool(allow_partial_patients)}
  return forget.make_manifest(train, ids, selector='id_file', params=params, seed=seed, patient_ids=patients)


@register('patient_file')
def patient_file(train: ds_lib.Split, *, seed: int, difficulty: np.ndarray | None = None,
                 path: str) -> forget.ForgetManifest:
  """All training images of the patients listed in a file (text: one id per line, or JSON)."""
  del difficulty
  pids = _patients(train, 'the patient_file selector')
  entries, sha = _read_entries(path, 'patient_ids')
  requested = np.asarray([str(e).strip() for e in entries])
  dup = _duplicates(requested)
  if dup.size:
    raise errors.UserError(f'forget request file {path} lists {dup.size} patient(s) twice, e.g. '
                           f'{dup[:10].tolist()}')
  unknown = np.setdiff1d(requested, pids)
  if unknown.size:
    raise errors.UserError(f'forget request file {path} names {unknown.size} patient(s) with no image in the '
                           f'training split: {unknown[:10].tolist()}{" ..." if unknown.size > 10 else ""}')
  return _patient_manifest(train, np.sort(requested), 'patient_file', {'path': str(path), 'file_sha256': sha},
                           seed)
