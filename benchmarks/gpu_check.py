r"""The prepared GPU check: what this codebase does on one accelerator, in one command of 8-10 minutes.

  bash benchmarks/gpu_check.sh            # on a GPU machine (make gpu-check); results under $OUT
  bash benchmarks/gpu_check.sh --cpu      # the same steps at toy sizes, small CNN, on a CPU (a test runs it)

Four parts, each a subprocess with its own time limit (a part that fails is recorded, the others still run):

1. main_job: the default main job end to end (`experiments.run`, default config) with ResNet-18 at 28 px:
   original, forget set, retrain, finetune, evaluation; its results table and the layers it ran with
   (PneumoniaMNIST; `--cpu`: a fifth of an epoch of BreastMNIST).
2. throughput: `benchmarks/step_throughput.py` — train / eval / two-batch images/s of ResNet-18 ('xla', i.e.
   stock Flax layers) at 64 px (batch 128) and 224 px (batch 64) in float32 and bfloat16, side by side with
   PyTorch on the same device (`torch_resnet_step.py --device cuda --dtype ...`; both with the CIFAR stem),
   and model-FLOP utilisation (XLA's FLOP count of the step lowered for CPU, over the measured matmul rate).
3. population: `benchmarks/sweep.py` — a K=16 vmapped population vs 16 sequential runs.
4. environment: devices, versions.

Writes `gpu_check.json` (everything) and `gpu_check.md` (the tables) to `--out`. Figures are printed, never
asserted; `--cpu` exists so that the check is exercised before a GPU is at hand.
"""
from __future__ import annotations

import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

ROOT = pathlib.Path(__file__).resolve().parents[1]

flags.DEFINE_string('out', os.environ.get('OUT', str(ROOT / 'runs' / 'gpu_check')), 'Output folder.')
flags.DEFINE_bool('cpu', False, 'Toy sizes on a CPU: checks the check, measures nothing of interest.')
flags.DEFINE_string('data_dir', '', "Raw data root (default: $MEDUNLEARN_DATA_DIR, ../shared/data or .gpu/data).")
flags.DEFINE_string('torch_script', '', 'torch_resnet_step.py (default: ../shared/bench or .gpu/bench).')
flags.DEFINE_string('torch_python', '', "A Python with torch (default: this one if it imports torch).")
flags.DEFINE_list('parts', ['environment', 'main_job', 'throughput', 'population'], 'Parts to run.')
FLAGS = flags.FLAGS

# Time limits (seconds) per part on a GPU, together 9.6 minutes at most. Measured on one H200 (2026-12-04,
# jax 0.11.2): main job 48 s; at 64 px about 70 s per dtype with PyTorch; at 224 px with the CIFAR stem each
# JAX program compiles in ~24 s; population 31 s.
_LIMITS = {'main_job': 90, 'throughput_64': 75, 'throughput_224': 140, 'population': 50}


def _first_existing(*paths: str | pathlib.Path) -> str:
  for p in paths:
    if p and pathlib.Path(p).exists():
      return str(p)
  return ''


def _run(name: str, cmd: list[str], limit: float, env: dict | None = None) -> dict:
  """Runs one part; returns its return code, seconds, stdout JSON lines and the tail of its log."""
  t0 = time.perf_counter()
  print(f'[{time.strftime("%H:%M:%S")}] {name}: {" ".join(cmd[1:])[:200]}', flush=True)
  try:
    proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=limit)
    rc, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
  except subprocess.TimeoutExpired as e:
    rc = 'timeout'
    stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or '')
    stderr = e.stderr.decode() if isinstance(e.stderr, bytes) else (e.stderr or '')
  lines = []
  for line in stdout.splitlines():
    if line.startswith('{'):
      try:
        lines.append(json.loads(line))
      except json.JSONDecodeError:
        pass
  seconds = round(time.perf_counter() - t0, 1)
  for line in lines:  # Also in the log, so that figures survive a check killed before it writes its files.
    print('  ' + json.dumps(line), flush=True)
  print(f'[{time.strftime("%H:%M:%S")}] {name}: rc={rc} in {seconds}s, {len(lines)} result line(s)', flush=True)
  if rc != 0:
    print('\n'.join((stderr or stdout).splitlines()[-15:]), flush=True)
  return {'rc': rc, 'seconds': seconds, 'lines': lines, 'log_tail': (stderr or '')[-3000:] if rc != 0 else ''}


def environment() -> dict:
  code = ('import json, jax, flax, optax; d = jax.devices()[0]; print(json.dumps({"jax": jax.__version__, '
          '"flax": flax.__version__, "optax": optax.__version__, "backend": jax.default_backend(), '
          '"devices": jax.device_count(), "device_kind": d.device_kind}))')
  out = _run('environment', [sys.executable, '-c', code], 120)
  info = dict(out['lines'][0]) if out['lines'] else {'error': out['log_tail']}
  info.update(python=platform.python_version(), host_cpus=os.cpu_count(), date=time.strftime('%Y-%m-%d %H:%M %Z'))
  if shutil.which('nvidia-smi'):
    smi = subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total,driver_version', '--format=csv,noheader'],
                         capture_output=True, text=True)
    info['nvidia_smi'] = smi.stdout.strip()
  torch_python = FLAGS.torch_python or sys.executable
  probe = subprocess.run([torch_python, '-c', 'import torch; print(torch.__version__)'], capture_output=True,
                         text=True)
  info['torch'] = probe.stdout.strip() if probe.returncode == 0 else None
  return info


