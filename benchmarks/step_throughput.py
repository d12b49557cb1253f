r"""Throughput of the step engine: train step, eval pass and two-batch unlearning step, images/s.

  .venv/bin/python benchmarks/step_throughput.py [--sizes=28,64] [--batch=128] [--model=resnet18]
      [--modes=train,eval,twopass] [--steps=3] [--repeats=3] [--dtype=float32|bfloat16]
      [--kernels=auto,xla] [--xla=tuned|default]
      [--torch_python=/path/to/python-with-torch] [--loader] [--eval_compiles]

For each case and each model layer choice of `--kernels` ('auto' as a run resolves it here, 'xla' = stock
Flax layers, 'native' = the CPU kernels; see `models.layers`) it prints the compile seconds, the median step
time, images/s, XLA's temp/argument memory for the program and the process's peak RSS, XLA's FLOP count (of the stock-layer program) and the model-FLOP
utilisation: `mfu` against the rate this device reaches on a large matrix product in the compute dtype
(measured here, every platform: no table of CPUs can know a VM's clocks and limits), or `--peak_tflops`; on
GPUs also `mfu_datasheet` against the H100/H200 SXM datasheet's dense peak (bf16 989 TFLOP/s; float32 counted
as TF32, 495 TFLOP/s, since XLA's default precision runs float32 convolutions and dots on TF32 tensor cores).
With `--torch_python`, it alternates runs with the PyTorch reference
(`../shared/bench/torch_resnet_step.py`: same architecture, shapes and thread count) and prints the
JAX/PyTorch ratio as the median of paired runs. `--loader` prints the input pipeline's throughput
(`engine.plan_batches` + `engine.to_device`, images/s) next to the step's; `--eval_compiles` counts the XLA
compilations of evaluation passes over several splits and models (target: one per batch shape).
Figures are printed, never asserted: speed targets live here, not in tests. See benchmarks/PERF_NOTES.md.
"""
from __future__ import annotations

import functools
import json
import math
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
from medunlearn_jax import xla
from medunlearn_jax.algorithms import base
from medunlearn_jax.data import dataset as ds_lib

FLAGS = flags.FLAGS
flags.DEFINE_list('sizes', ['28', '64'], 'Image sizes (px); 28 is grey, others RGB.')
flags.DEFINE_list('modes', ['train', 'eval', 'twopass'], 'train | eval | twopass.')
flags.DEFINE_integer('batch', 128, 'Global batch size.')
flags.DEFINE_string('model', 'resnet18', 'Model name.')
flags.DEFINE_string('dtype', 'float32', 'Compute dtype (parameters stay float32).')
flags.DEFINE_list('kernels', ['auto', 'xla'], "Model layers to measure: auto | xla | native (models.layers).")
flags.DEFINE_enum('stem', 'auto', ['auto', 'cifar', 'model'], "ResNet stem: 'cifar' (3x3 stride 1 at every size, "
                  "the PyTorch reference's architecture), 'model' (ImageNet stem from 128 px, as runs use it); "
                  "'auto': cifar when comparing with PyTorch, else model.")
flags.DEFINE_enum('xla', 'tuned', ['tuned', 'default'], 'tuned: medunlearn_jax.xla options; default: none.')
flags.DEFINE_integer('classes', 2, 'Number of classes.')
flags.DEFINE_integer('steps', 3, 'Timed steps per run (median reported).')
flags.DEFINE_integer('warmup', 1, 'Untimed steps after compilation.')
flags.DEFINE_integer('repeats', 1, 'Paired JAX/PyTorch runs per case (medians reported).')
flags.DEFINE_bool('loader', True, 'Also measure the input pipeline (plan_batches + to_device).')
flags.DEFINE_bool('eval_compiles', True, 'Count compilations of eval passes over several splits/models.')
flags.DEFINE_float('peak_tflops', 0.0, 'Peak TFLOP/s for MFU (0: a default for the platform and dtype).')
flags.DEFINE_string('torch_python', '', 'A Python with torch installed, to run the PyTorch reference.')
flags.DEFINE_string('torch_script', str(pathlib.Path(__file__).resolve().parents[2] / 'shared' / 'bench' /
                                        'torch_resnet_step.py'), 'The PyTorch reference script.')

# Dense datasheet peaks of the H100/H200 SXM (the same chip), reported beside the measured reference.
_DATASHEET_TFLOPS = {('gpu', 'float32'): 495.0, ('gpu', 'bfloat16'): 989.0}


@functools.cache
def matmul_tflops(dtype: str, n: int = 0, repeats: int = 5) -> float:
  """Best TFLOP/s of an n x n matrix product in `dtype` on the default device (n: 2048 on CPU, 8192 else)."""
  n = n or (2048 if jax.default_backend() == 'cpu' else 8192)
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  best = math.inf
  for _ in range(repeats):
    t0 = time.perf_counter()
    f(a).block_until_ready()
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best / 1e12


def channels_for(size: int) -> int:
  """The issue's cases: 28x28x1 (grey MedMNIST) and 64x64x3 / 224x224x3 (colour)."""
  return 1 if size == 28 else 3


