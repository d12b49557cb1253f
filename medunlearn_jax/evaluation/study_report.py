"""Tables and plots of a study (`studies.run_study`): mean ± std over seeds per arm and algorithm."""
from __future__ import annotations

import math
import pathlib
import re
from typing import Any, Mapping

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

TABLE_METRICS = ('forget_acc', 'retain_acc', 'test_acc', 'avg_gap', 'mia_efficacy', 'seconds')
# Units of the plots, as in the tables: accuracies in %, gaps in points.
UNITS = {'test_acc': '%', 'forget_acc': '%', 'avg_gap': 'points'}


def _pm(stat: Mapping[str, float], scale: float = 100.0) -> str:
  mean, std = stat.get('mean', math.nan), stat.get('std', math.nan)
  if mean is None or math.isnan(mean):
    return '–'
  return f'{mean * scale:.2f} ± {std * scale:.2f}'


def markdown(summary: Mapping[str, Any]) -> str:
  """One table: rows (arm, model), columns the study metrics as mean ± std (accuracies in %)."""
  header = ['arm', 'model'] + [m for m in TABLE_METRICS]
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  for arm, models in summary['arms'].items():
    for model, metrics in models.items():
      cells = [_pm(metrics[m], 1.0 if m == 'seconds' else 100.0) for m in TABLE_METRICS]
      lines.append('| ' + ' | '.join([arm, model] + cells) + ' |')
  text = [f'# Study: {summary.get("kind")} (seeds {summary.get("seeds")})', '', *lines]
  text += signal_section(summary)
  if 'sex_gap' in summary:
    text += ['', '## Forget-accuracy gap to retrain by sex arm, in points (bootstrap 95 % CI over forget '
             'examples)', '', '| model | F gap | M gap | F − M | differs? |', '|---|---|---|---|---|']
    for model, entry in summary['sex_gap'].items():
      arms = [k for k in entry if k.startswith('sex_')]
      f, m = entry[arms[0]], entry[arms[1]]
      d = entry['difference_f_minus_m']
      text.append(f'| {model} | {100 * f["gap"]:.2f} [{100 * f["ci95"][0]:.2f}, {100 * f["ci95"][1]:.2f}] | '
                  f'{100 * m["gap"]:.2f} [{100 * m["ci95"][0]:.2f}, {100 * m["ci95"][1]:.2f}] | '
                  f'{100 * d["value"]:+.2f} [{100 * d["ci95"][0]:+.2f}, {100 * d["ci95"][1]:+.2f}] | '
                  f'{"yes" if d["differs"] else "no"} |')
  return '\n'.join(text) + '\n'


def _interval(stat: Mapping[str, float], scale: float = 100.0, digits: int = 2) -> str:
  if stat.get('mean') is None or math.isnan(stat['mean']):
    return '–'
  if math.isnan(stat.get('ci_low', math.nan)):
    return f'{stat["mean"] * scale:+.{digits}f}'
  return (f'{stat["mean"] * scale:+.{digits}f} [{stat["ci_low"] * scale:+.{digits}f}, '
          f'{stat["ci_high"] * scale:+.{digits}f}]')


def signal_section(summary: Mapping[str, Any]) -> list[str]:
  """The forget signal of each arm and, where it lets algorithms be ranked, which beat doing nothing."""
  signal, vs_original = summary.get('signal') or {}, summary.get('vs_original') or {}
  if not signal:
    return []
  out = ['', '## Forget signal per arm (original − retrain on the forget set; mean over seeds, 95 % t-interval)',
         '', '| arm | accuracy (points) | MIA-efficacy (points) | loss | runs clearly above zero | ranks algorithms? |',
         '|---|---|---|---|---|---|']
  for arm, s in signal.items():
    out.append(f'| {arm} | {_interval(s["accuracy"])} | {_interval(s["mia_efficacy"])} | '
               f'{_interval(s["loss"], 1.0, 3)} | {s["clear_runs"]} of {s["runs"]} | '
               f'{"yes" if s["can_rank"] else "**no**: nothing to forget"} |')
  if vs_original:
    out += ['', '## Better than doing nothing? Avg. Gap of the original minus the algorithm\'s (points; mean '
            'over seeds, 95 % t-interval); credited only where the interval is above zero and the arm can rank',
            '', '| arm | model | improvement | credited |', '|---|---|---|---|']
    for arm, models in vs_original.items():
      can_rank = (signal.get(arm) or {}).get('can_rank', False)
      for model, c in models.items():
        verdict = ('yes' if c['credited'] else 'no') if can_rank else 'no (no forget signal)'
        out.append(f'| {arm} | {model} | {_interval(c)} | {verdict} |')
  return out


def _size_of(arm: str) -> tuple[str, float] | None:
  match = re.fullmatch(r'(images|patients)_([0-9.eE+-]+)', arm)
  return (match.group(1), float(match.group(2))) if match else None


def plot(summary: Mapping[str, Any], path: pathlib.Path) -> None:
  """Forget size: test accuracy and Avg. Gap over forget fraction (retrain dashed). Other studies: bars per
  arm of forget/test accuracy and Avg. Gap with std error bars."""
  arms = summary['arms']
  models = sorted({m for a in arms.values() for m in a})
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  metrics = ('test_acc', 'forget_acc', 'avg_gap')
  if summary.get('kind') == 'forget_size':
    for ax, metric in zip(axes, metrics):
      for model in models:
        for kind in ('images', 'patients'):
          points = sorted((s[1], arms[a][model][metric]) for a in arms if (s := _size_of(a)) and s[0] == kind
                          and model in arms[a])
          if not points:
            continue
          xs = [p[0] * 100 for p in points]
          ys = [100 * p[1]['mean'] for p in points]
          es = [100 * p[1]['std'] for p in points]
          style = '--' if model == 'retrain' else '-'
          ax.errorbar(xs, ys, yerr=es, fmt=style + ('o' if kind == 'images' else 's'), capsize=3,
                      label=f'{model} ({kind})')
      ax.set_xlabel('forget set size (% of training set)')
      ax.set_ylabel(UNITS[metric])
      ax.set_title(metric)
      ax.grid(alpha=0.3)
  else:
    names = list(arms)
    width = 0.8 / max(len(models), 1)
    for ax, metric in zip(axes, metrics):
      for i, model in enumerate(models):
        ys = [100 * arms[a].get(model, {}).get(metric, {}).get('mean', math.nan) for a in names]
        es = [100 * arms[a].get(model, {}).get(metric, {}).get('std', math.nan) for a in names]
        ax.bar([j + i * width for j in range(len(names))], ys, width, yerr=es, capsize=2, label=model,
               hatch='//' if model == 'retrain' else None)
      ax.set_xticks([j + width * (len(models) - 1) / 2 for j in range(len(names))], names, rotation=15)
      ax.set_ylabel(UNITS[metric])
      ax.set_title(metric)
      ax.grid(alpha=0.3, axis='y')
  axes[0].legend(fontsize=7, loc='upper right')  # 'best' searches every point: slow, and warns.
  fig.suptitle(f'Study: {summary.get("kind")} — mean ± std over seeds {summary.get("seeds")}')
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(workdir: pathlib.Path, summary: Mapping[str, Any]) -> None:
  """Writes study.md and study.png into the study's workdir."""
  (workdir / 'study.md').write_text(markdown(summary))
  plot(summary, workdir / 'study.png')
