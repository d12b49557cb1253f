"""The per-example output cache, multi-label metrics, difficulty columns, weighted (bootstrap) metric forms and
the attackers' per-example verdicts, on hand-made arrays with known answers."""
import math

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from medunlearn_jax import errors
from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.evaluation import cache as cache_lib
from medunlearn_jax.evaluation import metrics
from medunlearn_jax.evaluation import privacy
from medunlearn_jax.evaluation import results as results_lib


def make_split(name, ids, labels, **meta):
  ids = np.asarray(ids, np.int64)
  return ds_lib.Split(name, ids, np.zeros((len(ids), 2, 2, 1), np.uint8), np.asarray(labels, np.int64),
                      {k: np.asarray(v) for k, v in meta.items()})


def softplus(x):
  return math.log1p(math.exp(x))


# retain: [2, 0] label 0 (right), [0, 0] label 1 (argmax takes the first maximum, 0: wrong); forget: [0, 3]
# label 1 (right). The forget split has no 'age': the cache fills NaN.
SPLITS = {
    'retain': make_split('retain', [10, 11], [0, 1], sex=['F', 'M'], age=[30.0, np.nan],
                         patient_id=np.array(['p1', 'p2'], dtype=object)),
    'forget': make_split('forget', [20], [1], sex=['M'], patient_id=np.array(['p3'], dtype=object)),
}
LOGITS = {'retain': np.array([[2.0, 0.0], [0.0, 0.0]]), 'forget': np.array([[0.0, 3.0]])}


def test_build_cache_columns_by_hand():
  cache = cache_lib.build_cache(LOGITS, SPLITS)
  np.testing.assert_array_equal(cache['id'], [10, 11, 20])
  assert cache['split'].tolist() == ['retain', 'retain', 'forget']
  np.testing.assert_array_equal(cache['label'], [0, 1, 1])
  assert cache['logits'].dtype == np.float32 and cache['logits'].shape == (3, 2)
  # CE = log(1 + e^{-(z_y - z_other)}): margins 2, 0, 3.
  np.testing.assert_allclose(cache['loss'], [softplus(-2), math.log(2), softplus(-3)])
  np.testing.assert_array_equal(cache['pred'], [0, 0, 1])
  np.testing.assert_array_equal(cache['correct'], [True, False, True])
  p2 = math.exp(2) / (math.exp(2) + 1)
  np.testing.assert_allclose(cache['confidence'], [p2, 0.5, math.exp(3) / (math.exp(3) + 1)])
  h2 = -(p2 * math.log(p2) + (1 - p2) * math.log(1 - p2))
  np.testing.assert_allclose(cache['entropy'][:2], [h2, math.log(2)])
  assert cache['sex'].tolist() == ['F', 'M', 'M']
  np.testing.assert_array_equal(np.isnan(cache['age']), [False, True, True])  # forget lacks 'age'
  assert cache['patient_id'].dtype.kind == 'U'  # object arrays become strings (no pickles)
  assert cache_lib.meta_fields(cache) == ['age', 'patient_id', 'sex']


def test_cache_round_trip_is_exact_and_atomic(tmp_path):
  cache = cache_lib.add_difficulty(cache_lib.build_cache(LOGITS, SPLITS))
  path = tmp_path / 'outputs' / 'original.npz'
  cache_lib.save_cache(path, cache)
  assert [p.name for p in path.parent.iterdir()] == ['original.npz']  # no temporary file left behind
  loaded = cache_lib.load_cache(path)
  assert set(loaded) == set(cache)
  for key, value in cache.items():
    assert loaded[key].dtype == np.asarray(value).dtype, key
    np.testing.assert_array_equal(loaded[key], value)
  np.load(path, allow_pickle=False).close()
  # The per-split view keeps the layout the pipeline tests read.
  view = results_lib.load_outputs(path)
  np.testing.assert_array_equal(view['forget']['ids'], [20])
  assert view['retain']['logits'].shape == (2, 2) and view['retain']['labels'].tolist() == [0, 1]


def test_load_cache_refuses_missing_and_old_files(tmp_path):
  with pytest.raises(errors.DataError, match='no model outputs'):
    cache_lib.load_cache(tmp_path / 'nope.npz')
  np.savez(tmp_path / 'old.npz', **{'test/logits': np.zeros((2, 2))})  # the earlier per-split layout
  with pytest.raises(errors.DataError, match='older version'):
    cache_lib.load_cache(tmp_path / 'old.npz')


