"""Random labels (RL): train on retain ∪ forget with the forget labels redrawn at random among other classes.

Graves et al., "Amnesiac Machine Learning", AAAI 2021; Golatkar et al., "Eternal Sunshine of the Spotless
Net", CVPR 2020 (random-label baseline); Fan et al., "SalUn", ICLR 2024 (RL on retain ∪ forget). Update:
θ ← θ − η ∇ [(1 − s)·CE(θ; retain batch) + s·CE(θ; forget batch, ỹ)], ỹ ~ U{0..C−1} redrawn every
step from the step's rng, s = |F| / (|R| + |F|): each batch weighted by its set's share, as a batch of
the shuffled union would be. The retain set drives the epoch; the forget set is cycled.

Labels: `label_draw='official'` (default) draws among all C classes, the true one included, as the
reference code does (`randint(0, C)`); `'other_class'` draws among the C − 1 others, which on a binary task
flips every forget label (a much stronger signal; this project's default before it followed the reference).
"""
from __future__ import annotations

import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base

STREAMS = ('retain', 'forget')


def default_config() -> ml_collections.ConfigDict:
  return _losses.hparams({'lr': [1e-3, 3e-3, 1e-2, 3e-2], 'epochs': [1.0, 2.0, 3.0, 5.0]}, lr=0.01, epochs=2.0,
                         label_draw='official')  # Or 'other_class'; see the module docstring.


def terms(sizes, label_draw: str = 'official') -> tuple[_losses.Term, ...]:
  share = _losses.union_shares({s: sizes[s] for s in STREAMS})
  return (_losses.ce_term('retain', share['retain']),
          _losses.random_label_term('forget', share['forget'], label_draw))


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  phase = base.Phase(_losses.combine(problem, terms(sizes, hp.label_draw)), streams=STREAMS, epochs=hp.epochs,
                     name='random_label')
  return _losses.build('random_label', (phase,), hp, sizes, batch_size)


algorithms.register('random_label', default_config, build, doc=__doc__)
