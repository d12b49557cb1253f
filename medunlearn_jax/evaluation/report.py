"""Tables and plots of a run's `results.json`: results.md, results.csv and PNG figures in the workdir.

The main table follows the unlearning papers' layout (SalUn, Fan et al. ICLR 2024, Tab. 1-3): one row per
model, UA / RA / TA / MIA-efficacy in % with the |difference| to the retrained model in parentheses, then
Avg. Gap, ToW and cost. Nothing here computes a metric; everything is read from the results dict.

Figures (matplotlib's Agg renderer; written under workdir/plots/) show accuracies in % and gaps in points,
as the tables do; a slicing key that groups the examples exactly as an earlier one (loss and margin
difficulty on a two-class task) gets a note instead of a repeated table and figure:
  accuracy.png          forget / retain / test accuracy per model, the retrained model's level dashed
  mia_avg_gap.png       MIA-efficacy and simple MIA per model (retrain level dashed, chance 0.5 dotted),
                        and Avg. Gap per model
  subgroups_<key>.png   per group (sex, age bin, class): forget and test accuracy, forget gap to retrain,
                        MIA-efficacy, with bootstrap 95 % CIs
  difficulty*.png       the same by difficulty tercile (retain instead of test: only training examples are
                        scored)
  cost_vs_avg_gap.png   Avg. Gap against cost relative to retraining (seconds, log scale)
"""
from __future__ import annotations

import csv
import io
import json
import math
import pathlib
from typing import Any, Mapping, Sequence

import matplotlib
# Figures are built with the object API (no pyplot): they render with the Agg canvas into files, never need
# a display, and leave the process-wide pyplot backend of a caller untouched.
from matplotlib import figure as mpl_figure
from matplotlib import ticker as mpl_ticker
import numpy as np

from medunlearn_jax import errors
from medunlearn_jax.evaluation import results as results_lib
from medunlearn_jax.evaluation import subgroups

PLOTS_DIR = 'plots'
PCT = 100.0  # Figures show % and points, as the tables do; results.json and results.csv keep fractions.
REFERENCE = results_lib.REFERENCE
SPLIT_COLORS = {'forget': '#d62728', 'retain': '#1f77b4', 'test': '#2ca02c', 'val': '#9467bd'}

Results = Mapping[str, Any]


# ----------------------------------------------------------------------------------------------------------
# Reading values.


def _get(tree: Any, *path: Any) -> Any:
  for key in path:
    if not isinstance(tree, Mapping) or key not in tree:
      return None
    tree = tree[key]
  return tree


def _num(value: Any) -> float:
  return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _main_metrics(entry: Mapping[str, Any]) -> dict[str, float]:
  """UA, RA, TA, MIA-efficacy of a model entry (fractions) and their gaps to retrain."""
  return {
      'UA': _num(_get(entry, 'forget', 'unlearning_accuracy')),
      'RA': _num(_get(entry, 'retain', 'accuracy')),
      'TA': _num(_get(entry, 'test', 'accuracy')),
      'MIA': _num(_get(entry, 'mia', 'mia_efficacy')),
      'gap_UA': _num(_get(entry, 'gap_to_retrain', 'forget', 'unlearning_accuracy')),
      'gap_RA': _num(_get(entry, 'gap_to_retrain', 'retain', 'accuracy')),
      'gap_TA': _num(_get(entry, 'gap_to_retrain', 'test', 'accuracy')),
      'gap_MIA': _num(_get(entry, 'gap_to_retrain', 'mia', 'mia_efficacy')),
      'forgetting_quality': _num(_get(entry, 'populations', 'forgetting_quality')),
      'ulira_accuracy': _num(_get(entry, 'populations', 'ulira', 'accuracy')),
  }


# ----------------------------------------------------------------------------------------------------------
# Tables.


def _fmt(value: Any, digits: int = 2, scale: float = 1.0) -> str:
  value = _num(value)
  return '–' if math.isnan(value) else f'{value * scale:.{digits}f}'


def _pct_with_gap(value: float, gap: float) -> str:
  text = _fmt(value, 2, 100.0)
  return text if math.isnan(gap) else f'{text} ({_fmt(gap, 2, 100.0)})'


