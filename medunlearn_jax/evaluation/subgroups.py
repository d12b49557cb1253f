"""Every accuracy and attack metric of a model sliced by sex, age bin, class and difficulty tercile.

Per slicing key and split, each group's value comes with a percentile-bootstrap 95 % CI (Wilson's for
accuracies of groups under 30 examples or at 0/1), and so does the difference between groups (Newcombe's
for those; `slices.slice_metric`), so that "the unlearned model is biased against male
samples" is a measured statement with an interval, not a reading of two point estimates:

* sex: F - M;
* difficulty terciles: hard - easy;
* age bins and classes: with two groups the first minus the second, with more the largest minus the smallest
  value (the maximum disparity, chosen on the point estimates; its CI does not account for that choice).

Metrics per split (retain / forget / val / test):
  accuracy          fraction of correct examples (multi-label: exact match)
  gap_to_retrain    |accuracy - retrained model's accuracy| on the group's examples, bootstrapped in pairs
  balanced_accuracy, macro_f1, roc_auc   (sex and age slices of single-label tasks; roc_auc also for
                    multi-label tasks) — within one class or one difficulty level they are degenerate
Attack metrics ('mia'):
  mia_efficacy      fraction of the group's forget examples that the MIA-efficacy attacker (trained once on
                    the whole retain and test sets, `privacy.mia_efficacy_predictions`) calls non-members
  mia_efficacy_gap  |mia_efficacy - retrained model's| on the group's forget examples, paired
  simple_mia        balanced accuracy of the simple-MIA attacker's out-of-fold verdicts
                    (`privacy.simple_mia_predictions`) on the group's forget (members) and test (non-members)
                    examples; only for keys that test examples carry (not difficulty)
Groups with unknown values (sex '', missing or out-of-range age, rows outside the training set for
difficulty) are left out and counted in 'n_unknown'.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from medunlearn_jax import errors
from medunlearn_jax.evaluation import cache as cache_lib
from medunlearn_jax.evaluation import metrics
from medunlearn_jax.evaluation import slices

AGE_EDGES = (0, 40, 60, 80, 120)
EVAL_SPLITS = ('retain', 'forget', 'val', 'test')
DEMOGRAPHIC_KEYS = ('sex', 'age')
# Slicing key -> the difficulty column of the original model's cache it uses.
DIFFICULTY_KEYS = {'difficulty': 'difficulty_loss', 'difficulty_margin': 'difficulty_margin',
                   'difficulty_learned': 'difficulty_learned_epoch'}
SLICE_KEYS = ('sex', 'age', 'class') + tuple(DIFFICULTY_KEYS)

Columns = Mapping[str, np.ndarray]


def _age_bin_order(edges: Sequence[float]) -> list[str]:
  return [str(v) for v in slices.age_bins(np.asarray(edges[:-1], np.float64), edges)]


def _unavailable(key: str, reason: str, cache: Columns, difficulty: Columns | None) -> errors.UserError:
  return errors.UserError(f'cannot slice by {key!r}: {reason}; slices available for these outputs: '
                          f'{available_slices(cache, difficulty)}')


def group_labels(cache: Columns, key: str, *, difficulty: Columns | None = None,
                 age_edges: Sequence[float] = AGE_EDGES) -> tuple[np.ndarray, np.ndarray]:
  """The group of each row of a cache under a slicing key, and which rows have a known group.

  Args:
    cache: a model's output cache (`cache.build_cache`).
    key: one of `SLICE_KEYS`.
    difficulty: the cache holding the difficulty columns (the original model's, `cache.add_difficulty`),
      row-aligned with `cache`; default: `cache` itself.
    age_edges: age bin edges (`slices.age_bins`); ages outside them count as unknown.

  Returns:
    (groups (N,), known (N,) bool). Difficulty groups are terciles ('easy', 'medium', 'hard') of the score
    over all known training rows.

  Raises:
    errors.UserError: the key is unknown or the outputs carry no (known) value for it, e.g. slicing by sex
      on a dataset without sex metadata.
  """
  n = len(cache['id'])
  if key == 'sex' or key == 'age':
    if key not in cache:
      raise _unavailable(key, f'the dataset has no {key!r} metadata (it has {cache_lib.meta_fields(cache)})',
                         cache, difficulty)
    if key == 'sex':
      groups = np.asarray(cache['sex']).astype(str)
      known = groups != ''
    else:
      ages = np.asarray(cache['age'], np.float64)
      known = np.isfinite(ages) & (ages >= age_edges[0]) & (ages < age_edges[-1])
      groups = slices.age_bins(np.where(known, ages, np.nan), age_edges)
  elif key == 'class':
    if cache_lib.is_multilabel(cache):
      raise _unavailable(key, 'multi-label examples belong to several classes at once', cache, difficulty)
    groups, known = np.asarray(cache['label'], np.int64), np.ones(n, bool)
  elif key in DIFFICULTY_KEYS:
    source = cache if difficulty is None else difficulty
    column = DIFFICULTY_KEYS[key]
    if column not in source:
      raise _unavailable(key, f'the outputs carry no {column!r} (the original model\'s cache has it after '
                         '`cache.add_difficulty`)', cache, difficulty)
    scores = np.asarray(source[column], np.float64)
    if len(scores) != n:
      raise ValueError(f'difficulty has {len(scores)} rows, the cache {n}')
    known = np.isfinite(scores)
    groups = np.full(n, '', dtype='<U6')
    groups[known] = slices.difficulty_terciles(scores[known])
  else:
    raise errors.UserError(f'unknown slicing key {key!r}; choose from {SLICE_KEYS}')
  if not known.any():
    raise _unavailable(key, f'no example has a known {key!r}', cache, difficulty)
  return groups, known


def available_slices(cache: Columns, difficulty: Columns | None = None) -> list[str]:
  """The slicing keys that `group_labels` can serve for these outputs."""
  out = []
  source = cache if difficulty is None else difficulty
  if 'sex' in cache and (np.asarray(cache['sex']).astype(str) != '').any():
    out.append('sex')
  if 'age' in cache and np.isfinite(np.asarray(cache['age'], np.float64)).any():
    out.append('age')
  if not cache_lib.is_multilabel(cache):
    out.append('class')
  out += [k for k, column in DIFFICULTY_KEYS.items()
          if column in source and np.isfinite(np.asarray(source[column], np.float64)).any()]
  return out


def same_groups(cache: Columns, keys: Sequence[str], *, difficulty: Columns | None = None,
                age_edges: Sequence[float] = AGE_EDGES) -> dict[str, str]:
  """{key: earlier key} for each slicing key that puts every example in the same group as an earlier one
  (the loss and margin terciles of a two-class task), so that reports need not repeat a table."""
  seen: list[tuple[str, np.ndarray, np.ndarray]] = []
  out = {}
  for key in keys:
    groups, known = group_labels(cache, key, difficulty=difficulty, age_edges=age_edges)
    match = next((k for k, g, m in seen if np.array_equal(m, known) and g.dtype.kind == groups.dtype.kind
                  and np.array_equal(g[m], groups[known])), None)
    if match is None:
      seen.append((key, groups, known))
    else:
      out[key] = match
  return out


# Weighted metrics (`slices.slice_metric(..., weighted=True)`): `weights` (B, n_group) holds each example's
# multiplicity in each bootstrap replicate; one value per replicate.

def _mean(weights: np.ndarray, x: np.ndarray) -> np.ndarray:
  return (weights @ x) / weights.sum(axis=1)


def _abs_mean_gap(weights: np.ndarray, x: np.ndarray, reference: np.ndarray) -> np.ndarray:
  return np.abs(_mean(weights, x) - _mean(weights, reference))


def _balanced_attack_accuracy(weights: np.ndarray, correct: np.ndarray, member: np.ndarray) -> np.ndarray:
  """Mean of the attacker's accuracy on members and on non-members (NaN for a replicate lacking either)."""
  with np.errstate(invalid='ignore', divide='ignore'):
    on_members = (weights @ (correct * member)) / (weights @ member)
    on_non_members = (weights @ (correct * (1.0 - member))) / (weights @ (1.0 - member))
  return 0.5 * (on_members + on_non_members)


def _family(multilabel: bool, num_classes: int) -> dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...]]]:
  """The accuracy-family metrics sliced by demographics: name -> (weighted metric, cache columns it reads)."""
  if multilabel:
    return {'roc_auc': (lambda weights, logits, label: metrics.weighted_multilabel_auc(weights, logits, label),
                        ('logits', 'label'))}
  return {
      'balanced_accuracy': (lambda weights, correct, label: metrics.weighted_balanced_accuracy(
          weights, correct, label, num_classes), ('correct', 'label')),
      'macro_f1': (lambda weights, pred, label: metrics.weighted_macro_f1(weights, pred, label, num_classes),
                   ('pred', 'label')),
      'roc_auc': (lambda weights, logits, label: metrics.weighted_roc_auc(weights, logits, label),
                  ('logits', 'label')),
  }


