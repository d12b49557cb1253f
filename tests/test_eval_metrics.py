"""Accuracy-family metrics and gaps to the retrained model, on hand-computed cases."""
import json
import math

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from medunlearn_jax.evaluation import gaps
from medunlearn_jax.evaluation import metrics

# Three logit patterns: the big class gets probability A = e^3 / (e^3 + 2), each other class B = 1 / (e^3 + 2).
_P0, _P1, _P2 = [3.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 3.0]
LOGITS = np.array([_P0, _P1, _P2, _P0, _P2, _P1])
LABELS = np.array([0, 1, 2, 1, 2, 2])
# predictions = [0, 1, 2, 0, 2, 1]; examples 3 and 5 are wrong.
A = math.exp(3) / (math.exp(3) + 2)
B = 1 / (math.exp(3) + 2)


def test_per_example_helpers():
  np.testing.assert_array_equal(metrics.predictions(LOGITS), [0, 1, 2, 0, 2, 1])
  np.testing.assert_allclose(metrics.softmax(LOGITS)[0], [A, B, B])
  # CE = logsumexp(z) - z_y = log(e^3 + 2) - z_y: 3 for a right prediction, 0 for a wrong one.
  right, wrong = math.log(math.exp(3) + 2) - 3, math.log(math.exp(3) + 2)
  np.testing.assert_allclose(metrics.per_example_loss(LOGITS, LABELS), [right, right, right, wrong, right, wrong])
  np.testing.assert_allclose(metrics.true_class_confidence(LOGITS, LABELS), [A, A, A, B, A, B])
  # H = -(A log A + 2 B log B) for every row.
  h = -(A * math.log(A) + 2 * B * math.log(B))
  np.testing.assert_allclose(metrics.entropy(LOGITS), [h] * 6)
  # A uniform 4-class row has entropy log 4; huge logits stay finite.
  np.testing.assert_allclose(metrics.entropy(np.zeros((1, 4))), [math.log(4)])
  assert np.isfinite(metrics.per_example_loss(np.array([[1000.0, -1000.0]]), np.array([1]))).all()


def test_accuracy_family_by_hand():
  assert metrics.accuracy(LOGITS, LABELS) == pytest.approx(4 / 6)
  # class 0: {ex0 right} = 1; class 1: {ex1 right, ex3 wrong} = 1/2; class 2: {ex2, ex4 right, ex5 wrong} = 2/3.
  assert metrics.per_class_accuracy(LOGITS, LABELS) == pytest.approx({0: 1.0, 1: 0.5, 2: 2 / 3})
  assert metrics.balanced_accuracy(LOGITS, LABELS) == pytest.approx((1 + 1 / 2 + 2 / 3) / 3)  # 13/18
  # F1 = 2PR/(P+R). class 0: predicted {0,3}, true {0}: P=1/2, R=1 -> 2/3.
  # class 1: predicted {1,5}, true {1,3}: P=R=1/2 -> 1/2. class 2: predicted {2,4}, true {2,4,5}: P=1, R=2/3 -> 4/5.
  assert metrics.macro_f1(LOGITS, LABELS) == pytest.approx((2 / 3 + 1 / 2 + 4 / 5) / 3)  # 59/90


def test_per_class_accuracy_absent_class_is_nan():
  logits = np.concatenate([LOGITS, np.zeros((6, 1))], axis=1)  # a 4th class nobody belongs to
  acc = metrics.per_class_accuracy(logits, LABELS)
  assert math.isnan(acc[3]) and acc[0] == 1.0
  # The absent class does not drag the balanced accuracy down.
  assert metrics.balanced_accuracy(logits, LABELS) == pytest.approx(13 / 18)


def test_roc_auc_binary_by_hand():
  # p(class 1) = sigmoid(s) is increasing in s, so the AUC is that of s.
  s = np.array([-2.0, -1.0, 0.5, 1.0, 2.0])
  labels = np.array([0, 1, 0, 1, 1])
  logits = np.stack([np.zeros_like(s), s], axis=1)
  # positives {-1, 1, 2} vs negatives {-2, 0.5}: pairs won = (-1>-2) + (1>-2, 1>0.5) + (2>-2, 2>0.5) = 5 of 6.
  assert metrics.roc_auc(logits, labels) == pytest.approx(5 / 6)


