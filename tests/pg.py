"""A fresh PostgreSQL database per test, when ``BATCHD_TEST_POSTGRES_URL`` names a server.

``BATCHD_TEST_POSTGRES_URL`` is a SQLAlchemy async URL of a database the tests may use to create
others (e.g. ``postgresql+asyncpg://postgres@127.0.0.1/test``, with asyncpg installed; ``.ci/run``
sets it). Each test gets its own database, dropped afterwards; without the variable, tests that
need Postgres skip and say how to run them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = ["POSTGRES_URL", "fresh_database", "skip_without_postgres"]

POSTGRES_URL = os.environ.get("BATCHD_TEST_POSTGRES_URL")


def skip_without_postgres() -> str:
    """The admin URL, or skip the test with what to set."""
    if POSTGRES_URL is None:
        pytest.skip(
            "set BATCHD_TEST_POSTGRES_URL (e.g. postgresql+asyncpg://postgres@127.0.0.1/test) "
            "to run this test on PostgreSQL"
        )
    return POSTGRES_URL


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """The URL of a new, empty database on the server of ``BATCHD_TEST_POSTGRES_URL``."""
    admin_url = skip_without_postgres()
    name = f"batchd_test_{secrets.token_hex(6)}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            await conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        try:
            yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()