class _Slicer:
  """Applies `slices.slice_metric` with one key's group order and difference rule."""

  def __init__(self, key: str, *, n_boot: int, seed: int, ci: float, age_edges: Sequence[float]):
    self.key, self.n_boot, self.seed, self.ci = key, n_boot, seed, ci
    if key == 'age':
      self.order = _age_bin_order(age_edges)
    elif key in DIFFICULTY_KEYS:
      self.order = list(slices.DIFFICULTY_LABELS)
    else:
      self.order = None
    self.fixed_pair = {'sex': ('F', 'M')}.get(key, ('hard', 'easy') if key in DIFFICULTY_KEYS else None)

  def __call__(self, metric: Callable[..., np.ndarray], arrays: Columns, groups: np.ndarray,
               proportion: str | None = None) -> dict[str, Any]:
    present = set(groups.tolist())
    values = sorted(present) if self.order is None else [g for g in self.order if g in present]
    run = lambda n_boot, difference: slices.slice_metric(  # pylint: disable=g-long-lambda
        metric, arrays, groups, group_values=values, difference=difference, n_boot=n_boot, seed=self.seed,
        ci=self.ci, weighted=True, proportion=proportion)
    pair = None
    if self.fixed_pair is not None:
      pair = self.fixed_pair if set(self.fixed_pair) <= present else None
    elif len(values) == 2:
      pair = tuple(values)
    elif len(values) > 2:
      point = {g: v['value'] for g, v in run(0, None)['groups'].items() if np.isfinite(v['value'])}
      if len(point) >= 2:
        ranked = sorted(point, key=point.get)  # stable: equal values keep the group order
        pair = (ranked[-1], ranked[0])
    return run(self.n_boot, pair)


