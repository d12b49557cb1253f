r"""Throughput of the step engine: train step, eval pass and two-batch unlearning step, images/s.

  .venv/bin/python benchmarks/step_throughput.py [--sizes=28,64] [--batch=128] [--model=resnet18]
      [--modes=train,eval,twopass] [--steps=3] [--torch-python=/path/to/python-with-torch]

For each case it prints the compile seconds, the median step time, images/s and peak host memory. With
`--torch-python`, it alternates runs with the PyTorch reference (`../shared/bench/torch_resnet_step.py`:
same architecture, shapes and thread count) and prints the JAX/PyTorch ratio as the median of paired runs.
Figures are printed, never asserted: speed targets live here, not in tests.
"""
from __future__ import annotations

import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from medunlearn_jax import engine
from medunlearn_jax import models
from medunlearn_jax.algorithms import base

FLAGS = flags.FLAGS
flags.DEFINE_list('sizes', ['28', '64'], 'Image sizes (px).')
flags.DEFINE_list('modes', ['train', 'eval', 'twopass'], 'train | eval | twopass.')
flags.DEFINE_integer('batch', 128, 'Global batch size.')
flags.DEFINE_string('model', 'resnet18', 'Model name.')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype.')
flags.DEFINE_integer('classes', 2, 'Number of classes.')
flags.DEFINE_integer('steps', 3, 'Timed steps per run (median reported).')
flags.DEFINE_integer('warmup', 1, 'Untimed steps after compilation.')
flags.DEFINE_integer('repeats', 1, 'Paired JAX/PyTorch runs per case (medians reported).')
flags.DEFINE_string('torch_python', '', 'A Python with torch installed, to run the PyTorch reference.')
flags.DEFINE_string('torch_script', str(pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'bench' /
                                        'torch_resnet_step.py'), 'The PyTorch reference script.')


def channels_for(size: int) -> int:
  """The issue's cases: 28x28x1 (grey MedMNIST) and 64x64x3 (colour)."""
  return 1 if size == 28 else 3


def make_case(mode: str, size: int, mesh):
  """Returns (compiled step, args, images per call) for one benchmark case."""
  ch = channels_for(size)
  model = models.make_model(FLAGS.model, FLAGS.classes, dtype=FLAGS.dtype)
  problem = base.Problem(apply_fn=lambda p, x, train: model.apply({'params': p}, x, train=train),
                         init_fn=lambda rng: model.init(rng, jnp.zeros((1, size, size, ch)))['params'],
                         num_classes=FLAGS.classes)
  params = jax.jit(problem.init_fn, out_shardings=engine.replicated(mesh))(jax.random.key(0))
  rng = np.random.default_rng(0)

  def host_batch():
    return {'image': rng.integers(0, 256, (FLAGS.batch, size, size, ch), dtype=np.uint8),
            'label': rng.integers(0, FLAGS.classes, FLAGS.batch), 'mask': np.ones(FLAGS.batch, np.float32),
            'id': np.arange(FLAGS.batch)}

  if mode == 'eval':
    predict = engine.make_predict(problem, mesh)
    batch = engine.to_device(host_batch(), mesh)
    t0 = time.perf_counter()
    compiled = predict.lower(params, batch).compile()
    return compiled, (params, batch), FLAGS.batch, time.perf_counter() - t0, False

  def loss(p, batches, context, key):
    del context, key
    retain, _ = base.cross_entropy(problem, p, batches['retain'])
    if mode == 'train':
      return retain, {}
    forget, _ = base.cross_entropy(problem, p, batches['forget'])
    return 0.95 * retain - 0.05 * forget, {}  # NegGrad+ shape, as in the PyTorch reference.

  streams = ('retain',) if mode == 'train' else ('retain', 'forget')
  tx = base.make_optimizer('sgd', 0.01, momentum=0.9)
  state = engine.create_state(tx, params, {}, mesh)
  batch = {s: engine.to_device(host_batch(), mesh) for s in streams}
  key = jax.device_put(jax.random.key(0), engine.replicated(mesh))
  step = engine.make_step(base.Phase(loss=loss, streams=streams), tx)
  t0 = time.perf_counter()
  compiled = jax.jit(step, donate_argnums=0).lower(state, batch, key).compile()
  return compiled, [state, batch, key], FLAGS.batch * len(streams), time.perf_counter() - t0, True


def time_jax(mode: str, size: int, mesh) -> dict:
  compiled, args, images, compile_s, stateful = make_case(mode, size, mesh)
  times = []
  for i in range(FLAGS.warmup + FLAGS.steps):
    t0 = time.perf_counter()
    out = compiled(*args)
    jax.block_until_ready(out)
    if stateful:
      args[0] = out[0]
    if i >= FLAGS.warmup:
      times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  return {'framework': 'jax', 'mode': mode, 'size': size, 'compile_s': round(compile_s, 2),
          'median_step_s': round(med, 4), 'images_per_s': round(images / med, 1),
          'peak_rss_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def time_torch(mode: str, size: int) -> dict | None:
  if not FLAGS.torch_python:
    return None
  cmd = [FLAGS.torch_python, FLAGS.torch_script, '--mode', mode, '--size', str(size), '--channels',
         str(channels_for(size)), '--batch', str(FLAGS.batch), '--classes', str(FLAGS.classes), '--steps',
         str(FLAGS.steps), '--warmup', str(FLAGS.warmup), '--threads', str(os.cpu_count())]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv):
  del argv
  mesh = engine.make_mesh()
  print(f'# {jax.device_count()} {jax.devices()[0].platform} device(s), jax {jax.__version__}, '
        f'model {FLAGS.model}, batch {FLAGS.batch}, dtype {FLAGS.dtype}, {os.cpu_count()} CPU threads')
  for size in map(int, FLAGS.sizes):
    for mode in FLAGS.modes:
      runs, ratios = [], []
      for _ in range(FLAGS.repeats):  # Alternate the two frameworks so machine drift hits both alike.
        jax_run = time_jax(mode, size, mesh)
        torch_run = time_torch(mode, size)
        runs.append(jax_run)
        if torch_run:
          ratios.append(jax_run['images_per_s'] / torch_run['images_per_s'])
          jax_run['torch_images_per_s'] = torch_run['images_per_s']
      summary = dict(runs[-1], images_per_s=statistics.median(r['images_per_s'] for r in runs))
      if ratios:
        summary['jax_over_torch'] = round(statistics.median(ratios), 3)
      print(json.dumps(summary), flush=True)


if __name__ == '__main__':
  app.run(main)
