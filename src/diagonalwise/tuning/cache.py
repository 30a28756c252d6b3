"""The per-device tuning cache: decisions per layer key, and whole-model verdicts, in one JSON
file shared by the processes of a machine (DDP ranks)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..atomic_files import write_json_atomic
from ..kernels import source_fingerprint
from .choice import LayerChoice

CACHE_FORMAT = 2

#: The environment fields a timing depends on; entries are kept per distinct combination.
#: "kernels" is our kernels' source fingerprint, filled in here when the caller has none.
ENVIRONMENT_FIELDS = ("device", "torch", "cuda", "cudnn", "threads", "kernels")

_warned: set[str] = set()


def warn_once(message: str) -> None:
    """A warning shown once per process, however often its cause recurs."""
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, stacklevel=3)


def model_key(layer_keys: list[str]) -> str:
    """The key of a whole model's verdict: its set of layer-choice keys."""
    return hashlib.sha256("\n".join(sorted(set(layer_keys))).encode()).hexdigest()[:24]


class TuningCache:
    """Decisions per layer key, and whole-model verdicts, for each software environment
    (device, versions, thread count) in one JSON file.

    Entries of other environments are kept (a run with another thread count neither reads nor
    wipes them). A corrupt file or an unknown format gives a warning and is rewritten; an entry
    that does not validate (wrong types, an unknown algorithm, a block size that does not divide
    the layer's groups) is a miss, with a warning, and is overwritten. Where the file cannot be
    written (a read-only directory), tuning warns once and goes on uncached. Writes hold an
    exclusive lock on ``<path>.lock``, merge with what is on disk, and replace the file
    atomically; the first decision stored for a key wins and every later process adopts it.
    """

    def __init__(self, path: str | os.PathLike, env: dict) -> None:
        self.path = Path(path)
        self.env = {k: env.get(k) for k in ENVIRONMENT_FIELDS}
        self.env["kernels"] = self.env["kernels"] or source_fingerprint()
        self.fingerprint = "|".join(str(self.env[k]) for k in ENVIRONMENT_FIELDS)
        self.writable = True

    @staticmethod
    def default_path(env: dict) -> Path:
        """``$DIAGONALWISE_CACHE_DIR`` or ``$XDG_CACHE_HOME/diagonalwise`` (``~/.cache/...``),
        one file per device."""
        root = os.environ.get("DIAGONALWISE_CACHE_DIR") or Path(
            os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "diagonalwise"
        slug = re.sub(r"[^A-Za-z0-9]+", "-", str(env["device"])).strip("-").lower() or "device"
        return Path(root) / f"tuning-{slug}.json"

    def _read_all(self) -> dict[str, dict]:
        """Every environment's section, ``{}`` for a missing, unreadable or foreign file."""
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            warn_once(f"diagonalwise: tuning cache {self.path} is unreadable ({error}); "
                      "re-tuning and rewriting it")
            return {}
        if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or \
                not isinstance(data.get("environments"), dict):
            warn_once(f"diagonalwise: tuning cache {self.path} has an unknown format; "
                      "re-tuning and rewriting it")
            return {}
        return data["environments"]

    def _section(self, sections: dict[str, dict]) -> dict:
        section = sections.get(self.fingerprint)
        if not isinstance(section, dict) or not isinstance(section.get("entries"), dict):
            section = {"environment": self.env, "entries": {}, "models": {}}
        if not isinstance(section.get("models"), dict):
            section["models"] = {}
        return section

    def _valid(self, entry: object, key: str, groups: int | None) -> LayerChoice | None:
        try:
            choice = LayerChoice.from_dict(entry)
            if choice.key != key:
                raise ValueError(f"it is stored under {key!r} but names {choice.key!r}")
            if groups is not None and not choice.resolve().accepts_groups(groups):
                raise ValueError(f"{choice.algorithm} cannot run a layer with groups={groups}")
        except ValueError as error:
            warn_once(f"diagonalwise: tuning cache {self.path}: invalid entry for {key} "
                      f"({error}); re-tuning it")
            return None
        return choice

    def lookup(self, key: str, groups: int | None = None) -> LayerChoice | None:
        """The stored decision for ``key`` (for a layer with ``groups`` groups, if given), or
        None if there is none or it does not validate."""
        entry = self._section(self._read_all())["entries"].get(key)
        return None if entry is None else self._valid(entry, key, groups)

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

    def _update(self, change) -> object:
        """Under the lock, read the file, let ``change(section)`` edit this environment's
        section and return a result, write it back; ``change``'s result either way. Where the
        file cannot be written, warn once and keep running uncached."""
        if not self.writable:
            return change(self._section({}))
        try:
            with self._locked():
                sections = self._read_all()
                section = self._section(sections)
                result = change(section)
                sections[self.fingerprint] = section
                write_json_atomic(self.path, {"format": CACHE_FORMAT, "environments": sections})
            return result
        except OSError as error:
            self.writable = False
            warn_once(f"diagonalwise: cannot write the tuning cache {self.path} ({error}); "
                      "tuning without a cache (set DIAGONALWISE_CACHE_DIR or pass cache=)")
            return change(self._section({}))

    def store(self, choice: LayerChoice, groups: int | None = None) -> LayerChoice:
        """Store ``choice`` unless a valid one for its key is there already; return the one that
        is in the cache now (so every process applies the same decision)."""

        def change(section: dict) -> LayerChoice:
            entries = section["entries"]
            if choice.key in entries:
                stored = self._valid(entries[choice.key], choice.key, groups)
                if stored is not None:
                    return stored
            entries[choice.key] = choice.to_dict()
            return choice

        return self._update(change)

    @staticmethod
    def _valid_verdict(verdict: object) -> bool:
        return isinstance(verdict, dict) and isinstance(verdict.get("kept"), bool)

    def lookup_verdict(self, key: str) -> dict | None:
        """The stored whole-model verdict for ``key`` (see :func:`model_key`), or None."""
        verdict = self._section(self._read_all())["models"].get(key)
        return verdict if self._valid_verdict(verdict) else None

    def store_verdict(self, key: str, verdict: dict) -> dict:
        """Store a whole-model verdict (see :func:`check_whole_model`) unless one for ``key`` is
        there already; return the one that is in the cache now."""

        def change(section: dict) -> dict:
            stored = section["models"].get(key)
            if self._valid_verdict(stored):
                return stored
            section["models"][key] = verdict
            return verdict

        return self._update(change)
