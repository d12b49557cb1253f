"""NegGrad / gradient ascent (GA): climb the cross-entropy of the forget set, nothing else.

The simplest approximate-unlearning baseline (Golatkar et al., "Eternal Sunshine of the Spotless Net", CVPR
2020; Thudi et al., "Unrolling SGD", EuroS&P 2022). Update: θ ← θ + η ∇ CE(θ; forget batch), from the
original parameters, for a few epochs of the forget set. Unbounded: the learning rate and epochs are what
keep it from destroying the model, so both are in the search space.

Defaults, against SalUn's GA (OPTML-Group/Unlearn-Saliency), the reference for ascent on the forget set
alone: SGD with momentum 0.9, weight decay 5e-4, lr 0.01 for 10 epochs, constant in practice. Where we
differ: lr 1e-3 for 5 epochs and no weight decay, a gentler start for an unbounded ascent (not a measured
optimum); the search space reaches their rate. (SCRUB's "NegGrad" is our `neggrad_plus`.)
"""
from __future__ import annotations

import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base


def default_config() -> ml_collections.ConfigDict:
  # Small steps and no weight decay: ascent diverges quickly, and decay would fight it for no reason.
  return _losses.hparams(
      {'lr': [1e-4, 3e-4, 1e-3, 3e-3, 1e-2], 'epochs': [1.0, 2.0, 5.0, 10.0]},
      lr=1e-3, weight_decay=0.0, epochs=5.0, schedule='constant')


def terms() -> tuple[_losses.Term, ...]:
  return (_losses.ce_term('forget', -1.0),)


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  phase = base.Phase(_losses.combine(problem, terms()), streams=('forget',), epochs=hp.epochs, name='ascent')
  return _losses.build('neggrad', (phase,), hp, sizes, batch_size)


algorithms.register('neggrad', default_config, build, doc=__doc__)
