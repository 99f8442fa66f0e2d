"""Errors that the CLI turns into one line on stderr and an exit code."""

from __future__ import annotations


class MbsearchError(Exception):
    """An expected failure: bad input (exit 2) or a runtime failure (exit 1).

    The message is one line that names the problem and, where there is one, the fix.
    """

    exit_code = 1


class BadInput(MbsearchError):
    """The user handed in something we cannot use: a file, a flag, a dataset."""

    exit_code = 2


class RuntimeFailure(MbsearchError):
    """Something outside the input went wrong: storage, hardware, a lost worker."""

    exit_code = 1


class Interrupted(MbsearchError):
    """Ctrl-C or SIGTERM: completed work is kept; the same command resumes."""

    exit_code = 130
