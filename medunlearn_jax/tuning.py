"""Study 4, the cost of hyper-parameter tuning: a grid per algorithm, selected on validation, fully costed.

"Machine Unlearning for Medical Imaging" (Nasirigerdeh et al., arXiv 2407.07539) finds that unlearning
algorithms need extra compute for hyper-parameter tuning; this module measures how much. For each algorithm
its documented search space (`config.algo.<name>.search_space`) is gridded over `config.tuning.dims`
(learning rate × epochs by default). All learning rates of one setting of the other dimensions train side by
side as one vmapped population (`sweeps.run_population`; the learning rate enters as a per-model scale of
the update, which scales every learning rate of the algorithm). Each point is scored on the validation set
with the stated criterion

    val_gap = mean(|UA − UA_retrain|, |RA − RA_retrain|, |VA − VA_retrain|)

(the Avg. Gap of Fan et al., ICLR 2024, with validation accuracy standing in for test accuracy so that the
test set stays untouched by the selection), the smallest wins, and the total compute of the search (seconds
without compilation, compile seconds, model-steps, FLOPs, and each as a multiple of one retrain) is reported
next to the cost of the chosen configuration run alone.
"""
from __future__ import annotations

import itertools
import math
import os
import pathlib
from typing import Any, Mapping, Sequence

from absl import logging
import ml_collections
import numpy as np

from medunlearn_jax import engine
from medunlearn_jax import errors
from medunlearn_jax import pipeline
from medunlearn_jax import sweeps
from medunlearn_jax.evaluation import populations as populations_lib

TUNING_FILE = 'tuning.json'
SPLITS = ('forget', 'retain', 'val', 'test')


def _accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
  if labels.ndim == 2:  # Multi-label: exact match, ignoring labels < 0.
    return float(np.mean(np.all(((logits > 0) == (labels > 0)) | (labels < 0), axis=-1)))
  return float(np.mean(np.argmax(logits, -1) == labels))


def val_gap(point: Mapping[str, float], reference: Mapping[str, float]) -> float:
  """The selection criterion (module docstring): mean |Δ| of forget, retain and validation accuracy."""
  return float(np.mean([abs(point[s] - reference[s]) for s in ('forget', 'retain', 'val')]))


def avg_gap_test(point: Mapping[str, float], reference: Mapping[str, float]) -> float:
  """The same gap on the test split, reported (never used for selection)."""
  return float(np.mean([abs(point[s] - reference[s]) for s in ('forget', 'retain', 'test')]))


def grid(hparams: ml_collections.ConfigDict, dims: Sequence[str]) -> tuple[list[float] | None, list[dict]]:
  """(learning rates swept side by side or None, the settings of the other dimensions)."""
  space = hparams.get('search_space') or {}
  used = [d for d in dims if d in space] or sorted(space)[:2]
  if not used:
    raise errors.ConfigError('algorithm has no search_space to tune')
  lrs = [float(v) for v in space['lr']] if 'lr' in used else None
  others = [d for d in used if d != 'lr']
  settings = [dict(zip(others, values)) for values in itertools.product(*(space[d] for d in others))]
  return lrs, settings or [{}]


def _with(hparams: ml_collections.ConfigDict, values: Mapping[str, Any]) -> ml_collections.ConfigDict:
  out = ml_collections.ConfigDict(hparams.to_dict())
  for key, value in values.items():
    out[key] = type(out[key])(value) if key in out and out[key] is not None else value
  return out


def _add(total: dict[str, float], cost: engine.Cost, models: int) -> None:
  total['seconds'] += cost.seconds
  total['compile_seconds'] += cost.compile_seconds
  total['model_steps'] += cost.steps * models
  total['flops'] += cost.flops


def tune_algorithm(exp: pipeline.Experiment, name: str, original: Any, reference: Mapping[str, float],
                   dims: Sequence[str]) -> dict[str, Any]:
  """Grid search of one algorithm; returns every point, the choice and the costs."""
  c = exp.config
  base_hp = c.algo[name]
  lrs, settings = grid(base_hp, dims)
  search = {'seconds': 0.0, 'compile_seconds': 0.0, 'model_steps': 0, 'flops': 0.0}
  points = []
  for setting in settings:
    hp = _with(base_hp, dict(setting, **({'lr': lrs[0]} if lrs else {})))
    algorithm, start, context, setup = pipeline.build_algorithm(exp, name, original, hp)
    k = len(lrs) if lrs else 1
    stacked, cost = sweeps.run_population(algorithm, exp.splits, start, context, mesh=exp.mesh,
                                          options=exp.options, seeds=[c.seed] * k,
                                          lr_scales=[lr / lrs[0] for lr in lrs] if lrs else None,
                                          stock_layers=exp.problem.stock_layers)
    cost.add_setup(setup)
    _add(search, cost, k)
    logits = populations_lib.population_outputs(exp.problem, stacked, exp.splits, names=SPLITS,
                                                 batch_size=c.eval_batch_size, mesh=exp.mesh)
    for i in range(k):
      acc = {s: _accuracy(logits[s][i], exp.splits[s].labels) for s in SPLITS}
      values = dict(setting, **({'lr': lrs[i]} if lrs else {}))
      points.append({'hparams': values, 'accuracy': acc, 'val_gap': val_gap(acc, reference),
                     'test_gap': avg_gap_test(acc, reference)})
  best = min(range(len(points)), key=lambda i: (points[i]['val_gap'], i))
  chosen = points[best]
  algorithm, start, context, setup = pipeline.build_algorithm(
      exp, name, original, _with(base_hp, chosen['hparams']))
  _, alone = engine.run(algorithm, exp.splits, start, context, mesh=exp.mesh, options=exp.options,
                        setup=setup, stock_layers=exp.problem.stock_layers)
  logging.info('tuning %s: %d points, chosen %s (val gap %.4f)', name, len(points), chosen['hparams'],
               chosen['val_gap'])
  return {'dims': sorted({d for p in points for d in p['hparams']}), 'points': points, 'chosen': chosen,
          'search_cost': search, 'chosen_cost': {'seconds': alone.seconds, 'compile_seconds': alone.compile_seconds,
                                                 'model_steps': alone.steps, 'flops': alone.flops}}


