"""The ``diagonalwise`` command's entry point: ``bench --framework NAME`` for a framework other
than PyTorch goes to :mod:`diagonalwise.framework_cli` without importing PyTorch (so it runs in
the JAX, TensorFlow or MXNet environment); everything else to :mod:`diagonalwise.cli`."""

from __future__ import annotations

import sys

from .framework_cli import wants_framework


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if wants_framework(argv):
        from .framework_cli import main as framework_main

        return framework_main(argv)
    from .cli import main as cli_main

    return cli_main(argv)
