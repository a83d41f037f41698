"""Pytest fixtures for the fake upstream.

To use them from ``tests/conftest.py``: ``pytest_plugins = ["tests.upstream.fixtures"]`` (root
conftest only), or ``from tests.upstream.fixtures import clean_upstream_fixture,
upstream_fixture  # noqa: F401``. The fixtures are named ``upstream`` and ``clean_upstream``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.upstream.process import UpstreamProcess

__all__ = ["clean_upstream_fixture", "upstream_fixture"]


@pytest.fixture(scope="session", name="upstream")
def upstream_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    """One fake upstream process for the session (no latency, no faults at start)."""
    proc = UpstreamProcess(tmp_path_factory.mktemp("upstream")).start()
    yield proc
    errors = proc.stats(digests=False)["internal_errors"]
    code = proc.stop()
    if errors:
        raise RuntimeError(f"the fake upstream hit {errors} internal errors:\n{proc.output()}")
    if code != 0:
        raise RuntimeError(f"upstream exited with {code}:\n{proc.output()}")


@pytest.fixture(name="clean_upstream")
def clean_upstream_fixture(upstream: UpstreamProcess) -> Iterator[UpstreamProcess]:
    """The session upstream with start-up settings restored and all counters cleared.

    Fails the test if the fake itself raised while serving it (``internal_errors``).
    """
    upstream.wait_idle()
    upstream.reset(config=True)
    yield upstream
    errors = upstream.stats(digests=False)["internal_errors"]
    assert errors == 0, f"the fake upstream hit {errors} internal errors:\n{upstream.output()}"
