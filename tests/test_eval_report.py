"""results.json from output caches (gaps to retrain, Avg. Gap, ToW, subgroups, costs), the report files and
CLI, and the whole pipeline writing and re-deriving them."""
import csv
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from medunlearn_jax import errors
from medunlearn_jax import pipeline
from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.evaluation import cache as cache_lib
from medunlearn_jax.evaluation import report
from medunlearn_jax.evaluation import results as results_lib
from medunlearn_jax.evaluation import subgroups

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A binary task where each model's predictions are set by hand; logits ±2 on the predicted class.
LABELS = {'retain': [0, 1, 0, 1, 0, 1, 0, 1], 'forget': [0, 1, 0, 1], 'val': [0, 1], 'test': [0, 1, 0, 1]}
SEX = {'retain': list('FMFMFMFM'), 'forget': list('FFMM'), 'val': list('FM'), 'test': list('FMFM')}
AGE = {'retain': [30, 50, 70, 90, 30, 50, 70, 90], 'forget': [30, 50, np.nan, 70], 'val': [30, 50],
       'test': [30, 50, 70, 90]}
# Which examples each model gets right, per split.
RIGHT = {
    'original': {s: [True] * len(v) for s, v in LABELS.items()},
    'retrain': {'retain': [True] * 8, 'forget': [True, True, False, False], 'val': [True, True],
                'test': [True, True, True, False]},
    'algo': {'retain': [False, False] + [True] * 6, 'forget': [True, False, False, False], 'val': [True, False],
             'test': [True, True, False, False]},
}
COSTS = {'original': {'seconds': 12.0, 'compile_seconds': 1.0, 'steps': 20, 'examples': 240, 'flops': 120.0},
         'retrain': {'seconds': 10.0, 'compile_seconds': 1.0, 'steps': 16, 'examples': 200, 'flops': 100.0},
         'algo': {'seconds': 2.0, 'compile_seconds': 3.0, 'steps': 4, 'examples': 50, 'flops': 30.0}}


def hand_splits():
  out, offset = {}, 0
  for name, labels in LABELS.items():
    n = len(labels)
    out[name] = ds_lib.Split(name, np.arange(offset, offset + n), np.zeros((n, 2, 2, 1), np.uint8),
                             np.asarray(labels, np.int64),
                             {'sex': np.asarray(SEX[name]), 'age': np.asarray(AGE[name], np.float32)})
    offset += 100
  return out


def hand_caches():
  splits = hand_splits()
  caches = {}
  for model, right in RIGHT.items():
    logits = {}
    for name, labels in LABELS.items():
      pred = np.where(right[name], labels, 1 - np.asarray(labels))
      logits[name] = np.where(np.arange(2) == pred[:, None], 2.0, -2.0)
    caches[model] = cache_lib.build_cache(logits, splits)
  caches['original'] = cache_lib.add_difficulty(caches['original'])
  return caches


@pytest.fixture
def hand_workdir(tmp_path):
  workdir = tmp_path / 'run'
  info = {'dataset': 'hand', 'task': 'binary', 'num_classes': 2, 'class_names': ['neg', 'pos'],
          'config': {'seed': 0}}
  results_lib.save_run(workdir, hand_caches(), COSTS, info)
  (workdir / 'populations.json').write_text(json.dumps(
      {'seeds': [1, 2], 'models': {'algo': {'forgetting_quality': 0.5, 'ulira': {'accuracy': 0.625}}}}))
  return workdir


