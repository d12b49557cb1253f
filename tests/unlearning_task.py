"""A tiny unlearning task shared by the algorithm tests: a memorised, mislabelled-by-pattern forget set.

The retain set is `conftest.synthetic_split` (brightness gives the class). Every forget image is dark
(brightness says class 0) but carries a checkerboard, and is labelled 1: the original model, trained on
retain ∪ forget, learns "checkerboard → 1", which a model retrained on the retain set alone would not.
Forgetting therefore shows as forget accuracy falling (to the brightness rule) with retain accuracy kept.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from medunlearn_jax import algorithms
from medunlearn_jax import engine
from medunlearn_jax import models
from medunlearn_jax.algorithms import amnesiac
from medunlearn_jax.algorithms import base
from medunlearn_jax.data import dataset as ds_lib
from conftest import synthetic_split

BATCH = 16
ORIGINAL_EPOCHS = 1.0  # Learns the forget pattern without saturating (ascent needs non-vanishing gradients).


def make_problem(classes: int = 2) -> base.Problem:
  return base.flax_problem(lambda n: models.make_model('small_cnn', n, widths=(8, 16), groups=4), classes,
                           (8, 8, 1))


def _concat(name: str, *splits: ds_lib.Split) -> ds_lib.Split:
  return ds_lib.Split(name, np.concatenate([s.ids for s in splits]), np.concatenate([s.images for s in splits]),
                      np.concatenate([s.labels for s in splits]))


@functools.lru_cache(maxsize=None)
def data() -> dict[str, ds_lib.Split]:
  retain = synthetic_split(192, seed=1, name='retain')
  dark = synthetic_split(80, seed=2, id_offset=1000)
  dark = dark.take(np.flatnonzero(dark.labels == 0)[:32])
  checker = ((np.add.outer(np.arange(8), np.arange(8)) % 2) * 2 - 1)[:, :, None]  # Zero-mean: same brightness.
  images = np.clip(dark.images + 70.0 * checker, 0, 255).astype(np.uint8)
  forget = ds_lib.Split('forget', dark.ids, images, np.ones(len(dark), np.int64))
  return {'train': _concat('train', retain, forget), 'retain': retain, 'forget': forget,
          'val': synthetic_split(32, seed=3, id_offset=2000, name='val'),
          'test': synthetic_split(32, seed=4, id_offset=3000, name='test')}


def sizes() -> dict[str, int]:
  return {k: len(v) for k, v in data().items()}


@functools.lru_cache(maxsize=None)
def problem() -> base.Problem:
  return make_problem()


def mesh1() -> jax.sharding.Mesh:
  return engine.make_mesh(jax.devices()[:1])


def original_training() -> base.Algorithm:
  """How the original model is trained: ERM on train."""
  hp = algorithms.get('erm').default_config()
  hp.update(lr=0.05, epochs=ORIGINAL_EPOCHS, stream='train')
  return algorithms.get('erm').build(problem(), hp, sizes(), BATCH)


ORIGINAL_OPTIONS = engine.RunOptions(seed=0, batch_size=BATCH, log_every_steps=10_000)


@functools.lru_cache(maxsize=None)
def original():
  """The original model (ERM on train), as host arrays so that any mesh can take it."""
  params, _ = engine.run(original_training(), data(), problem().init_fn(jax.random.key(0)), {}, mesh=mesh1(),
                         options=ORIGINAL_OPTIONS)
  return jax.tree.map(np.asarray, params)


def record(mesh: jax.sharding.Mesh):
  """Amnesiac's record of the original's training on `mesh` (the pipeline's `training_record`)."""
  return amnesiac.record_training(original_training(), data(), problem().init_fn(jax.random.key(0)),
                                  data()['forget'].ids, mesh=mesh, options=ORIGINAL_OPTIONS)


def unlearn(name: str, mesh: jax.sharding.Mesh | None = None, seed: int = 0, **overrides):
  """Runs a registered algorithm from the original model; returns (params, context, cost)."""
  mesh = mesh or mesh1()
  hp = algorithms.get(name).default_config()
  hp.update(overrides)
  algorithm = algorithms.get(name).build(problem(), hp, sizes(), BATCH)
  env = engine.Env(mesh, BATCH, seed, record=record(mesh) if algorithms.get(name).needs_record else None)
  start, context = algorithm.prepare(original(), data(), jax.random.key(seed + 1), env)
  params, cost = engine.run(algorithm, data(), start, context, mesh=mesh,
                            options=engine.RunOptions(seed=seed, batch_size=BATCH, log_every_steps=10_000))
  return params, context, cost


def full_batch(split: ds_lib.Split) -> dict[str, np.ndarray]:
  return {'image': split.images, 'label': split.labels, 'mask': np.ones(len(split), np.float32)}


@functools.lru_cache(maxsize=None)
def _evaluate():
  return jax.jit(lambda params, batch: base.cross_entropy(problem(), params, batch))


def loss_and_accuracy(params, split_name: str) -> tuple[float, float]:
  loss, acc = _evaluate()(params, full_batch(data()[split_name]))
  return float(loss), float(acc)
