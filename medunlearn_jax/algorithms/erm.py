"""Empirical risk minimisation: how the original and the retrained (gold-standard) models are trained.

Retraining from scratch on the retain set is the exact-unlearning reference every approximate algorithm is
compared against (e.g. Bourtoule et al., "Machine Unlearning", IEEE S&P 2021). Update: SGD on the masked
mean cross-entropy of the driver stream ('train' for the original model, 'retain' for the retrained one).
"""
from __future__ import annotations

import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import base


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'optimizer': 'sgd', 'lr': 0.05, 'momentum': 0.9, 'weight_decay': 5e-4, 'schedule': 'cosine',
      'warmup_epochs': 0.0, 'epochs': 10.0, 'grad_clip': 0.0, 'stream': 'train',
  })


def supervised_phase(problem: base.Problem, stream: str, epochs: float) -> base.Phase:
  """A phase of plain cross-entropy descent on one stream (shared by ERM and fine-tuning)."""

  def loss(params, batches, context, rng):
    del context, rng
    value, acc = base.cross_entropy(problem, params, batches[stream])
    return value, {f'{stream}_loss': value, f'{stream}_acc': acc}

  return base.Phase(loss=loss, streams=(stream,), epochs=epochs, name=stream)


def sgd_for(hp: ml_collections.ConfigDict, total_steps: int, spe: int):
  """The optimizer of a supervised phase from the common hyper-parameters (lr, schedule, ...)."""
  lr = base.schedule(hp.lr, total_steps, hp.schedule, int(round(hp.get('warmup_epochs', 0.0) * spe)))
  return base.make_optimizer(hp.optimizer, lr, momentum=hp.momentum, weight_decay=hp.weight_decay,
                             grad_clip=hp.get('grad_clip') or None)


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  spe = algorithms.steps_per_epoch(sizes[hp.stream], batch_size)
  total = int(round(hp.epochs * spe))
  return base.Algorithm(name='erm', phases=(supervised_phase(problem, hp.stream, hp.epochs),),
                        tx=sgd_for(hp, total, spe), from_scratch=True, hparams=hp.to_dict())


algorithms.register('erm', default_config, build, doc=__doc__)
