"""The commit a result was measured at, for every benchmark's provenance (no framework needed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def git_commit() -> str:
    """The DIAGONALWISE_COMMIT variable where set (for a copy of the tree run elsewhere, whose
    .git may be missing or stale); else the commit of the checkout the package runs from, '+dirty'
    if it has changes; when the package is installed elsewhere, of the checkout the command runs
    in; else 'unknown'."""
    if os.environ.get("DIAGONALWISE_COMMIT"):
        return os.environ["DIAGONALWISE_COMMIT"]
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
    return "unknown"
