"""The studies of "Machine Unlearning for Medical Imaging" (Nasirigerdeh et al., arXiv 2407.07539), as arms.

A study is a list of arms (each a set of config overrides: a forget-set size, a sex, a difficulty tercile)
run for several seeds. Every (arm, seed) is one ordinary pipeline run in `workdir/<arm>/seed<k>`; the
original model of a seed does not depend on the arm, so it is trained once and its finished checkpoint is
copied into the other arms' workdirs (the pipeline then loads it instead of retraining). The study then
aggregates the runs' results.json into mean ± std per arm, algorithm and metric (`study.json`,
`study.md`, PNG plots).

* `forget_size`: random images (and random patients, where the dataset has patient ids) at several
  fractions; the paper's finding: generalisation suffers as the forget set grows.
* `sex`: forget sets drawn only from female or only from male patients at equal sizes; the gap to retrain
  per arm and its F − M difference with a bootstrap 95 % interval over forget examples.
* `difficulty`: forget the easiest, the hardest, or a random tercile-sized set (scored by the original
  model's per-example loss).
* `tuning`: see `medunlearn_jax.tuning`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
from typing import Any, Iterable, Mapping, Sequence

from absl import logging
import ml_collections
import numpy as np
from scipy import stats

from medunlearn_jax import errors
from medunlearn_jax import pipeline

STUDY_FILE = 'study.json'
# Metrics aggregated per arm and model (paths into a model's entry of results.json).
METRICS = {
    'forget_acc': ('forget', 'accuracy'), 'retain_acc': ('retain', 'accuracy'),
    'test_acc': ('test', 'accuracy'), 'val_acc': ('val', 'accuracy'), 'avg_gap': ('avg_gap',),
    'mia_efficacy': ('mia', 'mia_efficacy'), 'seconds': ('cost', 'seconds'),
}


@dataclasses.dataclass(frozen=True)
class Arm:
  """One condition of a study: a name and dotted config overrides (e.g. {'forget.fraction': 0.2})."""
  name: str
  overrides: Mapping[str, Any]


def arms_of(config: ml_collections.ConfigDict) -> list[Arm]:
  """The arms of `config.study` (kind + its parameters)."""
  study = config.study
  if study.kind == 'forget_size':
    arms = [Arm(f'images_{f:g}', {'forget.selector': 'random_fraction', 'forget.fraction': f})
            for f in study.fractions]
    if study.get('patients', False):
      arms += [Arm(f'patients_{f:g}', {'forget.selector': 'patient_fraction', 'forget.fraction': f})
               for f in study.fractions]
    return arms
  if study.kind == 'sex':
    return [Arm(f'sex_{s}', {'forget.selector': 'sex', 'forget.sex': s, 'forget.fraction': study.fraction,
                             'forget.matched': True}) for s in ('F', 'M')]
  if study.kind == 'difficulty':
    return [Arm(f'difficulty_{a}', {'forget.selector': 'difficulty', 'forget.arm': a,
                                    'forget.fraction': study.fraction,
                                    'forget.per_class': bool(study.get('per_class', True))})
            for a in ('easiest', 'hardest', 'random')]
  raise errors.ConfigError(f'unknown study kind {study.kind!r}; choose forget_size, sex or difficulty '
                           '(tuning has its own launcher)')


def arm_config(config: ml_collections.ConfigDict, arm: Arm, seed: int) -> ml_collections.ConfigDict:
  """The experiment config of one (arm, seed): the study's base config with the arm's overrides."""
  out = ml_collections.ConfigDict(config.to_dict())
  del out['study']
  out.seed = seed
  for key, value in arm.overrides.items():
    node = out
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return out


def _share_original(source: pathlib.Path, target: pathlib.Path) -> None:
  """Copies a finished original-model checkpoint so that another arm of the same seed loads it."""
  src = source / 'checkpoints' / 'original'
  dst = target / 'checkpoints' / 'original'
  if src.exists() and not dst.exists() and pipeline.is_writer():
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)


def _seeds(config: ml_collections.ConfigDict) -> list[int]:
  seeds = [int(s) for s in config.study.seeds]
  if not seeds:
    raise errors.ConfigError('study.seeds is empty')
  return seeds


def run_dir(workdir: str | os.PathLike, arm: str, seed: int) -> pathlib.Path:
  """Where the run of one (arm, seed) lives in a study's workdir."""
  return pathlib.Path(workdir).absolute() / arm / f'seed{seed}'


