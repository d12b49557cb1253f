"""SCRUB: a student that stays close to the original model on retain data and moves away on forget data.

Kurmanji et al., "Towards Unbounded Machine Unlearning", NeurIPS 2023. Update, alternating whole epochs:
max-step on forget: θ ← θ + η ∇ KL(T ‖ S_θ); min-step on retain: θ ← θ − η ∇ [α·KL(T ‖ S_θ) + γ·CE(θ)],
T = the original model (frozen, in the context), KL at temperature τ (× τ²). The paper's schedule: every
epoch runs a min pass over retain, and the first `msteps` epochs run a max pass over forget before it.
The student starts equal to the teacher, where KL has a zero gradient: with this project's deterministic
models (GroupNorm, no dropout) the first max pass only acts once weight decay or a min pass has moved the
student, so `msteps` ≥ 2 is the useful range. Repeated passes share one compiled program.

Defaults, against the authors' code (meghdadk/SCRUB): SGD with momentum 0.9, weight decay 5e-4, 3 epochs
of which 2 start with a max pass, τ = 4 and a constant rate are their large-scale settings (its step decay
at epochs 3, 5, 9 never fires within 3 epochs); α = 0.5, γ = 1 are their small-scale weights (large-scale:
α = 0.001, γ = 0.99; the small-scale setting also uses Adam at 5e-4 with weight decay 0.1, 10 epochs, 3 max
epochs, τ = 2). The learning rate, 3e-3 instead of 5e-4, is scaled to this project's small CNN (trained at
0.05). `optimizer='adam'` is torch's Adam (coupled L2 weight decay, as the authors' code), `'adamw'`
decoupled.

Reusable pieces (e.g. SCRUB's loss under another transformation, such as a saliency mask):
`max_terms`/`min_terms`, `phases(problem, hp)`, and `prepare` (the teacher goes into `context['teacher']`).
"""
from __future__ import annotations

import math

import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base

prepare = _losses.with_teacher


def default_config() -> ml_collections.ConfigDict:
  # See the module docstring for where each default comes from.
  return _losses.hparams(
      {'lr': [5e-4, 1e-3, 3e-3, 1e-2], 'epochs': [2.0, 3.0, 5.0, 10.0], 'msteps': [1, 2, 3, 5],
       'alpha': [0.1, 0.5, 1.0], 'temperature': [1.0, 2.0, 4.0]},
      lr=3e-3, epochs=3.0, schedule='constant',
      msteps=2,  # Epochs (from the first) that start with a max pass over the forget set.
      alpha=0.5,  # α: weight of the KL to the teacher on retain (min-steps).
      gamma=1.0,  # γ: weight of the retain cross-entropy (min-steps).
      temperature=4.0)  # τ of every KL.


def max_terms(hp: ml_collections.ConfigDict) -> tuple[_losses.Term, ...]:
  """−KL(T ‖ S) on forget: minimising it maximises the divergence."""
  return (_losses.kl_term('forget', _losses.TEACHER, -1.0, hp.temperature),)


def min_terms(hp: ml_collections.ConfigDict) -> tuple[_losses.Term, ...]:
  return (_losses.kl_term('retain', _losses.TEACHER, hp.alpha, hp.temperature),
          _losses.ce_term('retain', hp.gamma))


def phases(problem: base.Problem, hp: ml_collections.ConfigDict) -> tuple[base.Phase, ...]:
  """max, min, max, min, ... for the first `msteps` epochs; the last min phase also runs the remaining
  epochs (fractional allowed). Each phase has its own name, so each pass draws its own permutation."""
  max_loss = _losses.combine(problem, max_terms(hp))
  min_loss = _losses.combine(problem, min_terms(hp))
  m = max(0, min(int(hp.msteps), math.ceil(hp.epochs)))
  if not m:
    return (base.Phase(min_loss, ('retain',), epochs=hp.epochs, name='min0'),)
  out = []
  for e in range(m):
    out.append(base.Phase(max_loss, ('forget',), epochs=1.0, name=f'max{e}'))
    last = e == m - 1
    out.append(base.Phase(min_loss, ('retain',), epochs=hp.epochs - (m - 1) if last else 1.0, name=f'min{e}'))
  return tuple(out)


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  return _losses.build('scrub', phases(problem, hp), hp, sizes, batch_size, prepare=prepare)


algorithms.register('scrub', default_config, build, doc=__doc__)
