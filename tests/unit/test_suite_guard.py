"""The suite itself: a stuck test fails with a traceback instead of hanging the run."""

from __future__ import annotations

import pytest


def test_every_test_has_a_time_limit(request: pytest.FixtureRequest) -> None:
    limit_s = float(request.config.getini("timeout"))
    assert 0 < limit_s <= 600, "pyproject.toml [tool.pytest.ini_options] timeout: a per-test limit"
    assert request.config.getini("timeout_method") == "signal"
