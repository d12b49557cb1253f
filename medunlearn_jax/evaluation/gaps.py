"""Distance of an unlearned model to the retrained-from-scratch reference ("gold standard").

Retraining on the retain set alone is exact unlearning, so approximate methods are scored by how close their
metrics come to the retrained model's, in either direction: forgetting *more* than retraining (e.g. a forget
accuracy far below the retrained model's) is as visible to an attacker as forgetting less.
"""
from __future__ import annotations

import math
import numbers
from typing import Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

_TOW_KEYS = ('forget', 'retain', 'test')


def _is_number(value) -> bool:
  # bool is an int subclass but a flag, not a metric.
  return isinstance(value, (numbers.Real, np.number)) and not isinstance(value, (bool, np.bool_))


def abs_gaps(model_metrics: Mapping[str, object], retrain_metrics: Mapping[str, object], *,
             keys: Iterable[str] | None = None) -> dict[str, float]:
  """|model - retrain| for every metric that both dicts hold as a number.

  Args:
    model_metrics: metrics of the unlearned model, e.g. `metrics.summary(...)`.
    retrain_metrics: the same metrics of the retrained model.
    keys: restrict to these keys (each must be numeric in both dicts); default: all shared numeric keys,
      in `model_metrics` order. Non-numeric values (strings, nested dicts, bools) are skipped.

  Returns:
    {key: float}; NaN where either side is NaN.
  """
  if keys is None:
    keys = [k for k, v in model_metrics.items() if _is_number(v) and _is_number(retrain_metrics.get(k))]
  else:
    keys = list(keys)
    for k in keys:
      if not (_is_number(model_metrics.get(k)) and _is_number(retrain_metrics.get(k))):
        raise KeyError(f'metric {k!r} is not a number in both dicts')
  return {k: abs(float(model_metrics[k]) - float(retrain_metrics[k])) for k in keys}


def avg_gap(ua: float, ra: float, ta: float, mia: float, *,
            retrain: Sequence[float]) -> float:
  """Average Gap of SalUn (Fan et al., ICLR 2024, arXiv:2310.12508, Sec. 5 "Avg. Gap").

  Avg. Gap = (|UA - UA_r| + |RA - RA_r| + |TA - TA_r| + |MIA - MIA_r|) / 4, where UA = 1 - forget accuracy,
  RA = retain accuracy, TA = test accuracy and MIA = MIA-efficacy (`privacy.mia_efficacy`), and the `_r`
  values are the retrained model's. Lower is better; 0 = indistinguishable from retraining on these four.
  Units follow the inputs (SalUn reports percentages; pass fractions to get a fraction).

  Args:
    ua, ra, ta, mia: the unlearned model's four metrics.
    retrain: the retrained model's (UA, RA, TA, MIA-efficacy), in that order.
  """
  retrain = tuple(float(v) for v in retrain)
  if len(retrain) != 4:
    raise ValueError(f'retrain must hold (ua, ra, ta, mia), got {len(retrain)} values')
  model = (float(ua), float(ra), float(ta), float(mia))
  return float(np.mean([abs(m - r) for m, r in zip(model, retrain)]))


def _tow_triplet(accs: Mapping[str, float] | Sequence[float], name: str) -> tuple[float, float, float]:
  if isinstance(accs, Mapping):
    missing = [k for k in _TOW_KEYS if k not in accs]
    if missing:
      raise KeyError(f'{name} lacks accuracies {missing}; expected keys {_TOW_KEYS}')
    values = tuple(float(accs[k]) for k in _TOW_KEYS)
  else:
    values = tuple(float(v) for v in accs)
    if len(values) != 3:
      raise ValueError(f'{name} must hold (forget, retain, test) accuracies, got {len(values)} values')
  for v in values:
    if not (math.isnan(v) or 0.0 <= v <= 1.0):
      raise ValueError(f'{name} accuracies must be fractions in [0, 1], got {values}')
  return values


