"""From per-example model outputs to `results.json` and the markdown table.

Per model and split, the per-example logits are saved (`outputs/<model>.npz`: ids, labels, logits per
split) and summarised with the accuracy family of `metrics.summary`; costs are reported in absolute terms
and as a fraction of the retrained model's (the reference every unlearning method must undercut).
"""
from __future__ import annotations

import math
import os
import pathlib
from typing import Any, Mapping

import numpy as np

from medunlearn_jax.data import dataset as ds_lib
from medunlearn_jax.evaluation import metrics

COST_KEYS = ('seconds', 'compile_seconds', 'steps', 'examples', 'flops')


def save_outputs(path: str | os.PathLike, logits: Mapping[str, np.ndarray],
                 splits: Mapping[str, ds_lib.Split]) -> None:
  """Writes one model's per-example outputs atomically: `<split>/ids|labels|logits` arrays."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arrays = {}
  for name, values in logits.items():
    arrays[f'{name}/ids'] = splits[name].ids
    arrays[f'{name}/labels'] = splits[name].labels
    arrays[f'{name}/logits'] = np.asarray(values, np.float32)
  tmp = path.with_name(path.name + '.tmp.npz')
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def load_outputs(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """Reads `save_outputs`' file back as {split: {'ids', 'labels', 'logits'}}."""
  out: dict[str, dict[str, np.ndarray]] = {}
  with np.load(path, allow_pickle=False) as data:
    for key in data.files:
      split, field = key.split('/')
      out.setdefault(split, {})[field] = data[key]
  return out


def relative_cost(cost: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
  """Each cost as a fraction of the reference's (NaN where the reference is 0)."""
  return {k: (float(cost[k]) / float(reference[k]) if reference.get(k) else math.nan)
          for k in COST_KEYS if k in cost}


def build_results(info: ds_lib.DatasetInfo, splits: Mapping[str, ds_lib.Split],
                  outputs: Mapping[str, Mapping[str, np.ndarray]],
                  costs: Mapping[str, Mapping[str, float]]) -> dict[str, Any]:
  """The `results.json` structure: {'models': {name: {split: metrics, 'cost': {...}}}}."""
  models: dict[str, Any] = {}
  for name, per_split in outputs.items():
    entry = {split: metrics.summary(logits, splits[split].labels, info.num_classes)
             for split, logits in per_split.items()}
    if name in costs:
      cost = dict(costs[name])
      if 'retrain' in costs:
        cost['relative_to_retrain'] = relative_cost(cost, costs['retrain'])
      entry['cost'] = cost
    if 'forget' in entry:
      entry['forget']['unlearning_accuracy'] = metrics.unlearning_accuracy(entry['forget']['accuracy'])
    models[name] = entry
  return {'dataset': info.name, 'task': info.task, 'models': models}


def _fmt(value: Any, digits: int = 3) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '–'
  return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def markdown_table(results: Mapping[str, Any]) -> str:
  """One row per model: accuracy on retain/forget/val/test, test ROC-AUC, and cost vs retrain."""
  header = ('| model | retain acc | forget acc | val acc | test acc | test AUC | seconds | steps | '
            'examples | cost / retrain |')
  lines = [header, '|' + '---|' * (header.count('|') - 1)]
  for name, entry in results['models'].items():
    cost = entry.get('cost', {})
    rel = cost.get('relative_to_retrain', {}).get('seconds')
    row = [name] + [_fmt(entry.get(s, {}).get('accuracy')) for s in ('retain', 'forget', 'val', 'test')]
    row += [_fmt(entry.get('test', {}).get('roc_auc')), _fmt(cost.get('seconds'), 1),
            _fmt(cost.get('steps')), _fmt(cost.get('examples')), _fmt(rel, 2)]
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines)
