"""Accuracy-family metrics and per-example quantities computed from logits, in plain numpy.

Every function takes `logits` of shape (N, C) (unnormalised scores, C >= 2) and integer `labels` of shape
(N,) with values in [0, C). Metrics return Python floats so that they can be written to JSON directly; a
metric that is undefined on the given data (empty input, a single class for ROC AUC, ...) returns NaN
instead of raising, so one degenerate split never aborts a whole evaluation.

Unlearning-specific naming follows Jia et al., "Model sparsity can simplify machine unlearning"
(NeurIPS 2023, arXiv:2304.04934) and Fan et al., "SalUn" (ICLR 2024, arXiv:2310.12508): UA (unlearning
accuracy) = 1 - accuracy on the forget set, RA = accuracy on the retain set, TA = accuracy on the test set.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import special


def _check(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Validates shapes/ranges and returns (float64 logits, int64 labels)."""
  logits = np.asarray(logits, dtype=np.float64)
  labels = np.asarray(labels)
  if logits.ndim != 2 or logits.shape[1] < 2:
    raise ValueError(f'logits must have shape (N, C) with C >= 2, got {logits.shape}')
  if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
    raise ValueError(f'labels must have shape ({logits.shape[0]},), got {labels.shape}')
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integers, got dtype {labels.dtype}')
  labels = labels.astype(np.int64)
  if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
    raise ValueError(f'labels must lie in [0, {logits.shape[1]}), got range [{labels.min()}, {labels.max()}]')
  return logits, labels


# ----------------------------------------------------------------------------------------------------------
# Per-example quantities.


def softmax(logits: np.ndarray) -> np.ndarray:
  """Row-wise softmax, (N, C) -> (N, C), computed after subtracting the row max for stability."""
  logits = np.asarray(logits, dtype=np.float64)
  return special.softmax(logits, axis=-1)