def stem() -> str:
  return FLAGS.stem if FLAGS.stem != 'auto' else ('cifar' if FLAGS.torch_python else 'model')


def resolved(kernels: str) -> str:
  return models.resolve_kernels(FLAGS.model, kernels, dtype=FLAGS.dtype)


def make_problem(size: int, ch: int, kernels: str) -> base.Problem:
  kernels = resolved(kernels)
  extra = {'imagenet_stem': False} if FLAGS.model == 'resnet18' and stem() == 'cifar' else {}
  model = models.make_model(FLAGS.model, FLAGS.classes, dtype=FLAGS.dtype, kernels=kernels, **extra)
  return base.Problem(apply_fn=lambda p, x, train: model.apply({'params': p}, x, train=train),
                      init_fn=lambda rng: model.init(rng, jnp.zeros((1, size, size, ch)))['params'],
                      num_classes=FLAGS.classes, stock_layers=models.stock_layers)


def _compile(lowered, kind: str):
  return xla.compile(lowered, kind, FLAGS.dtype) if FLAGS.xla == 'tuned' else lowered.compile()


def make_case(mode: str, size: int, mesh, kernels: str):
  """Returns (compiled step, args, images per call, compile seconds, stateful, FLOPs) for one case."""
  ch = channels_for(size)
  problem = make_problem(size, ch, kernels)
  params = jax.jit(problem.init_fn, out_shardings=engine.replicated(mesh))(jax.random.key(0))
  rng = np.random.default_rng(0)

  def host_batch():
    return {'image': rng.integers(0, 256, (FLAGS.batch, size, size, ch), dtype=np.uint8),
            'label': rng.integers(0, FLAGS.classes, FLAGS.batch), 'mask': np.ones(FLAGS.batch, np.float32),
            'id': np.arange(FLAGS.batch)}

  if mode == 'eval':
    predict = engine.make_predict(problem, mesh)  # Carries xla.compiler_options('eval').
    batch = engine.to_device(host_batch(), mesh)
    t0 = time.perf_counter()
    lowered = predict.lower(params, batch)
    compiled = lowered.compile() if FLAGS.xla == 'default' else _compile(lowered, 'eval')
    compile_s = time.perf_counter() - t0
    flops = engine.program_flops(lowered, predict.__wrapped__, (params, batch), problem.stock_layers)
    return compiled, (params, batch), FLAGS.batch, compile_s, False, flops

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
  lowered = jax.jit(step, donate_argnums=0).lower(state, batch, key)
  compiled = _compile(lowered, 'train')
  compile_s = time.perf_counter() - t0
  flops = engine.program_flops(lowered, step, (state, batch, key), problem.stock_layers)
  return compiled, [state, batch, key], FLAGS.batch * len(streams), compile_s, True, flops


def _memory_mib(compiled) -> dict:
  try:
    m = compiled.memory_analysis()
    return {'xla_temp_mib': round(m.temp_size_in_bytes / 2**20, 1),
            'xla_args_mib': round(m.argument_size_in_bytes / 2**20, 1)}
  except Exception:  # pylint: disable=broad-except
    return {}


def time_jax(mode: str, size: int, mesh, kernels: str) -> dict:
  compiled, args, images, compile_s, stateful, flops = make_case(mode, size, mesh, kernels)
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
  platform = jax.devices()[0].platform
  peak = FLAGS.peak_tflops or matmul_tflops(FLAGS.dtype)
  datasheet = _DATASHEET_TFLOPS.get((platform, FLAGS.dtype))
  out = {'framework': 'jax', 'kernels': f'{kernels}={resolved(kernels)}', 'stem': stem(), 'batch': FLAGS.batch,
         'mode': mode, 'size': size,
         'compile_s': round(compile_s, 2),
         'median_step_s': round(med, 4), 'images_per_s': round(images / med, 1),
         'gflop_per_step': round(flops / 1e9, 1),
         'mfu': round(flops / med / (peak * 1e12), 3) if peak and flops else None, 'peak_tflops': round(peak, 2),
         'peak_rss_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
  if datasheet and flops:
    out['mfu_datasheet'] = round(flops / med / (datasheet * 1e12), 3)
  out.update(_memory_mib(compiled))
  return out


def loader_throughput(size: int, mesh, streams: int = 2, steps: int = 20) -> float:
  """Images/s of the engine's input pipeline alone: batch plan, gather from host memory, device transfer."""
  ch = channels_for(size)
  n = FLAGS.batch * 8
  rng = np.random.default_rng(0)
  split = lambda name: ds_lib.Split(name, np.arange(n), rng.integers(0, 256, (n, size, size, ch), np.uint8),
                                    rng.integers(0, FLAGS.classes, n))
  names = ('retain', 'forget')[:streams]
  algorithm = base.Algorithm('loader', (base.Phase(loss=None, streams=names, steps=steps),), tx=None)
  data = {s: split(s) for s in names}
  t0, images = time.perf_counter(), 0
  for _, _, host, _ in engine.plan_batches(algorithm, data, [steps], FLAGS.batch, [0]):
    batch = {k: engine.to_device(v, mesh) for k, v in host.items()}
    jax.block_until_ready(batch)
    images += FLAGS.batch * len(host)
  return images / (time.perf_counter() - t0)


def eval_compile_count(size: int, mesh) -> dict:
  """XLA compilations for evaluating two models over three splits of different lengths."""
  ch = channels_for(size)
  problem = make_problem(size, ch, FLAGS.kernels[0])
  count = [0]

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      count[0] += 1

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    predict = engine.make_predict(problem, mesh)
    rng = np.random.default_rng(0)
    params = [jax.jit(problem.init_fn)(jax.random.key(i)) for i in range(2)]
    jax.block_until_ready(params)
    before = count[0]
    for n in (FLAGS.batch + 5, 3 * FLAGS.batch, 37):
      split = ds_lib.Split(f's{n}', np.arange(n), rng.integers(0, 256, (n, size, size, ch), np.uint8),
                           rng.integers(0, FLAGS.classes, n))
      for p in params:
        engine.predict_split(predict, p, split, batch_size=FLAGS.batch, mesh=mesh)
    return {'eval_compiles': count[0] - before, 'eval_passes': 6}
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)


