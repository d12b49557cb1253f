"""CF-k (catastrophic forgetting-k): fine-tune only the last k blocks on the retain set.

Goel et al., "Towards Adversarial Evaluations for Inexact Machine Unlearning", arXiv 2201.06640, 2022.
Update: θ_last-k ← θ_last-k − η·opt(∇ CE(θ; retain batch)); every other block gets a zero update after the
optimizer (`_masking.train_last_k`), so it stays bit-identical whatever the weight decay or momentum.
Blocks are the model's top-level parameter groups in forward order (`models.blocks`: stem, blocks, head).

Defaults, against the authors' code (shash42/Evaluating-Inexact-Unlearning): fine-tuning reuses their full
training recipe (SGD momentum 0.9, warm-restart cosine from 0.1 to 0.005, weight decay 5e-5, clipping at 10,
30–62 epochs) and counts k in conv/linear layers from the output. Where we differ: k counts blocks (as
SCRUB's copy of CF-k does with ResNet stages), and the budget is finetune's: 3 epochs at 0.01, wd 5e-4.
"""
from __future__ import annotations

import dataclasses

import ml_collections

from medunlearn_jax import algorithms
from medunlearn_jax.algorithms import _losses
from medunlearn_jax.algorithms import _masking
from medunlearn_jax.algorithms import base
from medunlearn_jax.algorithms import erm


def default_config() -> ml_collections.ConfigDict:
  return _losses.hparams(
      {'k': [1, 2, 3], 'lr': [0.001, 0.003, 0.01, 0.03, 0.1], 'epochs': [1.0, 2.0, 3.0, 5.0]},
      lr=0.01, epochs=3.0,  # Passes over the retain set (as finetune).
      k=2)  # Trained blocks, counted from the head (small CNN: last conv stage + head).


def build_last_k(name: str, problem: base.Problem, hp: ml_collections.ConfigDict, sizes, batch_size,
                 **kwargs) -> base.Algorithm:
  """Cross-entropy on the retain set, with only the last `hp.k` blocks trained (shared with EU-k)."""
  phase = erm.supervised_phase(problem, 'retain', hp.epochs)
  algorithm = _losses.build(name, [phase], hp, sizes, batch_size, **kwargs)
  return dataclasses.replace(algorithm, tx=_masking.train_last_k(algorithm.tx, hp.k))


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  return build_last_k('cf_k', problem, hp, sizes, batch_size)


algorithms.register('cf_k', default_config, build, doc=__doc__)
