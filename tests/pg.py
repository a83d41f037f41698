"""A fresh PostgreSQL database per test, when ``BATCHD_TEST_POSTGRES_URL`` names a server.

``BATCHD_TEST_POSTGRES_URL`` is a SQLAlchemy async URL of a database the tests may use to create
others (e.g. ``postgresql+asyncpg://postgres@127.0.0.1/test``, with asyncpg installed; ``.ci/run``
sets it). Each test gets its own database, dropped afterwards; without the variable, tests that
need Postgres skip and say how to run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

__all__ = [
    "POSTGRES_URL",
    "drop_connections",
    "fresh_database",
    "fresh_database_sync",
    "skip_without_postgres",
]

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


@contextlib.contextmanager
def fresh_database_sync() -> Iterator[str]:
    """:func:`fresh_database` for tests without an event loop (they drive processes)."""
    admin_url = skip_without_postgres()
    name = f"batchd_test_{secrets.token_hex(6)}"
    asyncio.run(_admin(admin_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(admin_url: str, *statements: str) -> None:
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement))
    finally:
        await admin.dispose()


def drop_connections(url: str, *, refuse: bool) -> None:
    """Close every connection to the database of ``url`` from the server's side, as a restart
    of PostgreSQL does; with ``refuse``, refuse new ones until called again with ``False``."""
    admin_url = skip_without_postgres()
    name = make_url(url).database

    allow = "false" if refuse else "true"
    asyncio.run(
        _admin(
            admin_url,
            f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {allow}',
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
        )
    )
