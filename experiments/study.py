r"""Runs a study (forget-set size, sex, difficulty) over its arms and seeds, then aggregates it.

  python -m experiments.study --config=experiments/configs/study_forget_size.py --workdir=runs/size

Each (arm, seed) is an ordinary experiment in `<workdir>/<arm>/seed<k>`; re-running resumes. Writes
study.json, study.md and study.png.

On a cluster, one job per (arm, seed):
  python -m experiments.study --config=... --workdir=W --list_runs   # one command per run, for a job array
  python -m experiments.study --config=... --workdir=W --arm=images_0.1 --seed=1   # one of them
  python -m experiments.study --config=... --workdir=W --aggregate   # study.json/md/png once all finished
"""
import shlex
import sys

from absl import flags

from experiments import launch
from medunlearn_jax import errors
from medunlearn_jax import studies

_LIST_RUNS = flags.DEFINE_bool('list_runs', False, 'Print one command per (arm, seed) and exit.')
_ARM = flags.DEFINE_string('arm', None, 'Run only this arm (with --seed).')
_SEED = flags.DEFINE_integer('seed', None, 'The seed of --arm.')
_AGGREGATE = flags.DEFINE_bool('aggregate', False, 'Aggregate finished runs only; train nothing.')


def run_commands(config, workdir: str) -> list[str]:
  """The command of each (arm, seed): this command line, narrowed to that run."""
  kept = [a for a in sys.argv[1:] if not a.startswith(('--list_runs', '--nolist_runs', '--arm', '--seed',
                                                       '--aggregate', '--noaggregate'))]
  return [shlex.join([sys.executable, '-m', 'experiments.study', *kept, f'--arm={arm}', f'--seed={seed}'])
          for arm, seed in studies.runs_of(config)]


def main(config, workdir: str):
  if sum([_LIST_RUNS.value, _ARM.value is not None, _AGGREGATE.value]) > 1:
    raise errors.UserError('give at most one of --list_runs, --arm (with --seed) and --aggregate')
  if _LIST_RUNS.value:
    print('\n'.join(run_commands(config, workdir)))
    return None
  if _ARM.value is not None:
    if _SEED.value is None:
      raise errors.UserError('--arm needs --seed')
    return studies.run_one(config, workdir, _ARM.value, _SEED.value)
  if _AGGREGATE.value:
    return studies.aggregate_study(config, workdir)
  return studies.run_study(config, workdir)


if __name__ == '__main__':
  launch.run(main)
