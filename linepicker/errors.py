"""The one exception family the CLI turns into a one-line message and an exit code."""


class LinepickerError(Exception):
    """A problem the user can act on; str() is one printable line without secrets."""

    exit_code = 1


class ConfigError(LinepickerError):
    exit_code = 2


class StoreError(LinepickerError):
    pass


class TargetError(LinepickerError):
    pass
