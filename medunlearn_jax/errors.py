"""Errors that describe bad user input (config, data, ids), as opposed to bugs.

Launchers print a `UserError` as one line and exit non-zero, without a traceback.
"""


class UserError(Exception):
  """Bad input from the user: a clear, one-line message says what to fix."""


class DataError(UserError):
  """Missing, corrupt or inconsistent dataset files."""


class ConfigError(UserError):
  """A config value that is out of range or inconsistent with the workdir."""


class NonFiniteLossError(UserError):
  """A loss became NaN or inf; the run stopped without overwriting a checkpoint."""