def test_roc_auc_multiclass_ovr_by_hand():
  # Row i puts logit v_i on class k_i and 0 elsewhere: p_k = f(v) = e^v / (e^v + 2) (increasing in v), each
  # other class gets g(v) = 1 / (e^v + 2) (decreasing), and g(v) < 1/3 < f(v) for v > 0. All v differ, so
  # no score ties (equal floats from permuted rows need not be bit-identical).
  k = [0, 1, 1, 2, 2, 0]
  v = [3.0, 1.0, 2.0, 0.5, 4.0, 1.5]
  labels = np.array([0, 0, 1, 1, 2, 2])
  logits = np.zeros((6, 3))
  logits[np.arange(6), k] = v
  # class 0: pos {f(3), g(1)}, neg {g(2), g(.5), g(4), f(1.5)}: f(3) beats all 4; g(1) beats g(2), g(4) -> 6/8
  # class 1: pos {f(2), g(.5)}, neg {g(3), f(1), g(4), g(1.5)}: f(2) beats all 4; g(.5) loses only to f(1) -> 7/8
  # class 2: pos {f(4), g(1.5)}, neg {g(3), g(1), g(2), f(.5)}: f(4) beats all 4; g(1.5) beats g(3), g(2) -> 6/8
  expected = (6 / 8 + 7 / 8 + 6 / 8) / 3
  assert metrics.roc_auc(logits, labels) == pytest.approx(expected)
  probs = metrics.softmax(logits)
  assert expected == pytest.approx(sk_metrics.roc_auc_score(labels, probs, multi_class='ovr', average='macro'))
  # A class absent from the labels has no one-vs-rest AUC and is left out of the mean.
  keep = labels != 2
  assert metrics.roc_auc(logits[keep], labels[keep]) == pytest.approx(
      np.mean([sk_metrics.roc_auc_score(labels[keep] == c, probs[keep, c]) for c in (0, 1)]))


def test_roc_auc_single_class_is_nan_not_error():
  assert math.isnan(metrics.roc_auc(LOGITS[:2, :2], np.array([1, 1])))
  assert math.isnan(metrics.roc_auc(LOGITS[:3], np.array([2, 2, 2])))


def test_unlearning_accuracy():
  assert metrics.unlearning_accuracy(0.8) == pytest.approx(0.2)


def test_summary_is_flat_and_json_serialisable():
  out = metrics.summary(LOGITS, LABELS, num_classes=3)
  assert out['n'] == 6
  assert out['accuracy'] == pytest.approx(4 / 6)
  assert out['balanced_accuracy'] == pytest.approx(13 / 18)
  assert out['macro_f1'] == pytest.approx(59 / 90)
  assert out['accuracy_class_1'] == pytest.approx(0.5)
  assert out['confidence'] == pytest.approx((4 * A + 2 * B) / 6)
  assert all(isinstance(v, (int, float)) for v in out.values())
  assert json.loads(json.dumps(out)) == pytest.approx(out)
  with pytest.raises(ValueError):
    metrics.summary(LOGITS, LABELS, num_classes=4)


def test_empty_split_gives_nan():
  out = metrics.summary(np.zeros((0, 3)), np.zeros(0, np.int64), num_classes=3)
  assert out['n'] == 0 and math.isnan(out['accuracy']) and math.isnan(out['roc_auc'])


def test_bad_labels_raise():
  with pytest.raises(ValueError):
    metrics.accuracy(LOGITS, np.array([0, 1, 2, 3, 0, 0]))
  with pytest.raises(ValueError):
    metrics.accuracy(LOGITS, LABELS[:5])


def test_abs_gaps():
  model = {'accuracy': 0.9, 'loss': 0.5, 'name': 'salun', 'flag': True, 'nested': {'x': 1.0}}
  retrain = {'accuracy': 0.7, 'loss': 0.75, 'other': 1.0, 'flag': False, 'nested': {'x': 2.0}}
  # Only keys numeric in both: |0.9 - 0.7| = 0.2, |0.5 - 0.75| = 0.25.
  assert gaps.abs_gaps(model, retrain) == pytest.approx({'accuracy': 0.2, 'loss': 0.25})
  assert gaps.abs_gaps(model, retrain, keys=['loss']) == pytest.approx({'loss': 0.25})
  with pytest.raises(KeyError):
    gaps.abs_gaps(model, retrain, keys=['name'])


