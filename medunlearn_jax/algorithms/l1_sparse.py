"""ℓ1-sparse unlearning: fine-tune on the retain set with a decaying ℓ1 penalty on every parameter.

Jia et al., "Model Sparsity Can Simplify Machine Unlearning", NeurIPS 2023. Update:
θ ← θ − η ∇ [CE(θ; retain batch) + γ_e·‖θ‖₁], γ_e = γ·(1 − e/E) in epoch e of E (the paper's linear decay).
The penalty's gradient γ_e·sign(θ) is added by `_losses.l1_penalty` in front of the optimizer, since the
loss does not see the step count; the loss is fine-tuning's.

Defaults: SGD, momentum 0.9, weight decay 5e-4, lr 0.01 at a constant rate, as in the reference code
(its MultiStepLR milestones never fire in 10 epochs). Where we differ: 5 epochs instead of 10, and
γ = 5e-4, a choice within the paper's tuning range (its scripts leave γ to the user).
"""
from __future__ import annotations

import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import erm


def default_config() -> ml_collections.ConfigDict:
  return _losses.hparams(
      {'lr': [3e-3, 1e-2, 3e-2], 'epochs': [2.0, 5.0, 10.0], 'gamma': [1e-5, 3e-5, 1e-4, 3e-4, 1e-3]},
      lr=0.01, epochs=5.0, schedule='constant',
      gamma=5e-4)  # γ: initial ℓ1 weight, decayed linearly per epoch to 0.


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  phase = erm.supervised_phase(problem, 'retain', hp.epochs)
  spe = algorithms.steps_per_epoch(sizes['retain'], batch_size)
  penalty = _losses.l1_penalty(_losses.epoch_linear_decay(hp.gamma, hp.epochs, spe))
  return _losses.build('l1_sparse', (phase,), hp, sizes, batch_size, penalty=penalty)


algorithms.register('l1_sparse', default_config, build, doc=__doc__)