def tow(model: Mapping[str, float] | Sequence[float],
        retrain: Mapping[str, float] | Sequence[float]) -> float:
  """Tug-of-War of Zhao et al., "What makes unlearning hard and what to do about it" (NeurIPS 2024,
  arXiv:2406.01257).

  ToW = (1 - |A_f - A_f^r|) * (1 - |A_r - A_r^r|) * (1 - |A_t - A_t^r|), with A_f, A_r, A_t the accuracies
  on the forget, retain and test sets of the unlearned model and ^r those of the retrained model. In [0, 1];
  1 = every accuracy equals the retrained model's. Accuracies must be fractions (not percentages).

  Args:
    model: the unlearned model's accuracies, {'forget', 'retain', 'test'} or a (forget, retain, test) tuple.
    retrain: the retrained model's accuracies, same form.
  """
  m = _tow_triplet(model, 'model')
  r = _tow_triplet(retrain, 'retrain')
  return float(np.prod([1.0 - abs(a - b) for a, b in zip(m, r)]))


# The forget signal: how far the original is from the retrained model on the forget set. Every unlearning
# gap lies between 0 and this distance, so when it is not clearly above zero no algorithm can be told apart
# from doing nothing.
SIGNAL_METRICS = ('accuracy', 'loss', 'mia_efficacy')
# The signals that decide whether a run can rank algorithms (those that Avg. Gap is made of; the loss
# differs between seen and unseen examples even where predictions agree).
RANKING_SIGNALS = ('accuracy', 'mia_efficacy')


def forget_signal(original: Mapping[str, np.ndarray], retrain: Mapping[str, np.ndarray], *, n_boot: int = 2000,
                  seed: int = 0, ci: float = 0.95) -> dict[str, object]:
  """Original minus retrain on the forget examples, signed so that memorisation is positive, with paired
  percentile-bootstrap intervals over the examples (`scipy.stats.bootstrap`).

  Args:
    original, retrain: per forget example, row-aligned: 'correct' (0/1), 'loss' and 'non_member' (the
      MIA-efficacy attacker's verdict, 1 = called non-member; NaN where it gave none).
    n_boot, seed, ci: bootstrap replicates (0: no intervals), seed and coverage.

  Returns:
    {'accuracy': original − retrain accuracy, 'loss': retrain − original mean loss, 'mia_efficacy': retrain −
     original MIA-efficacy; each {'value', 'ci_low', 'ci_high'}, the two 0/1 ones also 'p_value' (McNemar's
     exact one-sided test of a positive difference); 'n': examples; 'clear': whether accuracy or
     MIA-efficacy is above zero at level 1 − ci, i.e. whether this forget set can rank algorithms}.
  """
  differences = {
      'accuracy': np.asarray(original['correct'], np.float64) - np.asarray(retrain['correct'], np.float64),
      'loss': np.asarray(retrain['loss'], np.float64) - np.asarray(original['loss'], np.float64),
      'mia_efficacy': (np.asarray(retrain['non_member'], np.float64)
                       - np.asarray(original['non_member'], np.float64)),
  }
  out: dict[str, object] = {'n': int(len(differences['accuracy']))}
  for k, (name, d) in enumerate(differences.items()):
    d = d[np.isfinite(d)]
    value = float(np.mean(d)) if d.size else math.nan
    low = high = math.nan
    if n_boot > 0 and d.size >= 2:
      if np.ptp(d) == 0:  # Every example the same difference: every resample has that mean.
        low = high = value
      else:
        interval = stats.bootstrap((d,), np.mean, n_resamples=n_boot, confidence_level=ci, method='percentile',
                                   random_state=np.random.default_rng(seed + k)).confidence_interval
        low, high = float(interval.low), float(interval.high)
    out[name] = {'value': value, 'ci_low': low, 'ci_high': high}
    if name in RANKING_SIGNALS:
      # Paired 0/1 outcomes: McNemar's exact test (a sign test on the discordant examples), which holds at
      # any size, where a percentile bootstrap over 4 examples would call a constant difference certain.
      ahead, behind = int(np.sum(d > 0)), int(np.sum(d < 0))
      out[name]['p_value'] = (float(stats.binomtest(ahead, ahead + behind, 0.5, alternative='greater').pvalue)
                              if ahead + behind else 1.0)
  out['clear'] = any(out[m]['p_value'] < 1.0 - ci for m in RANKING_SIGNALS)
  return out
