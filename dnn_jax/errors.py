"""User-facing errors: main turns them into one line on stderr and exit code 2."""


class UserError(Exception):
  """Bad input that the user can fix (config, data, files)."""


class ConfigError(UserError):
  """An invalid config field; the message starts with the field's name."""


class DataError(UserError):
  """Missing, unreadable or inconsistent data."""


class RunError(Exception):
  """A run that cannot go on (non-finite loss, unwritable checkpoint): one line, exit code 1."""


class TrainingInterrupted(BaseException):
  """SIGTERM/SIGINT/SIGHUP: a checkpoint was saved (or, outside the training loop, nothing was
  left half-written); the same command resumes. A BaseException, like KeyboardInterrupt, so
  that no `except Exception` on the way (a checkpoint restore's fallback) can take it for an
  ordinary failure."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum
