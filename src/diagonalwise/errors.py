"""The error a user's mistake raises (a bad argument, a missing file, a model that does not run
at the asked size), as opposed to a bug: the command line prints a ``UsageError`` as one line and
lets anything else keep its traceback. It is a ValueError, so library callers catch it as one."""

from __future__ import annotations


class UsageError(ValueError):
    """A mistake in what the user asked for; the message names it and the fix."""


class ModelFileError(UsageError):
    """A model file (Darknet ``.cfg``/``.weights``, Caffe ``.prototxt``/``.caffemodel``) that we
    cannot read as written. The message starts ``file:line: key:`` where those are known, so an
    editor can jump to the place."""

    def __init__(self, path: object, problem: str, line: int | None = None, key: str | None = None):
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {key + ': ' if key else ''}{problem}")
        self.path, self.line, self.key = path, line, key