def time_torch(mode: str, size: int) -> dict | None:
  if not FLAGS.torch_python:
    return None
  device = 'cuda' if jax.default_backend() == 'gpu' else 'cpu'
  cmd = [FLAGS.torch_python, FLAGS.torch_script, '--mode', mode, '--size', str(size), '--channels',
         str(channels_for(size)), '--batch', str(FLAGS.batch), '--classes', str(FLAGS.classes), '--steps',
         str(FLAGS.steps), '--warmup', str(FLAGS.warmup), '--threads', str(os.cpu_count()), '--device', device,
         '--dtype', FLAGS.dtype]
  out = subprocess.run(cmd, capture_output=True, text=True)
  if out.returncode != 0:  # E.g. out of memory: recorded, and the JAX figures still count.
    return {'error': (out.stderr.strip().splitlines() or ['?'])[-1][:300]}
  return json.loads(out.stdout.strip().splitlines()[-1])


def measure(mode: str, size: int, mesh) -> list[dict]:
  """One summary per `--kernels` value: medians over `--repeats` runs, each paired with the PyTorch run of
  the same repeat (the frameworks alternate so that machine drift hits both alike)."""
  runs = {k: [] for k in FLAGS.kernels}
  torch_ips, torch_error = [], None
  for _ in range(FLAGS.repeats):
    for kernels in FLAGS.kernels:
      runs[kernels].append(time_jax(mode, size, mesh, kernels))
    torch_run = time_torch(mode, size)
    if torch_run and 'error' in torch_run:
      torch_error = torch_run['error']
    elif torch_run:
      torch_ips.append(torch_run['images_per_s'])
  out = []
  for kernels, jax_runs in runs.items():
    ips = [r['images_per_s'] for r in jax_runs]
    summary = dict(jax_runs[-1], images_per_s=statistics.median(ips), runs=ips)
    if torch_ips:
      summary['torch_images_per_s'] = statistics.median(torch_ips)
      summary['torch_runs'] = torch_ips
      summary['jax_over_torch'] = round(statistics.median(a / b for a, b in zip(ips, torch_ips)), 3)
      summary['paired_runs'] = len(torch_ips)
    if torch_error:
      summary['torch_error'] = torch_error
    out.append(summary)
  return out


def main(argv):
  del argv
  mesh = engine.make_mesh()
  print(f'# {jax.device_count()} {jax.devices()[0].platform} device(s) ({jax.devices()[0].device_kind}), '
        f'jax {jax.__version__}, model {FLAGS.model}, kernels {[f"{k}={resolved(k)}" for k in FLAGS.kernels]}, '
        f'batch {FLAGS.batch}, dtype {FLAGS.dtype}, '
        f'xla {FLAGS.xla} {xla.compiler_options("train", FLAGS.dtype) if FLAGS.xla == "tuned" else {}}, '
        f'{os.cpu_count()} CPU threads', flush=True)
  for size in map(int, FLAGS.sizes):
    extra = {}
    if FLAGS.loader:
      extra['loader_images_per_s'] = round(loader_throughput(size, mesh), 1)
    if FLAGS.eval_compiles and 'eval' in FLAGS.modes:
      extra.update(eval_compile_count(size, mesh))
    if extra:
      print(json.dumps(dict(size=size, **extra)), flush=True)
    for mode in FLAGS.modes:
      for summary in measure(mode, size, mesh):
        if 'loader_images_per_s' in extra:
          summary['loader_over_step'] = round(extra['loader_images_per_s'] / summary['images_per_s'], 1)
        print(json.dumps(summary), flush=True)


if __name__ == '__main__':
  # Accept the spelling `--torch-python=PATH` (absl flags use underscores).
  sys.argv = [a.replace('--torch-python', '--torch_python', 1) if a.startswith('--torch-python') else a
              for a in sys.argv]
  app.run(main)
