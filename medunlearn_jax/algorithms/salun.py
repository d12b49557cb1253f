"""SalUn: random-label unlearning restricted to the weights most salient for the forget set.

Fan et al., "SalUn: Empowering Machine Unlearning via Gradient-based Weight Saliency in Image Classification
and Generation", ICLR 2024.
Update: m = 1[|∇_θ CE(θ_o; D_f)| among the top `sparsity` fraction] (or ≥ `threshold`), then
θ ← θ − m ⊙ η·d, d the optimizer's direction (momentum, weight decay) for
∇_θ [w_f·CE(θ; x_f, y' ≠ y_f) + w_r·CE(θ; x_r, y_r)].

The saliency is the magnitude of the gradient of the mean forget cross-entropy at the original model,
ranked globally over all weights (as in the paper's code). The mask is applied after the whole optimizer,
weight decay and momentum included, so weights outside it stay bit-identical (`_masking.context_mask`).
The loss is random-label training (`_losses.random_label_term`) on the paper's shuffled forget ∪ retain set:
`epochs` passes over the retain set, each step pairing a retain batch with a cycled forget batch (random
labels redrawn every step: by default among all classes, the true one included, as the reference code's
`randint(0, C)`; `label_draw='other_class'` excludes the true class), weighted by their shares of the union, w_f = |D_f|/|D|, w_r = |D_r|/|D|,
so every example weighs as much as in the paper's mixed batches. (Equal weights over-weight a 10 % forget
set nine-fold; on a binary task that drives the model to chance.) `mixture_weights=False` uses w_f = 1,
w_r = `retain_weight` instead.
`under_saliency_mask` puts any algorithm (e.g. SCRUB's loss) under the same mask.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax import errors
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import _masking
from medunlearn_jax.algorithms import base

PyTree = Any


def default_config() -> ml_collections.ConfigDict:
  return _losses.hparams(
      {'lr': [0.003, 0.005, 0.013, 0.03], 'epochs': [2.0, 5.0, 10.0], 'sparsity': [0.1, 0.3, 0.5, 0.7, 0.9]},
      lr=0.013, schedule='constant',  # The paper's random-label learning rate (CIFAR-10, ResNet-18).
      epochs=5.0,             # Passes over the retain set (paper: 10 over forget ∪ retain).
      sparsity=0.5,           # Fraction of weights updated (the paper's default mask ratio).
      threshold=0.0,          # > 0: update the weights with saliency >= threshold instead of a fraction.
      mixture_weights=True,   # Weigh forget / retain terms by their shares of forget ∪ retain.
      retain_weight=1.0,      # w_r (with w_f = 1) when mixture_weights is False.
      label_draw='official')  # Random labels among all classes; 'other_class' excludes the true one.


@functools.lru_cache(maxsize=None)
def _gradient_of_sum(problem: base.Problem):
  """`fn(params, batch)` for `Env.reduce`, one function object per problem so its compilation is reused."""

  def gradient_of_sum(params, batch):
    def total(p):
      logits = base.forward(problem, p, batch, train=False)
      return jnp.sum(base.per_example_loss(logits, batch['label'], problem.multilabel) * batch['mask'])
    return jax.grad(total)(params)

  return gradient_of_sum


def forget_gradient(problem: base.Problem, params: PyTree, split: Any, env: Any) -> PyTree:
  """∇_θ of the mean cross-entropy over `split`, a data-parallel sum over its batches."""
  total = env.reduce(_gradient_of_sum(problem), params, split)
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


def loss_weights(hp: ml_collections.ConfigDict, sizes) -> tuple[float, float]:
  """(w_f, w_r) of the forget and retain terms."""
  if not hp.mixture_weights:
    return 1.0, float(hp.retain_weight)
  union = sizes['forget'] + sizes['retain']
  return sizes['forget'] / union, sizes['retain'] / union


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  forget_weight, retain_weight = loss_weights(hp, sizes)
  loss = _losses.combine(problem, _losses.random_label_term('forget', forget_weight, hp.label_draw),
                         _losses.ce_term('retain', retain_weight))
  phase = base.Phase(loss=loss, streams=('retain', 'forget'), epochs=hp.epochs, name='salun')
  inner = _losses.build('salun', [phase], hp, sizes, batch_size)
  return under_saliency_mask(inner, problem, hp.sparsity, hp.threshold, name='salun')


algorithms.register('salun', default_config, build, doc=__doc__)