def test_results_by_hand(hand_workdir):
  res = results_lib.evaluate_workdir(hand_workdir, n_boot=50)
  algo, retrain = res['models']['algo'], res['models']['retrain']
  assert algo['forget']['accuracy'] == 0.25 and algo['forget']['unlearning_accuracy'] == 0.75
  assert algo['retain']['accuracy'] == 0.75 and algo['test']['accuracy'] == 0.5
  # The target is retrain's value: UA 0.5, RA 1, TA 0.75 -> each |Δ| = 0.25.
  gap = algo['gap_to_retrain']
  assert gap['forget']['unlearning_accuracy'] == gap['retain']['accuracy'] == gap['test']['accuracy'] == 0.25
  assert 'n' not in gap['forget'] and set(gap['mia']) == {'simple_mia', 'mia_efficacy'}
  d_mia = abs(algo['mia']['mia_efficacy'] - retrain['mia']['mia_efficacy'])
  assert gap['mia']['mia_efficacy'] == pytest.approx(d_mia)
  assert algo['avg_gap'] == pytest.approx((0.25 * 3 + d_mia) / 4)
  assert algo['tow'] == pytest.approx(0.75 ** 3)
  assert retrain['avg_gap'] == 0.0 and retrain['tow'] == 1.0
  assert algo['cost']['relative_to_retrain'] == pytest.approx(
      {'seconds': 0.2, 'compile_seconds': 3.0, 'steps': 0.25, 'examples': 0.25, 'flops': 0.3})
  # The populations hook carries what the sweeps wrote; models without an entry get null.
  assert algo['populations'] == {'forgetting_quality': 0.5, 'ulira': {'accuracy': 0.625}}
  assert retrain['populations'] is None and res['populations'] == {'seeds': [1, 2]}
  assert res['dataset'] == 'hand' and res['evaluation']['slices'] == ['sex', 'age', 'class', 'difficulty',
                                                                      'difficulty_margin']
  assert 'difficulty_learned' in res['evaluation']['slices_skipped']
  assert json.loads((hand_workdir / 'results.json').read_text())['models']['algo']['tow'] == algo['tow']


def test_subgroup_slices_by_hand(hand_workdir):
  res = results_lib.evaluate_workdir(hand_workdir, n_boot=50)
  sex = res['models']['algo']['slices']['sex']
  # algo on forget: F = examples 0, 1 (right, wrong) -> 1/2; M = 2, 3 (wrong, wrong) -> 0.
  acc = sex['forget']['accuracy']
  assert acc['groups']['F']['value'] == 0.5 and acc['groups']['M']['value'] == 0.0
  assert {k: acc['difference'][k] for k in ('a', 'b', 'value', 'interval')} == {
      'a': 'F', 'b': 'M', 'value': 0.5, 'interval': 'newcombe'}  # Two examples per group: score intervals.
  assert acc['difference']['ci_low'] <= 0.5 <= acc['difference']['ci_high']
  assert acc['groups']['M']['interval'] == 'wilson' and acc['groups']['M']['ci_high'] > 0
  # retrain on forget: F 1.0, M 0.0 -> gaps F |0.5 - 1| = 0.5, M |0 - 0| = 0.
  gap = sex['forget']['gap_to_retrain']['groups']
  assert gap['F']['value'] == 0.5 and gap['M']['value'] == 0.0
  assert {'balanced_accuracy', 'macro_f1', 'roc_auc'} <= set(sex['test'])
  assert {'mia_efficacy', 'mia_efficacy_gap', 'simple_mia'} <= set(sex['mia'])
  # Classes on forget: class 0 = examples 0, 2 -> 1/2; class 1 = examples 1, 3 -> 0; difference 0 - 1.
  cls = res['models']['algo']['slices']['class']['forget']['accuracy']
  assert cls['groups'][0]['value'] == 0.5 and cls['groups'][1]['value'] == 0.0 and cls['difference']['value'] == 0.5
  # Age: the forget example with unknown age is counted, not sliced; bins in age order.
  age = res['models']['algo']['slices']['age']
  assert age['n_unknown'] == {'forget': 1}
  assert list(age['retain']['accuracy']['groups']) == ['0-39', '40-59', '60-79', '80-119']
  # Difficulty is scored on training rows only (retain, forget): no val/test slices, hard - easy.
  difficulty = res['models']['algo']['slices']['difficulty']
  assert set(difficulty) - {'mia', 'n_unknown'} == {'retain', 'forget'}
  assert difficulty['n_unknown'] == {'val': 2, 'test': 4}


