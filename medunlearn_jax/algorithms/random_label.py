"""Random labels (RL): fit the forget set to labels drawn at random among the other classes.

Graves et al., "Amnesiac Machine Learning", AAAI 2021; Golatkar et al., "Eternal Sunshine of the Spotless
Net", CVPR 2020 (random-label baseline); Fan et al., "SalUn", ICLR 2024 (RL with retain data). Update:
θ ← θ − η ∇ [CE(θ; forget batch, ỹ) + λ·CE(θ; retain batch)], ỹ ~ U(classes ≠ y) redrawn every step.
Choice here: the forget set drives the epoch and each step also takes one retain batch (λ =
`retain_weight`, default 1, as SalUn's RL which trains on both); λ = 0 gives forget-only RL.
"""
from __future__ import annotations

import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base


def default_config() -> ml_collections.ConfigDict:
  return _losses.hparams(
      {'lr': [1e-3, 3e-3, 1e-2, 3e-2], 'epochs': [2.0, 5.0, 10.0, 20.0], 'retain_weight': [0.0, 0.5, 1.0]},
      lr=0.01, epochs=10.0,
      retain_weight=1.0)  # λ: weight of the paired retain batch's cross-entropy (0 = forget set only).


def terms(retain_weight: float) -> tuple[_losses.Term, ...]:
  forget = (_losses.random_label_term('forget'),)
  return forget + ((_losses.ce_term('retain', retain_weight),) if retain_weight else ())


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  streams = ('forget', 'retain') if hp.retain_weight else ('forget',)
  phase = base.Phase(_losses.combine(problem, terms(hp.retain_weight)), streams=streams, epochs=hp.epochs,
                     name='random_label')
  return _losses.build('random_label', (phase,), hp, sizes, batch_size)


algorithms.register('random_label', default_config, build, doc=__doc__)
