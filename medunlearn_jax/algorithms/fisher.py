"""Fisher forgetting: scrub the weights with Gaussian noise scaled by the inverse retain-set Fisher diagonal.

Golatkar et al., "Eternal Sunshine of the Spotless Net: Selective Forgetting in Deep Networks", CVPR 2020.
Update: θ ← θ + √(α·Σ)·ε, ε ~ N(0, I), Σ = min(1 / (F + 1e-8), c) with F the diagonal Fisher information of
the model on the retain set: weights the retain data does not pin down get large noise, which removes what
only the forget set taught them.

As in the reference implementation that the benchmarks run (`fisher_new` in the SalUn / Unlearn-Sparse
code, after the authors' `hessian`): F = mean over retain batches of Σ_y p̄_y·(∇_θ CE(batch, y))², with p̄_y
the batch's mean probability of class y; Σ clamped at 1e3 (1e2 for the head); for a weight with input
channels, Σ averaged over them (torch's dim 1, the second-to-last axis of a Flax kernel); Σ × 10 for the
head and for 1-D parameters (biases, normalisation scales). Where we differ: the batches are the run's batch
size (the reference: 32), and the reference's class-forgetting rule (the forgotten class's head row set to 0
with variance 1e-4, only for CIFAR's whole-class forget sets) is left out. α = 1e-6 is the authors'
small-scale setting (1e-7 at large scale). Training-free: the whole edit is `prepare`.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from medunlearn_jax import algorithms
from medunlearn_jax import errors
from medunlearn_jax.algorithms import _masking
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import ssd

PyTree = Any
CLAMP, HEAD_CLAMP, BOOST = 1e3, 1e2, 10.0  # The reference's variance limits and head / 1-D boost.


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'alpha': 1e-6,  # α, the noise scale (the authors' small-scale value).
      'search_space': {'alpha': [1e-8, 1e-7, 3e-7, 1e-6, 3e-6, 1e-5]},
  })


@functools.lru_cache(maxsize=None)
def _class_weighted_squared_grads(problem: base.Problem):
  """`fn(params, batch)` for `Env.reduce`: Σ_y p̄_y (∇ mean CE(batch, y))² of one batch."""

  def fn(params, batch):
    mask = batch['mask']
    probs = jax.nn.softmax(base.forward(problem, params, batch, train=False))
    mean_probs = jax.lax.stop_gradient(jnp.sum(probs * mask[:, None], 0) / jnp.maximum(jnp.sum(mask), 1.0))

    def ce_towards(y, p):
      logits = base.forward(problem, p, batch, train=False)
      targets = jnp.full(logits.shape[:1], y, jnp.int32)
      return base.masked_mean(optax.softmax_cross_entropy_with_integer_labels(logits, targets), mask)

    def one_class(total, y):
      grads = jax.grad(ce_towards, argnums=1)(y, params)
      return jax.tree.map(lambda t, g: t + mean_probs[y] * jnp.square(g), total, grads), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(one_class, zeros, jnp.arange(problem.num_classes))
    return total

  return fn


def fisher_diagonal(problem: base.Problem, params: PyTree, split: Any, env: Any) -> PyTree:
  """The reference's retain Fisher diagonal: the mean over batches of `_class_weighted_squared_grads`."""
  batches = math.ceil(len(split) / env.batch_size)
  return jax.tree.map(lambda x: x / batches, env.reduce(_class_weighted_squared_grads(problem), params, split))


def noise_variance(fisher_diag: PyTree, head: PyTree, alpha: float) -> PyTree:
  """α·Σ per weight with the reference's clamps, input-channel averaging and head / 1-D boost."""

  def one(f, is_head):
    var = jnp.minimum(1.0 / (f + 1e-8), HEAD_CLAMP if is_head else CLAMP) * alpha
    if var.ndim > 1:
      var = jnp.broadcast_to(jnp.mean(var, axis=-2, keepdims=True), var.shape)
    return var * BOOST if (is_head or var.ndim == 1) else var

  return jax.tree.map(one, fisher_diag, head)


def add_noise(params: PyTree, variance: PyTree, rng: jax.Array) -> PyTree:
  """θ + √variance · ε with ε ~ N(0, I), one key per parameter leaf."""
  leaves, treedef = jax.tree.flatten(params)
  keys = jax.tree.unflatten(treedef, list(jax.random.split(rng, len(leaves))))
  return jax.tree.map(lambda p, v, k: p + jnp.sqrt(v) * jax.random.normal(k, p.shape, p.dtype),
                      params, variance, keys)


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  del sizes, batch_size
  if problem.multilabel:
    raise errors.ConfigError('fisher weighs the Fisher information by class probabilities and needs a '
                             'single-label task')
  if hp.alpha <= 0:
    raise errors.ConfigError(f'fisher needs alpha > 0, got {hp.alpha}')

  def prepare(params, data, rng, env):
    var = noise_variance(fisher_diagonal(problem, params, data['retain'], env),
                         _masking.last_k_blocks(params, 1), hp.alpha)
    sharding = jax.sharding.NamedSharding(env.mesh, jax.sharding.PartitionSpec())
    return env.jit(add_noise, out_shardings=sharding)(params, var, rng), {}

  return base.Algorithm(name='fisher', phases=(ssd.NO_STEPS,),
                        tx=optax.with_extra_args_support(optax.set_to_zero()), prepare=prepare,
                        hparams=hp.to_dict())


algorithms.register('fisher', default_config, build, doc=__doc__)