def test_slicing_by_an_absent_group_is_a_clear_error():
  caches = hand_caches()
  no_meta = {k: v for k, v in caches['algo'].items() if k not in ('sex', 'age')}
  with pytest.raises(errors.UserError, match=r"cannot slice by 'sex': the dataset has no 'sex' metadata"):
    subgroups.group_labels(no_meta, 'sex')
  with pytest.raises(errors.UserError, match='unknown slicing key'):
    subgroups.group_labels(no_meta, 'ethnicity')
  with pytest.raises(errors.UserError, match='no .*difficulty_loss'):
    subgroups.group_labels(no_meta, 'difficulty')  # the algorithm's cache has no difficulty columns
  unknown_sex = dict(caches['algo'], sex=np.full(len(no_meta['id']), ''))
  with pytest.raises(errors.UserError, match="no example has a known 'sex'"):
    subgroups.group_labels(unknown_sex, 'sex')


def test_report_files_and_plots(hand_workdir):
  res = results_lib.evaluate_workdir(hand_workdir, n_boot=20)
  written = report.write_report(hand_workdir, res)
  markdown = (hand_workdir / 'results.md').read_text()
  assert markdown.startswith('| model | UA | RA | TA | MIA-efficacy ± sd | Avg. Gap ↓ | ToW ↑ | simple MIA ± sd | '
                             'forgetting quality ↑ | U-LiRA acc. ↓ |')
  assert '| algo | 75.00 (25.00) | 75.00 (25.00) | 50.00 (25.00) |' in markdown
  assert '| 0.500 | 0.625 |' in markdown and '| retrain |' in markdown
  assert '## Subgroups' in markdown and 'F − M: 50.00 [' in markdown
  rows = list(csv.DictReader((hand_workdir / 'results.csv').open()))
  assert [r['model'] for r in rows] == ['original', 'retrain', 'algo']
  relative_cost = float(rows[2]['seconds_vs_retrain'])  # From the hand-made costs, not a clock.
  assert float(rows[2]['UA']) == 0.75 and relative_cost == 0.2
  assert float(rows[2]['ulira_accuracy']) == 0.625 and rows[1]['forgetting_quality'] == ''
  names = sorted(p.name for p in written['plots'])  # difficulty_margin: the same groups as difficulty.
  assert names == ['accuracy.png', 'cost_vs_avg_gap.png', 'difficulty.png', 'mia_avg_gap.png',
                   'subgroups_age.png', 'subgroups_class.png', 'subgroups_sex.png']
  for path in written['plots']:
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n' and path.stat().st_size > 5000


def markdown_tables(text: str) -> list[list[list[str]]]:
  """The tables of a markdown text, each a list of rows of cells (split at bars not escaped)."""
  tables, current = [], []
  for line in text.splitlines() + ['']:
    if line.startswith('|'):
      current.append([c.strip() for c in re.split(r'(?<!\\)\|', line.strip())[1:-1]])
    elif current:
      tables.append(current)
      current = []
  return tables


def test_report_is_well_formed_and_plots_in_the_tables_units(hand_workdir, monkeypatch):
  res = results_lib.evaluate_workdir(hand_workdir, n_boot=20)
  # Two classes: the loss −log p_y and the margin 2·p_y − 1 rank the examples identically.
  assert res['evaluation']['slices_same_groups'] == {'difficulty_margin': 'difficulty'}
  figures = {}
  real_save = report._save  # pylint: disable=protected-access
  monkeypatch.setattr(report, '_save', lambda fig, path: figures.setdefault(path.name, fig) and real_save(fig, path))
  report.write_report(hand_workdir, res)
  markdown = (hand_workdir / 'results.md').read_text()
  tables = markdown_tables(markdown)
  assert len(tables) == 7  # Main, accuracy family; by sex, age, class, difficulty (margin: a note); cost.
  for table in tables:
    assert all(len(row) == len(table[0]) for row in table), table[0]
  assert 'forget \\|acc. − retrain acc.\\|' in markdown
  assert '**difficulty_margin** — the same groups as **difficulty**' in markdown and 'two-class task' in markdown
  # The hand-made forget set: the original right on all 4, retrain on 2; 4 examples are too few to be sure.
  assert res['forget_signal']['accuracy']['value'] == 0.5 and res['forget_signal']['n'] == 4
  assert not res['forget_signal']['clear']
  assert 'Forget signal, original − retrain on the 4 forget examples (95 % bootstrap CI): accuracy +50.00 [' in markdown
  assert 'so this run cannot rank algorithms' in markdown
  # Figures in % and points, as the tables: the original is right on every example (100 %, not 1.0).
  accuracy, = figures['accuracy.png'].axes
  assert max(bar.get_height() for bar in accuracy.patches) == 100.0 and '%' in accuracy.get_ylabel()
  gap_axis = figures['mia_avg_gap.png'].axes[1]
  algo_gap = 100 * res['models']['algo']['avg_gap']
  assert any(abs(bar.get_height() - algo_gap) < 1e-9 for bar in gap_axis.patches) and algo_gap > 1
  for name in ('subgroups_sex.png', 'subgroups_class.png', 'difficulty.png'):
    for ax in figures[name].axes:
      if ax.get_visible():
        assert ax.get_ylabel() in ('%', 'points'), (name, ax.get_title())
  # Cost: a legend entry per model, no text labels beside points (which overlap when points are close).
  cost, = figures['cost_vs_avg_gap.png'].axes
  assert not cost.texts
  assert {'retrain', 'algo'} <= {t.get_text() for t in cost.get_legend().get_texts()}


