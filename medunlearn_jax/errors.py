"""Errors that describe bad user input (config, data, ids), as opposed to bugs.

Launchers print a `UserError` as one line and exit non-zero, without a traceback; `system_failure` names
the machine-side causes (disk full, read-only workdir, out of memory) that they report the same way.
"""
import errno


class UserError(Exception):
  """Bad input from the user: a clear, one-line message says what to fix."""


class DataError(UserError):
  """Missing, corrupt or inconsistent dataset files."""


class ConfigError(UserError):
  """A config value that is out of range or inconsistent with the workdir."""


class NonFiniteLossError(UserError):
  """A loss became NaN or inf; the run stopped without overwriting a checkpoint."""


def _chain(error: BaseException):
  """The error and every error it was raised from or during, once each (newest first)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    yield error
    error = error.__cause__ or error.__context__


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_NOT_WRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)


def system_failure(error: BaseException, workdir: str) -> str | None:
  """One line naming the cause of a failure of the machine rather than of the program (disk full, a
  read-only or forbidden workdir, memory exhausted), and what to do; None for any other error.

  Recognises both Python's `OSError` and the status text that XLA, TensorStore and Orbax raise for the same
  causes (e.g. `RESOURCE_EXHAUSTED: ... No space left on device` from a checkpoint write thread).
  """
  resume = 'run the same command again: it resumes from the finished stages and checkpoints'
  for e in _chain(error):
    text, code = str(e), getattr(e, 'errno', None)
    where = getattr(e, 'filename', None) or workdir
    if isinstance(e, MemoryError) or ('RESOURCE_EXHAUSTED' in text and 'out of memory' in text.lower()):
      return (f'out of memory ({_first_line(text) or type(e).__name__}); lower --config.eval_batch_size and '
              f'{resume}, or lower --config.batch_size in a new --workdir')
    if code in _DISK_FULL or 'No space left on device' in text or 'Disk quota exceeded' in text or (
        'RESOURCE_EXHAUSTED' in text and ('writ' in text.lower() or 'space' in text.lower())):
      return f'disk full: {_first_line(text)}; free space on the disk of {workdir} (df -h) and {resume}'
    if code in _NOT_WRITABLE or 'Read-only file system' in text or 'Permission denied' in text:
      reason = 'read-only file system' if code == errno.EROFS or 'Read-only' in text else 'permission denied'
      return f'{reason}: cannot write {where}; make it writable and {resume}, or give another --workdir'
  return None


def _first_line(text: str, limit: int = 200) -> str:
  line = text.strip().splitlines()[0] if text.strip() else ''
  return line if len(line) <= limit else line[:limit] + '…'
