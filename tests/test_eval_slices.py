"""Group metrics with bootstrap CIs, age bins and difficulty scores."""
import json
import math

import numpy as np
import pytest

from medunlearn_jax import errors
from medunlearn_jax.evaluation import slices


def _mean(x):
  return float(np.mean(x))


X = np.array([1.0, 2.0, 3.0, 10.0, 20.0, 4.0, 6.0, 30.0])
SEX = np.array(['F', 'F', 'F', 'M', 'M', 'F', 'F', 'M'])
# F: {1, 2, 3, 4, 6} -> mean 16/5 = 3.2. M: {10, 20, 30} -> mean 20. Difference F - M = -16.8.


def test_slice_metric_point_estimates_and_difference():
  out = slices.slice_metric(_mean, {'x': X}, SEX, n_boot=200)
  assert out['groups']['F']['value'] == pytest.approx(3.2) and out['groups']['F']['n'] == 5
  assert out['groups']['M']['value'] == pytest.approx(20.0) and out['groups']['M']['n'] == 3
  assert out['difference']['a'] == 'F' and out['difference']['b'] == 'M'
  assert out['difference']['value'] == pytest.approx(-16.8)
  json.dumps(out)


def test_bootstrap_ci_contains_point_and_is_deterministic():
  rng = np.random.default_rng(0)
  x = rng.normal(size=200)
  g = np.where(rng.random(200) < 0.5, 'F', 'M')
  a = slices.slice_metric(_mean, {'x': x}, g, n_boot=500, seed=7)
  b = slices.slice_metric(_mean, {'x': x}, g, n_boot=500, seed=7)
  c = slices.slice_metric(_mean, {'x': x}, g, n_boot=500, seed=8)
  assert a == b
  assert a['groups']['F']['ci_low'] != c['groups']['F']['ci_low']
  for entry in [*a['groups'].values(), a['difference']]:
    assert entry['ci_low'] < entry['value'] < entry['ci_high']
  # A wider coverage gives a wider interval.
  wide = slices.slice_metric(_mean, {'x': x}, g, n_boot=500, seed=7, ci=0.99)['groups']['F']
  assert wide['ci_low'] < a['groups']['F']['ci_low'] and wide['ci_high'] > a['groups']['F']['ci_high']


def test_bootstrap_constant_group_has_degenerate_ci():
  out = slices.slice_metric(_mean, {'x': np.array([5.0, 5.0, 5.0, 1.0, 2.0])}, np.array([0, 0, 0, 1, 1]),
                            n_boot=50)
  assert out['groups'][0] == {'n': 3, 'value': 5.0, 'ci_low': 5.0, 'ci_high': 5.0,
                              'interval': 'percentile_bootstrap'}


def _weighted_mean(weights, x):
  return (weights @ x) / weights.sum(axis=1)


def test_small_or_extreme_proportions_get_score_intervals_that_cover():
  # Accuracy difference at n = 15 vs 10, true 0.95 vs 0.9: the percentile bootstrap covers about 60 % of
  # the time here (measured: 0.61 over 200 draws; 0.905 at 0.8 vs 0.6), Newcombe's interval over 95 %.
  rng = np.random.default_rng(0)
  groups = np.array(['a'] * 15 + ['b'] * 10)
  covered = {'newcombe': 0, 'percentile_bootstrap': 0}
  trials = 200
  for _ in range(trials):
    x = np.concatenate([rng.random(15) < 0.95, rng.random(10) < 0.9]).astype(np.float64)
    for proportion in ('x', None):
      diff = slices.slice_metric(_weighted_mean, {'x': x}, groups, n_boot=400, seed=1, proportion=proportion,
                                 weighted=True)['difference']
      covered[diff['interval']] += diff['ci_low'] <= 0.05 <= diff['ci_high']
  assert covered['newcombe'] / trials >= 0.93 and covered['percentile_bootstrap'] / trials < 0.8
  # The group intervals are scipy's Wilson intervals; large groups away from 0/1 keep the bootstrap.
  out = slices.slice_metric(_mean, {'x': x}, groups, n_boot=100, proportion='x')
  assert out['groups']['b']['interval'] == 'wilson'
  assert (out['groups']['b']['ci_low'], out['groups']['b']['ci_high']) == pytest.approx(
      slices.wilson_interval(int(x[15:].sum()), 10))
  big = slices.slice_metric(_mean, {'x': np.tile([0.0, 1.0], 40)}, np.repeat(['a', 'b'], 40), n_boot=100,
                            proportion='x')
  assert big['difference']['interval'] == 'percentile_bootstrap'


