"""NegGrad+: descend on the retain set and ascend on the forget set in the same step.

Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023 (the tuned NegGrad baseline).
Update: θ ← θ − η ∇ [α·CE(θ; retain batch) − (1 − α)·CE(θ; forget batch)]. The retain set drives the epoch
and the (smaller) forget set is cycled, so every step pairs one batch of each.

Defaults: the authors' small-scale settings (SCRUB repository): SGD with momentum 0.9, lr 0.01, no weight
decay, α 0.95, constant rate. Where we differ: 2 epochs instead of 10 (cost; the tuning grid reaches 5).
"""
from __future__ import annotations

import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base

STREAMS = ('retain', 'forget')


def default_config() -> ml_collections.ConfigDict:
  return _losses.hparams(
      {'lr': [1e-3, 3e-3, 1e-2, 3e-2], 'epochs': [1.0, 2.0, 3.0, 5.0], 'alpha': [0.9, 0.95, 0.99, 0.999]},
      lr=0.01, epochs=2.0, weight_decay=0.0, schedule='constant',
      alpha=0.95)  # Retain weight; the forget set's ascent has weight 1 − α.


def terms(alpha: float) -> tuple[_losses.Term, ...]:
  """α·CE(retain) − (1 − α)·CE(forget), for composition with other terms."""
  return (_losses.ce_term('retain', alpha), _losses.ce_term('forget', -(1.0 - alpha)))


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  phase = base.Phase(_losses.combine(problem, terms(hp.alpha)), streams=STREAMS, epochs=hp.epochs,
                     name='neggrad_plus')
  return _losses.build('neggrad_plus', (phase,), hp, sizes, batch_size)


algorithms.register('neggrad_plus', default_config, build, doc=__doc__)
