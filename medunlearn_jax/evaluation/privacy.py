"""Privacy-side unlearning metrics: membership-inference attacks and the NeurIPS 2023 forgetting quality.

Three families, from the cheapest to the most faithful:

* Population MIAs on a single model (one attacker for all examples):
  - `simple_mia`: the NeurIPS 2023 Machine Unlearning challenge starting kit's loss-based attack
    (github.com/unlearning-challenge/starting-kit).
  - `mia_efficacy`: MIA-efficacy of Jia et al., "Model sparsity can simplify machine unlearning"
    (NeurIPS 2023, arXiv:2304.04934), used by SalUn (Fan et al., ICLR 2024, arXiv:2310.12508).
* The challenge's (ε, δ) forgetting quality over N unlearned and N retrained models per forget example
  (Triantafillou et al., "Are we making progress in unlearning? Findings from the first NeurIPS unlearning
  competition", 2024, arXiv:2406.09073): `per_example_epsilon`, `forget_epsilons`, `epsilon_score`,
  `forgetting_quality`, `final_score`.
* The per-example likelihood-ratio attack U-LiRA of Hayes et al., "Inexact unlearning needs more careful
  evaluations to avoid a false sense of privacy" (2024, arXiv:2403.01218), as they define it (Gaussian fits
  of the unlearned and retrained populations' scores of each example): `ulira`, `ulira_loo`.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import special
from sklearn import linear_model
from sklearn import metrics as sk_metrics
from sklearn import model_selection
from sklearn import svm

# Constants of the challenge's evaluation (Triantafillou et al. 2024).
DELTA = 1e-5
EPSILON_CAP = 50.0
BUCKET_WIDTH = 0.5
PEAKY_RATIO = 0.01
INTERVAL_BUFFER = 2.0
RULES = ('single', 'interval')
GRID_PER_UNIT = 100  # Thresholds per score unit of the challenge's grids (NUM_THRESHOLDS_PER_UNIT).
# 'grid': the challenge's threshold grids (comparable with its numbers); 'continuous': every cut between
# observed scores, the grids' limit of infinite resolution (a stronger attacker, never a smaller ε).
THRESHOLDS = ('grid', 'continuous')

# Bounds the (rules x examples) work arrays of the ε computation to a few tens of MB.
_MAX_CHUNK_ELEMENTS = 1 << 19


def _as_1d_finite(x, name: str) -> np.ndarray:
  x = np.asarray(x, dtype=np.float64).reshape(-1)
  if not np.all(np.isfinite(x)):
    raise ValueError(f'{name} holds non-finite values')
  return x


def _balance_index(n_a: int, n_b: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Positions kept when the larger of two sets is subsampled, without replacement, to the smaller's size."""
  n = min(n_a, n_b)
  index_a = np.sort(rng.choice(n_a, n, replace=False)) if n_a > n else np.arange(n_a)
  index_b = np.sort(rng.choice(n_b, n, replace=False)) if n_b > n else np.arange(n_b)
  return index_a, index_b


def _balance(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Subsamples the larger array, without replacement, to the size of the smaller one."""
  index_a, index_b = _balance_index(len(a), len(b), rng)
  return a[index_a], b[index_b]


# ----------------------------------------------------------------------------------------------------------
# Population membership-inference attacks on one model.


def simple_mia(forget_losses: np.ndarray, test_losses: np.ndarray, *, n_splits: int = 10, seed: int = 0
               ) -> float:
  """The NeurIPS 2023 unlearning challenge starting kit's "simple MIA" on per-example losses.

  A logistic regression on the scalar cross-entropy loss tells members (forget set, label 1) from
  non-members (test set, label 0). As in the kit, the classes are balanced by subsampling the larger set to
  the size of the smaller (seeded here), and the attack is scored by cross-validated accuracy with
  `StratifiedShuffleSplit` (test fraction 0.1 as in the kit, but at least 2 examples so that each class is
  represented), over the kit's 10 splits (SCRUB's code uses 5; pass `n_splits=5` for its numbers).

  Returns:
    Mean CV accuracy. ~0.5: forget and test losses are indistinguishable (the ideal after unlearning, and
    what retraining gives); ~1.0: forget examples are still recognisable as training members.
  """
  forget = _as_1d_finite(forget_losses, 'forget_losses')
  test = _as_1d_finite(test_losses, 'test_losses')
  rng = np.random.default_rng(seed)
  forget, test = _balance(forget, test, rng)
  n = len(forget)
  if n < 2:
    raise ValueError(f'simple_mia needs at least 2 forget and 2 test losses, got {n} after balancing')
  x = np.concatenate([test, forget])[:, None]
  y = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
  test_size = max(2, math.ceil(0.1 * 2 * n))
  cv = model_selection.StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed)
  scores = model_selection.cross_val_score(linear_model.LogisticRegression(), x, y, cv=cv, scoring='accuracy')
  return float(np.mean(scores))


def simple_mia_predictions(forget_losses: np.ndarray, test_losses: np.ndarray, *, n_folds: int = 5,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Per-example verdicts of the `simple_mia` attacker, for slicing the attack by subgroup.

  The same attacker (logistic regression on the loss, classes balanced by the same seeded subsample) is
  scored out of fold: with stratified K-fold (`n_folds`, fewer when the balanced sets are smaller), every
  kept example is judged by a model fitted without it. A group's attack accuracy is then the balanced
  accuracy of these verdicts on its forget and test examples (see `evaluation.subgroups`).

  Returns:
    (forget_correct (N_forget,), test_correct (N_test,)) as floats: 1 = the attacker was right (member for a
    forget example, non-member for a test example), 0 = wrong, NaN = left out by the class balancing (or
    every example when fewer than 2 remain per class).
  """
  forget = _as_1d_finite(forget_losses, 'forget_losses')
  test = _as_1d_finite(test_losses, 'test_losses')
  forget_correct, test_correct = np.full(len(forget), np.nan), np.full(len(test), np.nan)
  index_f, index_t = _balance_index(len(forget), len(test), np.random.default_rng(seed))
  n = len(index_f)
  if n < 2:
    return forget_correct, test_correct
  x = np.concatenate([test[index_t], forget[index_f]])[:, None]
  y = np.concatenate([np.zeros(n, np.int64), np.ones(n, np.int64)])
  cv = model_selection.StratifiedKFold(n_splits=min(n_folds, n), shuffle=True, random_state=seed)
  verdict = model_selection.cross_val_predict(linear_model.LogisticRegression(), x, y, cv=cv) == y
  test_correct[index_t] = verdict[:n]
  forget_correct[index_f] = verdict[n:]
  return forget_correct, test_correct


