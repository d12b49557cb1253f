"""Bad Teacher: distil the original model on retain data and a randomly initialised model on forget data.

Chundawat et al., "Can Bad Teaching Induce Forgetting? Unlearning in Deep Networks Using an Incompetent
Teacher", AAAI 2023. Update: θ ← θ − η ∇ [(1 − s)·KL(T_orig ‖ S_θ)(retain) + s·KL(T_rand ‖ S_θ)(forget)],
student initialised from the original model, T_rand = `problem.init_fn(rng)` made in `prepare`. The paper
trains one epoch on a shuffled mix of ρ = 30 % of the retain set and the forget set; here each step pairs
a retain batch with a cycled forget batch weighted by their shares of that mix, s = |F| / (ρ|R| + |F|),
and the retain set drives `epochs` (default 0.3 = ρ: the paper's one pass over the mix).

Defaults, against the authors' code (vikram2000b/bad-teaching-unlearning): Adam at 1e-4 without weight
decay, KL temperature 1, 30 % of the retain set, one pass; ours are the same. Their KL averages over every
logit rather than per example, a factor 1/C that Adam's scale invariance cancels.
"""
from __future__ import annotations

import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base


def default_config() -> ml_collections.ConfigDict:
  # The paper's settings: Adam, lr 1e-4, KL temperature 1, one pass over 30 % of retain ∪ forget. On the
  # default experiment's random 10 % forget set they over-forget (forget accuracy 6 points under the
  # retrained model's, retain accuracy 8 under), hence the smaller rates in the search space.
  return _losses.hparams(
      {'lr': [1e-5, 3e-5, 1e-4, 3e-4], 'epochs': [0.3, 1.0, 2.0], 'retain_fraction': [0.1, 0.3, 1.0],
       'temperature': [1.0, 2.0, 4.0]},
      optimizer='adam', lr=1e-4, weight_decay=0.0, schedule='constant', epochs=0.3,
      retain_fraction=0.3,  # ρ: the retain subset mixed with the forget set; sets the forget weight s.
      temperature=1.0)  # Softmax temperature of both KL terms.


def terms(sizes, retain_fraction: float, temperature: float) -> tuple[_losses.Term, ...]:
  share = _losses.union_shares({'retain': retain_fraction * sizes['retain'], 'forget': sizes['forget']})
  return (_losses.kl_term('retain', _losses.TEACHER, share['retain'], temperature),
          _losses.kl_term('forget', _losses.RANDOM_TEACHER, share['forget'], temperature))


def make_prepare(problem: base.Problem):
  """Start from the original model; context: the original (competent) and a random (incompetent) teacher."""

  def prepare(params, data, rng, env):
    del data
    return params, {_losses.TEACHER: params, _losses.RANDOM_TEACHER: _losses.fresh_params(problem, rng, env)}

  return prepare


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  phase = base.Phase(_losses.combine(problem, terms(sizes, hp.retain_fraction, hp.temperature)),
                     streams=('retain', 'forget'), epochs=hp.epochs, name='bad_teacher')
  return _losses.build('bad_teacher', (phase,), hp, sizes, batch_size, prepare=make_prepare(problem))


algorithms.register('bad_teacher', default_config, build, doc=__doc__)
