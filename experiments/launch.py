"""The shared shape of every launcher: `--config` (an ml_collections config file with overrides) and
`--workdir`, bad input reported as one line with exit code 2, optional multi-process initialisation."""
import contextlib
import importlib.util
import logging as std_logging
import os
import pathlib
import re
import sys
import tempfile
import threading
import time
import traceback
from typing import Any, Callable

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from medunlearn_jax import errors
from medunlearn_jax import pipeline

# No default file: ml_collections would load it (and apply overrides) at import time, outside the
# one-line error handling below.
_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file, e.g. '
                                          'experiments/configs/default.py.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and results.', required=True)
flags.mark_flag_as_required('config')
# Multi-process runs: left empty, jax.distributed.initialize() reads the cluster's environment (SLURM,
# Cloud TPU, ...); on one machine give all three (see tests/test_multiprocess.py).
_COORDINATOR = flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-process).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-process).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process\'s index (multi-process).')
_CPU_DEVICES = flags.DEFINE_integer('cpu_devices', None, 'Fake this many CPU devices per process.')


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


DEFAULT_CONFIG = 'experiments/configs/default.py'
HELP_FLAGS = ('--help', '-h', '--helpshort', '-?')


def config_docs(path: str) -> dict[str, str]:
  """One-line docs of a config file's keys: the comment that ends the line assigning `config.<key>`."""
  docs = {}
  for line in pathlib.Path(path).read_text().splitlines():
    match = re.match(r'\s*config\.([\w.]+)\s*=[^#]*#\s*(.+)$', line)
    if match:
      docs[match.group(1)] = match.group(2).strip()
  return docs


