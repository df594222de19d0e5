"""The one exception family and the one set of exit codes.

Kept apart from everything else so that the stdlib-only `env` path, the core
and the CLI all speak of failures in the same terms without importing each other.
"""

from enum import IntEnum


class ExitStatus(IntEnum):
    """What scripts can rely on: `pick && …`, `env || …`."""

    OK = 0
    FAILURE = 1  # something the message explains: a database or a target file that cannot be used
    USAGE = 2  # a usage or config error
    NO_ELIGIBLE = 3  # no line is eligible (or none chosen yet); the previous choice stays in force
    INTERRUPTED = 130


class LinepickerError(Exception):
    """A problem the user can act on; str() is one printable line without secrets."""

    exit_code = ExitStatus.FAILURE


class ConfigError(LinepickerError):
    exit_code = ExitStatus.USAGE


class StoreError(LinepickerError):
    pass


class TargetError(LinepickerError):
    pass


class UnknownLine(ConfigError):
    """A line name given by the user that the config does not have."""


class UnknownRelay(ConfigError):
    """A relay name given by the user (`--relay`, `pin RELAY/LINE`) that the config or the database does not have."""