def test_meta_clashing_with_a_column_is_refused():
  with pytest.raises(errors.DataError, match='clashes'):
    cache_lib.build_cache({'retain': LOGITS['retain']},
                          {'retain': make_split('retain', [1, 2], [0, 1], loss=[0.0, 1.0])})


def test_caches_of_different_examples_are_refused():
  a = cache_lib.build_cache(LOGITS, SPLITS)
  b = cache_lib.take(a, np.array([1, 0, 2]))
  with pytest.raises(errors.DataError, match='different examples'):
    cache_lib.check_aligned({'retrain': a, 'x': b})


# Multi-label: rows z = [0, 2] y = [1, -1]; z = [3, -1] y = [1, 0]; z = [0, 1] y = [0, 1] (-1 = ignored).
ML_LOGITS = np.array([[0.0, 2.0], [3.0, -1.0], [0.0, 1.0]])
ML_LABELS = np.array([[1, -1], [1, 0], [0, 1]])


def test_multilabel_per_example_by_hand():
  out = metrics.multilabel_per_example(ML_LOGITS, ML_LABELS)
  # BCE = log(1 + e^z) - y z, mean over known labels: row 0 only label 0 (log 2); row 1 (softplus(-3) +
  # softplus(-1)) / 2; row 2 (log 2 + softplus(-1)) / 2.
  loss = [math.log(2), (softplus(-3) + softplus(-1)) / 2, (math.log(2) + softplus(-1)) / 2]
  np.testing.assert_allclose(out['loss'], loss)
  np.testing.assert_allclose(out['confidence'], np.exp(-np.asarray(loss)))
  np.testing.assert_array_equal(out['pred'], [[0, 1], [1, 0], [0, 1]])
  np.testing.assert_array_equal(out['correct'], [False, True, True])  # row 0: label 0 is 1, predicted 0
  s2 = 1 / (1 + math.exp(-2))
  h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))
  assert out['entropy'][0] == pytest.approx((math.log(2) + h(s2)) / 2)


def test_multilabel_summary_by_hand():
  out = metrics.multilabel_summary(ML_LOGITS, ML_LABELS)
  assert out['n'] == 3 and out['accuracy'] == pytest.approx(2 / 3)  # exact match
  # label 0: y (1, 1, 0), pred (0, 1, 0): accuracy 2/3, F1 = 2*1 / (2*1 + 0 + 1) = 2/3;
  # AUC: positives z {0, 3} vs negative {0}: 3 wins, 0 ties -> (1 + 1/2) / 2 = 3/4.
  # label 1 (row 0 ignored): y (0, 1), pred (0, 1): accuracy 1, F1 1, AUC 1.
  assert out['label_accuracy'] == pytest.approx((2 / 3 + 1) / 2)
  assert out['macro_f1'] == pytest.approx((2 / 3 + 1) / 2)
  assert out['roc_auc_label_0'] == pytest.approx(0.75) and out['roc_auc_label_1'] == 1.0
  assert out['roc_auc'] == pytest.approx(0.875) == metrics.multilabel_auc(ML_LOGITS, ML_LABELS)


def test_multilabel_cache_and_summary_do_not_crash():
  split = ds_lib.Split('test', np.arange(3), np.zeros((3, 2, 2, 1), np.uint8), ML_LABELS)
  cache = cache_lib.build_cache({'test': ML_LOGITS}, {'test': split})
  assert cache_lib.is_multilabel(cache) and cache['label'].shape == (3, 2) and cache['pred'].shape == (3, 2)
  assert results_lib.split_summary(cache, 2)['accuracy'] == pytest.approx(2 / 3)


def test_add_difficulty_scores_only_training_rows():
  test_split = make_split('test', [30], [0], sex=['F'])
  cache = cache_lib.build_cache(dict(LOGITS, test=np.array([[1.0, 0.0]])), dict(SPLITS, test=test_split))
  out = cache_lib.add_difficulty(cache)
  np.testing.assert_allclose(out['difficulty_loss'][:3], cache['loss'][:3])
  # margin difficulty = -(p_y - p_other): row 0 p_y = σ(2); row 1 0.5 - 0.5 = 0; forget row p_y = σ(3).
  s2, s3 = 1 / (1 + math.exp(-2)), 1 / (1 + math.exp(-3))
  np.testing.assert_allclose(out['difficulty_margin'][:3], [-(2 * s2 - 1), 0.0, -(2 * s3 - 1)])
  assert math.isnan(out['difficulty_loss'][3]) and math.isnan(out['difficulty_margin'][3])  # a test row
  assert np.isnan(out['difficulty_learned_epoch']).all()  # no per-epoch data
  with pytest.raises(errors.UserError, match='no training rows'):
    cache_lib.add_difficulty(cache_lib.rows(cache, 'test'))


