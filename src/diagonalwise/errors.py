"""The error a user's mistake raises (a bad argument, a missing file, a model that does not run
at the asked size), as opposed to a bug: the command line prints a ``UsageError`` as one line and
lets anything else keep its traceback. It is a ValueError, so library callers catch it as one."""

from __future__ import annotations


class UsageError(ValueError):
    """A mistake in what the user asked for; the message names it and the fix."""