def test_metric_receives_named_arrays():
  correct = (np.arange(8) % 2 == 0)  # examples 0, 2, 4, 6 right
  out = slices.slice_metric(lambda c, w: float(np.sum(c * w) / np.sum(w)),
                            {'c': correct, 'w': np.ones(8)}, SEX, n_boot=0)
  # F = {0, 1, 2, 5, 6}: right {0, 2, 6} -> 3/5. M = {3, 4, 7}: right {4} -> 1/3.
  assert out['groups']['F']['value'] == pytest.approx(3 / 5)
  assert out['groups']['M']['value'] == pytest.approx(1 / 3)
  assert math.isnan(out['groups']['F']['ci_low'])


def test_group_values_and_explicit_difference():
  groups = np.array(['a', 'b', 'c', 'a', 'b', 'c'])
  x = np.array([1.0, 2.0, 3.0, 3.0, 4.0, 5.0])
  out = slices.slice_metric(_mean, {'x': x}, groups, n_boot=10)
  assert list(out['groups']) == ['a', 'b', 'c'] and out['difference'] is None
  out = slices.slice_metric(_mean, {'x': x}, groups, group_values=['c'], difference=('c', 'a'), n_boot=10)
  assert list(out['groups']) == ['c', 'a']
  assert out['difference']['value'] == pytest.approx(4.0 - 2.0)


def test_absent_group_raises_user_error():
  with pytest.raises(errors.UserError, match="'X'"):
    slices.slice_metric(_mean, {'x': X}, SEX, group_values=['F', 'X'])
  with pytest.raises(errors.UserError):
    slices.slice_metric(_mean, {'x': X}, SEX, difference=('F', 'other'))


def test_age_bins():
  ages = np.array([5, 39.9, 40, 59, 60, 85, np.nan])
  assert slices.age_bins(ages).tolist() == ['0-39', '0-39', '40-59', '40-59', '60-79', '80-199', 'unknown']
  assert slices.age_bins([30, 70], edges=(0, 50, 100)).tolist() == ['0-49', '50-99']
  with pytest.raises(errors.UserError):
    slices.age_bins([-1.0])


def test_difficulty_terciles():
  # Ranks 0..5 of (0.1, 0.2, 0.3, 0.5, 0.7, 0.9); tercile = floor(3 (r + 0.5) / 6) = floor((r + 0.5) / 2):
  # r = 0, 1 -> easy; 2, 3 -> medium; 4, 5 -> hard.
  scores = np.array([0.1, 0.5, 0.9, 0.3, 0.7, 0.2])
  assert slices.difficulty_terciles(scores).tolist() == ['easy', 'medium', 'hard', 'medium', 'hard', 'easy']
  # Ties share their mean rank: the four 1s have rank 1.5 -> floor(3 * 2 / 6) = 1 (medium);
  # 2 has rank 4 -> floor(13.5 / 6) = 2; 3 has rank 5 -> 2.
  tied = np.array([1, 1, 2, 1, 3, 1])
  assert slices.difficulty_terciles(tied).tolist() == ['medium', 'medium', 'hard', 'medium', 'hard', 'medium']
  # The labels do not depend on the order of the examples.
  perm = np.array([3, 0, 5, 1, 4, 2])
  assert slices.difficulty_terciles(scores[perm]).tolist() == slices.difficulty_terciles(scores)[perm].tolist()


def test_difficulty_scores():
  np.testing.assert_array_equal(slices.loss_difficulty([0.1, 2.0]), [0.1, 2.0])
  logits = np.log(np.array([[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]]))
  # label 0: -(0.6 - 0.3) = -0.3 (right, easy); label 2: -(0.1 - 0.6) = 0.5 (wrong, hard).
  np.testing.assert_allclose(slices.margin_difficulty(logits, np.array([0, 2])), [-0.3, 0.5])


def test_first_stable_learned_epoch():
  correct = np.array([  # columns are examples, rows epochs 0..3
      [1, 0, 1, 1, 0, 0],
      [1, 1, 0, 1, 0, 0],
      [1, 1, 1, 1, 0, 0],
      [1, 1, 1, 0, 1, 0],
  ], dtype=bool)
  # always right -> 0; right from epoch 1 -> 1; forgotten at 1, stable from 2 -> 2; wrong at the end -> 4;
  # learned at the last epoch -> 3; never -> 4.
  np.testing.assert_array_equal(slices.first_stable_learned_epoch(correct), [0, 1, 2, 4, 3, 4])
