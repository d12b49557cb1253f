"""The prepared GPU check runs end to end in its CPU mode (toy sizes), so it works when a GPU is at hand."""
import json
import os
import pathlib
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_check_cpu_dry_run(tmp_path, shared_data):
  env = dict(os.environ, OUT=str(tmp_path / 'out'), MEDUNLEARN_DATA_DIR=str(shared_data), JAX_PLATFORMS='cpu',
             XLA_FLAGS='')
  proc = subprocess.run(['bash', 'benchmarks/gpu_check.sh', '--cpu'], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  report = json.loads((tmp_path / 'out' / 'gpu_check.json').read_text())
  job = report['main_job']
  assert job['rc'] == 0 and set(job['models']) == {'original', 'retrain', 'finetune'}
  assert job['config']['model'] == 'small_cnn' and job['config']['kernels'] in ('xla', 'native')
  for dtype, modes in (('float32', {'train', 'eval', 'twopass'}), ('bfloat16', {'train'})):
    cases = [r for r in report['throughput'][f'{dtype}_28']['lines'] if 'mode' in r]
    assert {r['mode'] for r in cases} == modes
    assert all(r['images_per_s'] > 0 and r['kernels'] == 'xla=xla' and r['mfu'] > 0 for r in cases)
  assert report['population']['rc'] == 0 and report['population']['lines'][0]['k'] == 2
  table = (tmp_path / 'out' / 'gpu_check.md').read_text()
  assert '## Main job: small_cnn' in table and '| 28 | twopass | float32 |' in table
