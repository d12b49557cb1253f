"""Boundary Expanding: send the forget set to an extra "shadow" output unit, then prune that unit.

Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via Shifting the Decision Space",
CVPR 2023.
Update: widen the head by one unit, θ_w = [θ; w_s] (the old rows copied, the new one freshly initialised);
θ_w ← θ_w − η·opt(∇ CE(f_θw(x), C)) on forget batches, C the shadow class; prune: θ ← θ_w without w_s.

Every parameter trains (features and head), as in the authors' code, so the forget examples' features move
towards the shadow unit's region; pruning the unit then leaves them nearest to some other class. The model
is widened through `Problem.with_outputs` (the same model with C + 1 outputs), and the algorithm's `finish`
prunes the trained parameters back to the original shapes. The new unit takes the model's own head
initialisation (Flax's LeCun-normal kernel and zero bias; the authors' code: Xavier-normal, zero bias).
Where our defaults differ from the reference: SGD (momentum 0.9) at lr 0.01 for 5 forget epochs instead of
1e-5 for 10 (the reference's rate for its AllCNN barely moves this project's GroupNorm models).
Single-label tasks only.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from medunlearn_jax import algorithms
from medunlearn_jax import errors
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import boundary_shrink

PyTree = Any


def default_config() -> ml_collections.ConfigDict:
  return _losses.hparams(
      {'lr': [0.0003, 0.001, 0.003, 0.01, 0.03], 'epochs': [1.0, 2.0, 5.0, 10.0]},
      lr=0.01, weight_decay=0.0, schedule='constant',  # Reference: plain SGD with momentum 0.9.
      epochs=5.0)  # Passes over the forget set.


def widen(params: PyTree, wide_init: PyTree) -> PyTree:
  """`wide_init` with every original parameter copied into its leading block (same-shape leaves are
  taken whole; a leaf that grew along its last axis, the head's, keeps its new columns from `wide_init`)."""

  def merge(old, new):
    if old.shape == new.shape:
      return old
    if old.shape[:-1] != new.shape[:-1] or new.shape[-1] < old.shape[-1]:
      raise ValueError(f'widened parameter {new.shape} does not extend {old.shape} along its last axis')
    return new.at[..., :old.shape[-1]].set(old)

  return jax.tree.map(merge, params, wide_init)


def prune(params: PyTree, shapes: PyTree) -> PyTree:
  """Each leaf cut back to the leading block of the shape in `shapes` (undoes `widen`)."""
  return jax.tree.map(lambda p, s: p[tuple(slice(0, n) for n in s.shape)], params, shapes)


def shadow_term(stream: str, shadow_class: int) -> _losses.Term:
  """CE of the widened model's output towards the shadow class on `stream`."""

  def term(out: _losses.Outputs):
    logits = out.logits(stream)
    target = jnp.full(logits.shape[:1], shadow_class, jnp.int32)
    ce = out.mean(stream, optax.softmax_cross_entropy_with_integer_labels(logits, target))
    acc = out.mean(stream, base.correct(logits[:, :shadow_class], out.batches[stream]['label'], False))
    return ce, {f'{stream}_shadow_ce': ce, f'{stream}_acc': acc}

  return term


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  boundary_shrink.check_single_label(problem, 'boundary_expanding')
  if problem.with_outputs is None:
    raise errors.ConfigError('boundary_expanding widens the model\'s head: its Problem needs `with_outputs` '
                             '(see base.flax_problem)')
  wide = problem.with_outputs(problem.num_classes + 1)
  shapes = jax.eval_shape(problem.init_fn, jax.random.key(0))
  phase = base.Phase(loss=_losses.combine(wide, shadow_term('forget', problem.num_classes)),
                     streams=('forget',), epochs=hp.epochs, name='expand')

  def prepare(params, data, rng, env):
    del data
    sharding = jax.sharding.NamedSharding(env.mesh, jax.sharding.PartitionSpec())
    start = jax.jit(lambda p, r: widen(p, wide.init_fn(r)), out_shardings=sharding)(params, rng)
    return start, {}

  algorithm = _losses.build('boundary_expanding', [phase], hp, sizes, batch_size, prepare=prepare)
  return dataclasses.replace(algorithm, finish=lambda params: prune(params, shapes))


algorithms.register('boundary_expanding', default_config, build, doc=__doc__)