def flatten(config: Any, prefix: str = '') -> dict[str, Any]:
  """{'a.b.c': value} for every leaf of a (nested) ConfigDict."""
  out = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      out.update(flatten(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def config_help(path: str) -> str:
  """`--help`: the flags, then every `--config.<key>` of the config file with its default and doc."""
  spec = importlib.util.spec_from_file_location('_help_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config, docs = module.get_config(), config_docs(path)
  lines = [(sys.modules['__main__'].__doc__ or '').strip(), '',
           'flags: --config=FILE (required) --workdir=DIR (required) [--cpu_devices=N] [--coordinator_address=HOST:PORT'
           ' --num_processes=N --process_id=I] [--verbosity=1]', '',
           f'config keys of {path} (override with --config.<key>=value; lists as (a,b,...)):']
  own = flags.FLAGS.get_flags_for_module(sys.modules['__main__'])  # A launcher's own flags (the study's).
  if own:
    lines[2:2] = ['flags of this launcher:'] + [f'  --{f.name}: {f.help}' for f in own] + ['']
  # The experiment's own keys first, then the (long) per-algorithm hyper-parameters.
  for key, value in sorted(flatten(config).items(), key=lambda kv: kv[0].startswith('algo.')):
    doc = docs.get(key) or docs.get(key.split('.')[0], '')
    lines.append(f'  --config.{key}={value!r}' + (f'    # {doc}' if doc else ''))
  return '\n'.join(lines)


class _OneLineFormatter(logging.PythonFormatter):
  """absl's stderr format without the traceback a record carries (that goes to the run log and the
  traceback file): a failing background thread adds one line to the console, not a wall."""

  def format(self, record: std_logging.LogRecord) -> str:
    saved = record.exc_info, record.exc_text, record.stack_info
    record.exc_info = record.exc_text = record.stack_info = None
    try:
      return super().format(record)
    finally:
      record.exc_info, record.exc_text, record.stack_info = saved


class QuietTracebacks:
  """Keeps tracebacks off the console while a job runs (unless --verbosity >= 1): those of background
  threads (Orbax and TensorStore writers), of 'exception ignored' reports and of logged errors are collected
  in `captured`, for the traceback file a failure writes."""

  def __init__(self):
    self.captured: list[str] = []

  def _keep(self, kind: str, exc_type, value, tb) -> None:
    self.captured.append(f'--- {kind}\n' + ''.join(traceback.format_exception(exc_type, value, tb)))

  def __enter__(self) -> 'QuietTracebacks':
    self._saved = (sys.excepthook, threading.excepthook, sys.unraisablehook,
                   logging.get_absl_handler().python_handler.formatter)
    sys.excepthook = lambda t, v, tb: self._keep('uncaught', t, v, tb)
    threading.excepthook = lambda a: self._keep(f'thread {a.thread.name if a.thread else "?"}', a.exc_type,
                                                a.exc_value, a.exc_traceback)
    sys.unraisablehook = lambda u: self._keep(f'ignored in {u.object!r}', u.exc_type, u.exc_value, u.exc_traceback)
    logging.get_absl_handler().python_handler.setFormatter(_OneLineFormatter())
    return self

  def __exit__(self, *exc_info) -> None:
    sys.excepthook, threading.excepthook, sys.unraisablehook, formatter = self._saved
    logging.get_absl_handler().python_handler.setFormatter(formatter)


def save_traceback(error: BaseException | None, workdir: str, captured: list[str]) -> str | None:
  """Appends the failure's traceback (if any) and those collected from background threads to the run log
  of `workdir` when it has one, else to a file in the temp folder; returns where, or None if nothing could
  be written (a full disk can refuse both)."""
  text = (f'\n=== {time.strftime("%Y-%m-%d %H:%M:%S")} {"failure" if error else "background errors"} '
          f'(process {os.getpid()})\n' + (''.join(traceback.format_exception(error)) if error else '')
          + ''.join(captured))
  run_log = pathlib.Path(workdir) / pipeline.RUN_LOG
  candidates = ([run_log] if run_log.is_file() else []) + [
      pathlib.Path(tempfile.gettempdir()) / f'medunlearn-traceback-{os.getpid()}.txt']
  for path in candidates:
    try:
      with open(path, 'a') as f:
        f.write(text)
      return str(path)
    except OSError:
      continue
  return None


def fail_on_system_error(message: str, where: str | None) -> None:
  """Reports a machine-side failure as one line and exits with status 1 at once: Orbax and TensorStore
  threads still winding down would otherwise print tracebacks while the interpreter shuts down. Written
  checkpoints are complete (Orbax renames a save into place only when it has finished)."""
  hint = f'full traceback in {where}' if where else 'run with --verbosity=1 for the full traceback'
  print(f'error: {message} ({hint})', file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  std_logging.shutdown()
  os._exit(1)  # pylint: disable=protected-access


def run(job: Callable[[ml_collections.ConfigDict, str], Any]) -> None:
  """Parses flags and runs `job(config, workdir)`; `config.distributed` initialises multi-process JAX.

  `--help` lists the flags and the config's keys with their defaults, and exits 0. Bad input ends with one
  `error:` line and exit status 2; a disk that is full or read-only, or memory that runs out, with one
  `error:` line naming the cause and the fix, and status 1; the full traceback is printed only with
  `--verbosity=1`, and otherwise kept in the workdir's run log (or a temp file it names).
  """
  if any(arg in HELP_FLAGS for arg in sys.argv[1:]):
    given = [a.split('=', 1)[1] for a in sys.argv[1:] if a.startswith('--config=')]
    try:
      print(config_help(given[0] if given else DEFAULT_CONFIG))
    except Exception as e:  # pylint: disable=broad-except
      fail('bad config: ', e)
    sys.exit(0)

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'unexpected arguments: {argv[1:]}')
    config = load_config()
    if _CPU_DEVICES.value:
      jax.config.update('jax_num_cpu_devices', _CPU_DEVICES.value)
    if config.get('distributed', False) or (_NUM_PROCESSES.value or 1) > 1:
      # CPU collectives across processes go through gloo; accelerators use their own.
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
      jax.distributed.initialize(coordinator_address=_COORDINATOR.value, num_processes=_NUM_PROCESSES.value,
                                 process_id=_PROCESS_ID.value)
    verbose = logging.get_verbosity() >= logging.DEBUG
    quiet = QuietTracebacks()
    try:
      with contextlib.nullcontext() if verbose else quiet:
        job(config, _WORKDIR.value)
      if quiet.captured:  # Errors of background threads that the job survived: kept, and said.
        where = save_traceback(None, _WORKDIR.value, quiet.captured)
        logging.warning('%d background error(s) during the run; tracebacks in %s', len(quiet.captured), where)
    except errors.UserError as e:
      fail('', e)
    except Exception as e:  # pylint: disable=broad-except  # Bugs are re-raised with their traceback.
      message = errors.system_failure(e, _WORKDIR.value)
      if message is None:
        for text in quiet.captured:
          print(text, file=sys.stderr)
        raise
      if verbose:
        traceback.print_exception(e)
      fail_on_system_error(message, save_traceback(e, _WORKDIR.value, quiet.captured))

  app.run(main, flags_parser=parse_flags)
