"""SalUn-soft: random-label unlearning whose weight changes are soft-thresholded after every step.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Image Classification
and Generation", ICLR 2024 (the soft-thresholding variant; `RL_proximal` in the authors' code).
Update: θ' = θ − η·opt(∇ random-label loss); d = θ' − θ_e (θ_e: the weights at the start of epoch e);
τ_t = the k_t-th smallest |d| over all weights, k_t = ⌊r·(1 − (e·S + 1)/T)·P⌋ (P weights, S steps per epoch,
T steps in all); θ ← θ_e + sign(d)·max(|d| − τ_t, 0). The proximal step of an ℓ1 penalty on the change
since θ_e: the k_t least-changed weights return to θ_e and every other change shrinks by τ_t, a soft
saliency mask that loosens as the run proceeds.

The loss is `random_label`'s (retain ∪ forget with the forget labels redrawn each step among all classes,
each batch weighted by its set's share), as `RL_proximal` trains on the shuffled union. Where we differ: the
authors' code leaves the ratio r (`mask_ratio`) undefined; the default 0.5 is SalUn's default hard-mask
ratio. Learning rate and epochs are `salun`'s defaults.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from medunlearn_jax import algorithms
from medunlearn_jax import errors
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import random_label

PyTree = Any


def default_config() -> ml_collections.ConfigDict:
  return _losses.hparams(
      {'lr': [0.003, 0.005, 0.013, 0.03], 'epochs': [2.0, 5.0, 10.0], 'ratio': [0.1, 0.3, 0.5, 0.7, 0.9]},
      lr=0.013, schedule='constant',  # SalUn's random-label learning rate.
      epochs=5.0,             # Passes over the retain set.
      ratio=0.5,              # r: the share of weights reset to the epoch's start at the first step.
      label_draw='official')  # As `random_label`.


class SoftThresholdState(NamedTuple):
  count: jax.Array
  anchor: PyTree  # θ_e, the weights at the start of the current epoch.


def soft_threshold_to_anchor(ratio: float, steps_per_epoch: int, total_steps: int
                             ) -> optax.GradientTransformation:
  """Turns an update into the soft-thresholded change of the module docstring (place it last in a chain)."""

  def init(params):
    return SoftThresholdState(jnp.zeros((), jnp.int32), jax.tree.map(jnp.asarray, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('soft_threshold_to_anchor needs the parameters in update()')
    epoch = state.count // steps_per_epoch
    anchor = jax.tree.map(lambda a, p: jnp.where(state.count % steps_per_epoch == 0, p, a), state.anchor, params)
    diff = jax.tree.map(lambda p, u, a: p + u - a, params, updates, anchor)
    flat = jnp.concatenate([jnp.abs(d).ravel() for d in jax.tree.leaves(diff)])
    remaining = (total_steps - (epoch * steps_per_epoch + 1)) / total_steps
    k = jnp.floor(ratio * remaining * flat.size).astype(jnp.int32)
    tau = jnp.where(k > 0, jnp.sort(flat)[jnp.maximum(k - 1, 0)], 0.0)
    new = jax.tree.map(lambda a, d: a + jnp.sign(d) * jnp.maximum(jnp.abs(d) - tau, 0.0), anchor, diff)
    updates = jax.tree.map(lambda n, p: n - p, new, params)
    return updates, SoftThresholdState(optax.safe_int32_increment(state.count), anchor)

  return optax.GradientTransformation(init, update)


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  if not 0.0 <= hp.ratio <= 1.0:
    raise errors.ConfigError(f'salun_soft ratio must be in [0, 1], got {hp.ratio}')
  phase = base.Phase(_losses.combine(problem, random_label.terms(sizes, hp.label_draw)),
                     streams=random_label.STREAMS, epochs=hp.epochs, name='salun_soft')
  inner = _losses.build('salun_soft', (phase,), hp, sizes, batch_size)
  spe = algorithms.steps_per_epoch(sizes['retain'], batch_size)
  total = _losses.phase_steps(phase, sizes, batch_size)
  tx = optax.chain(inner.tx, soft_threshold_to_anchor(hp.ratio, spe, total))
  return base.Algorithm(name='salun_soft', phases=inner.phases, tx=tx, hparams=hp.to_dict())


algorithms.register('salun_soft', default_config, build, doc=__doc__)
