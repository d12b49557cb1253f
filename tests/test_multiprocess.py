"""Two processes on localhost (JAX CPU collectives over gloo) give the same results as one process."""
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np

from medunlearn_jax.evaluation import results as results_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ['--config=experiments/configs/default.py', '--config.dataset.name=breastmnist', '--config.train.epochs=2',
        '--config.algorithms=finetune,neggrad_plus', '--config.algo.finetune.epochs=1',
        '--config.algo.neggrad_plus.epochs=1', '--config.batch_size=32', '--config.eval_batch_size=128',
        '--config.report=False']


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def test_two_processes_match_one(tmp_path, shared_data):
  env = dict(os.environ, MEDUNLEARN_DATA_DIR=str(shared_data), TFDS_DATA_DIR=str(tmp_path / 'tfds'),
             JAX_PLATFORMS='cpu', XLA_FLAGS='')
  cmd = [sys.executable, '-m', 'experiments.run', *ARGS]
  single = subprocess.run(cmd + [f'--workdir={tmp_path / "one"}', '--cpu_devices=4'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
  assert single.returncode == 0, single.stderr[-3000:]
  port = free_port()
  procs = [subprocess.Popen(cmd + [f'--workdir={tmp_path / "two"}', '--cpu_devices=2',
                                   f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2',
                                   f'--process_id={i}'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  one = json.loads((tmp_path / 'one' / 'results.json').read_text())
  two = json.loads((tmp_path / 'two' / 'results.json').read_text())
  for model in ('original', 'retrain', 'finetune', 'neggrad_plus'):
    a = results_lib.load_outputs(results_lib.model_path(tmp_path / 'one', model))
    b = results_lib.load_outputs(results_lib.model_path(tmp_path / 'two', model))
    for split in ('forget', 'test'):
      np.testing.assert_allclose(b[split]['logits'], a[split]['logits'], rtol=1e-4, atol=1e-4)
    assert two['models'][model]['cost']['steps'] == one['models'][model]['cost']['steps']
  assert json.loads((tmp_path / 'two' / 'forget_manifest.json').read_text())['sha256'] == json.loads(
      (tmp_path / 'one' / 'forget_manifest.json').read_text())['sha256']