# An RBF SVC fit costs O(n^2) memory and time: 2 x 5000 points fit in seconds, while NIH-sized test sets
# (about 25k) would take many minutes per evaluated model for a 1-D feature that 10k points already resolve.
MIA_MAX_PER_SIDE = 5000


def mia_efficacy(retain_conf: np.ndarray, test_conf: np.ndarray, forget_conf: np.ndarray, *, seed: int = 0,
                 attack: str = 'svc', max_per_side: int | None = MIA_MAX_PER_SIDE) -> float:
  """MIA-efficacy of Jia et al. (NeurIPS 2023) / SalUn (Fan et al., ICLR 2024).

  Attack input: the true-class confidence softmax(z)_y of each example (`metrics.true_class_confidence`),
  the 'confidence' attack of those papers' `SVC_MIA`, which SalUn reports as MIA-efficacy. The attacker is
  trained on retain examples (members, 1) vs test examples (non-members, 0), class-balanced by subsampling
  the larger set to the smaller one (seeded; the papers subsample the retain set to the test-set size), and
  is then applied to the forget set.

  Args:
    retain_conf, test_conf, forget_conf: true-class confidences of the three sets under the evaluated model.
    seed: seed of the balancing subsample.
    attack: 'svc' (default, as in the papers: `SVC(C=3, gamma='auto', kernel='rbf')`) or 'logistic'
      (a logistic regression, i.e. a learned confidence threshold).
    max_per_side: after balancing, members and non-members are each subsampled (seeded) to at most this many
      examples before the fit; None = no cap (the papers' setting, slow for large test sets).

  Returns:
    Fraction of forget examples predicted NON-member. Higher = more forgetting; retraining gives roughly the
    fraction of forget examples that look like unseen data.
  """
  forget_is_non_member = mia_efficacy_predictions(retain_conf, test_conf, forget_conf, seed=seed, attack=attack,
                                                  max_per_side=max_per_side)
  return float(np.mean(forget_is_non_member)) if forget_is_non_member.size else math.nan


def mia_efficacy_predictions(retain_conf: np.ndarray, test_conf: np.ndarray, forget_conf: np.ndarray, *,
                             seed: int = 0, attack: str = 'svc',
                             max_per_side: int | None = MIA_MAX_PER_SIDE) -> np.ndarray:
  """The `mia_efficacy` attacker's verdict on each forget example: (N_forget,) bool, True = non-member.

  `mia_efficacy` is the mean of this; a subgroup's MIA-efficacy is its mean over the group's forget examples
  (the attacker is trained once, on the whole retain and test sets).
  """
  retain = _as_1d_finite(retain_conf, 'retain_conf')
  test = _as_1d_finite(test_conf, 'test_conf')
  forget = _as_1d_finite(forget_conf, 'forget_conf')
  if len(forget) == 0:
    return np.zeros(0, bool)
  rng = np.random.default_rng(seed)
  retain, test = _balance(retain, test, rng)
  if len(retain) == 0:
    raise ValueError('mia_efficacy needs non-empty retain and test confidences')
  if max_per_side is not None:
    if max_per_side < 1:
      raise ValueError(f'max_per_side must be positive or None, got {max_per_side}')
    if len(retain) > max_per_side:
      retain = retain[np.sort(rng.choice(len(retain), max_per_side, replace=False))]
      test = test[np.sort(rng.choice(len(test), max_per_side, replace=False))]
  if attack == 'svc':
    clf = svm.SVC(C=3, gamma='auto', kernel='rbf')
  elif attack == 'logistic':
    clf = linear_model.LogisticRegression()
  else:
    raise ValueError(f"attack must be 'svc' or 'logistic', got {attack!r}")
  x = np.concatenate([retain, test])[:, None]
  y = np.concatenate([np.ones(len(retain), np.int64), np.zeros(len(test), np.int64)])
  clf.fit(x, y)
  return clf.predict(forget[:, None]) == 0


