"""The errors a user can fix, at the bottom of the import graph so every layer may raise them, and
the one way a failure is written on one line (a row's ``reason``, a table cell, a worker's report).

Each user error is reported by the CLI as one ``error: ...`` line with exit code 2; nothing is run or
written. The messages name what is wrong, the bad value and what is allowed.
"""
from __future__ import annotations


class UserError(Exception):
    """Anything the user can fix: bad input, a malformed suite, an unknown method, an unusable run
    directory. Reported in one line, exit code 2."""


class BadInput(UserError):
    """A bad command-line argument or API argument."""


class SuiteError(UserError):
    """A malformed suite; the message names the file, the key, the value and what is allowed."""


class RegistryError(UserError):
    """A registration or lookup problem: duplicate or unknown names, broken plugins."""


class RunDirError(UserError):
    """A run directory that cannot be used (missing, locked, not a run, not writable)."""


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during a sweep (a BaseException, so a method's own ``except
    Exception`` cannot swallow it)."""


class WriteFailed(Exception):
    """The run could not write its results (disk full, read-only or failing storage); the rows
    written before are safe and the run can be resumed once the cause is fixed."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, at most ``limit`` characters in all."""
    return f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:limit]


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of ``exc``'s message alone, at most ``limit`` characters ("" when it has none),
    for a message that names the failure in its own words."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else ""
