"""Parameter masks as Optax transformations: which weights an algorithm may move.

Two kinds, both applied *after* the whole optimizer (weight decay, momentum, Adam moments...), so that a
frozen weight receives an update of exactly zero and stays bit-identical. Masking the gradient instead is
the silent bug of several public SalUn implementations: decoupled weight decay and momentum still move the
weights the mask was meant to freeze.

* `context_mask()`: an element-wise 0/1 mask computed at run time (e.g. SalUn's saliency mask), read from
  the step's context (`context['mask']`, a pytree shaped like the parameters).
* `train_last_k(tx, k)`: a static per-block mask (CF-k, EU-k) via `optax.partition`; frozen blocks get
  `optax.set_to_zero()` and keep no optimizer state at all.

`with_mask` composes any algorithm with a run-time mask: its loss, data plan and optimizer are kept, its
`prepare` is followed by the mask's computation and its transformation is followed by `context_mask()`
(e.g. SCRUB's loss under SalUn's saliency mask).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from medunlearn_jax import errors
from medunlearn_jax import models
from medunlearn_jax.algorithms import base

PyTree = Any
MASK_KEY = 'mask'
_TRAIN, _FROZEN = 'train', 'frozen'


def context_mask(key: str = MASK_KEY) -> optax.GradientTransformationExtraArgs:
  """Zeroes the updates where `context[key]` is 0; put it last in an `optax.chain`.

  `jnp.where` (not a product) so that a frozen weight's update is exactly +0 even if the optimizer's
  update there is inf/NaN, and `p + 0 == p` keeps the weight bit-identical.
  """

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None, *, context=None, **extra_args):
    del params, extra_args
    if not isinstance(context, Mapping) or key not in context:
      raise ValueError(f'context_mask needs the step context to hold {key!r} (computed in prepare)')
    masked = jax.tree.map(lambda u, m: jnp.where(m != 0, u, jnp.zeros_like(u)), updates, context[key])
    return masked, state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def last_k_blocks(params: Mapping[str, Any], k: int) -> PyTree:
  """A pytree of bools like `params`: True on the last `k` blocks (`models.blocks` order)."""
  groups = models.blocks(params)
  if not 1 <= k <= len(groups):
    raise errors.ConfigError(f'k={k} must be between 1 and the model\'s {len(groups)} blocks')
  chosen = {name for group in groups[len(groups) - k:] for name in group}
  return {name: _constant_like(sub, name in chosen) for name, sub in params.items()}


def _constant_like(tree: PyTree, value: Any) -> PyTree:
  return jax.tree.map(lambda _: value, tree)


def train_last_k(tx: optax.GradientTransformation, k: int) -> optax.GradientTransformationExtraArgs:
  """`tx` on the last `k` blocks; every other parameter gets a zero update and no optimizer state."""

  def labels(params):
    return jax.tree.map(lambda c: _TRAIN if c else _FROZEN, last_k_blocks(params, k))

  return optax.partition({_TRAIN: tx, _FROZEN: optax.set_to_zero()}, labels)


def top_fraction(scores: PyTree, fraction: float) -> PyTree:
  """A 0/1 float32 mask like `scores` selecting the `fraction` of all entries with the largest scores.

  The ranking is global over every leaf (as in SalUn's reference code) and exact: ties are broken by
  position, so exactly round(fraction * size) entries are selected even when many scores are equal.
  """
  leaves, treedef = jax.tree.flatten(scores)
  flat = jnp.concatenate([jnp.ravel(x).astype(jnp.float32) for x in leaves])
  k = int(round(fraction * flat.size))
  order = jnp.argsort(flat, stable=True, descending=True)
  chosen = jnp.zeros(flat.size, jnp.float32).at[order[:k]].set(1.0)
  out, start = [], 0
  for x in leaves:
    out.append(chosen[start:start + x.size].reshape(x.shape))
    start += x.size
  return jax.tree.unflatten(treedef, out)


MaskFn = Callable[[PyTree, Mapping[str, Any], jax.Array, Any], PyTree]


def with_mask(algorithm: base.Algorithm, mask_fn: MaskFn, name: str | None = None,
              hparams: Mapping[str, Any] | None = None) -> base.Algorithm:
  """`algorithm` restricted to the weights selected by `mask_fn(params, data, rng, env)`.

  The mask is computed from the parameters `algorithm.prepare` starts from and stored as
  `context['mask']`; the algorithm's context must be a mapping (or empty).
  """

  def prepare(params, data, rng, env):
    prep_rng, mask_rng = jax.random.split(rng)
    start, context = algorithm.prepare(params, data, prep_rng, env)
    context = dict(context or {})
    if MASK_KEY in context:
      raise ValueError(f'{algorithm.name} already puts {MASK_KEY!r} in its context')
    context[MASK_KEY] = mask_fn(start, data, mask_rng, env)
    return start, context

  return dataclasses.replace(
      algorithm, name=name or f'{algorithm.name}+mask', prepare=prepare,
      tx=optax.chain(algorithm.tx, context_mask()),
      hparams=dict(algorithm.hparams) if hparams is None else dict(hparams))