# ----------------------------------------------------------------------------------------------------------
# NeurIPS 2023 unlearning challenge: (ε, δ) forgetting quality.


def logit_scaled_confidence(p: np.ndarray, *, clip: float = 1e-15) -> np.ndarray:
  """log(p / (1 - p)) of a true-class probability, the score of LiRA (Carlini et al. 2022) and the challenge.

  p is clipped to [clip, 1 - clip] first so that saturated probabilities (p == 1 in float32) map to a
  finite score (±34.5 for the default clip). Prefer `logit_scaled_confidence_from_logits` when logits are
  available: it needs no clipping.
  """
  p = np.clip(np.asarray(p, dtype=np.float64), clip, 1.0 - clip)
  return np.log(p) - np.log1p(-p)


def logit_scaled_confidence_from_logits(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """log(p_y / (1 - p_y)) from logits, computed as z_y - logsumexp_{j != y} z_j (no cancellation)."""
  logits = np.asarray(logits, dtype=np.float64)
  labels = np.asarray(labels, dtype=np.int64)
  rows = np.arange(len(labels))
  others = logits.copy()
  others[rows, labels] = -np.inf
  return logits[rows, labels] - special.logsumexp(others, axis=1)


def _best_rule_epsilon(k_u: np.ndarray, k_r: np.ndarray, usable: np.ndarray, positive_is_r: np.ndarray,
                       n_u: int, n_r: int, delta: float) -> np.ndarray:
  """Max ε over a family of decision rules, per example.

  k_u, k_r: (R, E) numbers of unlearned / retrained scores that rule r assigns to the positive class.
  usable: (R, E) which rules are realisable (cuts that do not split tied scores).
  positive_is_r: (E,) whether the rule's positive class is the retrained population.
  Returns (E,) max over usable rules, -inf where no rule gives a defined ε.
  """
  tp = np.where(positive_is_r, k_r, k_u)
  fp = np.where(positive_is_r, k_u, k_r)
  n_pos = np.where(positive_is_r, n_r, n_u)
  n_neg = np.where(positive_is_r, n_u, n_r)
  fpr = fp / n_neg
  fnr = (n_pos - tp) / n_pos
  with np.errstate(divide='ignore', invalid='ignore'):
    eps = np.fmax(np.log(1.0 - delta - fpr) - np.log(fnr), np.log(1.0 - delta - fnr) - np.log(fpr))
  eps = np.maximum(eps, 0.0)  # NaN stays NaN
  fpr_zero, fnr_zero = fpr == 0, fnr == 0
  eps = np.where(fpr_zero & fnr_zero, np.inf, eps)
  # One zero rate (but not both) is read as too few samples, not as infinite ε: the rule is dropped.
  eps = np.where(fpr_zero ^ fnr_zero, np.nan, eps)
  eps = np.where(usable & ~np.isnan(eps), eps, -np.inf)
  return eps.max(axis=0)


def _epsilons_chunk(u: np.ndarray, r: np.ndarray, delta: float, rules: Sequence[str], cap: float,
                    peaky_ratio: float | None, buffer: float | None) -> np.ndarray:
  n_u, n_r = u.shape[0], r.shape[0]
  n = n_u + n_r
  values = np.concatenate([u, r], axis=0)
  order = np.argsort(values, axis=0, kind='stable')
  sorted_values = np.take_along_axis(values, order, axis=0)
  # Prefix counts over the ascending order: cut k puts sorted items [0, k) below and [k, n) above.
  c_u = np.zeros((n + 1, u.shape[1]), np.int64)
  c_u[1:] = np.cumsum(order < n_u, axis=0)
  c_r = np.arange(n + 1)[:, None] - c_u
  # A threshold cannot separate equal scores, so cuts inside a run of ties are not realisable.
  cut_ok = np.ones_like(c_u, dtype=bool)
  cut_ok[1:n] = sorted_values[1:] != sorted_values[:-1]

  r_is_pos = np.median(r, axis=0) > np.median(u, axis=0)
  range_u, range_r = np.ptp(u, axis=0), np.ptp(r, axis=0)
  eps = np.full(u.shape[1], -np.inf)
  if 'single' in rules:
    eps = np.maximum(eps, _best_rule_epsilon(n_u - c_u, n_r - c_r, cut_ok, r_is_pos, n_u, n_r, delta))
  if 'interval' in rules:
    pos_range = np.where(r_is_pos, range_r, range_u)
    neg_range = np.where(r_is_pos, range_u, range_r)
    peaky_is_r = np.where(pos_range >= neg_range, ~r_is_pos, r_is_pos)
    lo, hi = np.triu_indices(n + 1, k=1)  # interval holds sorted items [lo, hi)
    usable = cut_ok[lo] & cut_ok[hi]
    if buffer is not None:
      usable &= _interval_feasible(sorted_values, lo, hi, peaky_is_r, u, r, buffer)
    eps = np.maximum(eps, _best_rule_epsilon(c_u[hi] - c_u[lo], c_r[hi] - c_r[lo], usable, peaky_is_r,
                                             n_u, n_r, delta))
  eps = np.where(np.isneginf(eps), 0.0, eps)
  if peaky_ratio is not None:
    largest, smallest = np.maximum(range_u, range_r), np.minimum(range_u, range_r)
    with np.errstate(divide='ignore', invalid='ignore'):
      peaky = (largest > 0) & (smallest / largest < peaky_ratio)
    eps = np.where(peaky, cap, eps)
  return np.clip(eps, 0.0, cap)


def _interval_feasible(sorted_values: np.ndarray, lo: np.ndarray, hi: np.ndarray, peaky_is_r: np.ndarray,
                       u: np.ndarray, r: np.ndarray, buffer: float) -> np.ndarray:
  """Which intervals the challenge's two-threshold grid can realise (boundary ties aside).

  With w the range and p_max the maximum of the peakier population's scores, the challenge slides the right
  threshold t_r over [p_max - buffer, p_max + buffer] and the width t_r - t_l over [w - buffer, w + buffer].
  The interval holding sorted items [lo, hi) needs t_l in [s_{lo-1}, s_lo] and t_r in [s_{hi-1}, s_hi]
  (unbounded past the ends), so it is realisable iff those boxes meet both constraints.
  """
  e = sorted_values.shape[1]
  padded = np.concatenate([np.full((1, e), -np.inf), sorted_values, np.full((1, e), np.inf)], axis=0)
  p_max = np.where(peaky_is_r, r.max(axis=0), u.max(axis=0))
  width = np.where(peaky_is_r, np.ptp(r, axis=0), np.ptp(u, axis=0))
  right_lo = np.maximum(padded[hi], p_max - buffer)
  right_hi = np.minimum(padded[hi + 1], p_max + buffer)
  left_lo, left_hi = padded[lo], padded[lo + 1]
  with np.errstate(invalid='ignore'):
    return ((right_lo <= right_hi) & (right_lo - left_hi <= width + buffer)
            & (right_hi - left_lo >= np.maximum(width - buffer, 0.0)))


def _rule_epsilons(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, delta: float) -> np.ndarray:
  """ε of each threshold of a rule from its true/false-positive counts, with the challenge's conventions:
  +inf where FPR = FNR = 0, NaN (dropped) where exactly one of them is 0, else the larger log-ratio floored
  at 0. Computed once per count pair (a table), then looked up for every threshold."""
  k_pos, k_neg = np.meshgrid(np.arange(n_pos + 1), np.arange(n_neg + 1), indexing='ij')
  fpr, fnr = k_neg / n_neg, (n_pos - k_pos) / n_pos
  with np.errstate(divide='ignore', invalid='ignore'):
    table = np.fmax(np.log(1.0 - delta - fpr) - np.log(fnr), np.log(1.0 - delta - fnr) - np.log(fpr))
  table = np.maximum(table, 0.0)
  table = np.where((fpr == 0) ^ (fnr == 0), np.nan, table)
  table = np.where((fpr == 0) & (fnr == 0), np.inf, table)
  return table[tp, fp]


def _grid_epsilon(u: np.ndarray, r: np.ndarray, delta: float, rules: Sequence[str],
                  peaky_ratio: float | None, buffer: float) -> float:
  """ε of one example over the challenge's threshold grids (google-deepmind/unlearning_evaluation,
  metric.py): `GRID_PER_UNIT` thresholds per score unit between the pooled extremes for the single rule;
  for the interval rule, right thresholds over [p_min + w - buffer, p_max + buffer] at the same density and,
  for each, `2 · buffer · GRID_PER_UNIT` left thresholds over [t_r - w - buffer, t_r - w + buffer] (p the
  peakier population, w its range). Counts come from sorted scores, so no (models x thresholds) array."""
  r_is_pos = np.median(r) > np.median(u)
  pos, neg = (r, u) if r_is_pos else (u, r)
  range_pos, range_neg = np.ptp(pos), np.ptp(neg)
  largest, smallest = max(range_pos, range_neg), min(range_pos, range_neg)
  if peaky_ratio is not None and largest > 0 and smallest / largest < peaky_ratio:
    return math.inf
  found = []
  if 'single' in rules:
    pos_s, neg_s = np.sort(pos), np.sort(neg)
    lo, hi = min(pos_s[0], neg_s[0]), max(pos_s[-1], neg_s[-1])
    t = np.linspace(lo, hi, int(np.ceil((hi - lo) * GRID_PER_UNIT)))
    tp = len(pos) - np.searchsorted(pos_s, t, side='left')  # scores >= t predict the positive class
    fp = len(neg) - np.searchsorted(neg_s, t, side='left')
    found.append(_rule_epsilons(tp, fp, len(pos), len(neg), delta))
  if 'interval' in rules:
    # The interval predicts the peakier population (on equal ranges, the lower-median one).
    peaky, other = (neg, pos) if range_pos >= range_neg else (pos, neg)
    peaky_s, other_s = np.sort(peaky), np.sort(other)
    lo, hi = peaky_s[0] + smallest - buffer, peaky_s[-1] + buffer
    right = np.linspace(lo, hi, int(np.ceil((hi - lo) * GRID_PER_UNIT)))
    left = np.linspace(right - smallest - buffer, right - smallest + buffer,
                       int(np.ceil(2 * buffer * GRID_PER_UNIT)), axis=1)
    # Scores in [left, right]: (count <= right) - (count < left), never negative (left > right: empty).
    tp = np.maximum(np.searchsorted(peaky_s, right, side='right')[:, None]
                    - np.searchsorted(peaky_s, left, side='left'), 0)
    fp = np.maximum(np.searchsorted(other_s, right, side='right')[:, None]
                    - np.searchsorted(other_s, left, side='left'), 0)
    found.append(_rule_epsilons(tp.ravel(), fp.ravel(), len(peaky), len(other), delta))
  values = np.concatenate(found) if found else np.zeros(0)
  values = values[~np.isnan(values)]
  # The reference stops with an assertion when every threshold is dropped; no evidence of a difference here.
  return float(values.max()) if values.size else 0.0


def forget_epsilons(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA, *,
                    rules: Sequence[str] = RULES, cap: float = EPSILON_CAP,
                    peaky_ratio: float | None = PEAKY_RATIO,
                    buffer: float | None = INTERVAL_BUFFER, thresholds: str = 'grid') -> np.ndarray:
  """Per-example ε of the challenge's evaluation, vectorised over forget examples.

  Args:
    unlearned: (N_u, N_forget) scores (logit-scaled confidences) of each forget example under N_u
      independently unlearned models.
    retrained: (N_r, N_forget) the same under N_r retrained models.
    delta, rules, cap, peaky_ratio, buffer, thresholds: see `per_example_epsilon`.

  Returns:
    (N_forget,) ε in [0, cap].
  """
  u = np.asarray(unlearned, dtype=np.float64)
  r = np.asarray(retrained, dtype=np.float64)
  if u.ndim == 1:
    u = u[:, None]
  if r.ndim == 1:
    r = r[:, None]
  if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1]:
    raise ValueError(f'unlearned and retrained must be (N_models, N_forget) with equal N_forget, '
                     f'got {u.shape} and {r.shape}')
  if u.shape[0] < 1 or r.shape[0] < 1:
    raise ValueError('need at least one unlearned and one retrained model')
  if not (np.all(np.isfinite(u)) and np.all(np.isfinite(r))):
    raise ValueError('scores must be finite (use logit_scaled_confidence, which clips)')
  unknown = set(rules) - set(RULES)
  if unknown or not rules:
    raise ValueError(f'rules must be a non-empty subset of {RULES}, got {tuple(rules)}')
  if not 0.0 <= delta < 1.0:
    raise ValueError(f'delta must be in [0, 1), got {delta}')
  if thresholds not in THRESHOLDS:
    raise ValueError(f'thresholds must be one of {THRESHOLDS}, got {thresholds!r}')
  if thresholds == 'grid':
    if buffer is None:
      raise ValueError("an unconstrained interval rule (buffer=None) needs thresholds='continuous'")
    eps = [_grid_epsilon(u[:, i], r[:, i], delta, rules, peaky_ratio, buffer) for i in range(u.shape[1])]
    return np.clip(np.asarray(eps, np.float64).reshape(-1), 0.0, cap)
  n = u.shape[0] + r.shape[0]
  per_example = (n + 1) * (n // 2 + 1) if 'interval' in rules else n + 1
  chunk = max(1, _MAX_CHUNK_ELEMENTS // per_example)
  out = [_epsilons_chunk(u[:, s:s + chunk], r[:, s:s + chunk], delta, rules, cap, peaky_ratio, buffer)
         for s in range(0, u.shape[1], chunk)]
  return np.concatenate(out) if out else np.zeros(0)


def per_example_epsilon(unlearned_scores: np.ndarray, retrained_scores: np.ndarray, delta: float = DELTA, *,
                        rules: Sequence[str] = RULES, cap: float = EPSILON_CAP,
                        peaky_ratio: float | None = PEAKY_RATIO,
                        buffer: float | None = INTERVAL_BUFFER, thresholds: str = 'grid') -> float:
  """Empirical ε of ONE forget example, as in the NeurIPS 2023 unlearning challenge's evaluation.

  The scores of the example under N unlearned and N retrained models are samples from two distributions; an
  (ε, δ)-unlearning algorithm bounds every test that tells them apart. Each decision rule of a family is
  such a test, with false-positive rate FPR and false-negative rate FNR, and yields

      ε_rule = max(log((1 - δ - FPR) / FNR), log((1 - δ - FNR) / FPR)),   floored at 0;

  ε is the max over the family. The family follows the challenge's code (google-deepmind/
  unlearning_evaluation, metric.py): (a) 'single': one threshold t, "score >= t" predicts the population
  with the larger median; (b) 'interval': two thresholds l <= r, "l <= score <= r" predicts the peakier
  population (smaller range; the lower-median one on equal ranges), with r within `buffer` (2.0) of that
  population's max and r - l within `buffer` of its range. `thresholds='grid'` (the default) scans the
  challenge's grids (`GRID_PER_UNIT` = 100 thresholds per score unit, 400 left thresholds per right one),
  so numbers are comparable with the challenge's; `'continuous'` tries every cut between distinct observed
  scores instead, the grid's limit without its resolution (never a smaller ε: u = [1.0, 1.2, 1.4] and
  r = [0.0, 0.6, 1.404] give log 2 on the grid and the cap continuously, since only a cut inside
  [1.4, 1.404) separates them). With 'continuous', `buffer=None` allows every interval, a stronger and
  noisier attacker than the challenge's.

  Edge cases (the challenge's conventions), i.e. the cap:
    * FPR = FNR = 0 (the populations are perfectly separated by the rule): ε = `cap` (50, the challenge's
      EPSILON_CAP). No finite ε is claimed from N samples; `forgetting_quality` gives such examples 0 points.
    * Exactly one of FPR, FNR is 0: the rule is dropped, as the challenge reads it as too few samples.
    * No rule left (e.g. all scores tied): ε = 0, no evidence that the populations differ.
    * If the smaller of the two score ranges is below `peaky_ratio` (1 %) of the larger, ε = `cap`: one
      population is collapsed to a near-constant, which the finite threshold family may miss.
  Identical populations give ε = 0: every rule has FPR = TPR, so both logs are <= 0.

  Args:
    unlearned_scores: (N_u,) logit-scaled confidences of the example under the unlearned models.
    retrained_scores: (N_r,) the same under the retrained models.
    delta: δ of (ε, δ)-unlearning (challenge: 1e-5).
    rules: subset of ('single', 'interval').
    cap: value for perfect separation; every ε is clipped to [0, cap].
    peaky_ratio: range-ratio threshold of the collapsed-population rule; None disables it.
    buffer: slack of the interval rule's position and width (score units); None = unconstrained
      (continuous thresholds only).
    thresholds: 'grid' (the challenge's) or 'continuous' (every cut between observed scores).
  """
  u = np.asarray(unlearned_scores, dtype=np.float64).reshape(-1, 1)
  r = np.asarray(retrained_scores, dtype=np.float64).reshape(-1, 1)
  return float(forget_epsilons(u, r, delta, rules=rules, cap=cap, peaky_ratio=peaky_ratio, buffer=buffer,
                               thresholds=thresholds)[0])


def default_max_epsilon(num_models: int) -> float:
  """ceil(log(N - 1)): the largest ε that N samples per population can certify short of perfect separation
  (FPR = FNR = 1/N gives log(N - 1)); the challenge awards no points at or beyond it."""
  if num_models < 2:
    raise ValueError(f'need at least 2 models per population, got {num_models}')
  return float(math.ceil(math.log(num_models - 1)))


def epsilon_score(eps: np.ndarray | float, *, max_epsilon: float | None = None) -> np.ndarray | float:
  """Points of an ε in the challenge's scoring: 2^(-k), k = floor(ε / 0.5).

  Bucket k covers [0.5 k, 0.5 (k + 1)): ε in [0, 0.5) scores 1, [0.5, 1) scores 1/2, [1, 1.5) scores 1/4, ...
  With `max_epsilon`, only whole buckets that end at or below it award points (the challenge uses
  `default_max_epsilon(N)`); larger ε score 0.

  Returns:
    A float for scalar input, else an array of the input's shape.
  """
  e = np.asarray(eps, dtype=np.float64)
  if np.any(np.isnan(e)) or np.any(e < 0):
    raise ValueError('ε must be non-negative and not NaN')
  k = np.floor(e / BUCKET_WIDTH)
  score = np.exp2(-k)
  if max_epsilon is not None:
    last_bucket_end = math.floor(max_epsilon / BUCKET_WIDTH) * BUCKET_WIDTH
    score = np.where(e < last_bucket_end, score, 0.0)
  return float(score) if score.ndim == 0 else score


def forgetting_quality(unlearned: np.ndarray, retrained: np.ndarray, delta: float = DELTA, *,
                       max_epsilon: float | str = 'auto', rules: Sequence[str] = RULES,
                       cap: float = EPSILON_CAP, peaky_ratio: float | None = PEAKY_RATIO,
                       buffer: float | None = INTERVAL_BUFFER, thresholds: str = 'grid') -> float:
  """Forgetting quality F of the NeurIPS 2023 unlearning challenge (Triantafillou et al. 2024).

  F = mean over forget examples of `epsilon_score(ε_i)`, with ε_i from `per_example_epsilon`. In [0, 1];
  1 = every example indistinguishable (ε < 0.5) from retraining.

  Args:
    unlearned: (N_models, N_forget) logit-scaled confidences under the unlearned models.
    retrained: (N_models, N_forget) the same under the retrained models.
    delta: δ (challenge: 1e-5).
    max_epsilon: 'auto' = `default_max_epsilon(N)` with N the smaller population (as in the challenge),
      None = no limit (every finite bucket scores 2^-k).
    rules, cap, peaky_ratio, buffer, thresholds: see `per_example_epsilon`.
  """
  eps = forget_epsilons(unlearned, retrained, delta, rules=rules, cap=cap, peaky_ratio=peaky_ratio,
                       buffer=buffer, thresholds=thresholds)
  if eps.size == 0:
    return math.nan
  if max_epsilon == 'auto':
    max_epsilon = default_max_epsilon(min(np.shape(unlearned)[0], np.shape(retrained)[0]))
  return float(np.mean(epsilon_score(eps, max_epsilon=max_epsilon)))


def final_score(f: float, ra_u: float, ra_r: float, ta_u: float, ta_r: float) -> float:
  """The challenge's final score: F * (RA_u / RA_r) * (TA_u / TA_r).

  RA / TA are retain / test accuracies averaged over the unlearned (u) and retrained (r) models; the ratios
  discount forgetting bought with lost utility. They are not capped at 1, as in the challenge.
  """
  if ra_r <= 0 or ta_r <= 0:
    raise ValueError(f'retrained accuracies must be positive, got RA_r={ra_r}, TA_r={ta_r}')
  return float(f) * (float(ra_u) / float(ra_r)) * (float(ta_u) / float(ta_r))


# ----------------------------------------------------------------------------------------------------------
# U-LiRA (Hayes et al. 2024).


def _gaussian_logpdf(x: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
  return -0.5 * (np.log(2.0 * np.pi * var) + (x - mean) ** 2 / var)


def _check_population(pop: np.ndarray, name: str, min_models: int) -> np.ndarray:
  pop = np.asarray(pop, dtype=np.float64)
  if pop.ndim != 2:
    raise ValueError(f'{name} must be (M, N_forget), got shape {pop.shape}')
  if pop.shape[0] < min_models:
    raise ValueError(f'{name} needs at least {min_models} models, got {pop.shape[0]}')
  if not np.all(np.isfinite(pop)):
    raise ValueError(f'{name} holds non-finite scores')
  return pop


def ulira(target_scores: np.ndarray, unlearned_pop: np.ndarray, retrained_pop: np.ndarray, *,
          fixed_variance: bool = False, var_floor: float = 1e-8) -> dict[str, object]:
  """U-LiRA per-example likelihood-ratio test of Hayes et al. (2024, arXiv:2403.01218).

  For each forget example i, Gaussians N(μ_u,i, σ²_u,i) and N(μ_r,i, σ²_r,i) are fitted (mean and unbiased
  variance) to its scores under a population of unlearned and of retrained shadow models; the target model's
  score s_i is scored by the log-likelihood ratio

      LLR_i = log N(s_i; μ_u,i, σ²_u,i) - log N(s_i; μ_r,i, σ²_r,i),

  LLR_i > 0 meaning "the target looks unlearned rather than retrained on example i". Scores should be
  logit-scaled confidences (`logit_scaled_confidence`), which LiRA makes approximately Gaussian.

  Args:
    target_scores: (N_forget,) scores of the model under test.
    unlearned_pop, retrained_pop: (M, N_forget) scores of the shadow populations (M >= 2 each).
    fixed_variance: use one variance per population (mean over examples of the per-example variances), the
      LiRA variant for small M.
    var_floor: lower bound on variances, so that a population with identical scores stays finite.

  Returns:
    {'llr': (N_forget,), 'predicted_unlearned': (N_forget,) bool, 'fraction_unlearned': float}.
  """
  u = _check_population(unlearned_pop, 'unlearned_pop', 2)
  r = _check_population(retrained_pop, 'retrained_pop', 2)
  s = np.asarray(target_scores, dtype=np.float64).reshape(-1)
  if not (u.shape[1] == r.shape[1] == s.shape[0]):
    raise ValueError(f'N_forget differs: target {s.shape[0]}, unlearned {u.shape[1]}, retrained {r.shape[1]}')
  var_u, var_r = u.var(axis=0, ddof=1), r.var(axis=0, ddof=1)
  if fixed_variance:
    var_u, var_r = np.full_like(var_u, var_u.mean()), np.full_like(var_r, var_r.mean())
  var_u, var_r = np.maximum(var_u, var_floor), np.maximum(var_r, var_floor)
  llr = _gaussian_logpdf(s, u.mean(axis=0), var_u) - _gaussian_logpdf(s, r.mean(axis=0), var_r)
  predicted = llr > 0
  return {'llr': llr, 'predicted_unlearned': predicted,
          'fraction_unlearned': float(np.mean(predicted)) if predicted.size else math.nan}


def _leave_one_out_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(M, E) -> mean and unbiased variance of each column without row m, both (M, E), in closed form."""
  m = x.shape[0]
  center = x.mean(axis=0)
  xc = x - center  # centring keeps the sum-of-squares formula free of cancellation
  loo_mean_c = (xc.sum(axis=0) - xc) / (m - 1)
  loo_var = ((xc ** 2).sum(axis=0) - xc ** 2 - (m - 1) * loo_mean_c ** 2) / (m - 2)
  return loo_mean_c + center, np.maximum(loo_var, 0.0)


def ulira_loo(unlearned_pop: np.ndarray, retrained_pop: np.ndarray, *, fixed_variance: bool = False,
              var_floor: float = 1e-8) -> dict[str, object]:
  """Leave-one-pair-out evaluation of U-LiRA over the shadow populations (Hayes et al. 2024).

  For each model index m, unlearned model m and retrained model m are both held out as targets, the Gaussians
  are fitted to the other M - 1 models of each population, and each target's per-example LLR predicts
  unlearned (LLR > 0) or retrained (LLR < 0; a tie counts as half right). Holding out a pair keeps both fits
  on M - 1 models, so the test is symmetric and the targets are balanced.

  Args:
    unlearned_pop, retrained_pop: (M, N_forget) scores, same M >= 3 (two models left to fit a variance).
    fixed_variance, var_floor: see `ulira`.

  Returns:
    {'accuracy': float, 'auc': float, 'per_example_accuracy': (N_forget,), 'llr_unlearned': (M, N_forget),
     'llr_retrained': (M, N_forget)}. Accuracy / AUC of 0.5 = the attack cannot tell unlearned from retrained
    models (perfect unlearning); 1.0 = every example gives it away.
  """
  u = _check_population(unlearned_pop, 'unlearned_pop', 3)
  r = _check_population(retrained_pop, 'retrained_pop', 3)
  if u.shape != r.shape:
    raise ValueError(f'leave-one-pair-out needs equal population shapes, got {u.shape} and {r.shape}')
  mean_u, var_u = _leave_one_out_stats(u)
  mean_r, var_r = _leave_one_out_stats(r)
  if fixed_variance:
    var_u = np.broadcast_to(var_u.mean(axis=1, keepdims=True), var_u.shape)
    var_r = np.broadcast_to(var_r.mean(axis=1, keepdims=True), var_r.shape)
  var_u, var_r = np.maximum(var_u, var_floor), np.maximum(var_r, var_floor)
  llr_u = _gaussian_logpdf(u, mean_u, var_u) - _gaussian_logpdf(u, mean_r, var_r)
  llr_r = _gaussian_logpdf(r, mean_u, var_u) - _gaussian_logpdf(r, mean_r, var_r)
  correct_u = np.where(llr_u > 0, 1.0, np.where(llr_u == 0, 0.5, 0.0))
  correct_r = np.where(llr_r < 0, 1.0, np.where(llr_r == 0, 0.5, 0.0))
  per_example = 0.5 * (correct_u.mean(axis=0) + correct_r.mean(axis=0))
  labels = np.concatenate([np.ones(llr_u.size), np.zeros(llr_r.size)])
  auc = float(sk_metrics.roc_auc_score(labels, np.concatenate([llr_u.ravel(), llr_r.ravel()])))
  return {'accuracy': float(per_example.mean()), 'auc': auc, 'per_example_accuracy': per_example,
          'llr_unlearned': llr_u, 'llr_retrained': llr_r}
