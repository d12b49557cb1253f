"""Studies: arms × seeds of ordinary runs, a shared original model per seed, mean ± std aggregates."""
import json

import ml_collections
import pytest

from medunlearn_jax import errors
from medunlearn_jax import studies
from test_pipeline import small_config


def study_config(kind, **study):
  config = small_config()
  config.algorithms = 'finetune'
  config.study = ml_collections.ConfigDict(dict(kind=kind, seeds=[0], **study))
  return config


def test_forget_size_study_shares_the_original_and_aggregates(tmp_path, synthetic_medmnist):
  config = study_config('forget_size', fractions=[0.1, 0.25], patients=False)
  summary = studies.run_study(config, tmp_path)
  assert set(summary['arms']) == {'images_0.1', 'images_0.25'}
  manifests = [json.loads((tmp_path / arm / 'seed0' / 'forget_manifest.json').read_text())
               for arm in ('images_0.1', 'images_0.25')]
  assert [m['count'] for m in manifests] == [24, 60]
  # The second arm loaded the first arm's original model instead of training it again.
  results = [json.loads((tmp_path / arm / 'seed0' / 'results.json').read_text())
             for arm in ('images_0.1', 'images_0.25')]
  assert results[0]['models']['original']['test'] == results[1]['models']['original']['test']
  stat = summary['arms']['images_0.25']['finetune']['test_acc']
  assert stat['values'] == [results[1]['models']['finetune']['test']['accuracy']] and stat['std'] == 0.0
  assert (tmp_path / 'study.md').read_text().startswith('# Study: forget_size')
  assert (tmp_path / 'study.png').stat().st_size > 10_000
  # Fan-out: the runs of a study, one of them run alone (finished here: loaded), the aggregate from disk.
  assert studies.runs_of(config) == [('images_0.1', 0), ('images_0.25', 0)]
  one = studies.run_one(config, tmp_path, 'images_0.25', 0)
  assert one['models']['finetune']['test'] == results[1]['models']['finetune']['test']
  with pytest.raises(errors.ConfigError, match=r"\('images_0.5', seed 0\) is not a run of this study"):
    studies.run_one(config, tmp_path, 'images_0.5', 0)
  assert studies.aggregate_study(config, tmp_path)['arms'] == json.loads((tmp_path / 'study.json').read_text())['arms']
  (tmp_path / 'images_0.1' / 'seed0' / 'results.json').unlink()
  with pytest.raises(errors.UserError, match='1 of 2 runs of the study .* have not finished: images_0.1/seed0'):
    studies.aggregate_study(config, tmp_path)


def test_difficulty_study_arms_have_equal_sizes_and_differ(tmp_path, synthetic_medmnist):
  summary = studies.run_study(study_config('difficulty', fraction=0.2), tmp_path)
  manifests = {arm: json.loads((tmp_path / arm / 'seed0' / 'forget_manifest.json').read_text())
               for arm in summary['arms']}
  assert {m['count'] for m in manifests.values()} == {48}
  assert manifests['difficulty_easiest']['ids'] != manifests['difficulty_hardest']['ids']


def test_unknown_study_kind(tmp_path):
  with pytest.raises(errors.ConfigError, match='unknown study kind'):
    studies.run_study(study_config('nope'), tmp_path)


def test_sex_study_on_real_nih_chestxray14(tmp_path, shared_data, monkeypatch):
  monkeypatch.setenv('MEDUNLEARN_DATA_DIR', str(shared_data))
  monkeypatch.setenv('TFDS_DATA_DIR', str(tmp_path / 'tfds'))
  config = study_config('sex', fraction=0.05)
  config.dataset.name = 'nih_chestxray14'
  config.dataset.task = 'binary'
  config.train.epochs = 1.0
  config.eval_batch_size = 256
  summary = studies.run_study(config, tmp_path / 'study')
  sizes = {arm: json.loads((tmp_path / 'study' / arm / 'seed0' / 'forget_manifest.json').read_text())['count']
           for arm in ('sex_F', 'sex_M')}
  assert sizes['sex_F'] == sizes['sex_M'] > 0
  entry = summary['sex_gap']['finetune']
  lo, hi = entry['difference_f_minus_m']['ci95']
  assert lo <= entry['difference_f_minus_m']['value'] <= hi or entry['difference_f_minus_m']['differs']
  assert 'F − M' in (tmp_path / 'study' / 'study.md').read_text()


