"""Errors a user can act on.

A :class:`UserError` is printed by the command line as one message, without a
traceback, and the process exits with its ``exit_code``. The message says what
went wrong, where, and what to do next.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or configuration, not a bug."""

    exit_code: int = 2

    def __init__(self, message: str, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


def renamed(error: UserError, path: str | object, name: str) -> UserError:
    """``error`` with ``path`` replaced by ``name`` in its message: a temporary copy's path
    (standard input's, a downloaded checkpoint's) by what the user passed (``-``, a models:/ URI)."""
    error.args = (str(error).replace(str(path), name), *error.args[1:])
    return error


class DataQualityError(UserError):
    """The data-quality gate refused the data (exit code 3)."""

    exit_code = 3


class GateError(UserError):
    """A promotion gate failed and ``promote.fail_on_gate`` asks to stop (exit code 4)."""

    exit_code = 4