def per_example_loss(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """Cross-entropy -log softmax(z)_y per example, (N,), as logsumexp(z) - z_y (exact for large logits)."""
  logits, labels = _check(logits, labels)
  return special.logsumexp(logits, axis=1) - logits[np.arange(len(labels)), labels]


def true_class_confidence(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """softmax(z)_y per example, (N,): the 'confidence' signal of the SalUn / Jia et al. MIA."""
  logits, labels = _check(logits, labels)
  return softmax(logits)[np.arange(len(labels)), labels]


def entropy(logits: np.ndarray) -> np.ndarray:
  """Shannon entropy (nats) of the predictive distribution per example, (N,); 0 * log 0 is taken as 0."""
  logits = np.asarray(logits, dtype=np.float64)
  log_p = logits - special.logsumexp(logits, axis=-1, keepdims=True)
  return -np.sum(np.exp(log_p) * log_p, axis=-1)


def predictions(logits: np.ndarray) -> np.ndarray:
  """Predicted class per example, (N,) int64: argmax of the logits (first maximum on ties)."""
  return np.argmax(np.asarray(logits), axis=-1).astype(np.int64)


# ----------------------------------------------------------------------------------------------------------
# Accuracy family.


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of examples whose argmax prediction equals the label; NaN for an empty set."""
  logits, labels = _check(logits, labels)
  if labels.size == 0:
    return math.nan
  return float(np.mean(predictions(logits) == labels))


def per_class_accuracy(logits: np.ndarray, labels: np.ndarray, num_classes: int | None = None
                       ) -> dict[int, float]:
  """Accuracy restricted to each true class (= per-class recall), {class: acc}; NaN for an absent class.

  Args:
    logits: (N, C) scores.
    labels: (N,) integer labels.
    num_classes: classes to report, 0..num_classes-1; defaults to C.
  """
  logits, labels = _check(logits, labels)
  num_classes = logits.shape[1] if num_classes is None else int(num_classes)
  correct = predictions(logits) == labels
  out = {}
  for c in range(num_classes):
    in_class = labels == c
    out[c] = float(np.mean(correct[in_class])) if in_class.any() else math.nan
  return out


def balanced_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  """Mean per-class recall over the classes present in `labels`.

  Definition of Brodersen et al., "The balanced accuracy and its posterior distribution" (ICPR 2010), as in
  scikit-learn's `balanced_accuracy_score` (unadjusted). Classes absent from `labels` are left out rather
  than counted as 0, so a test split without some class is not penalised. NaN for an empty set.
  """
  logits, labels = _check(logits, labels)
  if labels.size == 0:
    return math.nan
  return float(weighted_balanced_accuracy(_unit_weights(labels.size), predictions(logits) == labels, labels,
                                          logits.shape[1])[0])


def macro_f1(logits: np.ndarray, labels: np.ndarray) -> float:
  """Unweighted mean of per-class F1 = 2PR/(P+R) over the classes in labels ∪ predictions.

  scikit-learn's `f1_score(average='macro')` with `zero_division=0`: a class that is predicted but never
  true (or vice versa) has F1 = 0 and counts in the mean. NaN for an empty set.
  """
  logits, labels = _check(logits, labels)
  if labels.size == 0:
    return math.nan
  return float(weighted_macro_f1(_unit_weights(labels.size), predictions(logits), labels, logits.shape[1])[0])


def binary_auc(is_positive: np.ndarray, score: np.ndarray) -> float:
  """ROC AUC of `score` for the boolean target `is_positive`; NaN without both classes (`weighted_binary_auc`)."""
  return float(weighted_binary_auc(_unit_weights(np.size(is_positive)), is_positive, score)[0])


def roc_auc(logits: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of the softmax probabilities.

  Binary (C == 2): AUC of the positive-class (class 1) probability. Multi-class: one-vs-rest macro average,
  i.e. the unweighted mean over classes c of the binary AUC of p_c for "label == c" vs the rest (scikit-learn's
  `multi_class='ovr', average='macro'`, after Provost & Domingos 2000). Classes absent from `labels` have no
  defined one-vs-rest AUC and are left out of the mean. Returns NaN when `labels` holds fewer than two
  classes (or is empty), where the AUC is undefined.
  """
  logits, labels = _check(logits, labels)
  return float(weighted_roc_auc(_unit_weights(labels.size), logits, labels)[0])


# ----------------------------------------------------------------------------------------------------------
# Weighted forms: each metric for B rows of per-example weights at once, (B, N) -> (B,). A bootstrap
# replicate is the multiplicity of every example in the resample, so all replicates of a bootstrap are
# evaluated in one vectorised call (`slices.slice_metric(..., weighted=True)`). With unit weights they are the
# metrics above, which call them: one implementation per metric.


def _unit_weights(n: int) -> np.ndarray:
  return np.ones((1, n))


def _row_nanmean(values: np.ndarray) -> np.ndarray:
  """Mean of the non-NaN entries of each row, NaN for a row without any (no RuntimeWarning)."""
  finite = ~np.isnan(values)
  count = finite.sum(axis=1)
  total = np.where(finite, values, 0.0).sum(axis=1)
  return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _onehot(ids: np.ndarray, num_classes: int) -> np.ndarray:
  return (np.asarray(ids, np.int64)[:, None] == np.arange(num_classes)).astype(np.float64)


def weighted_balanced_accuracy(weights: np.ndarray, correct: np.ndarray, labels: np.ndarray,
                               num_classes: int) -> np.ndarray:
  """`balanced_accuracy` per row of weights: mean over classes with weight of Σw·correct / Σw in the class."""
  weights = np.asarray(weights, np.float64)
  in_class = _onehot(labels, num_classes)
  support = weights @ in_class
  right = weights @ (in_class * np.asarray(correct, np.float64)[:, None])
  with np.errstate(invalid='ignore', divide='ignore'):
    recall = np.where(support > 0, right / support, np.nan)
  return _row_nanmean(recall)


def weighted_macro_f1(weights: np.ndarray, pred: np.ndarray, labels: np.ndarray, num_classes: int
                      ) -> np.ndarray:
  """`macro_f1` per row of weights. Per class F1 = 2TP / (2TP + FP + FN) = 2TP / (#predicted + #true), which
  equals 2PR/(P+R) where that is defined and is 0 when TP = 0 (scikit-learn's `zero_division=0`); the mean
  runs over the classes predicted or true with positive weight."""
  weights = np.asarray(weights, np.float64)
  true, predicted = _onehot(labels, num_classes), _onehot(pred, num_classes)
  tp = weights @ (true * predicted)
  denominator = weights @ true + weights @ predicted
  with np.errstate(invalid='ignore', divide='ignore'):
    f1 = np.where(denominator > 0, 2.0 * tp / denominator, np.nan)
  return _row_nanmean(f1)


def weighted_binary_auc(weights: np.ndarray, is_positive: np.ndarray, score: np.ndarray) -> np.ndarray:
  """ROC AUC of `score` for the boolean target `is_positive`, per row of example weights.

  The Mann-Whitney form (Hanley & McNeil, Radiology 1982): AUC = P(score of a positive > score of a
  negative) + P(tie) / 2, pairs weighted by w_i w_j. It equals the trapezoidal area under the empirical ROC
  curve (scikit-learn's `roc_auc_score`), ties included. The scores are sorted once; each row then needs one
  cumulative sum over the runs of tied scores. NaN for a row without positive or without negative weight.
  """
  weights = np.asarray(weights, np.float64)
  is_positive = np.asarray(is_positive, bool)
  if is_positive.size == 0:
    return np.full(weights.shape[0], np.nan)
  order = np.argsort(np.asarray(score, np.float64), kind='stable')
  sorted_score = np.asarray(score, np.float64)[order]
  starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])  # runs of tied scores
  w = weights[:, order]
  pos = np.add.reduceat(w * is_positive[order], starts, axis=1)
  neg = np.add.reduceat(w * ~is_positive[order], starts, axis=1)
  neg_below = np.cumsum(neg, axis=1) - neg
  wins = np.sum(pos * (neg_below + 0.5 * neg), axis=1)
  n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
  with np.errstate(invalid='ignore', divide='ignore'):
    return np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)


