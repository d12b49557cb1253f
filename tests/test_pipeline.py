"""The whole pipeline on a synthetic MedMNIST file: results, manifest, resume, refusal of bad input."""
import json
import logging as std_logging
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from experiments.configs import default as default_config
from medunlearn_jax import errors
from medunlearn_jax import pipeline
from medunlearn_jax.data import forget as forget_lib
from medunlearn_jax.evaluation import results as results_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def small_config(**overrides):
  config = default_config.get_config()
  config.train.epochs = 2.0
  config.algo.finetune.epochs = 1.0
  config.batch_size = 32
  config.eval_batch_size = 64
  config.log_every_steps = 5
  config.checkpoint_every_steps = 4
  # The attacks' and bootstraps' repetitions are tested on their own (test_eval_*); pipelines need one.
  config.evaluation.attack_seeds = 1
  config.evaluation.n_boot = 200
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def test_pipeline_writes_results_manifest_and_outputs(tmp_path, synthetic_medmnist, caplog):
  workdir = tmp_path / 'run'
  with caplog.at_level(std_logging.INFO):
    results = pipeline.run_experiment(small_config(), workdir)
  assert set(results['models']) == {'original', 'retrain', 'finetune'}
  # The whole run's progress after each stage, with an ETA planned from the steps each stage takes.
  progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith('run: ')]
  assert len(progress) == 3 and 'about' in progress[0] and 'left for retrain, finetune (ETA ' in progress[0]
  assert progress[-1].startswith('run: 3 of 3 stages done (finetune last)')
  # The plan's steps are the steps the stages took (ETA's basis).
  assert '; the evaluation next' in progress[-1]
  for model in results['models'].values():
    for split in ('retain', 'forget', 'val', 'test'):
      assert 0.0 <= model[split]['accuracy'] <= 1.0
      assert 'roc_auc' in model[split]
    cost_fields = {'seconds', 'compile_seconds', 'steps', 'examples', 'relative_to_retrain'}
    assert cost_fields <= set(model['cost'])
  retrain_cost = results['models']['retrain']['cost']
  assert results['models']['retrain']['cost']['relative_to_retrain']['steps'] == 1.0
  # Retrain sees 216 retain examples per epoch (240 train - 24 forget), 2 epochs of ceil(216/32)=7 steps.
  assert retrain_cost['steps'] == 14 and retrain_cost['examples'] == 2 * 216
  assert results['models']['original']['cost']['examples'] == 2 * 240
  assert results['models']['original']['test']['accuracy'] > 0.8  # The synthetic task is easy.
  exp = pipeline.setup(small_config(), workdir)  # The run's plan, made again: the steps each stage took.
  assert pipeline.planned_steps(exp) == {k: v['cost']['steps'] for k, v in results['models'].items()}
  pipeline.release_workdir(workdir)

  manifest = json.loads((workdir / 'forget_manifest.json').read_text())
  assert manifest['count'] == 24 == len(manifest['ids'])
  assert manifest['sha256'] == forget_lib.ids_sha256(np.asarray(manifest['ids']))
  assert manifest['selector'] == 'random_fraction' and manifest['params'] == {'fraction': 0.1}
  saved = json.loads((workdir / 'results.json').read_text())
  assert saved['models']['finetune']['test']['accuracy'] == results['models']['finetune']['test']['accuracy']
  assert (workdir / 'results.md').read_text().startswith('| model |')
  assert json.loads((workdir / 'config.json').read_text())['dataset']['name'] == 'pneumoniamnist'
  # The layers that computed every number: 'auto' resolves to stock Flax layers on this 8-device mesh.
  assert json.loads((workdir / 'config.json').read_text())['model']['kernels'] == 'auto'
  assert saved['config']['kernels'] == 'xla' and saved['config']['devices'] == 8
  # The original held against the published figure of its dataset (MedMNIST v2's ResNet-18 at 28 px).
  assert saved['anchor'] == {'test_accuracy': 0.854, 'source': 'MedMNIST v2, ResNet-18 at 28 px'}
  assert ("Sanity anchor: the original's test accuracy " f"{100 * saved['models']['original']['test']['accuracy']:.2f}"
          " % (small_cnn, 2 epochs) against 85.4 % published (MedMNIST v2, ResNet-18 at 28 px)."
          ) in (workdir / 'results.md').read_text()
  outputs = results_lib.load_outputs(workdir / 'outputs' / 'original.npz')
  assert outputs['forget']['logits'].shape == (24, 2)
  np.testing.assert_array_equal(np.sort(outputs['forget']['ids']), manifest['ids'])
  assert not set(outputs['retain']['ids']) & set(manifest['ids'])


