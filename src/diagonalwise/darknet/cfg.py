"""Reading a Darknet ``.cfg`` file: sections of ``key=value`` options, each remembered with its
line so that every complaint names the file, the line and the key.

Darknet's own reader drops all whitespace from a line, skips lines starting with ``#`` or ``;``
and starts a section at ``[``; we do the same and also drop a trailing ``# comment`` (darknet's
``atoi`` stops there for numbers anyway).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ModelFileError

#: darknet's aliases for section names, mapped to the one name we use
SECTION_ALIASES = {
    "network": "net", "conv": "convolutional", "conn": "connected", "max": "maxpool",
    "avg": "avgpool", "soft": "softmax",
}


@dataclass
class Section:
    """One ``[type]`` block of a cfg: its options with the line each came from."""

    kind: str
    line: int
    path: str
    options: dict[str, tuple[str, int]] = field(default_factory=dict)
    read: set[str] = field(default_factory=set)

    def error(self, problem: str, key: str | None = None) -> ModelFileError:
        line = self.options[key][1] if key in self.options else self.line
        return ModelFileError(self.path, f"[{self.kind}] {problem}", line=line, key=key)

    def has(self, key: str) -> bool:
        return key in self.options

    def text(self, key: str, default: str | None = None) -> str:
        self.read.add(key)
        if key not in self.options:
            if default is None:
                raise self.error(f"needs '{key}=...'", key)
            return default
        return self.options[key][0]

    def integer(self, key: str, default: int | None = None, minimum: int | None = None) -> int:
        raw = self.text(key, None if default is None else str(default))
        try:
            value = int(raw)
        except ValueError:
            raise self.error(f"'{raw}' is not a whole number", key) from None
        if minimum is not None and value < minimum:
            raise self.error(f"is {value}; it must be at least {minimum}", key)
        return value

    def number(self, key: str, default: float) -> float:
        raw = self.text(key, str(default))
        try:
            return float(raw)
        except ValueError:
            raise self.error(f"'{raw}' is not a number", key) from None

    def integers(self, key: str) -> list[int]:
        raw = self.text(key)
        try:
            return [int(part) for part in raw.split(",") if part]
        except ValueError:
            raise self.error(f"'{raw}' is not a comma-separated list of layer indices", key) from None

    def require_default(self, key: str, default: str, why: str) -> None:
        """An option darknet knows whose other values change the computation in ways we do not
        reproduce: accepted only at its default."""
        if self.text(key, default) != default:
            raise self.error(f"{key}={self.options[key][0]} is not supported ({why}); remove "
                             f"it or set {key}={default}", key)

    def check_all_read(self, accept_any: bool = False) -> None:
        """Every option must have been understood: a key we did not read would be silently
        ignored, so it is an error (sections whose options only steer training say so)."""
        if accept_any:
            return
        for key in self.options:
            if key not in self.read:
                known = ", ".join(sorted(self.read)) or "none"
                raise self.error(f"unknown or unsupported option (this section takes: {known})", key)


def read_cfg(path: str | Path) -> list[Section]:
    """The sections of a Darknet cfg in file order; the first must be ``[net]``."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise ModelFileError(path, "no such file") from None
    except UnicodeDecodeError:
        raise ModelFileError(path, "is not a text file (a Darknet .cfg was expected)") from None
    sections: list[Section] = []
    for number, raw in enumerate(lines, start=1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if not line.endswith("]") or len(line) < 3:
                raise ModelFileError(path, f"'{raw.strip()}' is not a [section] header", line=number)
            kind = line[1:-1]
            sections.append(Section(SECTION_ALIASES.get(kind, kind), number, str(path)))
            continue
        if not sections:
            raise ModelFileError(path, "an option before the first [section]", line=number)
        key, separator, value = line.partition("=")
        value = value.split("#", 1)[0]
        if not separator or not key or not value:
            raise ModelFileError(path, f"'{raw.strip()}' is not a key=value option", line=number)
        if key in sections[-1].options:
            raise ModelFileError(path, f"given twice in [{sections[-1].kind}] (first on line "
                                 f"{sections[-1].options[key][1]})", line=number, key=key)
        sections[-1].options[key] = (value, number)
    if not sections or sections[0].kind != "net":
        raise ModelFileError(path, "a Darknet cfg starts with a [net] section (input width, height "
                             "and channels)", line=sections[0].line if sections else None)
    return sections
