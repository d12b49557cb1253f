"""From the per-example output caches of a run to `results.json`.

Every number is computed from the caches (`evaluation.cache`, `workdir/outputs/<model>.npz`) and the stage
costs (`workdir/outputs/costs.json`); nothing re-runs a model. `evaluate_workdir` recomputes `results.json`
from a workdir alone, and gives the same file as the end of an experiment.

results.json:
  dataset, task, config          what was run
  evaluation                     bootstrap/attack settings, slicing keys used and skipped (with the reason)
  models.<name>:
    retain|forget|val|test       accuracy family of `metrics.summary` (multi-label: `metrics.multilabel_summary`);
                                 forget also holds unlearning_accuracy = UA = 1 - forget accuracy
    mia                          simple_mia (NeurIPS 2023 challenge kit: forget vs test losses) and
                                 mia_efficacy (Jia et al. 2023 / SalUn: retain vs test confidences, applied
                                 to forget) — `evaluation.privacy`
    gap_to_retrain               |metric - retrained model's metric| per split and for the MIAs (the target is
                                 the retrained model's value, not 0)
    avg_gap                      SalUn's Avg. Gap over UA, RA, TA and MIA-efficacy (`gaps.avg_gap`)
    tow                          Tug-of-War, Π(1 - |Δacc|) over forget/retain/test (`gaps.tow`)
    slices                       per key (sex, age, class, difficulty, ...): `subgroups.slice_model`
    cost                         seconds (no compilation), compile_seconds, steps, examples, flops, and each
                                 as a fraction of retrain's (relative_to_retrain)
    populations                  HOOK for the populations of models (`pipeline.run_populations` with
                                 `medunlearn_jax.sweeps`): this model's entry of workdir/populations.json
                                 (forgetting quality from per-example ε, U-LiRA, cost); null without one
  populations                    that file's run-level fields (seeds, retrain_cost), or null
"""
from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Any, Mapping, Sequence

from absl import logging
import numpy as np

from medunlearn_jax import errors
from medunlearn_jax.evaluation import cache as cache_lib
from medunlearn_jax.evaluation import gaps
from medunlearn_jax.evaluation import metrics
from medunlearn_jax.evaluation import privacy
from medunlearn_jax.evaluation import subgroups

COST_KEYS = ('seconds', 'compile_seconds', 'steps', 'examples', 'flops')
EVAL_SPLITS = subgroups.EVAL_SPLITS
REFERENCE, ORIGINAL = 'retrain', 'original'
N_BOOT = 2000
OUTPUTS_DIR = 'outputs'
COSTS_FILE = 'costs.json'          # under outputs/: {model: engine.Cost.to_json()}
INFO_FILE = 'info.json'            # under outputs/: dataset, task, class names, config summary
POPULATIONS_FILE = 'populations.json'  # in the workdir: {'models': {name: {...}}, 'seeds', 'retrain_cost'}
RESULTS_FILE = 'results.json'

Cache = Mapping[str, np.ndarray]


# ----------------------------------------------------------------------------------------------------------
# Files.


def write_json(path: str | os.PathLike, data: Any) -> None:
  """Atomic JSON write (temporary file + rename); NaN is written as NaN, as `json` does by default."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_text(json.dumps(data, indent=1, default=_json_default))
  os.replace(tmp, path)


def _json_default(value: Any) -> Any:
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f'not JSON serialisable: {type(value)}')


def model_path(workdir: str | os.PathLike, model: str) -> pathlib.Path:
  return pathlib.Path(workdir) / OUTPUTS_DIR / f'{model}.npz'


def load_outputs(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
  """A model's cache per split: {split: {'ids', 'labels', 'logits', 'loss', 'pred', ...}}."""
  return cache_lib.split_view(cache_lib.load_cache(path))


