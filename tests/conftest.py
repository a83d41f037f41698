"""Shared fixtures: a real batchd server process, SDK clients, and the official schemas."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from openai import AsyncOpenAI, OpenAI

from batchd.store import SQLStore
from tests.pg import fresh_database
from tests.s3 import s3_server, storage  # noqa: F401 - fixtures: SeaweedFS, each Storage
from tests.serverproc import BatchdServer, models_at, write_config
from tests.upstream.process import UpstreamProcess

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SPEC_DIR = SHARED / "spec"


@pytest.fixture(scope="session")
def held_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    """A fake upstream that never answers: the batches of the session server stay
    ``in_progress`` (every request in flight) until a test cancels them."""
    proc = UpstreamProcess(tmp_path_factory.mktemp("held-upstream"), p_hang=1.0).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def server(
    tmp_path_factory: pytest.TempPathFactory, held_upstream: UpstreamProcess
) -> Iterator[BatchdServer]:
    """One batchd server for the session, with the default test routing table pointed at an
    upstream that holds every request (see ``held_upstream``)."""
    root = tmp_path_factory.mktemp("batchd-session")
    config = write_config(
        root / "batchd.toml",
        models=models_at(held_upstream.api_url),
        max_requests_per_batch=50,
        cancel_grace_seconds=0.2,
    )
    srv = BatchdServer(root / "data", config).start()
    yield srv
    srv.stop()


@pytest.fixture
def client(server: BatchdServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.api_url, api_key="test-key", max_retries=0) as c:
        yield c


@pytest.fixture
def async_client(server: BatchdServer) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=server.api_url, api_key="test-key", max_retries=0)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def wait_for_status(
    client: OpenAI, batch_id: str, statuses: set[str], timeout: float = 30.0
) -> Any:
    """Poll a batch until its status is one of ``statuses``."""
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        if time.monotonic() > deadline:
            raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout}s")
        time.sleep(0.05)


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A store URL: a fresh SQLite file, and a fresh PostgreSQL database when
    ``BATCHD_TEST_POSTGRES_URL`` names a server (skipped otherwise; see ``tests/pg.py``)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    else:
        async with fresh_database() as url:
            yield url


@pytest.fixture
async def store(db_url: str) -> AsyncIterator[SQLStore]:
    """The store on ``db_url``, migrated (each test its own database)."""
    s = SQLStore(db_url)
    await s.open()
    yield s
    await s.close()
