"""UNSIR: learn error-maximising noise for the forget classes, impair the model with it, then repair.

Tarun et al., "Fast Yet Effective Machine Unlearning", IEEE TNNLS 2023.
Update: N_c ← argmax_N CE(f_θo(N), c) − λ‖N‖² for each forget class c; impair: θ ← θ − η₁·Adam(∇[CE(θ; x_r,
y_r) + w·CE(θ; N, c)]); repair, with a fresh Adam: θ ← θ − η₂·Adam(∇ CE(θ; x_r, y_r)).

As in the authors' code: Adam at 0.02 (impair) and 0.01 (repair) without weight decay, a new optimizer
for each phase (`Phase.tx`), noise learnt by Adam at 0.1 for 40 steps with λ = 0.1. The noise optimisation
runs through the step engine too: `prepare` runs a one-phase algorithm whose parameters are the noise images
(the frozen model is read from the context, and the phase has no data stream), then hands the noise to the
impair phase through the context. The noise lives in the model's [-1, 1] input space, `noise_per_class`
images per class present in the forget set. Where we differ from the reference: each impair step adds the
CE of the whole noise set to a retain batch's, weighted by w (the reference shuffles 20 copies of 256 noise
images per class into one loader with up to 1000 retain images per class); impair and repair run
`impair_epochs` / `repair_epochs` of the retain set (the reference: one pass over its retain subset);
the noise model is in eval mode (the reference leaves BatchNorm in train mode); each class's noise carries
its own label (the reference labels every class's noise 0, a slip that only matters for several classes).
UNSIR removes classes: a run through the pipeline refuses a forget set not chosen by class unless
`forget_classes_only=False`. Single-label only.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from medunlearn_jax import algorithms
from medunlearn_jax import errors
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import boundary_shrink
from medunlearn_jax.algorithms import erm

PyTree = Any
NOISE, NOISE_LABELS = 'noise', 'noise_labels'  # Context keys of the learnt noise and its classes.
_MODEL = 'model'  # Context key of the frozen model while the noise is learnt.


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'optimizer': 'adam', 'momentum': 0.9, 'weight_decay': 0.0, 'grad_clip': 0.0,  # The authors' Adam.
      'impair_lr': 0.02, 'repair_lr': 0.01,          # The authors' learning rates of the two phases.
      'impair_epochs': 1.0, 'repair_epochs': 1.0,    # Passes over the retain set.
      'noise_weight': 1.0,     # w, weight of the noise cross-entropy in the impair loss.
      'noise_per_class': 32,   # Noise images per forget class (held in every device's memory).
      'noise_steps': 40,       # Adam steps of the noise (paper: 5 epochs × 8 steps).
      'noise_lr': 0.1,         # Adam learning rate of the noise (paper: 0.1).
      'noise_reg': 0.1,        # λ, weight of the noise's mean squared norm (paper: 0.1).
      'forget_classes_only': True,  # Refuse forget sets not selected by class (UNSIR removes classes).
      'search_space': {'impair_lr': [0.002, 0.005, 0.01, 0.02], 'repair_lr': [0.001, 0.003, 0.01],
                       'impair_epochs': [0.25, 0.5, 1.0], 'repair_epochs': [0.5, 1.0, 2.0],
                       'noise_weight': [0.5, 1.0, 2.0]},
  })


def check_forget_set(hp: ml_collections.ConfigDict, forget: ml_collections.ConfigDict) -> None:
  """Pipeline check before any work: UNSIR removes classes (or sub-classes, a part of a class)."""
  if hp.forget_classes_only and forget.selector != 'class':
    raise errors.ConfigError(
        f'unsir removes classes, but forget.selector is {forget.selector!r}: choose forget.selector=class, '
        'or set algo.unsir.forget_classes_only=False to run it on this forget set')


def noise_algorithm(problem: base.Problem, hp: ml_collections.ConfigDict) -> base.Algorithm:
  """The engine algorithm whose "parameters" are the noise: minimise −CE(f(N), c) + λ·mean‖N_i‖²."""

  def loss(noise, batches, context, rng):
    del batches, rng
    model = jax.lax.stop_gradient(context[_MODEL])
    ce = jnp.mean(base.per_example_loss(problem.apply_fn(model, noise, False), context[NOISE_LABELS], False))
    norm = jnp.mean(jnp.sum(jnp.square(noise), axis=tuple(range(1, noise.ndim))))
    return -ce + hp.noise_reg * norm, {'noise_ce': ce, 'noise_sq_norm': norm}

  phase = base.Phase(loss=loss, streams=(), steps=hp.noise_steps, name='noise')
  return base.Algorithm(name='unsir_noise', phases=(phase,), tx=optax.adam(hp.noise_lr))


def learn_noise(problem: base.Problem, hp: ml_collections.ConfigDict, params: PyTree, data: Any,
                rng: jax.Array, env: Any) -> tuple[jax.Array, jax.Array]:
  """(noise images, their classes): `noise_per_class` per class of the forget set, learnt by the engine."""
  from medunlearn_jax import engine  # pylint: disable=g-import-not-at-top  # engine imports this package.
  forget = data['forget']
  classes = np.unique(forget.labels)
  labels = jnp.asarray(np.repeat(classes, hp.noise_per_class), jnp.int32)
  init = jax.random.normal(rng, (len(labels), *forget.images.shape[1:]), jnp.float32)
  quiet = max(hp.noise_steps, 1)  # Log once, at the end; nothing to checkpoint (no checkpoints given).
  options = engine.RunOptions(seed=env.seed, batch_size=env.batch_size, log_every_steps=quiet,
                              checkpoint_every_steps=quiet)
  noise, cost = engine.run(noise_algorithm(problem, hp), {}, init, {_MODEL: params, NOISE_LABELS: labels},
                           mesh=env.mesh, options=options, stock_layers=problem.stock_layers)
  env.spent.flops += cost.flops  # The noise steps are part of UNSIR's set-up cost.
  return noise, labels


def noise_term(weight: float = 1.0) -> _losses.Term:
  """`weight · CE(θ; N, c)` on the whole noise set held in the context."""

  def term(out: _losses.Outputs):
    logits = out.problem.apply_fn(out.params, out.context[NOISE], True)
    ce = jnp.mean(base.per_example_loss(logits, out.context[NOISE_LABELS], False))
    return weight * ce, {'noise_ce': ce}

  return term


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  del sizes, batch_size
  boundary_shrink.check_single_label(problem, 'unsir')

  def optimizer(lr):
    return base.make_optimizer(hp.optimizer, lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                               grad_clip=hp.grad_clip or None)

  impair = base.Phase(loss=_losses.combine(problem, _losses.ce_term('retain'), noise_term(hp.noise_weight)),
                      streams=('retain',), epochs=hp.impair_epochs, name='impair', tx=optimizer(hp.impair_lr))
  repair = dataclasses.replace(erm.supervised_phase(problem, 'retain', hp.repair_epochs), name='repair',
                               tx=optimizer(hp.repair_lr))

  def prepare(params, data, rng, env):
    noise, labels = learn_noise(problem, hp, params, data, rng, env)
    return params, {NOISE: noise, NOISE_LABELS: labels}

  return base.Algorithm(name='unsir', phases=(impair, repair), tx=impair.tx, prepare=prepare,
                        hparams=hp.to_dict())


algorithms.register('unsir', default_config, build, doc=__doc__, check=check_forget_set)
