r"""Writes the report of an experiment's workdir: results.md, results.csv and plots/*.png.

  python -m experiments.report --workdir=runs/default [--recompute]

By default the tables and plots are drawn from workdir/results.json (written at the end of every
experiment, which also writes this report). With --recompute, or when results.json is absent, every metric
is first recomputed from the per-example output caches (workdir/outputs/<model>.npz and costs.json), without
running any model. Bad input ends with one error line and exit code 2.
"""
import pathlib
import sys

from absl import app
from absl import flags

from medunlearn_jax import errors
from medunlearn_jax.evaluation import report
from medunlearn_jax.evaluation import results as results_lib

_WORKDIR = flags.DEFINE_string('workdir', None, 'Workdir of an experiment (holds outputs/ and results.json).',
                               required=True)
_RECOMPUTE = flags.DEFINE_bool('recompute', False, 'Recompute results.json from outputs/ before reporting.')
_N_BOOT = flags.DEFINE_integer('n_boot', None, 'Bootstrap replicates of subgroup CIs (with --recompute; '
                               'default: the run\'s recorded setting).')
_ATTACK_SEEDS = flags.DEFINE_integer('attack_seeds', None, 'Repetitions of each MIA (with --recompute; '
                                     'default: the run\'s recorded setting).')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  workdir = pathlib.Path(_WORKDIR.value)
  try:
    if _RECOMPUTE.value or not (workdir / results_lib.RESULTS_FILE).exists():
      results = results_lib.evaluate_workdir(workdir, n_boot=_N_BOOT.value, attack_seeds=_ATTACK_SEEDS.value)
    else:
      results = report.load_results(workdir)
    written = report.write_report(workdir, results)
  except errors.UserError as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    sys.exit(2)
  print(report.markdown_table(results))
  print(f'wrote {written["markdown"]}, {written["csv"]} and {len(written["plots"])} plots under '
        f'{workdir / report.PLOTS_DIR}')


if __name__ == '__main__':
  app.run(main)
