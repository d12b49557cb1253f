"""RUM: refine the forget set by memorization, then unlearn its subsets in turn, each with its own algorithm.

Zhao, Kurmanji, Bărbulescu, Triantafillou & Triantafillou, "What makes unlearning hard and what to do about
it", NeurIPS 2024. How hard an example is to unlearn depends on how strongly the model memorised it. RUM
(Refined-Unlearning Meta-algorithm) cuts the forget set F into low-, mid- and high-memorization subsets
F_1, F_2, F_3 of equal size and unlearns them in that order, each with an algorithm and hyper-parameters of
its own; step k starts from step k−1's model and treats D ∖ (F_1 ∪ … ∪ F_k) as its retain set, so subsets
not yet processed are still retained (as the authors' `--sequential` runs). E.g. with NegGrad+ on each:
θ ← θ − η_k ∇ [α_k·CE(θ; D ∖ F_{≤k}) − (1 − α_k)·CE(θ; F_k)].

Memorization proxy ('confidence'): the original model's softmax confidence in the true label; high
confidence means low memorization. The authors rank by precomputed memorization scores or by cheap proxies;
their learning-event proxy averages this confidence over the original's training epochs, ours reads the
trained original only (no record of its training is needed). The subsets are the forget set sorted by the
proxy and cut into three (sizes differ by at most one; ties broken by id). The authors draw N examples per
level from a larger pool (the mid level nearest the median); here the forget set is given and every example
of it lands in exactly one subset.

Defaults: the authors' proxy pipeline (kairanzhao/RUM, main_rum_proxy): NegGrad+ on every subset with α
0.99 / 0.97 / 0.97 and lr 0.01 / 0.01 / 0.001, SGD with momentum 0.9, a fresh optimizer per subset. Where we
differ: 1 / 1 / 2 epochs instead of 5 / 5 / 10 (the same ×0.2 as this project's NegGrad+, 2 epochs instead
of 10) and no weight decay (this project's NegGrad+ default). Each level takes any registered algorithm
without set-up or hooks of its own (finetune, neggrad, neggrad_plus, random_label, l1_sparse, ...), or
'none' to leave that subset alone (the authors' main_rum leaves the low subset alone and runs fine-tuning on
mid and SalUn on high). Single-label tasks only.
"""
from __future__ import annotations

from typing import Mapping

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medunlearn_jax import algorithms
from medunlearn_jax import errors
from medunlearn_jax.algorithms import base

LEVELS = ('low', 'mid', 'high')  # Memorization levels, in the order they are unlearned.
NONE = 'none'


def forget_set(level: str) -> str:
  return f'rum_{level}_forget'


def retain_set(level: str) -> str:
  return f'rum_{level}_retain'


def default_config() -> ml_collections.ConfigDict:
  # See the module docstring for where each default comes from.
  def level(alpha, lr, epochs):
    return {'algorithm': 'neggrad_plus', 'alpha': alpha, 'lr': lr, 'epochs': epochs}

  return ml_collections.ConfigDict({
      'proxy': 'confidence',
      'low': level(0.99, 0.01, 1.0), 'mid': level(0.97, 0.01, 1.0), 'high': level(0.97, 0.001, 2.0),
      'search_space': {},
  })


def level_config(hp: ml_collections.ConfigDict, level: str) -> tuple[str, ml_collections.ConfigDict | None]:
  """(algorithm name, its hyper-parameters: its defaults updated with the level's fields) of one level."""
  fields = hp[level].to_dict()
  name = fields.pop('algorithm')
  if name == NONE:
    return name, None
  if name == 'rum':
    raise errors.ConfigError('rum cannot run rum on a subset')
  sub = algorithms.get(name).default_config()
  unknown = sorted(set(fields) - set(sub))
  if unknown:
    raise errors.ConfigError(f'rum.{level}: {name} has no hyper-parameters {unknown}')
  sub.update(fields)
  return name, sub


def level_sizes(n_forget: int) -> list[int]:
  """Sizes of the low, mid and high subsets of a forget set of `n_forget` examples."""
  return [len(part) for part in np.array_split(np.arange(n_forget), len(LEVELS))]