def run_tuning(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Trains (or loads) the original and retrained models, then tunes every configured algorithm."""
  exp, trained, costs = pipeline.train_references(config, workdir)
  predict = exp.predict
  reference = {s: _accuracy(engine.predict_split(predict, trained['retrain'], exp.splits[s],
                                                 batch_size=config.eval_batch_size, mesh=exp.mesh),
                            exp.splits[s].labels) for s in SPLITS}
  retrain = costs['retrain']
  retrain_cost = {'seconds': retrain.seconds, 'model_steps': retrain.steps, 'flops': retrain.flops}
  out: dict[str, Any] = {'criterion': 'val_gap = mean |Δ| of forget, retain and val accuracy vs retrain',
                         'retrain_accuracy': reference, 'retrain_cost': retrain_cost, 'algorithms': {}}
  for name in pipeline.algorithm_names(config):
    dims = list(config.get('tuning', {}).get('dims', ('lr', 'epochs')))
    entry = tune_algorithm(exp, name, trained['original'], reference, dims)
    for key in ('search_cost', 'chosen_cost'):
      entry[key]['relative_to_retrain'] = {
          k: (entry[key][k] / retrain_cost[k] if retrain_cost[k] else math.nan) for k in retrain_cost}
    out['algorithms'][name] = entry
  pipeline.write_json(exp.workdir / TUNING_FILE, out)
  if pipeline.is_writer():
    write_report(exp.workdir, out)
  return out


def markdown(tuning: Mapping[str, Any]) -> str:
  """The tuning table: chosen setting, its gaps, and search vs chosen-alone cost as multiples of retrain."""
  lines = ['# Hyper-parameter tuning cost', '', f'Selection criterion: {tuning["criterion"]}.', '',
           '| algorithm | grid points | chosen | val gap | test gap | search time × retrain | '
           'search FLOPs × retrain | chosen time × retrain | chosen FLOPs × retrain |',
           '|---|---|---|---|---|---|---|---|---|']
  for name, entry in tuning['algorithms'].items():
    s, a = entry['search_cost']['relative_to_retrain'], entry['chosen_cost']['relative_to_retrain']
    chosen = ', '.join(f'{k}={v:g}' for k, v in entry['chosen']['hparams'].items())
    lines.append(f'| {name} | {len(entry["points"])} | {chosen} | {entry["chosen"]["val_gap"]:.4f} | '
                 f'{entry["chosen"]["test_gap"]:.4f} | {s["seconds"]:.2f} | {s["flops"]:.2f} | '
                 f'{a["seconds"]:.2f} | {a["flops"]:.2f} |')
  return '\n'.join(lines) + '\n'


def write_report(workdir: pathlib.Path, tuning: Mapping[str, Any]) -> None:
  """tuning.md and tuning.png (search cost vs achieved test gap; chosen-alone cost for contrast)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  (workdir / 'tuning.md').write_text(markdown(tuning))
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for name, entry in tuning['algorithms'].items():
    gap = entry['chosen']['test_gap']
    search = entry['search_cost']['relative_to_retrain']['flops']
    alone = entry['chosen_cost']['relative_to_retrain']['flops']
    ax.plot([alone, search], [gap, gap], color='0.7', zorder=1)
    ax.scatter([search], [gap], marker='o', zorder=2, label=f'{name} (search)')
    ax.scatter([alone], [gap], marker='x', color='k', zorder=3)
  ax.axvline(1.0, ls='--', color='k', lw=1, label='one retrain')
  ax.set_xscale('log')
  ax.set_xlabel('compute, FLOPs as a multiple of one retrain (x: chosen setting alone)')
  ax.set_ylabel('test gap to retrain of the chosen setting')
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(workdir / 'tuning.png', dpi=110)
  plt.close(fig)