def main_job(work: pathlib.Path, data_dir: str) -> dict:
  workdir = work / 'main_job'
  cmd = [sys.executable, '-m', 'experiments.run', '--config=experiments/configs/default.py',
         f'--workdir={workdir}', f'--config.model.name={_model()}']
  if FLAGS.cpu:  # BreastMNIST (780 images) for a few steps: the same code path in seconds.
    cmd += ['--config.dataset.name=breastmnist', '--config.train.epochs=0.2', '--config.algo.finetune.epochs=0.2',
            '--config.report=False']
  env = {'MEDUNLEARN_DATA_DIR': data_dir, 'TFDS_DATA_DIR': str(work / 'tfds')}
  out = _run('main_job', cmd, 300 if FLAGS.cpu else _LIMITS['main_job'], env)
  results_path = workdir / 'results.json'
  if results_path.exists():
    results = json.loads(results_path.read_text())
    out['config'] = results.get('config')
    out['models'] = {name: {'retain_acc': m['retain']['accuracy'], 'forget_acc': m['forget']['accuracy'],
                            'test_acc': m['test']['accuracy'], 'test_auc': m['test'].get('roc_auc'),
                            'seconds': m['cost']['seconds'], 'compile_seconds': m['cost']['compile_seconds'],
                            'cost_over_retrain': (m['cost'].get('relative_to_retrain') or {}).get('seconds')}
                     for name, m in results['models'].items()}
  return out


# (size, batch): the PyTorch reference has the CIFAR stem at every size, so at 224 px both frameworks run
# 224x224 feature maps in the first stage (the ImageNet stem that runs use from 128 px would be 16x cheaper);
# batch 64 keeps that within memory beside the other framework's process.
_CASES = ((64, 128), (224, 64))


def throughput(torch_python: str, torch_script: str, save) -> dict:
  out = {}
  for dtype in ('float32', 'bfloat16'):
    for size, batch in ((28, 8),) if FLAGS.cpu else _CASES:
      # On a CPU (a dry run of the check) bfloat16 runs the train step only, to keep the test suite short.
      modes = 'train' if FLAGS.cpu and dtype == 'bfloat16' else 'train,eval,twopass'
      cmd = [sys.executable, 'benchmarks/step_throughput.py', '--kernels=xla', f'--dtype={dtype}', '--stem=cifar',
             f'--model={_model()}',
             f'--modes={modes}', '--repeats=1', '--loader=false', '--eval_compiles=false',
             f'--sizes={size}', f'--batch={batch}']
      cmd += ['--steps=1', '--warmup=0'] if FLAGS.cpu else ['--steps=10', '--warmup=3']
      if torch_python and torch_script:
        cmd += [f'--torch_python={torch_python}', f'--torch_script={torch_script}']
      limit = 200 if FLAGS.cpu else _LIMITS[f'throughput_{size}']
      out[f'{dtype}_{size}'] = _run(f'throughput_{dtype}_{size}px', cmd, limit)
      save(out)
  return out


def population() -> dict:
  cmd = [sys.executable, 'benchmarks/sweep.py', '--vectorize=all', '--model=small_cnn', '--epochs=1']
  cmd += ['--ks=2', '--examples=128'] if FLAGS.cpu else ['--ks=16', '--examples=2048']
  return _run('population', cmd, 200 if FLAGS.cpu else _LIMITS['population'])


def _model() -> str:
  """ResNet-18 on a GPU; the small CNN in the CPU dry run (the same code paths, compiled in seconds)."""
  return 'small_cnn' if FLAGS.cpu else 'resnet18'


def _fmt(value, digits=1, scale=1.0) -> str:
  return '—' if value is None else f'{value * scale:.{digits}f}'


