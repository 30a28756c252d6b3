"""Files that are either the old version or the new one, never torn: the tuning cache, plans and
benchmark results are all written this way; and plans read back with errors that name the file."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

#: A temporary file this old was left by a writer that died (kill -9) mid-write.
STALE_SECONDS = 60


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _remove_stale_temporaries(path: Path) -> None:
    for temporary in path.parent.glob(f".{path.name}.*"):
        with contextlib.suppress(OSError):
            if time.time() - temporary.stat().st_mtime > STALE_SECONDS:
                temporary.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``: a crash leaves either the old file or the new one (and its temporary file, which
    the next write removes). The file gets the permissions the user's umask gives new files."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """``write_text_atomic`` for bytes (model weight files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o666 & ~_current_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_json_atomic(path: str | os.PathLike, data: object) -> None:
    """:func:`write_text_atomic` of ``data`` as indented JSON."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


class PlanFile:
    """Saving and loading for a plan class with ``to_dict`` and a ``from_dict`` that raises a
    ValueError saying what is wrong: written atomically as JSON, read back with errors that name
    the file."""

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Read a plan saved by :meth:`save`; a ValueError naming the file if it is not one."""
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not a diagonalwise plan: invalid JSON ({error})") from None
        try:
            return cls.from_dict(data)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None
