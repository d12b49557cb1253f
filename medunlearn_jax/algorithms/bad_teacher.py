"""Bad Teacher: distil the original model on retain data and a randomly initialised model on forget data.

Chundawat et al., "Can Bad Teaching Induce Forgetting? Unlearning in Deep Networks Using an Incompetent
Teacher", AAAI 2023. Update: θ ← θ − η ∇ [KL(T_orig ‖ S_θ)(retain batch) + λ·KL(T_rand ‖ S_θ)(forget batch)],
student initialised from the original model, T_rand = `problem.init_fn(rng)` made in `prepare`. The paper
mixes 30 % of the retain set with the forget set for one epoch; here the retain set drives (`epochs` of it,
fractional allowed) and every step pairs a retain batch with a cycled forget batch, weighted by λ.
"""
from __future__ import annotations

import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base


def default_config() -> ml_collections.ConfigDict:
  # The paper's optimizer: Adam, lr 1e-4, one epoch, KL temperature 1.
  return _losses.hparams(
      {'lr': [3e-5, 1e-4, 3e-4, 1e-3], 'epochs': [0.3, 1.0, 2.0], 'forget_weight': [0.3, 1.0, 3.0],
       'temperature': [1.0, 2.0, 4.0]},
      optimizer='adam', lr=1e-4, weight_decay=0.0, schedule='constant', epochs=1.0,
      forget_weight=1.0,  # λ: weight of the forget batch's KL to the random teacher.
      temperature=1.0)  # Softmax temperature of both KL terms.


def terms(forget_weight: float, temperature: float) -> tuple[_losses.Term, ...]:
  return (_losses.kl_term('retain', _losses.TEACHER, 1.0, temperature),
          _losses.kl_term('forget', _losses.RANDOM_TEACHER, forget_weight, temperature))


def make_prepare(problem: base.Problem):
  """Start from the original model; context: the original (competent) and a random (incompetent) teacher."""

  def prepare(params, data, rng, env):
    del data
    return params, {_losses.TEACHER: params, _losses.RANDOM_TEACHER: _losses.fresh_params(problem, rng, env)}

  return prepare


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  phase = base.Phase(_losses.combine(problem, terms(hp.forget_weight, hp.temperature)),
                     streams=('retain', 'forget'), epochs=hp.epochs, name='bad_teacher')
  return _losses.build('bad_teacher', (phase,), hp, sizes, batch_size, prepare=make_prepare(problem))


algorithms.register('bad_teacher', default_config, build, doc=__doc__)
