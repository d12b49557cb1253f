"""SalUn: random-label unlearning restricted to the weights most salient for the forget set.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Image Classification
and Generation", ICLR 2024.
Update: m = 1[|∇_θ CE(θ_o; D_f)| among the top `sparsity` fraction] (or ≥ `threshold`), then
θ ← θ − m ⊙ η·d, d the optimizer's direction (momentum, weight decay) for
∇_θ [CE(θ; x_f, y' ≠ y_f) + α·CE(θ; x_r, y_r)].

The saliency is the magnitude of the gradient of the mean forget cross-entropy at the original model,
ranked globally over all weights (as in the paper's code). The mask is applied after the whole optimizer,
weight decay and momentum included, so weights outside it stay bit-identical (`_masking.context_mask`).
Loss and data plan are those of `random_label` (SalUn is RL under the mask): `epochs` passes over the
forget set, each step pairing a forget batch (random other labels, redrawn every step) with a cycled retain
batch, the paper's forget ∪ retain mixture.
`under_saliency_mask` puts any algorithm (e.g. SCRUB's loss) under the same mask.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax import errors
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import _masking
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import random_label

PyTree = Any


def default_config() -> ml_collections.ConfigDict:
  return _losses.hparams(
      {'lr': [0.001, 0.003, 0.01, 0.03], 'epochs': [2.0, 5.0, 10.0, 20.0],
       'sparsity': [0.1, 0.3, 0.5, 0.7, 0.9], 'retain_weight': [0.5, 1.0, 2.0]},
      lr=0.01, schedule='constant',
      epochs=10.0,         # Passes over the forget set.
      sparsity=0.5,        # Fraction of weights updated (the paper's default mask ratio).
      threshold=0.0,       # > 0: update the weights with saliency >= threshold instead of a fraction.
      retain_weight=1.0)   # α, weight of the retain cross-entropy.


def forget_gradient(problem: base.Problem, params: PyTree, split: Any, env: Any) -> PyTree:
  """∇_θ of the mean cross-entropy over `split`, a data-parallel sum over its batches."""

  def grad_of_sum(p, batch):
    def total(q):
      logits = base.forward(problem, q, batch, train=False)
      return jnp.sum(base.per_example_loss(logits, batch['label'], problem.multilabel) * batch['mask'])
    return jax.grad(total)(p)

  total = env.reduce(grad_of_sum, params, split)
  return jax.tree.map(lambda g: g / len(split), total)


def saliency_mask(problem: base.Problem, sparsity: float = 0.5, threshold: float = 0.0
                  ) -> _masking.MaskFn:
  """The `_masking.MaskFn` of SalUn: 0/1 mask of the most salient weights for the forget set."""
  if threshold <= 0.0 and not 0.0 < sparsity <= 1.0:
    raise errors.ConfigError(f'salun sparsity must be in (0, 1], got {sparsity}')

  @jax.jit
  def select(grads):
    saliency = jax.tree.map(jnp.abs, grads)
    if threshold > 0.0:
      return jax.tree.map(lambda s: (s >= threshold).astype(jnp.float32), saliency)
    return _masking.top_fraction(saliency, sparsity)

  def mask_fn(params, data, rng, env):
    del rng
    return select(forget_gradient(problem, params, data['forget'], env))

  return mask_fn


def under_saliency_mask(algorithm: base.Algorithm, problem: base.Problem, sparsity: float = 0.5,
                        threshold: float = 0.0, name: str | None = None) -> base.Algorithm:
  """Any algorithm (its loss, data plan and optimizer) restricted to SalUn's saliency mask."""
  return _masking.with_mask(algorithm, saliency_mask(problem, sparsity, threshold),
                            name=name or f'{algorithm.name}+salun_mask')


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  inner = random_label.build(problem, hp, sizes, batch_size)
  return under_saliency_mask(inner, problem, hp.sparsity, hp.threshold, name='salun')


algorithms.register('salun', default_config, build, doc=__doc__)
