r"""Runs one experiment: original → forget set → retrain → unlearning algorithms → evaluation.

  python -m experiments.run --config=experiments/configs/default.py --workdir=runs/default \
      [--config.dataset.name=retinamnist --config.forget.fraction=0.2 --config.algorithms=finetune]

Re-running the same command resumes from the latest checkpoints. Bad input (unknown config keys, values out
of range, missing or corrupt data, a workdir of another config) ends with one error line and exit code 2.
"""
import sys

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from medunlearn_jax import errors
from medunlearn_jax import pipeline

_CONFIG = config_flags.DEFINE_config_file('config', 'experiments/configs/default.py', 'Experiment config.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.', required=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = _CONFIG.value
  if config.distributed:
    jax.distributed.initialize()
  try:
    pipeline.run_experiment(config, _WORKDIR.value)
  except errors.UserError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