def runs_of(config: ml_collections.ConfigDict) -> list[tuple[str, int]]:
  """Every (arm, seed) of a study, in the order `run_study` runs them."""
  return [(arm.name, seed) for seed in _seeds(config) for arm in arms_of(config)]


def run_one(config: ml_collections.ConfigDict, workdir: str | os.PathLike, arm_name: str, seed: int
            ) -> dict[str, Any]:
  """Runs (or resumes) the single (arm, seed) of a study, as a job of a cluster array would."""
  arms = {arm.name: arm for arm in arms_of(config)}
  if arm_name not in arms or seed not in _seeds(config):
    raise errors.ConfigError(f'({arm_name!r}, seed {seed}) is not a run of this study; its runs: '
                             f'{", ".join(f"{a}/seed{s}" for a, s in runs_of(config))}')
  return pipeline.run_experiment(arm_config(config, arms[arm_name], seed), run_dir(workdir, arm_name, seed))


def run_study(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """Runs every (arm, seed) of a study (resuming finished runs) and writes the aggregate."""
  workdir = pathlib.Path(workdir).absolute()
  arms = arms_of(config)
  for seed in _seeds(config):
    first = None
    for arm in arms:
      arm_dir = run_dir(workdir, arm.name, seed)
      if first is not None:
        _share_original(first, arm_dir)
      logging.info('study %s: arm %s, seed %d', config.study.kind, arm.name, seed)
      pipeline.run_experiment(arm_config(config, arm, seed), arm_dir)
      first = first or arm_dir
  return aggregate_study(config, workdir)


def aggregate_study(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
  """study.json, study.md and study.png from the finished runs of every (arm, seed), wherever they ran
  (`run_study` here, or `run_one` jobs on other machines writing into the same workdir)."""
  workdir = pathlib.Path(workdir).absolute()
  arms, seeds = arms_of(config), _seeds(config)
  missing = [f'{a}/seed{s}' for a, s in runs_of(config) if not (run_dir(workdir, a, s) / 'results.json').exists()]
  if missing:
    raise errors.UserError(f'{len(missing)} of {len(runs_of(config))} runs of the study in {workdir} have not '
                           f'finished: {", ".join(missing)}')
  runs = {arm.name: {seed: json.loads((run_dir(workdir, arm.name, seed) / 'results.json').read_text())
                     for seed in seeds} for arm in arms}
  summary = aggregate(runs)
  summary['kind'] = config.study.kind
  summary['seeds'] = seeds
  if config.study.kind == 'sex':
    summary['sex_gap'] = sex_gap_difference(workdir, arms, seeds, n_boot=config.evaluation.n_boot)
  pipeline.write_json(workdir / STUDY_FILE, summary)
  if pipeline.is_writer():
    from medunlearn_jax.evaluation import study_report  # pylint: disable=g-import-not-at-top
    study_report.write(workdir, summary)
  return summary


def _lookup(entry: Mapping[str, Any], path: Sequence[str]) -> float:
  for key in path:
    if not isinstance(entry, Mapping) or key not in entry:
      return math.nan
    entry = entry[key]
  return float(entry) if isinstance(entry, (int, float)) else math.nan


def aggregate(runs: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any]:
  """Mean and std over seeds of each metric, per arm and model: {'arms': {arm: {model: {metric: {...}}}}}."""
  out: dict[str, Any] = {'arms': {}}
  for arm, by_seed in runs.items():
    models: dict[str, Any] = {}
    for results in by_seed.values():
      for model, entry in results['models'].items():
        for metric, path in METRICS.items():
          models.setdefault(model, {}).setdefault(metric, []).append(_lookup(entry, path))
    out['arms'][arm] = {model: {metric: {'mean': float(np.nanmean(v)) if np.isfinite(v).any() else math.nan,
                                         'std': float(np.nanstd(v)) if np.isfinite(v).any() else math.nan,
                                         'values': v}
                                for metric, v in metrics.items()}
                        for model, metrics in models.items()}
    signal = out.setdefault('signal', {})[arm] = arm_signal(by_seed.values())
    original_gaps = models.get('original', {}).get('avg_gap')
    if original_gaps is not None:
      out.setdefault('vs_original', {})[arm] = {
          model: credit(np.asarray(original_gaps) - np.asarray(metrics['avg_gap']), can_rank=signal['can_rank'])
          for model, metrics in models.items() if model not in ('original', 'retrain')}
  return out


def mean_interval(values: Sequence[float], ci: float = 0.95) -> dict[str, Any]:
  """Mean over seeds with its Student-t interval (NaN bounds with fewer than two finite values)."""
  v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
  mean = float(v.mean()) if v.size else math.nan
  if v.size < 2:
    return {'mean': mean, 'ci_low': math.nan, 'ci_high': math.nan, 'n': int(v.size)}
  half = float(stats.t.ppf((1 + ci) / 2, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
  return {'mean': mean, 'ci_low': mean - half, 'ci_high': mean + half, 'n': int(v.size)}


def credit(improvement: Sequence[float], *, can_rank: bool, ci: float = 0.95) -> dict[str, Any]:
  """How much an algorithm's Avg. Gap beats the do-nothing original's (original − algorithm, per seed),
  with its interval over seeds; `credited` only where the whole interval is above zero and the arm's
  forget sets were memorised (`can_rank`): without a forget signal, a smaller gap is not forgetting."""
  out = mean_interval(improvement, ci)
  out['credited'] = bool(can_rank and out['ci_low'] > 0)
  return out


def arm_signal(results: Iterable[Mapping[str, Any]], ci: float = 0.95) -> dict[str, Any]:
  """An arm's forget signal over seeds (each run's original − retrain on its forget set, `gaps.forget_signal`):
  per metric the mean with its interval over seeds, and how many runs found it clearly above zero."""
  signals = [r['forget_signal'] for r in results if r.get('forget_signal')]
  out: dict[str, Any] = {m: mean_interval([s[m]['value'] for s in signals], ci)
                         for m in ('accuracy', 'loss', 'mia_efficacy')}
  out['clear_runs'] = sum(bool(s['clear']) for s in signals)
  out['runs'] = len(signals)
  # Algorithms can be ranked in an arm only where every run's forget set was memorised.
  out['can_rank'] = bool(signals) and out['clear_runs'] == len(signals)
  return out


def _forget_correct(workdir: pathlib.Path, model: str) -> np.ndarray:
  from medunlearn_jax.evaluation import cache as cache_lib  # pylint: disable=g-import-not-at-top
  from medunlearn_jax.evaluation import results as results_lib  # pylint: disable=g-import-not-at-top
  rows = cache_lib.rows(cache_lib.load_cache(results_lib.model_path(workdir, model)), 'forget')
  order = np.argsort(rows['id'])
  return (rows['pred'] == rows['label'])[order].astype(np.float64)


def sex_gap_difference(workdir: pathlib.Path, arms: Sequence[Arm], seeds: Sequence[int], *,
                       n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
  """Per algorithm: the forget-accuracy gap to retrain in the F and M arms and their difference (F − M),
  each with a percentile-bootstrap 95 % interval resampling forget examples (pooled over seeds)."""
  rng = np.random.default_rng(seed)
  arm_names = [a.name for a in arms]
  out: dict[str, Any] = {}
  models = sorted(set(json.loads((workdir / arm_names[0] / f'seed{seeds[0]}' / 'results.json').read_text())
                      ['models']) - {'retrain'})
  for model in models:
    per_arm = {}
    for arm in arm_names:
      diffs = [(_forget_correct(workdir / arm / f'seed{s}', model),
                _forget_correct(workdir / arm / f'seed{s}', 'retrain')) for s in seeds]
      model_c = np.concatenate([d[0] for d in diffs])
      retrain_c = np.concatenate([d[1] for d in diffs])
      idx = rng.integers(0, len(model_c), (n_boot, len(model_c)))
      boot = np.abs(model_c[idx].mean(1) - retrain_c[idx].mean(1))
      per_arm[arm] = {'gap': float(abs(model_c.mean() - retrain_c.mean())), 'boot': boot, 'n': len(model_c)}
    f, m = per_arm[arm_names[0]], per_arm[arm_names[1]]
    diff = f['boot'] - m['boot']
    lo, hi = np.percentile(diff, [2.5, 97.5])
    out[model] = {arm: {'gap': v['gap'], 'n': v['n'],
                        'ci95': [float(x) for x in np.percentile(v['boot'], [2.5, 97.5])]}
                  for arm, v in per_arm.items()}
    out[model]['difference_f_minus_m'] = {'value': f['gap'] - m['gap'], 'ci95': [float(lo), float(hi)],
                                          'differs': bool(lo > 0 or hi < 0)}
  return out
