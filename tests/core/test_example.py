"""The example the README links runs and finds the converted model equivalent."""

from __future__ import annotations

import runpy
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "convert_mobilenet_v2.py"


def test_convert_mobilenet_v2_example(capsys):
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    printed = capsys.readouterr().out
    assert "converted 17 layer(s)" in printed
    assert printed.rstrip().endswith("equivalent: same loss and parameters to float64 rounding")
