"""SSD: selective synaptic dampening, a one-shot edit of the weights, without gradient steps.

Foster et al., "Fast Machine Unlearning Without Retraining Through Selective Synaptic Dampening", AAAI 2024.
Update: with diagonal Fisher importances I_D (training set) and I_f (forget set), every weight with
I_f > α·I_D is multiplied by β = min(λ·I_D / I_f, 1); all other weights are unchanged.

Importances follow the paper's code: the squared gradient of each batch's mean cross-entropy (batches of
the run's batch size, the last one partial), averaged over batches, on the original model in eval mode.
Both are data-parallel sums over their set (`Env.reduce`). The whole edit happens in `prepare`; the data
plan is one phase of zero steps (no data stream), so the engine takes no step, compiles nothing, and the
optimizer (`optax.set_to_zero`) never runs.
"""
from __future__ import annotations

import functools
import math
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import optax

from medunlearn_jax import algorithms
from medunlearn_jax import errors
from medunlearn_jax.algorithms import base

PyTree = Any


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'alpha': 10.0,  # Selection weighting α: dampen weights with I_f > α·I_D (the paper's default).
      'lam': 1.0,     # Dampening constant λ: β = min(λ·I_D / I_f, 1) (the paper's default).
      'search_space': {'alpha': [1.0, 3.0, 10.0, 30.0, 100.0], 'lam': [0.1, 0.5, 1.0, 2.0, 5.0]},
  })


@functools.lru_cache(maxsize=None)
def _squared_grad(problem: base.Problem):
  """`fn(params, batch)` for `Env.reduce`, one function object per problem so its compilation is reused."""

  def squared_grad(params, batch):
    def mean_loss(p):
      logits = base.forward(problem, p, batch, train=False)
      return base.masked_mean(base.per_example_loss(logits, batch['label'], problem.multilabel),
                              batch['mask'])
    return jax.tree.map(jnp.square, jax.grad(mean_loss)(params))

  return squared_grad


def importances(problem: base.Problem, params: PyTree, split: Any, env: Any) -> PyTree:
  """Mean over the batches of `split` of the squared gradient of the batch's mean cross-entropy."""
  batches = math.ceil(len(split) / env.batch_size)
  return jax.tree.map(lambda x: x / batches, env.reduce(_squared_grad(problem), params, split))


@jax.jit
def dampen(params: PyTree, train_importance: PyTree, forget_importance: PyTree, alpha: float,
           lam: float) -> PyTree:
  """θ·β where I_f > α·I_D, β = min(λ·I_D / I_f, 1); θ elsewhere (bit-identical)."""

  def one(theta, i_d, i_f):
    selected = i_f > alpha * i_d
    beta = jnp.minimum(lam * i_d / jnp.where(selected, i_f, 1.0), 1.0)  # I_f > 0 wherever selected.
    return jnp.where(selected, theta * beta, theta)

  return jax.tree.map(one, params, train_importance, forget_importance)


def dampened_count(train_importance: PyTree, forget_importance: PyTree, alpha: float) -> jax.Array:
  """How many weights `dampen` selects (I_f > α·I_D)."""
  return sum(jnp.sum(i_f > alpha * i_d) for i_d, i_f in zip(jax.tree.leaves(train_importance),
                                                             jax.tree.leaves(forget_importance)))


def _no_loss(params, batches, context, rng):
  del params, batches, context, rng
  return jnp.zeros(()), {}


NO_STEPS = base.Phase(loss=_no_loss, streams=(), steps=0, name='none')  # A data plan without steps.


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  del sizes, batch_size
  if hp.alpha <= 0 or hp.lam <= 0:
    raise errors.ConfigError(f'ssd needs alpha > 0 and lam > 0, got {hp.alpha}, {hp.lam}')

  def prepare(params, data, rng, env):
    del rng
    train_importance = importances(problem, params, data['train'], env)
    forget_importance = importances(problem, params, data['forget'], env)
    count = int(env.jit(dampened_count)(train_importance, forget_importance, hp.alpha))
    total = sum(x.size for x in jax.tree.leaves(params))
    logging.info('ssd: dampened %d of %d weights (%.3f %%; I_f > %g·I_D)', count, total, 100 * count / total,
                 hp.alpha)
    return env.jit(dampen)(params, train_importance, forget_importance, hp.alpha, hp.lam), {}

  return base.Algorithm(name='ssd', phases=(NO_STEPS,), tx=optax.with_extra_args_support(optax.set_to_zero()),
                        prepare=prepare, hparams=hp.to_dict())


algorithms.register('ssd', default_config, build, doc=__doc__)