def test_add_difficulty_with_correct_per_epoch_aligns_by_id():
  cache = cache_lib.build_cache(LOGITS, SPLITS)
  # Epoch columns given in another order (ids 20, 10, 11); id 11 never learned, 20 learned from epoch 1.
  correct = np.array([[0, 1, 0], [1, 1, 0], [1, 1, 0]], dtype=bool)
  out = cache_lib.add_difficulty(cache, correct, epoch_ids=[20, 10, 11])
  np.testing.assert_array_equal(out['difficulty_learned_epoch'], [0, 3, 1])  # rows: ids 10, 11, 20
  np.testing.assert_array_equal(out['correct_per_epoch'], [[1, 1, 1], [0, 0, 0], [0, 1, 1]])
  with pytest.raises(ValueError, match='ids'):
    cache_lib.add_difficulty(cache, correct, epoch_ids=[20, 10])


def test_weighted_metrics_equal_the_metrics_on_repeated_examples():
  rng = np.random.default_rng(0)
  logits = np.round(rng.normal(size=(40, 3)), 1)  # rounding makes ties in the scores
  labels = rng.integers(0, 3, 40)
  weights = rng.integers(0, 4, size=(5, 40)).astype(float)
  for w in weights:
    rep = np.repeat(np.arange(40), w.astype(int))
    got = metrics.weighted_roc_auc(w[None], logits, labels)[0]
    assert got == pytest.approx(metrics.roc_auc(logits[rep], labels[rep]))
    assert got == pytest.approx(sk_metrics.roc_auc_score(labels[rep], metrics.softmax(logits[rep]),
                                                         multi_class='ovr'))
    pred = metrics.predictions(logits)
    assert metrics.weighted_macro_f1(w[None], pred, labels, 3)[0] == pytest.approx(
        sk_metrics.f1_score(labels[rep], pred[rep], average='macro', zero_division=0.0))
    assert metrics.weighted_balanced_accuracy(w[None], pred == labels, labels, 3)[0] == pytest.approx(
        sk_metrics.balanced_accuracy_score(labels[rep], pred[rep]))
  # All rows at once give the same values as one at a time.
  np.testing.assert_allclose(metrics.weighted_roc_auc(weights, logits, labels),
                             [metrics.weighted_roc_auc(w[None], logits, labels)[0] for w in weights])
  # Binary AUC with ties: positives {1, 2, 2}, negatives {2, 0}: wins 1>0, 2>0, 2>0, ties 2=2 twice -> 4/6.
  assert metrics.binary_auc(np.array([1, 1, 1, 0, 0], bool), np.array([1, 2, 2, 2, 0])) == pytest.approx(4 / 6)
  assert math.isnan(metrics.binary_auc(np.ones(3, bool), np.arange(3)))


def test_attack_verdicts_agree_with_the_population_attacks():
  rng = np.random.default_rng(0)
  retain, test, forget = rng.uniform(0.9, 1, 80), rng.uniform(0.1, 0.6, 60), rng.uniform(0.1, 1, 30)
  verdict = privacy.mia_efficacy_predictions(retain, test, forget, seed=2)
  assert verdict.dtype == bool and verdict.shape == (30,)
  assert verdict.mean() == privacy.mia_efficacy(retain, test, forget, seed=2)
  # Separable losses: every kept example is judged right out of fold; the 20 surplus test examples are
  # left out by the balancing (NaN).
  forget_ok, test_ok = privacy.simple_mia_predictions(rng.uniform(0, 0.1, 30), rng.uniform(2, 3, 50))
  assert np.all(forget_ok == 1.0) and np.isnan(test_ok).sum() == 20 and np.nansum(test_ok) == 30
  one, none = privacy.simple_mia_predictions(np.array([0.1]), np.array([1.0, 2.0]))
  assert np.isnan(one).all() and np.isnan(none).all()  # fewer than 2 per class: no verdicts
