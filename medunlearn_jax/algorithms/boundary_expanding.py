"""Boundary Expanding: send the forget set to an extra "shadow" class, then prune that class.

Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via Shifting the Decision Space",
CVPR 2023.
Update: θ ← θ − η·opt(∇_θ CE([f_θ(x), s(x)]; x, shadow)) on forget batches, where the widened output has
one extra shadow logit s(x); pruning the shadow unit afterwards leaves the original architecture.

Simplification within the `Problem` abstraction (which exposes logits, not features): the shadow unit is
not a trainable row of the head but a fixed logit column, the original model's largest logit on the same
input, s(x) = max_c f_θo(x)_c. Training the forget examples to it pushes their winning logits below what
the original model gave its prediction, across the nearest boundary; "pruning" is dropping the column, so
the unlearnt parameters are used as they are. Single-label tasks only.
"""
from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import boundary_shrink


def default_config() -> ml_collections.ConfigDict:
  return _losses.hparams(
      {'lr': [0.0003, 0.001, 0.003, 0.01, 0.03], 'epochs': [1.0, 2.0, 5.0, 10.0]},
      lr=0.01, weight_decay=0.0, schedule='constant',  # Reference: plain SGD with momentum 0.9.
      epochs=5.0)  # Passes over the forget set.


def shadow_term(stream: str, teacher: str = _losses.TEACHER) -> _losses.Term:
  """CE of the widened output [f_θ(x), max_c f_teacher(x)_c] towards the shadow (last) column."""

  def term(out: _losses.Outputs):
    logits = out.logits(stream)
    shadow = jnp.max(out.teacher_logits(teacher, stream), axis=-1, keepdims=True)
    widened = jnp.concatenate([logits, shadow], axis=-1)
    target = jnp.full(logits.shape[:1], logits.shape[-1], jnp.int32)
    ce = out.mean(stream, optax.softmax_cross_entropy_with_integer_labels(widened, target))
    acc = out.mean(stream, base.correct(logits, out.batches[stream]['label'], False))
    return ce, {f'{stream}_shadow_ce': ce, f'{stream}_acc': acc}

  return term


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  boundary_shrink.check_single_label(problem, 'boundary_expanding')
  phase = base.Phase(loss=_losses.combine(problem, shadow_term('forget')), streams=('forget',),
                     epochs=hp.epochs, name='expand')
  return _losses.build('boundary_expanding', [phase], hp, sizes, batch_size, prepare=_losses.with_teacher)


algorithms.register('boundary_expanding', default_config, build, doc=__doc__)