def test_the_readme_shows_the_table_a_run_prints(hand_workdir):
  res = results_lib.evaluate_workdir(hand_workdir, n_boot=20)
  for entry in res['models'].values():
    entry['populations'] = None  # The main job runs no populations.
  header, rule = report.markdown_table(res).splitlines()[:2]
  readme = (ROOT / 'README.md').read_text()
  shown = readme[readme.index('The table exactly as the run prints it:'):].splitlines()[2:4]
  assert shown == [header, rule]


def run_report_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, '-m', 'experiments.report', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=120)


def test_report_cli(hand_workdir, tmp_path):
  proc = run_report_cli(f'--workdir={hand_workdir}', '--recompute', '--n_boot=10')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.startswith('| model |') and (hand_workdir / 'plots' / 'accuracy.png').exists()
  assert json.loads((hand_workdir / 'results.json').read_text())['evaluation']['n_boot'] == 10
  proc = run_report_cli(f'--workdir={tmp_path / "empty"}')
  assert proc.returncode == 2
  assert [line for line in proc.stderr.splitlines() if line.startswith('error:')] == [
      line for line in proc.stderr.splitlines() if line.strip()] and 'Traceback' not in proc.stderr


def test_pipeline_writes_caches_results_and_report(tmp_path, synthetic_medmnist):
  from test_pipeline import small_config  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / 'run'
  res = pipeline.run_experiment(small_config(), workdir)
  for name, model in res['models'].items():
    assert {'gap_to_retrain', 'avg_gap', 'tow', 'mia', 'slices', 'cost', 'populations'} <= set(model), name
    # MedMNIST: no sex, no age; the original's per-epoch record gives the learning-dynamics tercile.
    assert set(model['slices']) == {'class', 'difficulty', 'difficulty_margin', 'difficulty_learned'}
  assert res['models']['retrain']['avg_gap'] == 0.0
  assert res['evaluation']['slices_skipped']['sex'].startswith("cannot slice by 'sex'")
  original = cache_lib.load_cache(workdir / 'outputs' / 'original.npz')
  train_rows = np.isin(original['split'], ['retain', 'forget'])
  assert np.isfinite(original['difficulty_loss'][train_rows]).all()
  assert np.isnan(original['difficulty_loss'][~train_rows]).all()
  assert json.loads((workdir / 'outputs' / 'costs.json').read_text()).keys() == res['models'].keys()
  assert (workdir / 'results.md').read_text().startswith('| model |')
  # accuracy, mia/gap, cost, class, difficulty by loss and by learning epoch (binary: margin = loss groups).
  assert len(list((workdir / 'plots').glob('*.png'))) == 6
  # Every number is re-derived from the caches alone, identically.
  before = (workdir / 'results.json').read_text()
  again = results_lib.evaluate_workdir(workdir)
  assert json.dumps(again, indent=1) == before
  with pytest.raises(errors.UserError, match="cannot slice by 'sex'"):
    subgroups.group_labels(original, 'sex')