def markdown(report: dict) -> str:
  env = report.get('environment', {})
  lines = [f"# GPU check ({'CPU dry run' if FLAGS.cpu else 'GPU'}), {env.get('date')}", '',
           f"Device: {env.get('nvidia_smi') or env.get('device_kind')} ({env.get('backend')}, "
           f"{env.get('devices')} device(s)); jax {env.get('jax')}, flax {env.get('flax')}, torch "
           f"{env.get('torch')}; {env.get('host_cpus')} host CPUs; total {report.get('seconds')} s.", '']
  job = report.get('main_job')
  if job:
    config = job.get('config') or {}
    lines += [f"## Main job: {config.get('model')}, {config.get('dataset')} {config.get('image_size')} px "
              f"({config.get('kernels')} layers, {config.get('dtype')}, {config.get('platform')}), rc={job['rc']}, "
              f"{job['seconds']} s wall", '',
              '| model | retain acc | forget acc | test acc | test AUC | seconds | compile s | time / retrain |',
              '|---|---|---|---|---|---|---|---|']
    for name, m in (job.get('models') or {}).items():
      lines.append(f"| {name} | {_fmt(m['retain_acc'], 3)} | {_fmt(m['forget_acc'], 3)} | {_fmt(m['test_acc'], 3)} "
                   f"| {_fmt(m['test_auc'], 3)} | {_fmt(m['seconds'])} | {_fmt(m['compile_seconds'])} "
                   f"| {_fmt(m['cost_over_retrain'], 2)} |")
    lines.append('')
  runs = report.get('throughput') or {}
  if runs:
    lines += [f'## {_model()} step throughput, JAX (stock Flax layers) vs PyTorch on the same device', '',
              'Same architecture in both (CIFAR stem: 3x3 stride-1 convolution at every size, GroupNorm), '
              'SGD + momentum, median of 10 steps after 3 warm-up steps; MFU from XLA\'s FLOP count of the step.',
              '',
              '| size | mode | dtype | batch | JAX img/s | PyTorch img/s | JAX / PyTorch | JAX compile s '
              '| MFU (measured matmul) | MFU (datasheet) | rc |', '|---|---|---|---|---|---|---|---|---|---|---|']
    for case, run in runs.items():
      dtype = case.split('_')[0]
      for r in run.get('lines', []):
        if 'mode' not in r:
          continue
        lines.append(f"| {r['size']} | {r['mode']} | {dtype} | {r['batch']} | {_fmt(r['images_per_s'])} "
                     f"| {_fmt(r.get('torch_images_per_s'))} | {_fmt(r.get('jax_over_torch'), 2)} "
                     f"| {_fmt(r.get('compile_s'))} | {_fmt(r.get('mfu'), 3)} (of {r.get('peak_tflops')} TFLOP/s) "
                     f"| {_fmt(r.get('mfu_datasheet'), 3)} | {run['rc']} |")
      if not run.get('lines'):
        lines.append(f'| {case} | — | {dtype} | — | failed: rc={run["rc"]} | | | | | | |')
    lines.append('')
  pop = report.get('population')
  if pop:
    lines += ['## Population: K models as one vmapped program vs K sequential runs (small CNN, finetune)', '',
              '| K | sequential s | vmapped s | speed-up (with compile) | speed-up (loop only) | rc |',
              '|---|---|---|---|---|---|']
    for r in pop.get('lines', []):
      if 'k' in r:
        lines.append(f"| {r['k']} | {r['sequential_s']} | {r['population[all]_s']} | {r['speedup[all]_total']} "
                     f"| {r['speedup[all]_loop']} | {pop['rc']} |")
    lines.append('')
  return '\n'.join(lines)


def main(argv):
  del argv
  t0 = time.perf_counter()
  out = pathlib.Path(FLAGS.out).absolute()
  out.mkdir(parents=True, exist_ok=True)
  work = pathlib.Path(os.environ.get('GPU_CHECK_WORK', out / 'work'))
  data_dir = FLAGS.data_dir or _first_existing(os.environ.get('MEDUNLEARN_DATA_DIR', ''),
                                               ROOT.parent / 'shared' / 'data', ROOT / '.gpu' / 'data')
  torch_script = FLAGS.torch_script or _first_existing(ROOT.parent / 'shared' / 'bench' / 'torch_resnet_step.py',
                                                       ROOT / '.gpu' / 'bench' / 'torch_resnet_step.py')
  report: dict = {'mode': 'cpu' if FLAGS.cpu else 'gpu'}
  if 'environment' in FLAGS.parts:
    report['environment'] = environment()
  torch_python = FLAGS.torch_python or (sys.executable if report.get('environment', {}).get('torch') else '')

  def save(throughput_so_far=None):
    if throughput_so_far is not None:
      report['throughput'] = throughput_so_far
    report['seconds'] = round(time.perf_counter() - t0, 1)
    (out / 'gpu_check.json').write_text(json.dumps(report, indent=1, default=str))
    (out / 'gpu_check.md').write_text(markdown(report))

  if 'main_job' in FLAGS.parts:
    report['main_job'] = main_job(work, data_dir) if data_dir else {'rc': 'no data dir', 'seconds': 0}
    save()
  if 'throughput' in FLAGS.parts:
    report['throughput'] = throughput(torch_python, torch_script, save)
    save()
  if 'population' in FLAGS.parts:
    report['population'] = population()
  save()
  print((out / 'gpu_check.md').read_text(), flush=True)
  failed = [k for k, v in report.items() if isinstance(v, dict) and v.get('rc') not in (None, 0)]
  failed += [f'throughput_{k}' for k, v in (report.get('throughput') or {}).items() if v.get('rc') != 0]
  if failed:
    print(f'parts that failed: {failed}', flush=True)
    sys.exit(1)


if __name__ == '__main__':
  app.run(main)
