"""Population-based privacy metrics: forgetting quality (NeurIPS 2023 challenge) and U-LiRA.

Both compare, per forget example, the distribution of its logit-scaled true-class confidence under N
unlearned models with the distribution under N retrained models (Triantafillou et al., "Are we making
progress in unlearning? Findings from the first NeurIPS unlearning competition", 2024; Hayes et al.,
"Inexact unlearning needs more careful evaluations to avoid a false sense of privacy", 2024). The N models
per side are trained side by side by `medunlearn_jax.sweeps.run_population` (one vmapped program), which is
what makes these metrics affordable.
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import numpy as np

from medunlearn_jax import sweeps
from medunlearn_jax.algorithms import base
from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.evaluation import metrics
from medunlearn_jax.evaluation import privacy


def population_outputs(problem: base.Problem, stacked_params: Any, splits: Mapping[str, ds_lib.Split], *,
                       batch_size: int, mesh: jax.sharding.Mesh,
                       names: tuple[str, ...] = ('forget', 'retain', 'test')) -> dict[str, np.ndarray]:
  """Logits (K, N, C) of every model of a population on each named split."""
  return {name: sweeps.predict_population(problem, stacked_params, splits[name], batch_size=batch_size,
                                          mesh=mesh) for name in names}


def _scores(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
  return np.stack([privacy.logit_scaled_confidence_from_logits(l, labels) for l in logits])


def _mean_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  return float(np.mean([metrics.accuracy(l, labels) for l in logits]))


def compare(unlearned: Mapping[str, np.ndarray], retrained: Mapping[str, np.ndarray],
            splits: Mapping[str, ds_lib.Split], delta: float = privacy.DELTA,
            thresholds: str = 'grid') -> dict[str, Any]:
  """Forgetting quality F, the challenge's final score and U-LiRA from two populations' outputs.

  Args:
    unlearned, retrained: {split: (K, N, C) logits} from `population_outputs`.
    splits: the splits (for labels).
    delta: δ of the (ε, δ) test (challenge: 1e-5).
    thresholds: the ε attack's thresholds, 'grid' (the challenge's, comparable with its numbers) or
      'continuous' (`privacy.per_example_epsilon`); recorded in the result.
  """
  forget_labels = splits['forget'].labels
  u, r = _scores(unlearned['forget'], forget_labels), _scores(retrained['forget'], forget_labels)
  f = privacy.forgetting_quality(u, r, delta, thresholds=thresholds)
  ra_u, ra_r = (_mean_accuracy(p['retain'], splits['retain'].labels) for p in (unlearned, retrained))
  ta_u, ta_r = (_mean_accuracy(p['test'], splits['test'].labels) for p in (unlearned, retrained))
  out = {'n_models': int(u.shape[0]), 'forgetting_quality': f, 'epsilon_thresholds': thresholds,
         'final_score': privacy.final_score(f, ra_u, ra_r, ta_u, ta_r),
         'retain_accuracy': ra_u, 'test_accuracy': ta_u,
         'retrained_retain_accuracy': ra_r, 'retrained_test_accuracy': ta_r}
  if u.shape[0] >= 3 and r.shape[0] == u.shape[0]:
    loo = privacy.ulira_loo(u, r)
    out['ulira'] = {'accuracy': float(loo['accuracy']), 'auc': float(loo['auc'])}
  return out