def test_a_studys_lists_are_overridable_from_the_command_line():
  import pathlib, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  root = pathlib.Path(__file__).resolve().parents[1]
  program = ('from absl import app; from ml_collections import config_flags; from medunlearn_jax import studies;'
             'c = config_flags.DEFINE_config_file("config", lock_config=True);'
             'app.run(lambda _: print([a.name for a in studies.arms_of(c.value)], tuple(c.value.study.seeds)))')
  proc = subprocess.run([sys.executable, '-c', program, '--config=experiments/configs/study_forget_size.py',
                         '--config.study.fractions=(0.05,0.2)', '--config.study.seeds=(3,)'], cwd=root,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "['images_0.05', 'images_0.2'] (3,)"


def test_list_runs_prints_one_command_per_arm_and_seed(tmp_path):
  import pathlib, subprocess, sys  # pylint: disable=g-import-not-at-top,multiple-imports
  root = pathlib.Path(__file__).resolve().parents[1]
  proc = subprocess.run([sys.executable, '-m', 'experiments.study', '--config=experiments/configs/study_forget_size.py',
                         f'--workdir={tmp_path}', '--config.study.fractions=(0.05,0.2)', '--config.study.seeds=(3,4)',
                         '--list_runs'], cwd=root, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  assert len(lines) == 4 and not (tmp_path / 'images_0.05').exists()  # Listing runs nothing.
  assert lines[0].endswith("--config.study.fractions=(0.05,0.2)' '--config.study.seeds=(3,4)' --arm=images_0.05 "
                           '--seed=3') and '--list_runs' not in lines[0]
  help_text = subprocess.run([sys.executable, '-m', 'experiments.study', '--help'], cwd=root, capture_output=True,
                             text=True, timeout=120).stdout
  assert '  --list_runs: Print one command per (arm, seed) and exit.' in help_text  # The launcher's own flags.
  assert [line.split()[-2:] for line in lines[1:]] == [['--arm=images_0.2', '--seed=3'],
                                                       ['--arm=images_0.05', '--seed=4'],
                                                       ['--arm=images_0.2', '--seed=4']]


def _results(original_gap, algo_gap, signal_acc, clear):
  signal = {'accuracy': {'value': signal_acc}, 'loss': {'value': 1.0}, 'mia_efficacy': {'value': signal_acc},
            'clear': clear}
  models = {name: {'avg_gap': gap, 'test': {'accuracy': 0.7}}
            for name, gap in (('original', original_gap), ('retrain', 0.0), ('algo', algo_gap))}
  return {'models': models, 'forget_signal': signal}


def test_an_algorithm_is_credited_only_beyond_the_do_nothing_original_and_where_the_arm_can_rank():
  from medunlearn_jax.evaluation import study_report  # pylint: disable=g-import-not-at-top
  runs = {'memorised': {s: _results(og, ag, 0.2, True) for s, og, ag in
                        ((0, 0.10, 0.020), (1, 0.12, 0.030), (2, 0.11, 0.025))},
          'generalised': {s: _results(0.011, 0.010, 0.001, s != 1) for s in range(3)}}
  summary = studies.aggregate(runs)
  c = summary['vs_original']['memorised']['algo']
  half = 4.302652729911275 * 0.005 / 3 ** 0.5  # t(0.975, 2) · sd / √3 of the improvements .08, .09, .085.
  assert c['mean'] == pytest.approx(0.085) and c['ci_low'] == pytest.approx(0.085 - half) and c['credited']
  assert summary['signal']['memorised']['can_rank'] and summary['signal']['memorised']['clear_runs'] == 3
  assert summary['signal']['memorised']['accuracy']['mean'] == pytest.approx(0.2)
  assert not summary['signal']['generalised']['can_rank']  # One seed's forget set was not memorised.
  summary['kind'], summary['seeds'] = 'forget_size', [0, 1, 2]
  markdown = study_report.markdown(summary)
  assert ('| generalised | +0.10 [+0.10, +0.10] | +0.10 [+0.10, +0.10] | +1.000 [+1.000, +1.000] | 2 of 3 | '
          '**no**: nothing to forget |') in markdown
  assert f'| memorised | algo | +8.50 [{100 * (0.085 - half):+.2f}, {100 * (0.085 + half):+.2f}] | yes |' in markdown
  # Better than the original in every seed, yet not credited: that arm has nothing to forget.
  assert not summary['vs_original']['generalised']['algo']['credited']
  assert '| generalised | algo | +0.10 [+0.10, +0.10] | no (no forget signal) |' in markdown