def save_run(workdir: str | os.PathLike, caches: Mapping[str, Cache], costs: Mapping[str, Mapping[str, float]],
             info: Mapping[str, Any]) -> None:
  """Writes what `evaluate_workdir` reads: one cache per model, the stage costs and the run info."""
  outputs = pathlib.Path(workdir) / OUTPUTS_DIR
  for name, cache in caches.items():
    cache_lib.save_cache(outputs / f'{name}.npz', cache)
  # The model list (in order) is the keys of costs.json, so a model file left over from an earlier
  # algorithm list in the same workdir is not reported.
  write_json(outputs / COSTS_FILE, {name: dict(costs.get(name, {})) for name in caches})
  write_json(outputs / INFO_FILE, dict(info))


def load_run(workdir: str | os.PathLike) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any],
                                                  dict[str, Any], dict[str, Any] | None]:
  """(caches, costs, info, populations) of a workdir, as `save_run` (and the sweeps) left them."""
  outputs = pathlib.Path(workdir) / OUTPUTS_DIR
  costs_path, info_path = outputs / COSTS_FILE, outputs / INFO_FILE
  costs = json.loads(costs_path.read_text()) if costs_path.exists() else {}
  info = json.loads(info_path.read_text()) if info_path.exists() else {}
  if costs:
    names = list(costs)
  else:
    found = sorted(p.stem for p in outputs.glob('*.npz') if p.name != EPOCHS_FILE)
    names = [n for n in (ORIGINAL, REFERENCE) if n in found] + [n for n in found if n not in (ORIGINAL, REFERENCE)]
  if not names:
    raise errors.DataError(f'{outputs} holds no model outputs; run the experiment first')
  caches = {name: cache_lib.load_cache(outputs / f'{name}.npz') for name in names}
  return caches, costs, info, load_populations(workdir)


# The original's per-epoch correctness (written while it trains; learning-dynamics difficulty).
EPOCHS_FILE = 'original_epochs.npz'
# Files and stages that belong to a model of another name (Amnesiac's replay of the original's training).
_OWNER = {'amnesiac_record': 'amnesiac', EPOCHS_FILE.removesuffix('.npz'): ORIGINAL}


def files_not_in_results(workdir: str | os.PathLike, models: Sequence[str]) -> dict[str, list[str]]:
  """{model: [its files]} for the output caches and checkpoint folders in `workdir` of models that are not
  in `models` (an algorithm dropped from a later run's list): kept, since they may have cost hours, but
  reported, so that nobody mistakes them for part of the results."""
  workdir = pathlib.Path(workdir)
  out: dict[str, list[str]] = {}
  checkpoints = workdir / 'checkpoints'
  stages = [p for p in sorted(checkpoints.iterdir()) if p.is_dir()] if checkpoints.is_dir() else []
  for path in sorted((workdir / OUTPUTS_DIR).glob('*.npz')) + stages:
    owner = _OWNER.get(path.name.removesuffix('.npz'), path.name.removesuffix('.npz'))
    if owner not in models:
      out.setdefault(owner, []).append(str(path.relative_to(workdir)))
  return out


def load_populations(workdir: str | os.PathLike) -> dict[str, Any] | None:
  """workdir/populations.json (the populations of models of `pipeline.run_populations`), if any."""
  path = pathlib.Path(workdir) / POPULATIONS_FILE
  return json.loads(path.read_text()) if path.exists() else None


# ----------------------------------------------------------------------------------------------------------
# Metrics of one model.


def relative_cost(cost: Mapping[str, float], reference: Mapping[str, float]) -> dict[str, float]:
  """Each cost as a fraction of the reference's (NaN where the reference is 0)."""
  return {k: (float(cost[k]) / float(reference[k]) if reference.get(k) else math.nan)
          for k in COST_KEYS if k in cost}


def split_summary(rows: Cache, num_classes: int) -> dict[str, Any]:
  """The accuracy family of one split's rows (single- or multi-label, from the label's shape)."""
  if cache_lib.is_multilabel(rows):
    return metrics.multilabel_summary(rows['logits'], rows['label'])
  return metrics.summary(rows['logits'], rows['label'], num_classes)


