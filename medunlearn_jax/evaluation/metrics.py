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
from sklearn import metrics as sk_metrics


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
  recalls = [v for v in per_class_accuracy(logits, labels).values() if not math.isnan(v)]
  return float(np.mean(recalls)) if recalls else math.nan


def macro_f1(logits: np.ndarray, labels: np.ndarray) -> float:
  """Unweighted mean of per-class F1 = 2PR/(P+R) over the classes in labels ∪ predictions.

  scikit-learn's `f1_score(average='macro')` with `zero_division=0`: a class that is predicted but never
  true (or vice versa) has F1 = 0 and counts in the mean. NaN for an empty set.
  """
  logits, labels = _check(logits, labels)
  if labels.size == 0:
    return math.nan
  return float(sk_metrics.f1_score(labels, predictions(logits), average='macro', zero_division=0.0))


def _binary_auc(is_positive: np.ndarray, score: np.ndarray) -> float:
  if is_positive.all() or not is_positive.any():
    return math.nan
  return float(sk_metrics.roc_auc_score(is_positive, score))


def roc_auc(logits: np.ndarray, labels: np.ndarray) -> float:
  """Area under the ROC curve of the softmax probabilities.

  Binary (C == 2): AUC of the positive-class (class 1) probability. Multi-class: one-vs-rest macro average,
  i.e. the unweighted mean over classes c of the binary AUC of p_c for "label == c" vs the rest (scikit-learn's
  `multi_class='ovr', average='macro'`, after Provost & Domingos 2000). Classes absent from `labels` have no
  defined one-vs-rest AUC and are left out of the mean. Returns NaN when `labels` holds fewer than two
  classes (or is empty), where the AUC is undefined.
  """
  logits, labels = _check(logits, labels)
  probs = softmax(logits)
  if logits.shape[1] == 2:
    return _binary_auc(labels == 1, probs[:, 1])
  aucs = [_binary_auc(labels == c, probs[:, c]) for c in range(logits.shape[1])]
  aucs = [a for a in aucs if not math.isnan(a)]
  return float(np.mean(aucs)) if aucs else math.nan


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