def weighted_roc_auc(weights: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """`roc_auc` per row of weights (binary: class-1 probability; else one-vs-rest macro over the classes
  with both positive and negative weight)."""
  probs = softmax(logits)
  labels = np.asarray(labels, np.int64)
  if probs.shape[1] == 2:
    return weighted_binary_auc(weights, labels == 1, probs[:, 1])
  per_class = np.stack([weighted_binary_auc(weights, labels == c, probs[:, c]) for c in range(probs.shape[1])],
                       axis=1)
  return _row_nanmean(per_class)


def weighted_multilabel_auc(weights: np.ndarray, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """`multilabel_auc` per row of weights: unknown (-1) entries get weight 0 for their label."""
  logits, labels = _check_multilabel(logits, labels)
  weights = np.asarray(weights, np.float64)
  per_label = np.stack([weighted_binary_auc(weights * (labels[:, j] >= 0), labels[:, j] == 1, logits[:, j])
                        for j in range(labels.shape[1])], axis=1)
  return _row_nanmean(per_label)


def unlearning_accuracy(forget_acc: float) -> float:
  """UA = 1 - accuracy on the forget set (Jia et al. 2023; Fan et al. 2024). Higher = more forgetting."""
  return 1.0 - float(forget_acc)


def summary(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, Any]:
  """All accuracy-family metrics of one split, as a flat dict of Python numbers (JSON-serialisable).

  Keys: n, accuracy, balanced_accuracy, macro_f1, roc_auc, loss (mean cross-entropy), confidence (mean
  true-class probability), entropy (mean predictive entropy), and accuracy_class_<c> for c < num_classes.
  The dict is flat so that `gaps.abs_gaps` can compare two summaries key by key. Undefined values are NaN
  (which `json.dumps` writes as NaN).
  """
  logits, labels = _check(logits, labels)
  if logits.shape[1] != num_classes:
    raise ValueError(f'logits have {logits.shape[1]} classes but num_classes={num_classes}')
  empty = labels.size == 0
  out: dict[str, Any] = {
      'n': int(labels.size),
      'accuracy': accuracy(logits, labels),
      'balanced_accuracy': balanced_accuracy(logits, labels),
      'macro_f1': macro_f1(logits, labels),
      'roc_auc': roc_auc(logits, labels),
      'loss': math.nan if empty else float(np.mean(per_example_loss(logits, labels))),
      'confidence': math.nan if empty else float(np.mean(true_class_confidence(logits, labels))),
      'entropy': math.nan if empty else float(np.mean(entropy(logits))),
  }
  for c, acc in per_class_accuracy(logits, labels, num_classes).items():
    out[f'accuracy_class_{c}'] = acc
  return out


# ----------------------------------------------------------------------------------------------------------
# Multi-label tasks (sigmoid outputs): labels (N, L) in {0, 1}, with -1 marking a label to ignore (CheXpert's
# U-Ignore policy), as in the training loss `algorithms.base.per_example_loss`.


def _check_multilabel(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  logits = np.asarray(logits, dtype=np.float64)
  labels = np.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape:
    raise ValueError(f'multi-label logits and labels must both be (N, L), got {logits.shape} and {labels.shape}')
  if labels.size and (labels.min() < -1 or labels.max() > 1):
    raise ValueError(f'multi-label labels must be in {{-1, 0, 1}}, got range [{labels.min()}, {labels.max()}]')
  return logits, labels.astype(np.int64)


def multilabel_per_example(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
  """Per-example quantities of a multi-label model, each (N,) except `pred` (N, L).

  * loss: mean binary cross-entropy over the known labels, log(1 + e^z) - y z (the training loss; 0 for an
    example without a known label, as there);
  * confidence: exp(-loss), the geometric mean over known labels of the probability given to the true value,
    the sigmoid counterpart of the softmax true-class confidence used by the MIAs;
  * entropy: mean over all labels of the binary entropy (nats) of sigmoid(z);
  * pred: 1 where z > 0 (probability above 1/2);
  * correct: exact match, every known label right (the training accuracy of `algorithms.base.correct`).
  """
  logits, labels = _check_multilabel(logits, labels)
  known = labels >= 0
  bce = np.logaddexp(0.0, logits) - np.maximum(labels, 0) * logits
  loss = np.sum(bce * known, axis=1) / np.maximum(known.sum(axis=1), 1)
  log_p, log_q = -np.logaddexp(0.0, -logits), -np.logaddexp(0.0, logits)  # log σ(z), log(1 - σ(z))
  binary_entropy = -(np.exp(log_p) * log_p + np.exp(log_q) * log_q)
  pred = (logits > 0).astype(np.int64)
  correct = np.all((pred == labels) | ~known, axis=1)
  return {'loss': loss, 'confidence': np.exp(-loss), 'entropy': binary_entropy.mean(axis=1), 'pred': pred,
          'correct': correct}


def multilabel_label_aucs(logits: np.ndarray, labels: np.ndarray) -> list[float]:
  """ROC AUC of each label on that label's known entries (NaN for a label without both values). The logit
  ranks like the sigmoid probability but does not saturate to ties in float32."""
  logits, labels = _check_multilabel(logits, labels)
  return [binary_auc(labels[labels[:, j] >= 0, j] == 1, logits[labels[:, j] >= 0, j])
          for j in range(labels.shape[1])]


def _nanmean(values: list[float]) -> float:
  return float(_row_nanmean(np.asarray([values], np.float64))[0]) if values else math.nan


def multilabel_auc(logits: np.ndarray, labels: np.ndarray) -> float:
  """Mean over labels of the per-label ROC AUC (the ChestX-ray14 / CheXpert convention, e.g. Wang et al.,
  "ChestX-ray8", CVPR 2017) on each label's known entries; labels without both values are left out; NaN if
  none is left."""
  return float(weighted_multilabel_auc(_unit_weights(np.shape(labels)[0]), logits, labels)[0])


def multilabel_summary(logits: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """The multi-label counterpart of `summary`, flat and JSON-serialisable.

  Keys: n; accuracy = exact-match ratio (every known label right; what UA/RA/TA use for multi-label tasks);
  label_accuracy = mean over labels of the accuracy on that label's known entries; macro_f1 = mean over labels
  of the positive-class F1 2TP / (2TP + FP + FN) (labels never positive nor predicted positive left out);
  roc_auc = `multilabel_auc`; loss, confidence, entropy = means of `multilabel_per_example`; and per label l,
  roc_auc_label_<l> and accuracy_label_<l>. NaN where undefined (e.g. an empty split).
  """
  logits, labels = _check_multilabel(logits, labels)
  per_example = multilabel_per_example(logits, labels)
  known = labels >= 0
  right = (per_example['pred'] == labels) & known
  n = labels.shape[0]
  out: dict[str, Any] = {'n': int(n), 'accuracy': float(np.mean(per_example['correct'])) if n else math.nan}
  label_acc, f1s = [], []
  for j in range(labels.shape[1]):
    k = known[:, j]
    label_acc.append(float(right[k, j].mean()) if k.any() else math.nan)
    y, p = labels[k, j] == 1, per_example['pred'][k, j] == 1
    tp, fp, fn = np.sum(y & p), np.sum(~y & p), np.sum(y & ~p)
    if tp + fp + fn:
      f1s.append(2.0 * tp / (2.0 * tp + fp + fn))
  label_auc = multilabel_label_aucs(logits, labels)
  out['label_accuracy'] = _nanmean(label_acc)
  out['macro_f1'] = float(np.mean(f1s)) if f1s else math.nan
  out['roc_auc'] = _nanmean(label_auc)
  for key in ('loss', 'confidence', 'entropy'):
    out[key] = float(np.mean(per_example[key])) if n else math.nan
  for j in range(labels.shape[1]):
    out[f'roc_auc_label_{j}'] = label_auc[j]
    out[f'accuracy_label_{j}'] = label_acc[j]
  return out