def _cell(text: str) -> str:
  return str(text).replace('|', '\\|')  # A literal bar (|Δ|) would end the cell.


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
  """A markdown table; every cell escaped, so each row has as many cells as the header."""
  line = lambda cells: '| ' + ' | '.join(_cell(c) for c in cells) + ' |'  # pylint: disable=g-long-lambda
  return [line(header), '|' + '---|' * len(header)] + [line(r) for r in rows]


def _with_std(value: Any, std: Any) -> str:
  """`value ± std` in points (std over attack seeds), or the value alone when no spread was measured."""
  if math.isnan(_num(std)):
    return _fmt(value, 2, 100.0)
  return f'{_fmt(value, 2, 100.0)} ± {_fmt(std, 2, 100.0)}'


def markdown_table(results: Results) -> str:
  """The main table: one row per model, the papers' columns (UA, RA, TA, MIA, Avg. Gap) and cost."""
  # Forgetting quality and U-LiRA exist only for runs with populations of models (pipeline.run_populations).
  with_populations = any(entry.get('populations') for entry in results['models'].values())
  header = ['model', 'UA', 'RA', 'TA', 'MIA-efficacy ± sd', 'Avg. Gap ↓', 'ToW ↑', 'simple MIA ± sd']
  header += ['forgetting quality ↑', 'U-LiRA acc. ↓'] if with_populations else []
  header += ['seconds', 'time / retrain', 'FLOPs / retrain']
  rows = []
  for name, entry in results['models'].items():
    m = _main_metrics(entry)
    cost = entry.get('cost') or {}
    rel = cost.get('relative_to_retrain') or {}
    row = [name, _pct_with_gap(m['UA'], m['gap_UA']), _pct_with_gap(m['RA'], m['gap_RA']),
           _pct_with_gap(m['TA'], m['gap_TA']),
           _with_std(m['MIA'], _get(entry, 'mia', 'mia_efficacy_std'))
           + ('' if math.isnan(m['gap_MIA']) else f' ({_fmt(m["gap_MIA"], 2, 100.0)})'),
           _fmt(entry.get('avg_gap'), 2, 100.0), _fmt(entry.get('tow'), 2, 100.0),
           _with_std(_get(entry, 'mia', 'simple_mia'), _get(entry, 'mia', 'simple_mia_std'))]
    if with_populations:
      row += [_fmt(m['forgetting_quality'], 3), _fmt(m['ulira_accuracy'], 3)]
    rows.append(row + [_fmt(cost.get('seconds'), 1), _fmt(rel.get('seconds'), 3), _fmt(rel.get('flops'), 3)])
  return '\n'.join(_table(header, rows))


def forget_signal_text(results: Results) -> str:
  """One line: the forget signal (original − retrain on the forget set) with its intervals, and whether the
  run can rank algorithms; '' when the run has no original or no retrained model."""
  signal = results.get('forget_signal')
  if not signal:
    return ''
  ci = _fmt(_get(results, 'evaluation', 'ci'), 0, 100.0)

  def part(name, label, scale, digits, unit):
    s = signal[name]
    return (f'{label} {_num(s["value"]) * scale:+.{digits}f} [{_fmt(s["ci_low"], digits, scale)}, '
            f'{_fmt(s["ci_high"], digits, scale)}]{unit}')

  text = (f'Forget signal, original − retrain on the {signal["n"]} forget examples ({ci} % bootstrap CI): '
          + ', '.join([part('accuracy', 'accuracy', 100.0, 2, ' points'), part('loss', 'loss (retrain − original)',
                                                                           1.0, 3, ''),
                       part('mia_efficacy', 'MIA-efficacy (retrain − original)', 100.0, 2, ' points')]) + '. ')
  tests = '; '.join(f'{m} p = {signal[m]["p_value"]:.2g}' for m in ('accuracy', 'mia_efficacy')
                    if 'p_value' in signal[m])
  text += f'McNemar exact test of a positive difference: {tests}. '
  if signal['clear']:
    return text + ('Above zero: the original memorised the forget set, so algorithms can be told apart from '
                   'doing nothing.')
  return text + ('**Not clearly above zero: the original hardly memorised this forget set, so this run cannot '
                 'rank algorithms** (every gap to retrain lies between 0 and this signal; the original, which '
                 'does nothing, is already close).')


def anchor_text(results: Results) -> str:
  """The original's test accuracy next to a published figure for the dataset (a sanity check of the
  training recipe), with the model and epochs that produced it; '' when there is no published figure."""
  anchor, original = results.get('anchor'), _get(results, 'models', results_lib.ORIGINAL, 'test', 'accuracy')
  if not anchor or original is None:
    return ''
  config = results.get('config') or {}
  return (f'Sanity anchor: the original\'s test accuracy {_fmt(original, 2, 100.0)} % ({config.get("model", "?")}, '
          f'{_fmt(config.get("epochs"), 0)} epochs) against {_fmt(anchor["test_accuracy"], 1, 100.0)} % published '
          f'({anchor["source"]}).')


def accuracy_table(results: Results) -> str:
  """The accuracy family per split (%), one row per model and split."""
  header = ['model', 'split', 'n', 'accuracy', 'balanced acc.', 'macro-F1', 'ROC-AUC', 'loss']
  rows = []
  for name, entry in results['models'].items():
    for split in results_lib.EVAL_SPLITS:
      s = entry.get(split)
      if s:
        rows.append([name, split, str(s.get('n', '')), _fmt(s.get('accuracy'), 2, 100.0),
                     _fmt(s.get('balanced_accuracy'), 2, 100.0), _fmt(s.get('macro_f1'), 2, 100.0),
                     _fmt(s.get('roc_auc'), 2, 100.0), _fmt(s.get('loss'), 3)])
  return '\n'.join(_table(header, rows))


def _difference_text(sliced: Mapping[str, Any] | None) -> str:
  diff = _get(sliced, 'difference')
  groups = _get(sliced, 'groups') or {}
  if not diff and len(groups) == 1:  # E.g. every example learned in the same epoch: no tercile boundary.
    (group, cell), = groups.items()
    return f'one group only: {group} (n = {cell.get("n")})'
  if not diff:
    return '–'
  return (f'{diff["a"]} − {diff["b"]}: {_fmt(diff["value"], 2, 100.0)} '
          f'[{_fmt(diff["ci_low"], 2, 100.0)}, {_fmt(diff["ci_high"], 2, 100.0)}]')


def subgroup_table(results: Results) -> str:
  """Per slicing key and model: the difference between groups (in points) with its bootstrap CI."""
  lines = []
  keys = _get(results, 'evaluation', 'slices') or []
  ci = _num(_get(results, 'evaluation', 'ci'))
  same = _get(results, 'evaluation', 'slices_same_groups') or {}
  for key in keys:
    if key in same:
      lines += ['', f'**{key}** — {same_groups_note(results, key)}']
      continue
    rows, columns = [], _group_panels(key)
    for name, entry in results['models'].items():
      sliced = _get(entry, 'slices', key)
      if sliced:
        rows.append([name] + [_difference_text(_get(sliced, split, metric)) for split, metric, _ in columns])
    if rows:
      lines += ['', f'**{key}** — difference between groups in points, [{_fmt(ci, 0, 100.0)} % bootstrap CI]', '']
      lines += _table(['model'] + [title for _, _, title in columns], rows)
  skipped = _get(results, 'evaluation', 'slices_skipped') or {}
  if skipped:
    lines += ['', 'Not sliced: ' + '; '.join(f'{k} ({v})' for k, v in skipped.items()) + '.']
  return '\n'.join(lines).strip('\n')


def same_groups_note(results: Results, key: str) -> str:
  """Why a slicing key's table is not shown: it puts every example in the same group as an earlier key."""
  earlier = results['evaluation']['slices_same_groups'][key]
  why = ''
  two_classes = len(_get(results, 'evaluation', 'class_names') or []) == 2
  if {key, earlier} == {'difficulty', 'difficulty_margin'} and two_classes:
    why = (' On a two-class task the margin p_y − p_other = 2·p_y − 1 and the loss −log p_y are both '
           'functions of p_y alone, so they rank the examples identically.')
  return f'the same groups as **{earlier}**, so the same table and figure (not repeated).{why}'


def cost_table(results: Results) -> str:
  header = ['model', 'seconds', 'compile s', 'steps', 'examples', 'GFLOPs', 'time / retrain', 'steps / retrain',
            'examples / retrain', 'FLOPs / retrain']
  rows = []
  for name, entry in results['models'].items():
    cost = entry.get('cost')
    if cost:
      rel = cost.get('relative_to_retrain') or {}
      rows.append([name, _fmt(cost.get('seconds'), 1), _fmt(cost.get('compile_seconds'), 1),
                   _fmt(cost.get('steps'), 0), _fmt(cost.get('examples'), 0), _fmt(cost.get('flops'), 2, 1e-9),
                   *(_fmt(rel.get(k), 3) for k in ('seconds', 'steps', 'examples', 'flops'))])
  return '\n'.join(_table(header, rows))


def markdown_report(results: Results) -> str:
  """results.md: the main table first (so the file starts with it), then details."""
  title = f'{results.get("dataset") or "run"}'
  parts = [markdown_table(results), '',
           f'{title}: UA = 1 − forget accuracy, RA / TA = retain / test accuracy, MIA-efficacy = forget examples '
           'called non-members by a confidence attacker trained on retain vs test (SalUn); all in %, '
           '(·) = |difference to the retrained model| in points; Avg. Gap = mean of those four differences; '
           'ToW = Π(1 − |Δacc|) over forget/retain/test (Zhao et al. 2024); simple MIA = cross-validated '
           'accuracy of a loss attacker, forget vs test (NeurIPS 2023 challenge kit; 50 = chance); forgetting '
           'quality (NeurIPS 2023 challenge, per-example ε) and U-LiRA accuracy (Hayes et al. 2024; 0.5 = '
           'unlearned and retrained models indistinguishable) come from populations of models, when run. '
           'Time excludes compilation.']
  signal = forget_signal_text(results)
  parts += ['', signal] if signal else []
  anchor = anchor_text(results)
  parts += ['', anchor] if anchor else []
  parts += ['', '## Accuracy family', '', accuracy_table(results)]
  groups = subgroup_table(results)
  if groups:
    parts += ['', '## Subgroups', '', groups]
  parts += ['', '## Cost', '', cost_table(results)]
  leftover = _get(results, 'evaluation', 'not_in_results') or {}
  if leftover:
    parts += ['', 'Not in these results, but kept in the workdir from an earlier run: '
              + '; '.join(f'{name} ({", ".join(f"`{f}`" for f in files)})' for name, files in leftover.items())
              + '. Delete them, or name the algorithms in `--config.algorithms` again (finished stages are '
              'loaded, not retrained).']
  return '\n'.join(parts) + '\n'


CSV_FIELDS = ('model', 'UA', 'RA', 'TA', 'MIA_efficacy', 'simple_MIA', 'avg_gap', 'tow', 'gap_UA', 'gap_RA',
              'gap_TA', 'gap_MIA', 'forgetting_quality', 'ulira_accuracy', 'val_accuracy', 'test_balanced_accuracy', 'test_macro_f1', 'test_roc_auc',
              'seconds', 'compile_seconds', 'steps', 'examples', 'flops', 'seconds_vs_retrain',
              'steps_vs_retrain', 'examples_vs_retrain', 'flops_vs_retrain')


