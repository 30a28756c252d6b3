"""The per-device tuning cache: decisions per layer key in one JSON file shared by processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from ..atomic_files import write_json_atomic
from .choice import LayerChoice

CACHE_FORMAT = 1


class TuningCache:
    """Decisions per layer key for one device and software stack, in one JSON file.

    A corrupt file, or one written by another format or environment, gives a warning and is
    treated as empty (its entries are re-tuned and the file rewritten), never an error. Writes hold
    an exclusive lock on ``<path>.lock``, merge with what is on disk, and replace the file
    atomically.
    """

    def __init__(self, path: str | os.PathLike, env: dict) -> None:
        self.path = Path(path)
        self.env = {k: env.get(k) for k in ("device", "torch", "cuda", "cudnn", "threads")}

    @staticmethod
    def default_path(env: dict) -> Path:
        """``$DIAGONALWISE_CACHE_DIR`` or ``$XDG_CACHE_HOME/diagonalwise`` (``~/.cache/...``),
        one file per device."""
        root = os.environ.get("DIAGONALWISE_CACHE_DIR") or Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diagonalwise"
        slug = re.sub(r"[^A-Za-z0-9]+", "-", str(env["device"])).strip("-").lower() or "device"
        return Path(root) / f"tuning-{slug}.json"

    def _read(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            warnings.warn(f"diagonalwise: tuning cache {self.path} is unreadable ({error}); "
                          "re-tuning and rewriting it", stacklevel=3)
            return {}
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or \
                not isinstance(data.get("entries"), dict):
            warnings.warn(f"diagonalwise: tuning cache {self.path} has an unknown format; "
                          "re-tuning and rewriting it", stacklevel=3)
            return {}
        if data.get("environment") != self.env:
            warnings.warn(f"diagonalwise: tuning cache {self.path} was written for "
                          f"{data.get('environment')}, not {self.env}; re-tuning", stacklevel=3)
            return {}
        return data["entries"]

    def lookup(self, key: str) -> LayerChoice | None:
        entry = self._read().get(key)
        try:
            return LayerChoice(**entry) if entry else None
        except TypeError:
            return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{self.path}.lock", "a") as lock:
            try:
                import fcntl
            except ImportError:  # no advisory locks here (Windows): atomic replace still holds
                yield
                return
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def store(self, choice: LayerChoice) -> LayerChoice:
        """Store ``choice`` unless another process stored one for its key first; return the one
        that is in the cache now (so every process applies the same decision)."""
        with self._locked():
            entries = self._read()
            if choice.key in entries:
                with contextlib.suppress(TypeError):
                    return LayerChoice(**entries[choice.key])
            entries[choice.key] = asdict(choice)
            write_json_atomic(self.path, {"format": CACHE_FORMAT, "environment": self.env,
                                          "entries": entries})
        return choice
