r"""Cost of a K-point hyper-parameter sweep: one vmapped program vs K sequential runs, side by side.

  .venv/bin/python benchmarks/sweep.py [--ks=1,4,16] [--algorithm=finetune] [--model=small_cnn]
      [--examples=1024] [--batch=128] [--epochs=1]

For each K, the same K learning-rate settings of one algorithm are trained (a) as one `sweeps.run_population`
program and (b) as K `engine.run` calls, on the same synthetic 28x28x1 data. Prints wall seconds (with and
without compilation) and the speed-up of (a) over (b). Figures are printed, never asserted.
"""
from __future__ import annotations

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from medunlearn_jax import algorithms
from medunlearn_jax import engine
from medunlearn_jax import models
from medunlearn_jax import sweeps
from medunlearn_jax.algorithms import base
from medunlearn_jax.data import dataset as ds_lib

FLAGS = flags.FLAGS
flags.DEFINE_list('ks', ['1', '4', '16'], 'Sweep sizes.')
flags.DEFINE_string('algorithm', 'finetune', 'Algorithm to sweep (streams retain/forget/train).')
flags.DEFINE_string('model', 'small_cnn', 'Model name.')
flags.DEFINE_integer('examples', 1024, 'Synthetic training examples.')
flags.DEFINE_integer('batch', 128, 'Global batch size.')
flags.DEFINE_float('epochs', 1.0, 'Epochs of the swept algorithm.')
flags.DEFINE_list('vectorize', ['all', '1'], 'Population modes: all = jax.vmap, n = lax.map batch size n.')


def synthetic(n: int, seed: int, name: str) -> ds_lib.Split:
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  images = np.clip(rng.normal(80 + 100 * labels[:, None, None, None], 30, (n, 28, 28, 1)), 0, 255)
  return ds_lib.Split(name, np.arange(n) + seed * n, images.astype(np.uint8), labels.astype(np.int64))


def main(argv):
  del argv
  mesh = engine.make_mesh()
  model = models.make_model(FLAGS.model, 2)
  problem = base.Problem(apply_fn=lambda p, x, train: model.apply({'params': p}, x, train=train),
                         init_fn=lambda rng: model.init(rng, jnp.zeros((1, 28, 28, 1)))['params'], num_classes=2)
  train = synthetic(FLAGS.examples, 0, 'train')
  n_forget = FLAGS.examples // 10
  data = {'train': train, 'retain': train.take(np.arange(n_forget, len(train)), 'retain'),
          'forget': train.take(np.arange(n_forget), 'forget')}
  hp = algorithms.get(FLAGS.algorithm).default_config()
  hp.epochs = FLAGS.epochs
  algorithm = algorithms.get(FLAGS.algorithm).build(problem, hp, {k: len(v) for k, v in data.items()}, FLAGS.batch)
  params = problem.init_fn(jax.random.key(0))
  options = engine.RunOptions(seed=0, batch_size=FLAGS.batch, log_every_steps=10**9, checkpoint_every_steps=10**9)
  print(f'# {jax.device_count()} {jax.devices()[0].platform} device(s); {FLAGS.algorithm} on {FLAGS.model}, '
        f'{FLAGS.examples} examples, batch {FLAGS.batch}, {FLAGS.epochs} epoch(s)')
  for k in map(int, FLAGS.ks):
    scales = np.geomspace(0.1, 3.0, k) if k > 1 else np.ones(1)
    start, context = algorithm.prepare(params, data, jax.random.key(1), engine.Env(mesh, FLAGS.batch))
    population = {}
    for mode in FLAGS.vectorize:
      t0 = time.perf_counter()
      stacked, cost = sweeps.run_population(algorithm, data, start, context, mesh=mesh, options=options,
                                            seeds=[0] * k, lr_scales=scales,
                                            vectorize=None if mode == 'all' else int(mode))
      jax.block_until_ready(stacked)
      population[mode] = (time.perf_counter() - t0, cost.seconds)
    seq_total, seq_loop = 0.0, 0.0
    for scale in scales:
      scaled = dataclasses_replace_lr(algorithm, scale)
      t0 = time.perf_counter()
      out, seq_cost = engine.run(scaled, data, start, context, mesh=mesh, options=options)
      jax.block_until_ready(out)
      seq_total += time.perf_counter() - t0
      seq_loop += seq_cost.seconds
    row = {'k': k, 'sequential_s': round(seq_total, 2), 'sequential_loop_s': round(seq_loop, 2)}
    for mode, (total, loop) in population.items():
      row.update({f'population[{mode}]_s': round(total, 2), f'population[{mode}]_loop_s': round(loop, 2),
                  f'speedup[{mode}]_total': round(seq_total / total, 2),
                  f'speedup[{mode}]_loop': round(seq_loop / max(loop, 1e-9), 2)})
    print(json.dumps(row), flush=True)


def dataclasses_replace_lr(algorithm: base.Algorithm, scale: float) -> base.Algorithm:
  """The same algorithm with its updates scaled (the sequential counterpart of a population's lr scale)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(algorithm, tx=optax.chain(optax.with_extra_args_support(algorithm.tx),
                                                       optax.scale(float(scale))))


if __name__ == '__main__':
  app.run(main)