def csv_rows(results: Results) -> list[dict[str, Any]]:
  """One row per model of results.csv (fractions, not %)."""
  out = []
  for name, entry in results['models'].items():
    m = _main_metrics(entry)
    cost = entry.get('cost') or {}
    rel = cost.get('relative_to_retrain') or {}
    row = {'model': name, 'UA': m['UA'], 'RA': m['RA'], 'TA': m['TA'], 'MIA_efficacy': m['MIA'],
           'simple_MIA': _num(_get(entry, 'mia', 'simple_mia')), 'avg_gap': _num(entry.get('avg_gap')),
           'tow': _num(entry.get('tow')), 'gap_UA': m['gap_UA'], 'gap_RA': m['gap_RA'], 'gap_TA': m['gap_TA'],
           'gap_MIA': m['gap_MIA'], 'forgetting_quality': m['forgetting_quality'],
           'ulira_accuracy': m['ulira_accuracy'], 'val_accuracy': _num(_get(entry, 'val', 'accuracy')),
           'test_balanced_accuracy': _num(_get(entry, 'test', 'balanced_accuracy')),
           'test_macro_f1': _num(_get(entry, 'test', 'macro_f1')), 'test_roc_auc': _num(_get(entry, 'test', 'roc_auc'))}
    for k in results_lib.COST_KEYS:
      row[k] = _num(cost.get(k))
      row[f'{k}_vs_retrain'] = _num(rel.get(k))
    out.append(row)
  return out


