"""User-facing errors: main turns them into one line on stderr and exit code 2."""


class UserError(Exception):
  """Bad input that the user can fix (config, data, files)."""


class ConfigError(UserError):
  """An invalid config field; the message starts with the field's name."""


class DataError(UserError):
  """Missing, unreadable or inconsistent data."""