def test_crashed_run_resumes_to_the_same_result(tmp_path, synthetic_medmnist, monkeypatch):
  config = small_config()
  reference = pipeline.run_experiment(config, tmp_path / 'ref')

  real_run_stage = pipeline.run_stage

  def crashing_run_stage(exp, stage, *args, **kwargs):
    def crash(step):
      if stage == 'retrain' and step == 10:
        raise KeyboardInterrupt('simulated kill')
    return real_run_stage(exp, stage, *args, on_step=crash, **kwargs)

  monkeypatch.setattr(pipeline, 'run_stage', crashing_run_stage)
  with pytest.raises(KeyboardInterrupt):
    pipeline.run_experiment(config, tmp_path / 'crash')
  assert not (tmp_path / 'crash' / 'results.json').exists()
  monkeypatch.setattr(pipeline, 'run_stage', real_run_stage)
  resumed = pipeline.run_experiment(config, tmp_path / 'crash')
  for model in ('original', 'retrain', 'finetune'):
    ref = results_lib.load_outputs(tmp_path / 'ref' / 'outputs' / f'{model}.npz')
    got = results_lib.load_outputs(tmp_path / 'crash' / 'outputs' / f'{model}.npz')
    np.testing.assert_allclose(got['test']['logits'], ref['test']['logits'], rtol=1e-5, atol=1e-6)
  assert resumed['models']['retrain']['cost']['steps'] == reference['models']['retrain']['cost']['steps']


def test_finished_stages_load_without_rerunning_prepare(tmp_path, synthetic_medmnist, monkeypatch):
  # With the stages whose parameters come from elsewhere than the last step: SCRUB+R's rewind (saved once
  # chosen) and Amnesiac's (its record replayed from the original's training).
  config = small_config(algorithms='finetune,ssd,scrub_r,amnesiac')
  records, real_record = [], pipeline.training_record
  monkeypatch.setattr(pipeline, 'training_record',
                      lambda exp, original: records.append((real_record(exp, original), original)) or records[-1][0])
  first = pipeline.run_experiment(config, tmp_path)
  (record, original), = records
  assert 0 < record.hits <= record.steps
  for a, b in zip(jax.tree.leaves(record.params), jax.tree.leaves(original)):  # The replay is the original.
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  def no_prepare(*args, **kwargs):
    raise AssertionError('prepare ran for a finished stage')

  monkeypatch.setattr(pipeline, 'prepare_algorithm', no_prepare)
  second = pipeline.run_experiment(config, tmp_path)
  for model in ('finetune', 'ssd', 'scrub_r', 'amnesiac'):
    assert second['models'][model]['test'] == first['models'][model]['test']
    assert second['models'][model]['cost'] == first['models'][model]['cost']
  assert first['evaluation']['not_in_results'] == {}
  # Algorithms dropped from a later run: their files are kept, and reported in results.json and results.md.
  third = pipeline.run_experiment(small_config(algorithms='finetune'), tmp_path)
  assert set(third['models']) == {'original', 'retrain', 'finetune'}
  assert third['evaluation']['not_in_results'] == {
      'amnesiac': ['outputs/amnesiac.npz', 'checkpoints/amnesiac', 'checkpoints/amnesiac_record'],
      'scrub_r': ['outputs/scrub_r.npz', 'checkpoints/scrub_r'], 'ssd': ['outputs/ssd.npz', 'checkpoints/ssd']}
  assert 'Not in these results, but kept in the workdir from an earlier run: amnesiac (' in (
      tmp_path / 'results.md').read_text()
  assert results_lib.evaluate_workdir(tmp_path, write=False)['evaluation']['not_in_results'] == (
      third['evaluation']['not_in_results'])


def test_one_prediction_program_per_run(tmp_path, synthetic_medmnist, monkeypatch):
  # The per-epoch record, the difficulty-selected forget set and the evaluation share one jitted predict.
  made = []
  real = pipeline.engine.make_predict
  monkeypatch.setattr(pipeline.engine, 'make_predict', lambda *a, **k: made.append(1) or real(*a, **k))
  pipeline.run_experiment(small_config(**{'forget.selector': 'difficulty', 'forget.arm': 'hardest'}), tmp_path)
  assert len(made) == 1


def test_other_config_in_same_workdir_is_refused_without_overwriting(tmp_path, synthetic_medmnist):
  workdir = tmp_path / 'run'
  pipeline.run_experiment(small_config(), workdir)
  before = {p: p.stat().st_mtime_ns for p in workdir.rglob('*') if p.is_file()}
  with pytest.raises(errors.ConfigError, match='different config'):
    pipeline.run_experiment(small_config(seed=1), workdir)
  with pytest.raises(errors.ConfigError, match='different hyper-parameters'):
    pipeline.run_experiment(small_config(**{'algo.finetune.lr': 0.5}), workdir)
  after = {p: p.stat().st_mtime_ns for p in workdir.rglob('*') if p.is_file()}
  assert before == after


@pytest.mark.parametrize('overrides, message', [
    ({'forget.fraction': 1.0}, 'forget.fraction must be in'),
    ({'forget.fraction': 0.0}, 'forget.fraction must be in'),
    ({'algorithms': 'finetune,nope'}, 'unknown algorithm'),
    ({'dataset.name': 'nope'}, 'unknown dataset'),
    ({'model.name': 'nope'}, 'unknown model'),
    ({'model.kernels': 'native'}, "model.kernels='native' is not valid here: the run uses 8 devices"),
    ({'model.kernels': 'fast'}, 'model.kernels must be one of'),
    ({'model.dtype': 'float8'}, 'model.dtype must be float32 or bfloat16'),
    ({'algorithms': 'unsir'}, "unsir removes classes, but forget.selector is 'random_fraction'"),
    ({'evaluation.attack_seeds': 0}, 'evaluation.attack_seeds must be'),
    ({'algorithms': 'scrub_r', 'populations.n': 2}, 'scrub_r cannot run in populations'),
    ({'train.epochs': -1.0}, r'train.epochs must be > 0, got -1.0'),
    ({'algo.finetune.lr': 0.0}, r'algo.finetune.lr must be > 0'),
    ({'algo.finetune.optimizer': 'lamb'}, r'algo.finetune.optimizer must be one of'),
    ({'algo.finetune.momentum': 1.5}, r'algo.finetune.momentum must be in \[0, 1\)'),
    ({'algorithms': 'rum', 'algo.rum.high.algorithm': 'ssd'}, 'rum.high: ssd has'),
])
def test_bad_config_fails_before_writing(tmp_path, overrides, message):
  with pytest.raises(errors.UserError, match=message):
    pipeline.run_experiment(small_config(**overrides), tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def test_forget_set_leaving_a_class_empty_is_refused(tmp_path, synthetic_medmnist):
  with pytest.raises(errors.UserError, match='retain set would be empty|no retain example'):
    pipeline.run_experiment(small_config(**{'forget.fraction': 0.999}), tmp_path / 'run')
  assert not (tmp_path / 'run').exists()  # Refused before training, with nothing written.


@pytest.mark.parametrize('content, message', [
    ('99999\n', 'not in the training split|not in'),  # An id the training split does not have.
    ('1\n1\n', 'twice'),
    ('', 'empty|no ids'),
])
def test_bad_forget_request_file_fails_in_seconds_and_writes_nothing(tmp_path, synthetic_medmnist, content,
                                                                     message, monkeypatch):
  request = tmp_path / 'request.txt'
  request.write_text(content)
  monkeypatch.setattr(pipeline, 'run_stage', lambda *a, **k: pytest.fail('training started'))
  with pytest.raises(errors.UserError, match=message):
    pipeline.run_experiment(small_config(**{'forget.selector': 'id_file', 'forget.path': str(request)}),
                            tmp_path / 'run')
  assert not (tmp_path / 'run').exists()


def run_cli(*args, env):
  return subprocess.run([sys.executable, '-m', 'experiments.run', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def cli_error_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.startswith('error:')]


def test_cli_reports_bad_input_in_one_line(tmp_path):
  env = dict(os.environ, MEDUNLEARN_DATA_DIR=str(tmp_path / 'empty'), TFDS_DATA_DIR=str(tmp_path / 'tfds'),
             MEDUNLEARN_MEDMNIST_URL='http://127.0.0.1:9/', JAX_PLATFORMS='cpu')
  cases = [
      ['--config.forget.fractoin=0.2'],      # Unknown key.
      ['--config.forget.fraction=1.5'],      # Out of range.
      [],                                    # Data file missing, no network.
  ]
  for extra in cases:
    proc = run_cli('--config=experiments/configs/default.py', f'--workdir={tmp_path / "w"}', *extra, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = cli_error_lines(proc.stderr)
    assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / 'tfds' / 'medmnist' / 'pneumoniamnist_28' / '1.0.0').exists()


def test_a_second_launch_on_a_locked_workdir_is_refused_in_one_line(tmp_path, synthetic_medmnist):
  workdir = tmp_path / 'run'
  pipeline.hold_workdir(workdir)  # As a running launch holds it.
  try:
    proc = run_cli('--config=experiments/configs/default.py', f'--workdir={workdir}', env=dict(os.environ))
    lines = cli_error_lines(proc.stderr)
    assert proc.returncode == 2 and len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
    assert f'is in use by process {os.getpid()} on ' in lines[0]
    assert sorted(p.name for p in workdir.iterdir()) == ['.lock']  # The refused launch wrote nothing.
  finally:
    pipeline.release_workdir(workdir)
  assert not workdir.exists()  # Created by the lock alone, so removed with it.
  pipeline.hold_workdir(workdir)  # Free again.
  pipeline.release_workdir(workdir)


def test_system_failures_are_named_with_what_to_do():
  import errno  # pylint: disable=g-import-not-at-top
  orbax_thread = ValueError('RESOURCE_EXHAUSTED: Error writing "params.conv0/0" in OCDBT database at local file '
                            '"/w/checkpoints/retrain/14.orbax-checkpoint-tmp/": Failed writing: [OS error 28]')
  try:  # As Orbax re-raises a writer thread's error from the main thread.
    try:
      raise orbax_thread
    except ValueError as inner:
      raise RuntimeError('save failed') from inner
  except RuntimeError as e:
    wrapped = e
  cases = [
      (OSError(errno.ENOSPC, 'No space left on device', '/w/results.json'), 'disk full: '),
      (wrapped, 'disk full: RESOURCE_EXHAUSTED: Error writing "params.conv0/0"'),
      (OSError(errno.EROFS, 'Read-only file system', '/w/.lock'), 'read-only file system: cannot write /w/.lock'),
      (PermissionError(errno.EACCES, 'Permission denied', '/w/x'), 'permission denied: cannot write /w/x'),
      (MemoryError(), 'out of memory (MemoryError)'),
      (RuntimeError('RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.2GiB'), 'out of memory ('),
  ]
  for error, start in cases:
    message = errors.system_failure(error, '/w')
    assert message.startswith(start) and '\n' not in message, message
    assert 'run the same command again' in message
  assert 'df -h' in errors.system_failure(cases[0][0], '/w')
  # A bug is not a system failure: the launcher re-raises it with its traceback.
  assert errors.system_failure(KeyError('params'), '/w') is None
  assert errors.system_failure(FileNotFoundError(errno.ENOENT, 'No such file', '/w/x'), '/w') is None


def test_a_corrupt_built_dataset_is_one_error_naming_the_folder_to_delete(tmp_path, synthetic_medmnist):
  import shutil  # pylint: disable=g-import-not-at-top
  from medunlearn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  cfg = small_config().dataset
  _, splits = data_lib.load(cfg)
  build = next((tmp_path / 'tfds').glob('medmnist/pneumoniamnist_28/*/'))
  shard = next(build.glob('*train.array_record*'))
  damaged = bytearray(shard.read_bytes())
  damaged[1000:1400] = bytes(b ^ 0x5A for b in damaged[1000:1400])  # Bit rot inside a chunk.
  shard.write_bytes(bytes(damaged))
  with pytest.raises(errors.DataError, match=f'the built dataset in {build} cannot be read .*Corrupted.*delete that '
                     'folder and run again to rebuild it'):
    data_lib.load(cfg)
  shard.write_bytes(bytes(damaged[:len(damaged) // 3]))  # A copy cut short.
  with pytest.raises(errors.DataError, match='delete that folder'):
    data_lib.load(cfg)
  shutil.rmtree(build)  # What the message says to do rebuilds the same dataset.
  _, again = data_lib.load(cfg)
  np.testing.assert_array_equal(again['train'].ids, splits['train'].ids)
  np.testing.assert_array_equal(again['train'].images, splits['train'].images)


FAILURE_SCRIPT = r"""
set -u
W=$1; shift
mount -t tmpfs -o size=1200k tmpfs "$W"       # Room for the original's checkpoint, not for the retrained one's.
"$@" --workdir="$W/run" >"$W.out1" 2>&1; echo $? >"$W.rc1"
mount -o remount,size=40m "$W"                 # The user frees space and runs the same command again.
"$@" --workdir="$W/run" >"$W.out2" 2>&1; echo $? >"$W.rc2"
mount -o remount,ro "$W"                       # The same workdir, now read-only.
"$@" --workdir="$W/run" >"$W.out3" 2>&1; echo $? >"$W.rc3"
"$@" --workdir="$W/run" --verbosity=1 >"$W.out4" 2>&1; echo $? >"$W.rc4"
cp -r "$W/run" "$W.copy"
"""


def test_disk_full_and_a_read_only_workdir_end_in_one_line_and_lose_nothing(tmp_path, synthetic_medmnist):
  # Real failures, not mocks: the workdir is a 1.2 MB tmpfs in a private mount namespace (unshare -rm needs no
  # privileges where user namespaces are enabled), filled by the run's own checkpoints, then made read-only.
  import shutil  # pylint: disable=g-import-not-at-top
  from medunlearn_jax import data as data_lib  # pylint: disable=g-import-not-at-top
  if not shutil.which('unshare') or subprocess.run(['unshare', '-rm', 'true'], capture_output=True).returncode:
    pytest.skip('unshare -rm (a private mount namespace) is not available here')
  data_lib.load(small_config().dataset)  # Built here, where the synthetic file's checksum is accepted.
  mount = tmp_path / 'disk'
  mount.mkdir()
  args = ['--config=experiments/configs/default.py', '--config.train.epochs=2', '--config.algorithms=finetune',
          '--config.algo.finetune.epochs=1', '--config.batch_size=32', '--config.evaluation.attack_seeds=1',
          '--config.evaluation.n_boot=200']
  proc = subprocess.run(['unshare', '-rm', 'sh', '-c', FAILURE_SCRIPT, 'sh', str(mount), sys.executable, '-m',
                         'experiments.run', *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = {k: (tmp_path / f'disk.out{k}').read_text() for k in range(1, 5)}
  rc = {k: int((tmp_path / f'disk.rc{k}').read_text()) for k in range(1, 5)}

  # Disk full: one line naming the cause and the fix, no traceback; the traceback is kept in the file it names.
  copy = tmp_path / 'disk.copy'
  lines = cli_error_lines(out[1])
  assert rc[1] == 1 and len(lines) == 1 and 'Traceback' not in out[1], out[1][-3000:]
  assert lines[0].startswith('error: disk full: ') and 'run the same command again' in lines[0]
  kept = pathlib.Path(lines[0].rsplit('full traceback in ', 1)[1].rstrip(')'))
  if kept.is_relative_to(mount / 'run'):  # The run log, when the full disk still took it; copied out below.
    kept = tmp_path / 'disk.copy' / kept.relative_to(mount / 'run')
  assert 'Traceback' in kept.read_text()
  # Nothing lost: the finished original is loaded, not retrained, and the run completes.
  assert rc[2] == 0, out[2][-3000:]
  assert 'stage original: finished earlier, loading' in out[2]
  assert 'stage finetune: starting' in (copy / pipeline.RUN_LOG).read_text()
  assert json.loads((copy / 'results.json').read_text())['models']['finetune']['test']['n'] == 40
  # Read-only: one line (the full traceback only with --verbosity=1), and the finished run is untouched.
  lines = cli_error_lines(out[3])
  assert rc[3] == 1 and len(lines) == 1 and 'Traceback' not in out[3], out[3][-3000:]
  assert lines[0].startswith(f'error: read-only file system: cannot write {mount}/run/.lock')
  assert rc[4] == 1 and 'Traceback' in out[4] and len(cli_error_lines(out[4])) == 1


def test_help_lists_the_config_keys_with_defaults_and_docs(tmp_path):
  proc = run_cli('--config=experiments/configs/default.py', '--help', env=dict(os.environ))
  assert proc.returncode == 0, proc.stderr[-2000:]
  out = proc.stdout
  assert "--config.model.dtype='float32'    # Compute dtype" in out
  assert '--config.forget.fraction=0.1' in out and '--config.algo.rum.high.alpha=0.97' in out
  assert out.index('--config.seed=') < out.index('--config.algo.')  # The run's own keys first.


def test_real_breastmnist_pipeline(tmp_path, shared_data, monkeypatch):
  monkeypatch.setenv('MEDUNLEARN_DATA_DIR', str(shared_data))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  config = small_config(**{'dataset.name': 'breastmnist', 'train.epochs': 3.0})
  results = pipeline.run_experiment(config, tmp_path / 'run')
  assert results['models']['original']['test']['n'] == 156
  assert len(json.loads((tmp_path / 'run' / 'forget_manifest.json').read_text())['ids']) == 55  # 10 % of 546.
  assert results['models']['original']['test']['accuracy'] > 0.6


def test_populations_give_forgetting_quality_and_ulira(tmp_path, synthetic_medmnist):
  config = small_config(**{'populations.n': 3})
  pipeline.run_experiment(config, tmp_path / 'run')
  populations = json.loads((tmp_path / 'run' / 'populations.json').read_text())
  entry = populations['models']['finetune']
  assert entry['n_models'] == 3 and len(populations['seeds']) == 3
  assert 0.0 <= entry['forgetting_quality'] <= 1.0
  assert 0.0 <= entry['ulira']['accuracy'] <= 1.0
  assert entry['cost']['steps'] > 0 and populations['retrain_cost']['examples'] == 3 * 2 * 216


def test_learning_dynamics_difficulty_is_recorded_per_epoch(tmp_path, synthetic_medmnist):
  from medunlearn_jax.evaluation import cache as cache_lib  # pylint: disable=g-import-not-at-top
  pipeline.run_experiment(small_config(), tmp_path / 'run')
  epochs = pipeline.read_epochs(tmp_path / 'run')
  assert sorted(epochs['epochs']) == [1, 2] and epochs['epochs'][2].shape == (240,)
  cache = cache_lib.load_cache(results_lib.model_path(tmp_path / 'run', 'original'))
  learned = cache['difficulty_learned_epoch']
  train_rows = np.isin(cache['split'], ['retain', 'forget'])
  assert np.all(np.isfinite(learned[train_rows])) and np.all(np.isnan(learned[~train_rows]))
  assert set(np.unique(learned[train_rows])) <= {0.0, 1.0, 2.0}
