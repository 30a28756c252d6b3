"""The commit a result was measured at, for every benchmark's provenance (no framework needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """The commit of the checkout the package runs from, '+dirty' if it has changes; when the
    package is installed elsewhere, of the checkout the command runs in; outside any, the
    DIAGONALWISE_COMMIT variable (set it where a copy of the tree runs without its .git), else
    'unknown'."""
    for root in (SOURCE_ROOT, Path.cwd()):
        try:
            commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                    text=True, timeout=10, check=True).stdout.strip()
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                   cwd=root, capture_output=True, text=True,
                                   timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            continue
        return commit + ("+dirty" if dirty else "")
    return os.environ.get("DIAGONALWISE_COMMIT", "unknown")