def test_avg_gap_salun():
  # (|0.10 - 0.15| + |0.95 - 0.99| + |0.85 - 0.86| + |0.20 - 0.30|) / 4 = (0.05 + 0.04 + 0.01 + 0.10) / 4 = 0.05
  assert gaps.avg_gap(0.10, 0.95, 0.85, 0.20, retrain=(0.15, 0.99, 0.86, 0.30)) == pytest.approx(0.05)
  assert gaps.avg_gap(0.1, 0.9, 0.8, 0.3, retrain=(0.1, 0.9, 0.8, 0.3)) == 0.0


def test_tow():
  # (1 - |0.90 - 0.80|) * (1 - |0.95 - 0.97|) * (1 - |0.85 - 0.86|) = 0.9 * 0.98 * 0.99 = 0.87318
  model = {'forget': 0.90, 'retain': 0.95, 'test': 0.85}
  assert gaps.tow(model, (0.80, 0.97, 0.86)) == pytest.approx(0.87318)
  assert gaps.tow(model, model) == 1.0
  with pytest.raises(ValueError):
    gaps.tow((90, 95, 85), (80, 97, 86))  # percentages are rejected


def test_forget_signal_by_hand():
  n = 200
  rng = np.random.default_rng(0)
  # The original fits every forget example; the retrained model gets 70 % of them (it never saw them).
  original = {'correct': np.ones(n), 'loss': np.full(n, 0.01), 'non_member': np.zeros(n)}
  retrain = {'correct': (rng.random(n) < 0.7).astype(float), 'loss': rng.exponential(1.0, n),
             'non_member': (rng.random(n) < 0.4).astype(float)}
  signal = gaps.forget_signal(original, retrain, n_boot=1000, seed=0)
  d = original['correct'] - retrain['correct']
  assert signal['accuracy']['value'] == pytest.approx(d.mean()) and signal['n'] == n
  se = d.std() / math.sqrt(n)  # The percentile interval is close to the normal one at this n.
  assert signal['accuracy']['ci_low'] == pytest.approx(d.mean() - 1.96 * se, abs=0.02)
  assert signal['accuracy']['ci_high'] == pytest.approx(d.mean() + 1.96 * se, abs=0.02)
  assert signal['loss']['value'] == pytest.approx(np.mean(retrain['loss'] - 0.01))
  assert signal['mia_efficacy']['value'] == pytest.approx(retrain['non_member'].mean())
  assert signal['clear'] and signal['accuracy']['p_value'] < 1e-10
  # Four examples all ahead: a constant difference, yet a one-sided sign test gives p = 1/16 > 0.05.
  four = gaps.forget_signal({k: v[:4] for k, v in original.items()},
                            {'correct': np.zeros(4), 'loss': np.ones(4), 'non_member': np.zeros(4)}, n_boot=100)
  assert four['accuracy']['ci_low'] == 1.0 and four['accuracy']['p_value'] == 1 / 16 and not four['clear']
  # Nothing memorised: the same predictions and verdicts; the loss alone differs, which cannot rank.
  same = dict(retrain, loss=retrain['loss'] + 0.1)
  nothing = gaps.forget_signal(same, retrain, n_boot=1000)
  assert nothing['accuracy'] == {'value': 0.0, 'ci_low': 0.0, 'ci_high': 0.0, 'p_value': 1.0}
  assert nothing['loss']['value'] == pytest.approx(-0.1) and not nothing['clear']
  # Verdicts missing for some rows (NaN) are left out; no bootstrap gives no interval.
  partial = dict(original, non_member=np.where(np.arange(n) < 10, np.nan, 0.0))
  assert gaps.forget_signal(partial, retrain, n_boot=0)['mia_efficacy']['value'] == pytest.approx(
      retrain['non_member'][10:].mean())
  assert math.isnan(gaps.forget_signal(partial, retrain, n_boot=0)['accuracy']['ci_low'])