ATTACK_SEEDS = 5  # Attack repetitions: one seed's balancing subsample alone moves the MIAs by 2-3.5 points.


def attack_verdicts(cache: Cache, *, seed: int = 0, n_seeds: int = ATTACK_SEEDS
                    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """The two population MIAs of one model over `n_seeds` attack seeds, and per-row verdicts for slicing.

  Returns:
    ({'simple_mia', 'mia_efficacy', 'simple_mia_std', 'mia_efficacy_std', 'attack_seeds'},
     {'simple_mia': (N,), 'mia_efficacy': (N,)}): each attack's mean and standard deviation over the seeds
    seed, seed + 1, ... (`privacy.simple_mia` on forget vs test losses; `privacy.mia_efficacy` on
    retain/test/forget true-class confidences), and per cache row the first seed's verdicts: the simple-MIA
    attacker's out-of-fold correctness (forget and test rows) and the MIA-efficacy attacker's non-member
    verdict (forget rows), NaN elsewhere. Values are NaN when a set is too small for the attack.
  """
  split = np.asarray(cache['split'])
  is_f, is_t, is_r = split == 'forget', split == 'test', split == 'retain'
  loss, confidence = np.asarray(cache['loss']), np.asarray(cache['confidence'])
  n = len(split)
  runs = {'simple_mia': [], 'mia_efficacy': []}
  rows = {'simple_mia': np.full(n, np.nan), 'mia_efficacy': np.full(n, np.nan)}
  for s in range(seed, seed + n_seeds):
    if is_f.sum() >= 2 and is_t.sum() >= 2:
      runs['simple_mia'].append(privacy.simple_mia(loss[is_f], loss[is_t], seed=s))
      if s == seed:
        rows['simple_mia'][is_f], rows['simple_mia'][is_t] = privacy.simple_mia_predictions(
            loss[is_f], loss[is_t], seed=s)
    if is_f.any() and is_r.any() and is_t.any():
      non_member = privacy.mia_efficacy_predictions(confidence[is_r], confidence[is_t], confidence[is_f], seed=s)
      runs['mia_efficacy'].append(float(np.mean(non_member)))  # = privacy.mia_efficacy, without a second fit
      if s == seed:
        rows['mia_efficacy'][is_f] = non_member
  values: dict[str, float] = {}
  for name, found in runs.items():
    values[name] = float(np.mean(found)) if found else math.nan
    values[f'{name}_std'] = float(np.std(found)) if found else math.nan
  values['attack_seeds'] = n_seeds
  return values, rows


def _gaps(entry: Mapping[str, Any], reference: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for name in (*EVAL_SPLITS, 'mia'):
    if name in entry and name in reference:
      out[name] = {k: v for k, v in gaps.abs_gaps(entry[name], reference[name]).items()
                   if k != 'n' and k != 'attack_seeds' and not k.endswith('_std')}
  return out


def _uarata_mia(entry: Mapping[str, Any]) -> tuple[float, float, float, float]:
  return (entry['forget']['unlearning_accuracy'], entry['retain']['accuracy'], entry['test']['accuracy'],
          entry['mia']['mia_efficacy'])


def _accuracies(entry: Mapping[str, Any]) -> dict[str, float]:
  return {s: entry[s]['accuracy'] for s in ('forget', 'retain', 'test')}


# ----------------------------------------------------------------------------------------------------------
# A whole run.


def _skipped_slices(reference: Cache, difficulty: Cache | None, used: Sequence[str]) -> dict[str, str]:
  reasons = {}
  for key in subgroups.SLICE_KEYS:
    if key in used:
      continue
    try:
      subgroups.group_labels(reference, key, difficulty=difficulty)
    except errors.UserError as e:
      reasons[key] = str(e).split(';')[0]
  return reasons


def evaluate_caches(caches: Mapping[str, Cache], costs: Mapping[str, Mapping[str, float]] | None = None, *,
                    info: Mapping[str, Any] | None = None, populations: Mapping[str, Any] | None = None,
                    n_boot: int = N_BOOT, seed: int = 0, ci: float = 0.95,
                    age_edges: Sequence[float] = subgroups.AGE_EDGES,
                    attack_seeds: int = ATTACK_SEEDS) -> dict[str, Any]:
  """The results dict of a run from its caches and costs (see the module docstring).

  Args:
    caches: {model: cache}, row-aligned (same examples in the same order); 'retrain' is the reference of
      every gap, 'original' the source of the difficulty scores (its cache's difficulty columns, added
      here with `cache.add_difficulty` when absent).
    costs: {model: engine.Cost.to_json()}.
    info: 'dataset', 'task', 'num_classes', 'class_names', 'config' of the run.
    populations: the contents of workdir/populations.json: each `populations['models'][name]` is stored
      under models.<name>.populations, the other fields under the top-level 'populations'.
    n_boot, seed, ci: bootstrap replicates, seed of bootstraps and attacks, CI coverage.
    age_edges: age bin edges of the age slices.
    attack_seeds: repetitions of each population MIA (`attack_verdicts`).
  """
  if attack_seeds < 1 or n_boot < 0:
    raise errors.ConfigError(f'evaluation needs attack_seeds >= 1 and n_boot >= 0, got {attack_seeds}, {n_boot}')
  cache_lib.check_aligned(caches)
  info, costs = dict(info or {}), dict(costs or {})
  per_model_populations = dict((populations or {}).get('models') or {})
  first = next(iter(caches.values()))
  num_classes = int(np.shape(first['logits'])[1])
  if info.get('num_classes') not in (None, num_classes):
    raise errors.DataError(f'outputs have {num_classes} classes but the run info says {info["num_classes"]}')

  difficulty = caches.get(ORIGINAL)
  if difficulty is not None and 'difficulty_loss' not in difficulty:
    difficulty = cache_lib.add_difficulty(difficulty)
  slice_source = difficulty if difficulty is not None else first
  keys = subgroups.available_slices(first, difficulty)
  same_groups = subgroups.same_groups(first, keys, difficulty=slice_source, age_edges=age_edges)

  entries: dict[str, dict[str, Any]] = {}
  verdicts: dict[str, dict[str, np.ndarray]] = {}
  start = time.perf_counter()
  for i, (name, cache) in enumerate(caches.items()):
    _log_progress('metrics and attacks', name, i, len(caches), start)
    entry: dict[str, Any] = {}
    for split in EVAL_SPLITS:
      rows = cache_lib.rows(cache, split)
      if len(rows['id']):
        entry[split] = split_summary(rows, num_classes)
    if 'forget' in entry:
      entry['forget']['unlearning_accuracy'] = metrics.unlearning_accuracy(entry['forget']['accuracy'])
    entry['mia'], verdicts[name] = attack_verdicts(cache, seed=seed, n_seeds=attack_seeds)
    entries[name] = entry

  signal = None
  if ORIGINAL in caches and REFERENCE in caches:
    def forget_rows(name):
      rows = np.asarray(caches[name]['split']) == 'forget'
      return {'correct': np.asarray(caches[name]['correct'])[rows], 'loss': np.asarray(caches[name]['loss'])[rows],
              'non_member': verdicts[name]['mia_efficacy'][rows]}
    signal = gaps.forget_signal(forget_rows(ORIGINAL), forget_rows(REFERENCE), n_boot=n_boot, seed=seed, ci=ci)

  reference = entries.get(REFERENCE)
  models: dict[str, Any] = {}
  start = time.perf_counter()
  for i, (name, entry) in enumerate(entries.items()):
    if keys:
      _log_progress(f'subgroup slices ({n_boot} bootstrap replicates)', name, i, len(entries), start)
    if reference is not None:
      entry['gap_to_retrain'] = _gaps(entry, reference)
      complete = all(s in entry and s in reference for s in ('forget', 'retain', 'test'))
      entry['avg_gap'] = gaps.avg_gap(*_uarata_mia(entry), retrain=_uarata_mia(reference)) if complete else math.nan
      entry['tow'] = gaps.tow(_accuracies(entry), _accuracies(reference)) if complete else math.nan
    entry['slices'] = {
        key: subgroups.slice_model(caches[name], key, retrain=caches.get(REFERENCE), verdicts=verdicts[name],
                                   retrain_verdicts=verdicts.get(REFERENCE), difficulty=slice_source,
                                   n_boot=n_boot, seed=seed, ci=ci, age_edges=age_edges)
        for key in keys}
    if name in costs:
      cost = {k: v for k, v in costs[name].items() if k != 'relative_to_retrain'}
      if REFERENCE in costs:
        cost['relative_to_retrain'] = relative_cost(cost, costs[REFERENCE])
      entry['cost'] = cost
    entry['populations'] = per_model_populations.get(name)
    models[name] = entry

  return {
      'dataset': info.get('dataset'),
      'task': info.get('task', 'multi-label' if cache_lib.is_multilabel(first) else None),
      'models': models,
      'forget_signal': signal,
      'anchor': info.get('anchor'),
      'config': info.get('config'),
      'populations': {k: v for k, v in populations.items() if k != 'models'} if populations else None,
      'evaluation': {
          'splits': [s for s in EVAL_SPLITS if s in set(np.asarray(first['split']).tolist())],
          'reference': REFERENCE if REFERENCE in caches else None,
          'n_boot': int(n_boot), 'ci': float(ci), 'seed': int(seed), 'age_edges': list(age_edges),
          'attack_seeds': int(attack_seeds), 'simple_mia_splits': 10,
          'mia_efficacy_attack': 'svc', 'mia_efficacy_max_per_side': privacy.MIA_MAX_PER_SIDE,
          'difficulty_source': ORIGINAL if ORIGINAL in caches else None,
          'slices': keys, 'slices_skipped': _skipped_slices(first, difficulty, keys),
          'slices_same_groups': same_groups,
          'class_names': list(info.get('class_names') or []),
      },
  }


def _log_progress(what: str, name: str, index: int, total: int, start: float) -> None:
  """One line per model of a long evaluation pass, with the time left at the pace so far."""
  done = time.perf_counter() - start
  eta = f', about {done / index * (total - index):.0f} s left' if index else ''
  logging.info('evaluation, %s: %s (%d of %d)%s', what, name, index + 1, total, eta)


def evaluate_workdir(workdir: str | os.PathLike, *, write: bool = True, n_boot: int | None = None,
                     seed: int | None = None, attack_seeds: int | None = None) -> dict[str, Any]:
  """Recomputes a workdir's results from its caches alone; writes results.json when `write`.

  `seed`, `n_boot` and `attack_seeds` default to the run's recorded settings, as at the end of the
  experiment (`N_BOOT` / `ATTACK_SEEDS` for a run that did not record them).
  """
  caches, costs, info, populations = load_run(workdir)
  recorded = info.get('config') or {}
  seed = int(recorded.get('seed', 0)) if seed is None else seed
  n_boot = int(recorded.get('n_boot', N_BOOT)) if n_boot is None else n_boot
  attack_seeds = int(recorded.get('attack_seeds', ATTACK_SEEDS)) if attack_seeds is None else attack_seeds
  results = evaluate_caches(caches, costs, info=info, populations=populations, n_boot=n_boot, seed=seed,
                            attack_seeds=attack_seeds)
  results['evaluation']['not_in_results'] = files_not_in_results(workdir, list(caches))
  if write:
    write_json(pathlib.Path(workdir) / RESULTS_FILE, results)
  return results
