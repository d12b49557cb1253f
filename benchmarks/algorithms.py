r"""Step throughput of every registered algorithm next to plain training (ERM), through `engine.run`.

  .venv/bin/python benchmarks/algorithms.py [--algorithms=neggrad_plus,scrub] [--model=resnet18]
      [--size=28] [--batch=128] [--steps=10]

Each algorithm is built from its default hyper-parameters on random data (28 px grey by default), its
`prepare` is run (timed as prepare_s: saliency masks, Fisher importances, random teachers...), and every
phase of its data plan is cut to `--steps` steps, so the figures are the engine's real step: loss,
gradient, Optax transformation, host batches and prefetching included. One JSON line per algorithm:
compile seconds (all its programs), steps/s and images/s (real rows of every stream a step reads), and
both as a ratio to ERM's. Figures are printed, never asserted.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np

from medunlearn_jax import algorithms
from medunlearn_jax import engine
from medunlearn_jax import models
from medunlearn_jax import pipeline
from medunlearn_jax.data import dataset as ds_lib

FLAGS = flags.FLAGS
flags.DEFINE_list('algorithms', [], 'Algorithms to time (default: every registered one).')
flags.DEFINE_string('model', 'small_cnn', 'small_cnn | resnet18.')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype.')
flags.DEFINE_enum('kernels', 'auto', ['auto', 'xla', 'native'], 'Model layers (models.layers), as config.model.kernels.')
flags.DEFINE_integer('size', 28, 'Image size (px); 28 px is grey, larger sizes are colour.')
flags.DEFINE_integer('batch', 128, 'Global batch size.')
flags.DEFINE_integer('classes', 2, 'Number of classes.')
flags.DEFINE_integer('steps', 10, 'Steps run per phase (after its compilation).')
flags.DEFINE_integer('retain', 1024, 'Rows of the random retain set (the forget set has a quarter).')


def random_splits(size: int, channels: int) -> dict[str, ds_lib.Split]:
  rng = np.random.default_rng(0)
  rows = {'retain': FLAGS.retain, 'forget': max(FLAGS.retain // 4, 1), 'val': FLAGS.batch, 'test': FLAGS.batch}
  out, offset = {}, 0
  for name, n in rows.items():
    out[name] = ds_lib.Split(name, np.arange(offset, offset + n), rng.integers(0, 256, (n, size, size, channels),
                                                                              dtype=np.uint8),
                             rng.integers(0, FLAGS.classes, n))
    offset += n
  retain, forget = out['retain'], out['forget']
  out['train'] = ds_lib.Split('train', np.concatenate([retain.ids, forget.ids]),
                              np.concatenate([retain.images, forget.images]),
                              np.concatenate([retain.labels, forget.labels]))
  return out


def shortened(algorithm):
  """The algorithm with every phase cut to `--steps` steps (its loss, streams and optimizer unchanged)."""
  return dataclasses.replace(algorithm, phases=tuple(dataclasses.replace(p, steps=FLAGS.steps)
                                                     for p in algorithm.phases))


def time_algorithm(name, algorithm, splits, mesh, params) -> dict:
  env = engine.Env(mesh, FLAGS.batch, seed=0)
  t0 = time.perf_counter()
  start, context = algorithm.prepare(params, splits, jax.random.key(1), env)
  jax.block_until_ready((start, context))
  prepare_s = time.perf_counter() - t0
  algorithm = shortened(algorithm)
  options = engine.RunOptions(seed=0, batch_size=FLAGS.batch, log_every_steps=10**9,
                              checkpoint_every_steps=10**9)
  _, cost = engine.run(algorithm, splits, start, context, mesh=mesh, options=options)
  return {'algorithm': name, 'phases': len(algorithm.phases),
          'streams': sorted({s for p in algorithm.phases for s in p.streams}),
          'compile_s': round(cost.compile_seconds, 2), 'prepare_s': round(prepare_s, 3), 'steps': cost.steps,
          'steps_per_s': round(cost.steps / max(cost.seconds, 1e-9), 2),
          'images_per_s': round(cost.examples / max(cost.seconds, 1e-9), 1)}


def main(argv):
  del argv
  mesh = engine.make_mesh()
  channels = 1 if FLAGS.size == 28 else 3
  info = ds_lib.DatasetInfo('random', FLAGS.classes, (FLAGS.size, FLAGS.size, channels), 'binary')
  config = ml_collections.ConfigDict({'model': {'name': FLAGS.model, 'dtype': FLAGS.dtype, 'kwargs': {}}})
  kernels = models.resolve_kernels(FLAGS.model, FLAGS.kernels, dtype=FLAGS.dtype)
  problem = pipeline.make_problem(config, info, kernels)
  params = jax.jit(problem.init_fn, out_shardings=engine.replicated(mesh))(jax.random.key(0))
  splits = random_splits(FLAGS.size, channels)
  sizes = {k: len(v) for k, v in splits.items()}
  print(f'# {jax.device_count()} {jax.devices()[0].platform} device(s), jax {jax.__version__}, model '
        f'{FLAGS.model} ({kernels} layers), {FLAGS.size} px, batch {FLAGS.batch}, {FLAGS.steps} steps/phase, '
        f'{os.cpu_count()} CPU threads', flush=True)

  erm_hp = algorithms.get('erm').default_config()
  erm_hp.stream = 'train'
  baseline = time_algorithm('erm', algorithms.get('erm').build(problem, erm_hp, sizes, FLAGS.batch), splits,
                            mesh, params)
  print(json.dumps(baseline), flush=True)
  for name in FLAGS.algorithms or algorithms.names():
    entry = algorithms.get(name)
    row = time_algorithm(name, entry.build(problem, entry.default_config(), sizes, FLAGS.batch), splits, mesh,
                         params)
    row['steps_per_s_vs_erm'] = round(row['steps_per_s'] / max(baseline['steps_per_s'], 1e-9), 3)
    row['images_per_s_vs_erm'] = round(row['images_per_s'] / max(baseline['images_per_s'], 1e-9), 3)
    print(json.dumps(row), flush=True)


if __name__ == '__main__':
  app.run(main)