def csv_text(results: Results) -> str:
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, lineterminator='\n', extrasaction='ignore')
  writer.writeheader()
  for row in csv_rows(results):
    writer.writerow({k: ('' if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
  return buffer.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Plots.


def _new_figure(n_panels: int, n_bars: int, *, height: float = 3.6, columns: int | None = None
                ) -> tuple[mpl_figure.Figure, list[Any]]:
  """A figure of `n_panels` axes (in rows of `columns`), each wide enough for `n_bars` bars."""
  columns = n_panels if columns is None else min(columns, n_panels)
  rows = -(-n_panels // columns)
  panel_width = min(max(5.0, 1.2 + 0.28 * n_bars), 12.0)
  fig = mpl_figure.Figure(figsize=(panel_width * columns, height * rows), layout='constrained')
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for ax in axes[n_panels:]:
    ax.set_visible(False)
  return fig, list(axes[:n_panels])


def _model_axis(ax: Any, names: Sequence[str]) -> None:
  ax.set_xticks(np.arange(len(names)))
  ax.set_xticklabels(names, rotation=30, ha='right')
  ax.grid(axis='y', alpha=0.3)


def _save(fig: mpl_figure.Figure, path: pathlib.Path) -> pathlib.Path:
  fig.savefig(path, dpi=110)
  return path


def plot_accuracy(results: Results, path: pathlib.Path) -> pathlib.Path:
  """Forget / retain / test accuracy per model; dashed lines at the retrained model's levels."""
  names = list(results['models'])
  splits = ('forget', 'retain', 'test')
  fig, (ax,) = _new_figure(1, len(names) * len(splits))
  width = 0.8 / len(splits)
  for i, split in enumerate(splits):
    values = [PCT * _num(_get(results['models'][n], split, 'accuracy')) for n in names]
    ax.bar(np.arange(len(names)) + (i - 1) * width, values, width, label=f'{split} accuracy',
           color=SPLIT_COLORS[split])
    level = PCT * _num(_get(results['models'].get(REFERENCE), split, 'accuracy'))
    if not math.isnan(level):
      ax.axhline(level, color=SPLIT_COLORS[split], linestyle='--', linewidth=1)
  _model_axis(ax, names)
  ax.set_ylabel('accuracy (%)')
  ax.set_ylim(0, 105)
  ax.set_title('Accuracy per split (dashed: retrain level)')
  fig.legend(loc='outside lower center', ncols=len(splits), fontsize='small')
  return _save(fig, path)


def plot_mia_avg_gap(results: Results, path: pathlib.Path) -> pathlib.Path:
  """MIA-efficacy and simple MIA per model, and SalUn's Avg. Gap per model."""
  names = list(results['models'])
  fig, (ax_mia, ax_gap) = _new_figure(2, 2 * len(names))
  x = np.arange(len(names))
  efficacy = [PCT * _num(_get(results['models'][n], 'mia', 'mia_efficacy')) for n in names]
  simple = [PCT * _num(_get(results['models'][n], 'mia', 'simple_mia')) for n in names]
  ax_mia.bar(x - 0.2, efficacy, 0.4, label='MIA-efficacy (higher = more forgotten)', color='#8c564b')
  ax_mia.bar(x + 0.2, simple, 0.4, label='simple MIA accuracy (50 = chance)', color='#7f7f7f')
  level = PCT * _num(_get(results['models'].get(REFERENCE), 'mia', 'mia_efficacy'))
  if not math.isnan(level):
    ax_mia.axhline(level, color='#8c564b', linestyle='--', linewidth=1, label='retrained model\'s MIA-efficacy')
  ax_mia.axhline(50, color='black', linestyle=':', linewidth=1)
  ax_mia.set_ylim(0, 105)
  ax_mia.set_ylabel('%')
  ax_mia.set_title('Membership inference on the forget set')
  _model_axis(ax_mia, names)
  ax_gap.bar(x, [PCT * _num(results['models'][n].get('avg_gap')) for n in names], 0.6, color='#17becf')
  ax_gap.set_title('Avg. Gap to retrain: mean |Δ| of UA, RA, TA, MIA (lower is better)', fontsize='medium')
  ax_gap.set_ylabel('points')
  _model_axis(ax_gap, names)
  fig.legend(*ax_mia.get_legend_handles_labels(), loc='outside lower center', ncols=3, fontsize='small')
  return _save(fig, path)


def _group_panels(key: str) -> list[tuple[str, str, str]]:
  """(split, metric, title) of the subgroup figure and table of a slicing key; difficulty is only scored on
  training examples, so retain replaces test there."""
  second = 'retain' if key in subgroups.DIFFICULTY_KEYS else 'test'
  return [('forget', 'accuracy', 'forget acc.'), (second, 'accuracy', f'{second} acc.'),
          ('forget', 'gap_to_retrain', 'forget |acc. − retrain acc.|'), ('mia', 'mia_efficacy', 'MIA-efficacy')]


def plot_subgroups(results: Results, key: str, path: pathlib.Path) -> pathlib.Path | None:
  """Per group of one slicing key: bars per model with bootstrap CIs, one panel per metric."""
  names = [n for n in results['models'] if _get(results['models'][n], 'slices', key)]
  panels = [p for p in _group_panels(key)
            if any(_get(results['models'][n], 'slices', key, p[0], p[1]) for n in names)]
  if not names or not panels:
    return None
  groups: list[str] = []
  for n in names:
    for split, metric, _ in panels:
      for g in (_get(results['models'][n], 'slices', key, split, metric, 'groups') or {}):
        if g not in groups:
          groups.append(g)
  fig, axes = _new_figure(len(panels), len(names) * len(groups), height=3.2, columns=2)
  width = 0.8 / len(groups)
  class_names = _get(results, 'evaluation', 'class_names') or []
  label = lambda g: (f'{g}: {class_names[int(g)]}'  # pylint: disable=g-long-lambda
                     if key == 'class' and str(g).isdigit() and int(g) < len(class_names) else str(g))
  colors = matplotlib.colormaps['tab10']
  for ax, (split, metric, title) in zip(axes, panels):
    for j, g in enumerate(groups):
      value, low, high = [], [], []
      for n in names:
        cell = _get(results['models'][n], 'slices', key, split, metric, 'groups', g) or {}
        v = PCT * _num(cell.get('value'))
        value.append(v)
        low.append(v - PCT * _num(cell.get('ci_low')))
        high.append(PCT * _num(cell.get('ci_high')) - v)
      err = np.clip(np.nan_to_num(np.asarray([low, high])), 0.0, None)
      ax.bar(np.arange(len(names)) + (j - (len(groups) - 1) / 2) * width, value, width, yerr=err, capsize=2,
             label=label(g), color=colors(j % 10), error_kw={'linewidth': 0.8})
    ax.set_title(title)
    if 'gap' in metric:
      ax.set_ylim(bottom=0)
      ax.set_ylabel('points')
    else:
      ax.set_ylim(0, 105)
      ax.set_ylabel('%')
    _model_axis(ax, names)
  fig.legend(*axes[0].get_legend_handles_labels(), title=key, loc='outside right upper', fontsize='small')
  fig.suptitle(f'By {key}: value per group, whiskers = bootstrap '
               f'{_fmt(_get(results, "evaluation", "ci"), 0, 100.0)} % CI')
  return _save(fig, path)


def plot_cost_vs_gap(results: Results, path: pathlib.Path) -> pathlib.Path | None:
  """Avg. Gap against time relative to retraining; the original model's gap (no unlearning) as a line."""
  points = []
  for name, entry in results['models'].items():
    rel = _num(_get(entry, 'cost', 'relative_to_retrain', 'seconds'))
    gap = _num(entry.get('avg_gap'))
    if name != results_lib.ORIGINAL and rel > 0 and not math.isnan(gap):
      points.append((name, rel, gap))
  if not points:
    return None
  fig, (ax,) = _new_figure(1, 28, height=4.2)
  # A legend entry per model (marker and colour), not text next to the points: close points would overlap.
  colors, markers = matplotlib.colormaps['tab20'], 'os^vD<>pP*Xh'
  for i, (name, rel, gap) in enumerate(points):
    ax.scatter(rel, PCT * gap, s=48, color='#d62728' if name == REFERENCE else colors(i % 20),
               marker=markers[i % len(markers)], zorder=3, label=name, edgecolors='black', linewidths=0.4)
  top = max(PCT * gap for _, _, gap in points)
  original_gap = PCT * _num(_get(results['models'].get(results_lib.ORIGINAL), 'avg_gap'))
  if not math.isnan(original_gap):
    ax.axhline(original_gap, color='gray', linestyle='--', linewidth=1,
               label='original model (no unlearning)')
    top = max(top, original_gap)
  ax.legend(loc='center left', bbox_to_anchor=(1.01, 0.5), fontsize='small')
  ax.set_xscale('log')
  ax.xaxis.set_major_locator(mpl_ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
  ax.xaxis.set_major_formatter(mpl_ticker.FuncFormatter(lambda v, _: f'{v:g}×'))
  ax.xaxis.set_minor_formatter(mpl_ticker.NullFormatter())
  rel = [r for _, r, _ in points]
  ax.set_xlim(min(rel) / 1.5, max(rel) * 1.5)
  ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
  ax.set_xlabel('training-loop seconds / retrain seconds (log scale)')
  ax.set_ylabel('Avg. Gap to retrain (points; lower is better)')
  ax.set_title('Cost vs Avg. Gap (lower left is better)')
  ax.grid(alpha=0.3, which='both')
  return _save(fig, path)


def write_plots(results: Results, directory: str | pathlib.Path) -> list[pathlib.Path]:
  """Every figure of the module docstring that the results can fill; returns the files written."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  written = [plot_accuracy(results, directory / 'accuracy.png'),
             plot_mia_avg_gap(results, directory / 'mia_avg_gap.png')]
  same = _get(results, 'evaluation', 'slices_same_groups') or {}
  for key in [k for k in _get(results, 'evaluation', 'slices') or [] if k not in same]:
    name = key if key.startswith('difficulty') else f'subgroups_{key}'
    written.append(plot_subgroups(results, key, directory / f'{name}.png'))
  written.append(plot_cost_vs_gap(results, directory / 'cost_vs_avg_gap.png'))
  return [p for p in written if p is not None]


def load_results(workdir: str | pathlib.Path) -> dict[str, Any]:
  """A workdir's results.json."""
  path = pathlib.Path(workdir) / results_lib.RESULTS_FILE
  if not path.exists():
    raise errors.DataError(f'{path} does not exist; run the experiment, or recompute it from outputs/')
  return json.loads(path.read_text())


def write_report(workdir: str | pathlib.Path, results: Results | None = None, *, plots: bool = True
                 ) -> dict[str, Any]:
  """Writes results.md, results.csv and the plots of a workdir (from `results`, else its results.json).

  Returns:
    {'markdown': path, 'csv': path, 'plots': [paths]}.
  """
  workdir = pathlib.Path(workdir)
  if results is None:
    results = load_results(workdir)
  markdown, table = workdir / 'results.md', workdir / 'results.csv'
  for target, text in ((markdown, markdown_report(results)), (table, csv_text(results))):
    tmp = target.with_name(target.name + '.tmp')
    tmp.write_text(text)
    tmp.replace(target)
  figures = write_plots(results, workdir / PLOTS_DIR) if plots else []
  return {'markdown': markdown, 'csv': table, 'plots': figures}
