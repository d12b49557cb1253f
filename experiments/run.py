r"""Runs one experiment: original → forget set → retrain → unlearning algorithms → evaluation.

  python -m experiments.run --config=experiments/configs/default.py --workdir=runs/default \
      [--config.dataset.name=retinamnist --config.forget.fraction=0.2 --config.algorithms=finetune]

Re-running the same command resumes from the latest checkpoints. Bad input (unknown config keys, values out
of range, missing or corrupt data, a workdir of another config) ends with one error line and exit code 2.
"""
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from medunlearn_jax import errors
from medunlearn_jax import pipeline

# No default file: ml_collections would load it (and apply overrides) at import time, outside the
# one-line error handling below.
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. '
                                          'experiments/configs/default.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.', required=True)
flags.mark_flag_as_required('config')


def fail(kind: str, error: BaseException) -> None:
  """Reports bad input as one line on stderr and exits with status 2."""
  message = ' '.join(str(error).replace('\\n', ' ').split())
  print(f'error: {kind}{message}', file=sys.stderr)
  sys.exit(2)


def load_config():
  """The config with overrides applied (config files are loaded lazily, on first access)."""
  try:
    config = _CONFIG.value
    config.keys()  # A file that failed to load yields a placeholder that raises on first use.
    return config
  except Exception as e:  # pylint: disable=broad-except  # config_flags raises several types.
    fail('bad config: ', e)


def parse_flags(argv):
  """absl flag parsing, with bad flags or config overrides reported as one line."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    fail('bad flag or config override: ', e)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  config = load_config()
  if config.distributed:
    jax.distributed.initialize()
  try:
    pipeline.run_experiment(config, _WORKDIR.value)
  except errors.UserError as e:
    fail('', e)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
