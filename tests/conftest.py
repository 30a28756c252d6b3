"""Shared test set-up for every room and every framework environment (so nothing here imports a
framework): reproducible property-based tests, and a tuning cache that never touches the user's.

Hypothesis profiles: ``ci`` (the default under ``CI`` and in ``make test``) is derandomized, so a
run fails or passes the same way every time, with enough examples to keep finding bugs; ``dev``
(``HYPOTHESIS_PROFILE=dev``) searches anew with random examples and a local example database.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

if importlib.util.find_spec("hypothesis") is not None:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                              print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", deadline=None, print_blob=True,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def private_tuning_cache(tmp_path, monkeypatch):
    """Tuning caches go to this test's temporary directory, not ``~/.cache/diagonalwise``."""
    monkeypatch.setenv("DIAGONALWISE_CACHE_DIR", str(tmp_path / "tuning-cache"))