def _renamed(loss: base.LossFn, names: Mapping[str, str]) -> base.LossFn:
  """The loss reading its 'forget'/'retain' batches from the level's own sets."""

  def renamed(params, batches, context, rng):
    return loss(params, {generic: batches[own] for generic, own in names.items() if own in batches},
                context, rng)

  return renamed


def make_derive_sets(problem: base.Problem):
  """`derive_sets`: the level subsets of the forget set and the retain set of each step."""

  def derive_sets(params, data, env):
    forget, train = data['forget'], data['train']

    def true_confidence(p, batch):
      probs = jax.nn.softmax(base.forward(problem, p, batch, train=False))
      return jnp.take_along_axis(probs, batch['label'][:, None].astype(jnp.int32), axis=1)[:, 0]

    confidence = env.per_example(true_confidence, params, forget)
    # Most confident (least memorised) first; ties by id, so the cut never depends on row order.
    order = np.lexsort((forget.ids, -confidence))
    parts = np.array_split(order, len(LEVELS))
    out, processed = {}, np.zeros(0, forget.ids.dtype)
    for k, level in enumerate(LEVELS):
      out[forget_set(level)] = forget.take(np.sort(parts[k]), forget_set(level))
      processed = np.concatenate([processed, forget.ids[parts[k]]])
      # D ∖ (F_1 ∪ … ∪ F_k): the retain set plus the levels still to come.
      out[retain_set(level)] = train.take(np.flatnonzero(~np.isin(train.ids, processed)), retain_set(level))
      logging.info('rum: %s-memorization subset of %d examples, confidence %.4f–%.4f', level, len(parts[k]),
                   float(confidence[parts[k]].min()) if len(parts[k]) else float('nan'),
                   float(confidence[parts[k]].max()) if len(parts[k]) else float('nan'))
    return out

  return derive_sets


def build(problem, hp, sizes, batch_size) -> base.Algorithm:
  if problem.multilabel:
    raise errors.ConfigError('rum ranks forget examples by the confidence in their label: single-label only')
  if hp.proxy != 'confidence':
    raise errors.ConfigError(f"rum.proxy must be 'confidence', got {hp.proxy!r}")
  counts = level_sizes(sizes['forget'])
  phases = []
  for k, level in enumerate(LEVELS):
    name, sub_hp = level_config(hp, level)
    if sub_hp is None:
      continue
    level_data = dict(sizes, forget=counts[k], retain=sizes['retain'] + sum(counts[k + 1:]))
    sub = algorithms.get(name).build(problem, sub_hp, level_data, batch_size)
    if (sub.prepare is not base.no_prepare or sub.finish or sub.select or sub.derive_sets
        or sub.from_scratch):
      raise errors.ConfigError(f'rum.{level}: {name} has set-up or hooks of its own; choose an algorithm '
                               'without them (finetune, neggrad, neggrad_plus, random_label, l1_sparse, ...)')
    names = {'forget': forget_set(level), 'retain': retain_set(level)}
    for i, (phase, tx) in enumerate(zip(sub.phases, sub.optimizers())):
      phases.append(base.Phase(
          loss=_renamed(phase.loss, names), streams=tuple(names.get(s, s) for s in phase.streams),
          epochs=phase.epochs, steps=phase.steps, name=f'{level}/{phase.name}',
          tx=tx if i == 0 else phase.tx))  # Each level starts with a fresh optimizer of its own.
  if not phases:
    raise errors.ConfigError("rum: every level is 'none'")
  return base.Algorithm(name='rum', phases=tuple(phases), tx=phases[0].tx, hparams=hp.to_dict(),
                        derive_sets=make_derive_sets(problem))


def check(hp: ml_collections.ConfigDict, forget: ml_collections.ConfigDict) -> None:
  """Unknown level algorithms or fields fail before any work."""
  del forget
  for level in LEVELS:
    level_config(hp, level)


algorithms.register('rum', default_config, build, doc=__doc__, check=check)
