"""The metadata store's URL and migrations: ``database_url`` as operators write it
(``postgresql://``), ``batchd db upgrade``, and processes starting together on one PostgreSQL
database (they migrate one at a time, under an advisory lock)."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from batchd.config import Settings
from batchd.store import SQLStore
from tests.pg import fresh_database
from tests.serverproc import batchd, free_port

VERSIONS = Path(__file__).resolve().parents[1] / "src" / "batchd" / "store" / "migrations"
HEAD = max(p.name.split("_", 1)[0] for p in (VERSIONS / "versions").glob("0*.py"))


@pytest.mark.parametrize(
    ("given", "resolved"),
    [
        ("postgresql://batchd@db:5432/batchd", "postgresql+asyncpg://batchd@db:5432/batchd"),
        ("postgres://batchd:pw@db/batchd", "postgresql+asyncpg://batchd:pw@db/batchd"),
        ("postgresql+asyncpg://batchd@db/batchd", "postgresql+asyncpg://batchd@db/batchd"),
        ("sqlite:////var/lib/batchd.sqlite3", "sqlite+aiosqlite:////var/lib/batchd.sqlite3"),
    ],
)
def test_database_urls_get_their_async_driver(tmp_path: Path, given: str, resolved: str) -> None:
    settings = Settings.load(data_dir=tmp_path, database_url=given, embedded_models=False)
    assert settings.resolved_database_url == resolved


def test_the_default_is_the_data_directorys_sqlite(tmp_path: Path) -> None:
    settings = Settings.load(data_dir=tmp_path, embedded_models=False)
    assert settings.resolved_database_url == f"sqlite+aiosqlite:///{tmp_path}/batchd.sqlite3"


def db_upgrade(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return batchd("db", "upgrade", *args, env=env, timeout=120)


def test_db_upgrade_on_a_data_directory(tmp_path: Path) -> None:
    done = db_upgrade("--data-dir", str(tmp_path / "data"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(f"at revision {HEAD}")
    assert (tmp_path / "data" / "batchd.sqlite3").is_file()
    again = db_upgrade("--data-dir", str(tmp_path / "data"))  # nothing left to do: the same
    assert again.returncode == 0
    assert again.stdout == done.stdout


def test_db_upgrade_of_an_unreachable_store_says_so(tmp_path: Path) -> None:
    done = db_upgrade("--database-url", "postgresql://nobody:secret@127.0.0.1:9/none")
    assert done.returncode == 2
    assert "cannot open the metadata store at postgresql+asyncpg://nobody:***@" in done.stderr
    assert "secret" not in done.stderr


@pytest.mark.parametrize("command", [["serve", "--no-engine"], ["worker"], ["workers"]])
def test_processes_on_an_unreachable_database_say_so_in_one_line(
    tmp_path: Path, command: list[str]
) -> None:
    url = "postgresql://batchd:secret@127.0.0.1:9/batchd"  # nothing listens on port 9
    args = [*command, "--port", str(free_port())] if command[0] == "serve" else command
    done = batchd(*args, env={"BATCHD_DATABASE_URL": url, "BATCHD_DATA_DIR": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert "cannot open the metadata store at postgresql+asyncpg://batchd:***@" in done.stderr
    assert "secret" not in done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def test_an_api_process_without_an_engine_needs_a_shared_database(tmp_path: Path) -> None:
    done = batchd("serve", "--no-engine", "--port", str(free_port()), "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert "set database_url" in done.stderr, done.stderr
    done = batchd("worker", "--data-dir", str(tmp_path))
    assert done.returncode == 2
    assert "set database_url" in done.stderr, done.stderr


@pytest.mark.anyio
async def test_processes_starting_together_migrate_one_at_a_time() -> None:
    async with fresh_database() as url:
        # Four processes' worth of stores and two `batchd db upgrade` runs, all at once, on an
        # empty database: without the lock, two of them would create the same tables.
        plain_url = "postgresql://" + url.split("://", 1)[1]

        async def cli() -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(db_upgrade, env={"BATCHD_DATABASE_URL": plain_url})

        async def store() -> str | None:
            opened = SQLStore(url)
            try:
                await opened.open()
                return await opened.schema_revision()
            finally:
                await opened.close()

        results = await asyncio.gather(*(store() for _ in range(4)), cli(), cli())
        assert results[:4] == [HEAD] * 4
        for done in results[4:]:
            assert isinstance(done, subprocess.CompletedProcess)
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip().endswith(f"at revision {HEAD}")