def slice_model(cache: Columns, key: str, *, retrain: Columns | None = None,
                verdicts: Mapping[str, np.ndarray] | None = None,
                retrain_verdicts: Mapping[str, np.ndarray] | None = None, difficulty: Columns | None = None,
                n_boot: int = 2000, seed: int = 0, ci: float = 0.95,
                age_edges: Sequence[float] = AGE_EDGES) -> dict[str, Any]:
  """All slice metrics of one model under one key (see the module docstring).

  Args:
    cache: the model's output cache.
    key: a slicing key (`SLICE_KEYS`).
    retrain: the retrained model's cache, row-aligned (for the gaps); None leaves the gaps out.
    verdicts: the attackers' per-row verdicts for this model (`results.attack_verdicts`): 'mia_efficacy'
      (1 = forget row called non-member, NaN elsewhere) and 'simple_mia' (1 = attacker right, NaN for rows
      it did not judge); None leaves the attack slices out.
    retrain_verdicts: the same for the retrained model (for mia_efficacy_gap).
    difficulty: the cache with the difficulty columns (the original model's).
    n_boot, seed, ci: bootstrap replicates, seed and coverage.
    age_edges: age bin edges.

  Returns:
    {split: {metric: slice result}, 'mia': {metric: slice result}, 'n_unknown': {split: rows left out}}.
  """
  groups, known = group_labels(cache, key, difficulty=difficulty, age_edges=age_edges)
  slicer = _Slicer(key, n_boot=n_boot, seed=seed, ci=ci, age_edges=age_edges)
  split = np.asarray(cache['split'])
  correct = np.asarray(cache['correct'], np.float64)
  out: dict[str, Any] = {}
  n_unknown = {}
  for name in EVAL_SPLITS:
    in_split = split == name
    if (in_split & ~known).any():
      n_unknown[name] = int((in_split & ~known).sum())
    rows = in_split & known
    if not rows.any():
      continue
    g = groups[rows]
    entry = {'accuracy': slicer(_mean, {'x': correct[rows]}, g, proportion='x')}
    if retrain is not None:
      reference = np.asarray(retrain['correct'], np.float64)[rows]
      entry['gap_to_retrain'] = slicer(_abs_mean_gap, {'x': correct[rows], 'reference': reference}, g)
    if key in DEMOGRAPHIC_KEYS:
      family = _family(cache_lib.is_multilabel(cache), int(np.shape(cache['logits'])[1]))
      for metric_name, (fn, columns) in family.items():
        entry[metric_name] = slicer(fn, {c: np.asarray(cache[c])[rows] for c in columns}, g)
    out[name] = entry
  if verdicts is not None:
    out['mia'] = _slice_attacks(slicer, split, groups, known, verdicts, retrain_verdicts)
  out['n_unknown'] = n_unknown
  return out


def _slice_attacks(slicer: _Slicer, split: np.ndarray, groups: np.ndarray, known: np.ndarray,
                   verdicts: Mapping[str, np.ndarray], retrain_verdicts: Mapping[str, np.ndarray] | None
                   ) -> dict[str, Any]:
  out = {}
  efficacy = np.asarray(verdicts['mia_efficacy'], np.float64)
  rows = (split == 'forget') & known & np.isfinite(efficacy)
  if rows.any():
    out['mia_efficacy'] = slicer(_mean, {'x': efficacy[rows]}, groups[rows], proportion='x')
    if retrain_verdicts is not None:
      reference = np.asarray(retrain_verdicts['mia_efficacy'], np.float64)[rows]
      if np.isfinite(reference).all():
        out['mia_efficacy_gap'] = slicer(_abs_mean_gap, {'x': efficacy[rows], 'reference': reference},
                                         groups[rows])
  judged = np.asarray(verdicts['simple_mia'], np.float64)
  rows = np.isin(split, ('forget', 'test')) & known & np.isfinite(judged)
  member = (split == 'forget').astype(np.float64)
  if (rows & (split == 'forget')).any() and (rows & (split == 'test')).any():
    out['simple_mia'] = slicer(_balanced_attack_accuracy, {'correct': judged[rows], 'member': member[rows]},
                               groups[rows])
  return out
