"""Fine-tuning (FT): continue training the original model on the retain set only.

Catastrophic forgetting of the forget set is the hoped-for effect (Warnecke et al., "Machine Unlearning of
Features and Labels", NDSS 2023; Golatkar et al., CVPR 2020 use it as a baseline).
Update: θ ← θ − η ∇ CE(θ; retain batch), starting from the original parameters.

Defaults: SGD, momentum 0.9, weight decay 5e-4, lr 0.01 at a constant rate, as in the reference code of
Jia et al. and SalUn (their MultiStepLR milestones, epochs 91 and 136, never fire in an unlearning run).
Where we differ: 3 epochs instead of 10, to keep fine-tuning at a fraction of a retrain's cost.
"""
from __future__ import annotations

import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import erm


def default_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      'optimizer': 'sgd', 'lr': 0.01, 'momentum': 0.9, 'weight_decay': 5e-4, 'schedule': 'constant',
      'warmup_epochs': 0.0, 'epochs': 3.0, 'grad_clip': 0.0,
      'search_space': {'lr': [0.001, 0.003, 0.01, 0.03, 0.1], 'epochs': [1, 2, 3, 5]},
  })


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  spe = algorithms.steps_per_epoch(sizes['retain'], batch_size)
  total = int(round(hp.epochs * spe))
  return base.Algorithm(name='finetune', phases=(erm.supervised_phase(problem, 'retain', hp.epochs),),
                        tx=erm.sgd_for(hp, total, spe), hparams=hp.to_dict())


algorithms.register('finetune', default_config, build, doc=__doc__)
