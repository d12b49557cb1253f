"""The shared shape of every launcher: `--config` (an ml_collections config file with overrides) and
`--workdir`, bad input reported as one line with exit code 2, optional multi-process initialisation."""
import sys
from typing import Any, Callable

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags

from medunlearn_jax import errors

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


def load_config() -> ml_collections.ConfigDict:
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


def run(job: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
  """Parses flags and runs `job(config, workdir)`; `config.distributed` initialises multi-process JAX."""

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    config = load_config()
    if config.get('distributed', False):
      jax.distributed.initialize()
    try:
      job(config, _WORKDIR.value)
    except errors.UserError as e:
      fail('', e)

  app.run(main, flags_parser=parse_flags)
