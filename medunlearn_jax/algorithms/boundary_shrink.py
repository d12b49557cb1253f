"""Boundary Shrink: fine-tune each forget example towards its nearest wrong class.

Chen et al., "Boundary Unlearning: Rapid Forgetting of Deep Networks via Shifting the Decision Space",
CVPR 2023.
Update: y_nbi = argmax_{c ≠ y} f_θo(x + δ)_c with δ an L∞ PGD/FGSM perturbation of the original model
θ_o's loss; θ ← θ − η·opt(∇_θ CE(θ; x, y_nbi)) on forget batches only.

The perturbation is recomputed inside every step from the original parameters held in the context (as the
reference code does per batch), in the model's [-1, 1] input scale. One deviation: the new label is the
perturbed model's best *wrong* class, so an example whose attack failed still moves across a boundary (the
reference keeps the perturbed prediction, which may be the true class). Single-label tasks only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax import errors
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base


def default_config() -> ml_collections.ConfigDict:
  return _losses.hparams(
      {'lr': [0.0003, 0.001, 0.003, 0.01, 0.03], 'epochs': [1.0, 2.0, 5.0, 10.0],
       'attack_eps': [0.03, 0.1, 0.3]},
      lr=0.01, weight_decay=0.0, schedule='constant',  # Reference: plain SGD with momentum 0.9.
      epochs=5.0,         # Passes over the forget set.
      attack_eps=0.1,     # L∞ radius of the perturbation, in [-1, 1] input units (reference: 0.1).
      attack_step=0.03,   # PGD step size (reference: 8/255); attack_steps=1 with step=eps is FGSM.
      attack_steps=5)     # PGD iterations (reference: 5).


def check_single_label(problem: base.Problem, name: str) -> None:
  if problem.multilabel:
    raise errors.ConfigError(f'{name} moves examples to another class and needs a single-label task')


def nearest_wrong_class(problem: base.Problem, params, images: jax.Array, labels: jax.Array, *, eps: float,
                        step: float, steps: int) -> jax.Array:
  """The best wrong class of `params` on L∞-PGD-perturbed `images` (uint8), outside the gradient."""
  params = jax.lax.stop_gradient(params)
  clean = base.normalize_images(images)

  def total_loss(x):
    return jnp.sum(base.per_example_loss(problem.apply_fn(params, x, False), labels, False))

  def ascend(x, _):
    x = x + step * jnp.sign(jax.grad(total_loss)(x))
    return jnp.clip(jnp.clip(x, clean - eps, clean + eps), -1.0, 1.0), None

  adversarial, _ = jax.lax.scan(ascend, clean, None, length=steps)
  logits = problem.apply_fn(params, adversarial, False)
  true_class = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
  return jax.lax.stop_gradient(jnp.argmax(jnp.where(true_class, -jnp.inf, logits), axis=-1))


def shrink_term(stream: str, *, eps: float, step: float, steps: int,
                teacher: str = _losses.TEACHER) -> _losses.Term:
  """CE of the student towards the nearest wrong class of `context[teacher]` on `stream`."""

  def term(out: _losses.Outputs):
    batch = out.batches[stream]
    targets = nearest_wrong_class(out.problem, out.context[teacher], batch['image'], batch['label'],
                                  eps=eps, step=step, steps=steps)
    logits = out.logits(stream)
    ce = out.mean(stream, base.per_example_loss(logits, targets, False))
    acc = out.mean(stream, base.correct(logits, batch['label'], False))
    return ce, {f'{stream}_shrink_ce': ce, f'{stream}_acc': acc}

  return term


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  check_single_label(problem, 'boundary_shrink')
  loss = _losses.combine(problem, shrink_term('forget', eps=hp.attack_eps, step=hp.attack_step,
                                              steps=hp.attack_steps))
  phase = base.Phase(loss=loss, streams=('forget',), epochs=hp.epochs, name='shrink')
  return _losses.build('boundary_shrink', [phase], hp, sizes, batch_size, prepare=_losses.with_teacher)


algorithms.register('boundary_shrink', default_config, build, doc=__doc__)
