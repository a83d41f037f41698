"""SQLAlchemy (async) implementation of the store.

Portable SQL (SQLite and Postgres). Every method is one transaction. A write that must see the
rows it depends on unchanged takes a lock first: the batch's row for a lifecycle change, the
project's row (table ``projects``) for admission. On Postgres that is a row lock
(``SELECT … FOR UPDATE``); on SQLite the first write of a transaction takes the database's write
lock, so a lock is a write that changes nothing, issued before any read of the transaction.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from batchd.core.lifecycle import (
    ACTIVE,
    ENQUEUED,
    RUNNABLE,
    TERMINAL,
    BatchEnding,
    BatchEvent,
    BatchStatus,
    StatusChange,
    TokenQuota,
    parse_outcome,
    parse_status,
)
from batchd.errors import (
    BatchLimitReached,
    StorageQuotaExceeded,
    StoreError,
    TokenQuotaExceeded,
)
from batchd.store import migrate
from batchd.store.base import BatchAdmission, Order
from batchd.store.records import ApiKeyRecord, BatchRecord, FileRecord
from batchd.store.schema import api_keys, batch_events, batches, files, projects

__all__ = ["NOTIFY_CHANNEL", "SQLStore"]

_FILE_FIELDS = [f.name for f in dataclasses.fields(FileRecord)]
_BATCH_FIELDS = [f.name for f in dataclasses.fields(BatchRecord) if f.name != "ending"]
_FILE_COLUMNS = [files.c[name] for name in _FILE_FIELDS]  # not the (large) validation column
_BATCH_COLUMNS = [
    *(batches.c[name] for name in _BATCH_FIELDS),
    batches.c.ending,
    batches.c.ending_output_file_id,
    batches.c.ending_error_file_id,
]
_KEY_COLUMNS = [api_keys.c[f.name] for f in dataclasses.fields(ApiKeyRecord)]
_EVENT_COLUMNS = [batch_events.c[f.name] for f in dataclasses.fields(BatchEvent)]

_Statement = TypeVar("_Statement", sa.Select[Any], sa.Update)
T = TypeVar("T")

# What SQLite says when its disk is full or its file read-only (the store is then as stuck as
# the blobs beside it: see batchd.errors.StorageFault).
_SQLITE_FAULTS = {
    "database or disk is full": "storage_full",
    "disk I/O error": "storage_unavailable",
    "readonly database": "storage_read_only",
}


def _in_project(stmt: _Statement, table: sa.Table, project: str | None) -> _Statement:
    """``stmt`` limited to the rows of ``project`` (every project when ``None``: the engine)."""
    return stmt if project is None else stmt.where(table.c.project == project)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _store_error(exc: SQLAlchemyError | OSError, what: str | None = None) -> StoreError:
    """A foreign exception as a :class:`StoreError` that says when the disk is the cause."""
    text = str(getattr(exc, "orig", None) or exc)  # the driver's words, without SQL or links
    error = StoreError(f"{what}: {text}" if what else text)
    for marker, reason in _SQLITE_FAULTS.items():
        if marker in text:
            error.fault = reason
    return error


def _settle(task: asyncio.Task[Any]) -> None:
    """Retrieve a write task's outcome (its caller may have stopped waiting)."""
    if not task.cancelled():
        task.exception()


def _ending_values(ending: BatchEnding | None) -> dict[str, str | None]:
    if ending is None:
        return {"ending": None, "ending_output_file_id": None, "ending_error_file_id": None}
    return {
        "ending": ending.outcome,
        "ending_output_file_id": ending.output_file_id,
        "ending_error_file_id": ending.error_file_id,
    }


def _ending_of(m: sa.RowMapping) -> BatchEnding | None:
    outcome = m["ending"]
    if outcome is None:
        return None
    return BatchEnding(
        parse_outcome(outcome), m["ending_output_file_id"], m["ending_error_file_id"]
    )


#: The PostgreSQL channel of ``NOTIFY <batch id> <new status>`` at every status change (shared
#: mode: the workers ``LISTEN`` on it to claim new work and to see cancels at once).
NOTIFY_CHANNEL = "batchd_events"

#: The PostgreSQL advisory lock held while migrating ("batchd" and 1, as a 64-bit key).
MIGRATION_LOCK_KEY = 0x6261_7463_6864_0001


class SQLStore:
    """The store over an SQLAlchemy async engine. Build with a URL, then ``await open()``."""

    def __init__(self, url: str) -> None:
        self.url = url
        # No pre-ping (on asyncpg it costs three round trips per transaction): after a server
        # restart, the first use of each pooled connection fails, SQLAlchemy then replaces the
        # whole pool, and reads are tried once more (see _fetch).
        self._engine: AsyncEngine = create_async_engine(url)
        self._sqlite = self._engine.dialect.name == "sqlite"
        self._writes: set[asyncio.Task[Any]] = set()
        if self._sqlite:
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def open(self) -> None:
        """Bring the schema to the newest migration. On PostgreSQL, processes starting together
        migrate one at a time: each takes a transaction-scoped advisory lock first, so the
        others wait and then find the schema at its head."""
        try:
            async with self._engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    lock = sa.text("SELECT pg_advisory_xact_lock(:key)")
                    await conn.execute(lock, {"key": MIGRATION_LOCK_KEY})
                await conn.run_sync(migrate.upgrade_to_head)
        except (SQLAlchemyError, OSError) as exc:  # OSError: a server that cannot be reached
            raise _store_error(exc, f"cannot open the metadata store at {self.safe_url}") from exc

    @property
    def safe_url(self) -> str:
        """The URL without its password, for messages."""
        return self._engine.url.render_as_string(hide_password=True)

    async def schema_revision(self) -> str | None:
        """The migration the database is at (``None`` before the first)."""
        rows = await self._fetch(sa.text("SELECT version_num FROM alembic_version"))
        return str(rows[0][0]) if rows else None

    async def close(self) -> None:
        """Wait for the transactions under way (their callers may be gone), then close."""
        await asyncio.gather(*self._writes, return_exceptions=True)
        await self._engine.dispose()

    async def ping(self) -> None:
        await self._fetch(sa.select(sa.literal(1)))

    # -- helpers ----------------------------------------------------------------------------

    async def _fetch(self, stmt: sa.Executable) -> Sequence[sa.Row[Any]]:
        """Run a read; once more on a new connection when the first was found dead (a server
        that restarted since it was pooled)."""
        for attempt in range(2):
            try:
                async with self._engine.connect() as conn:
                    return (await conn.execute(stmt)).all()
            except DBAPIError as exc:
                if attempt or not exc.connection_invalidated:
                    raise _store_error(exc) from exc
            except SQLAlchemyError as exc:
                raise _store_error(exc) from exc
        raise AssertionError("unreachable")

    async def _autocommit(
        self, stmt: sa.Executable, params: dict[str, Any]
    ) -> Sequence[sa.Row[Any]]:
        """Run one statement on its own, atomic without a transaction around it (no BEGIN and
        COMMIT round trips), shielded from the caller's cancellation; its rows."""

        async def run() -> Sequence[sa.Row[Any]]:
            try:
                async with self._engine.connect() as conn:
                    conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
                    return (await conn.execute(stmt, params)).all()
            except SQLAlchemyError as exc:
                raise _store_error(exc) from exc

        return await self._shielded(run())

    async def _transaction(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``work`` in a transaction that ends (commit, or rollback on error) whatever
        happens to the caller: it runs in a task of its own, shielded from the caller's
        cancellation. A transaction cut short by a cancel would leave its connection, and on
        SQLite the database's write lock, held until the garbage collector closes it."""

        async def run() -> T:
            try:
                async with self._engine.begin() as conn:
                    return await work(conn)
            except SQLAlchemyError as exc:
                raise _store_error(exc) from exc

        return await self._shielded(run())

    def _shielded(self, work: Coroutine[Any, Any, T]) -> Awaitable[T]:
        """``work`` in a task of its own that runs to its end even if the caller is cancelled
        (:meth:`close` waits for it)."""
        task = asyncio.ensure_future(work)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        task.add_done_callback(_settle)
        return asyncio.shield(task)

    async def _execute(self, stmt: sa.Executable) -> int:
        """Run one write in its own transaction; the number of rows it matched."""

        async def work(conn: AsyncConnection) -> int:
            return int((await conn.execute(stmt)).rowcount)

        return await self._transaction(work)

    @staticmethod
    def _file(row: sa.Row[Any]) -> FileRecord:
        m = row._mapping
        return FileRecord(**{name: m[name] for name in _FILE_FIELDS})

    @staticmethod
    def _batch(row: sa.Row[Any]) -> BatchRecord:
        m = row._mapping
        values = {name: m[name] for name in _BATCH_FIELDS}
        values["status"] = parse_status(values["status"])
        return BatchRecord(**values, ending=_ending_of(m))

    @staticmethod
    def _page(rows: Sequence[sa.Row[Any]], limit: int) -> tuple[Sequence[sa.Row[Any]], bool]:
        return rows[:limit], len(rows) > limit

    async def _lock_project(self, conn: AsyncConnection, project: str, now: int) -> None:
        """Hold the project's row until the transaction ends (creating it the first time)."""
        insert = (sqlite.insert if self._sqlite else postgresql.insert)(projects)
        await conn.execute(
            insert.values(name=project, created_at=now).on_conflict_do_nothing(
                index_elements=["name"]
            )
        )
        if not self._sqlite:  # SQLite: the insert above took the database's write lock
            await conn.execute(
                sa.select(projects.c.name).where(projects.c.name == project).with_for_update()
            )

    async def _lock_batch(
        self, conn: AsyncConnection, batch_id: str
    ) -> tuple[str, str, str | None, int] | None:
        """The batch's status, project, lease owner and lease epoch, its row held until the
        transaction ends."""
        select = sa.select(
            batches.c.status, batches.c.project, batches.c.lease_owner, batches.c.lease_epoch
        ).where(batches.c.id == batch_id)
        if self._sqlite:
            await conn.execute(
                sa.update(batches).where(batches.c.id == batch_id).values(status=batches.c.status)
            )
        else:
            select = select.with_for_update()
        row = (await conn.execute(select)).one_or_none()
        return None if row is None else (row[0], row[1], row[2], int(row[3]))

    # -- files ------------------------------------------------------------------------------

    async def create_file(
        self,
        record: FileRecord,
        *,
        validation: dict[str, Any] | None = None,
        max_stored_bytes: int | None = None,
    ) -> None:
        values = dataclasses.asdict(record)

        async def work(conn: AsyncConnection) -> None:
            await self._lock_project(conn, record.project, record.created_at)
            if max_stored_bytes is not None:
                used = await self._stored_bytes(conn, record.project, record.created_at)
                if used + record.bytes > max_stored_bytes:
                    raise StorageQuotaExceeded(used=used)
            await conn.execute(sa.insert(files).values(**values, validation=validation))

        await self._transaction(work)

    async def get_file_validation(self, file_id: str) -> dict[str, Any] | None:
        rows = await self._fetch(sa.select(files.c.validation).where(files.c.id == file_id))
        return rows[0][0] if rows and rows[0][0] is not None else None

    @staticmethod
    def _live_files(now: int) -> sa.ColumnElement[bool]:
        return sa.and_(
            files.c.deleted_at.is_(None),
            sa.or_(files.c.expires_at.is_(None), files.c.expires_at > now),
        )

    async def get_file(
        self, file_id: str, *, now: int, project: str | None = None
    ) -> FileRecord | None:
        stmt = sa.select(*_FILE_COLUMNS).where(files.c.id == file_id, self._live_files(now))
        rows = await self._fetch(_in_project(stmt, files, project))
        return self._file(rows[0]) if rows else None

    async def file_cursor(self, file_id: str, *, project: str | None = None) -> int | None:
        stmt = sa.select(files.c.seq).where(files.c.id == file_id)
        rows = await self._fetch(_in_project(stmt, files, project))
        return int(rows[0][0]) if rows else None

    async def list_files(
        self,
        *,
        now: int,
        purpose: str | None,
        after_seq: int | None,
        limit: int,
        order: Order,
        project: str | None = None,
    ) -> tuple[list[FileRecord], bool]:
        stmt = _in_project(sa.select(*_FILE_COLUMNS).where(self._live_files(now)), files, project)
        if purpose is not None:
            stmt = stmt.where(files.c.purpose == purpose)
        if order == "desc":
            if after_seq is not None:
                stmt = stmt.where(files.c.seq < after_seq)
            stmt = stmt.order_by(files.c.seq.desc())
        else:
            if after_seq is not None:
                stmt = stmt.where(files.c.seq > after_seq)
            stmt = stmt.order_by(files.c.seq.asc())
        rows, has_more = self._page(await self._fetch(stmt.limit(limit + 1)), limit)
        return [self._file(r) for r in rows], has_more

    async def delete_file(
        self, file_id: str, *, now: int, project: str | None = None
    ) -> FileRecord | None:
        """Mark a live file deleted; returns it, or ``None`` if there was no live file (in
        ``project``, when given)."""

        async def work(conn: AsyncConnection) -> FileRecord | None:
            update = sa.update(files).where(files.c.id == file_id, self._live_files(now))
            result = await conn.execute(_in_project(update, files, project).values(deleted_at=now))
            if result.rowcount != 1:
                return None
            row = (await conn.execute(sa.select(*_FILE_COLUMNS).where(files.c.id == file_id))).one()
            return self._file(row)

        return await self._transaction(work)

    async def files_to_purge(self, *, now: int, limit: int) -> list[FileRecord]:
        """Deleted or expired files whose blobs are still stored, oldest first, except the
        inputs of active batches (a batch keeps reading its input until it ends)."""
        in_use = sa.exists().where(
            batches.c.input_file_id == files.c.id, batches.c.status.in_(sorted(ACTIVE))
        )
        rows = await self._fetch(
            sa.select(*_FILE_COLUMNS)
            .where(
                files.c.purged_at.is_(None),
                sa.or_(
                    files.c.deleted_at.is_not(None),
                    sa.and_(files.c.expires_at.is_not(None), files.c.expires_at <= now),
                ),
                ~in_use,
            )
            .order_by(files.c.seq)
            .limit(limit)
        )
        return [self._file(r) for r in rows]

    async def mark_purged(self, file_id: str, *, now: int) -> None:
        await self._execute(sa.update(files).where(files.c.id == file_id).values(purged_at=now))

    async def stored_bytes(self, project: str, *, now: int) -> int:
        """Bytes of the project's live files."""
        try:
            async with self._engine.connect() as conn:
                return await self._stored_bytes(conn, project, now)
        except SQLAlchemyError as exc:
            raise _store_error(exc) from exc

    async def _stored_bytes(self, conn: AsyncConnection, project: str, now: int) -> int:
        total = await conn.scalar(
            sa.select(sa.func.coalesce(sa.func.sum(files.c.bytes), 0)).where(
                files.c.project == project, self._live_files(now)
            )
        )
        return int(total or 0)

    # -- batches ----------------------------------------------------------------------------

    async def create_batch(self, record: BatchRecord, *, admission: BatchAdmission | None) -> None:
        values = {name: getattr(record, name) for name in _BATCH_FIELDS}

        async def work(conn: AsyncConnection) -> None:
            await self._lock_project(conn, record.project, record.created_at)
            if admission is not None and not admission.unlimited:
                await self._admit(conn, record.project, admission)
            await conn.execute(sa.insert(batches).values(**values, **_ending_values(record.ending)))
            await self._event(
                conn, record.id, record.project, (None, record.status), record.created_at
            )

        await self._transaction(work)

    async def _admit(self, conn: AsyncConnection, project: str, admission: BatchAdmission) -> None:
        """Raise :class:`BatchLimitReached` if the project may not create a batch now."""
        in_project = batches.c.project == project
        active = int(
            await conn.scalar(
                sa.select(sa.func.count()).where(in_project, batches.c.status.in_(sorted(ACTIVE)))
            )
            or 0
        )
        recent = (
            await conn.execute(
                sa.select(sa.func.count(), sa.func.min(batches.c.created_at)).where(
                    in_project, batches.c.created_at >= admission.since
                )
            )
        ).one()
        created, oldest = int(recent[0]), None if recent[1] is None else int(recent[1])
        for which, limit, count in (
            ("max_active_batches", admission.max_active, active),
            ("max_batches_per_hour", admission.max_per_hour, created),
        ):
            if limit is not None and count >= limit:
                raise BatchLimitReached(
                    which, limit=limit, active=active, created_since=created, oldest=oldest
                )

    @staticmethod
    async def _event(
        conn: AsyncConnection,
        batch_id: str,
        project: str,
        change: tuple[BatchStatus | None, BatchStatus],
        at: int,
    ) -> None:
        """The outbox row of a status change (``change``: from, to), in the change's
        transaction."""
        await conn.execute(
            sa.insert(batch_events).values(
                batch_id=batch_id,
                project=project,
                from_status=change[0],
                to_status=change[1],
                created_at=at,
            )
        )
        if conn.dialect.name == "postgresql":  # wakes the workers when the change commits
            await conn.execute(
                sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, f"{batch_id} {change[1]}"))
            )

    async def get_batch(self, batch_id: str, *, project: str | None = None) -> BatchRecord | None:
        stmt = sa.select(*_BATCH_COLUMNS).where(batches.c.id == batch_id)
        rows = await self._fetch(_in_project(stmt, batches, project))
        return self._batch(rows[0]) if rows else None

    async def batch_cursor(self, batch_id: str, *, project: str | None = None) -> int | None:
        stmt = sa.select(batches.c.seq).where(batches.c.id == batch_id)
        rows = await self._fetch(_in_project(stmt, batches, project))
        return int(rows[0][0]) if rows else None

    async def list_batches(
        self,
        *,
        after_seq: int | None,
        limit: int,
        project: str | None = None,
        before_seq: int | None = None,
        dialect: str | None = None,
    ) -> tuple[list[BatchRecord], bool]:
        stmt = _in_project(sa.select(*_BATCH_COLUMNS), batches, project)
        stmt = stmt.where(batches.c.deleted_at.is_(None))
        if dialect is not None:
            stmt = stmt.where(batches.c.dialect == dialect)
        if before_seq is not None:  # the page just newer than the cursor, nearest first
            stmt = stmt.where(batches.c.seq > before_seq).order_by(batches.c.seq)
            rows, has_more = self._page(await self._fetch(stmt.limit(limit + 1)), limit)
            return [self._batch(r) for r in reversed(rows)], has_more
        stmt = stmt.order_by(batches.c.seq.desc())
        if after_seq is not None:
            stmt = stmt.where(batches.c.seq < after_seq)
        rows, has_more = self._page(await self._fetch(stmt.limit(limit + 1)), limit)
        return [self._batch(r) for r in rows], has_more

    async def delete_batch(
        self, batch_id: str, *, now: int, project: str | None = None
    ) -> BatchRecord | None:
        """Mark the ended batch deleted (once); the batch after that, or ``None`` when it is
        missing, deleted already or not ended."""
        condition = sa.and_(
            batches.c.deleted_at.is_(None),
            batches.c.status.in_(sorted(TERMINAL)),
            sa.true() if project is None else batches.c.project == project,
        )
        return await self._set_if(batch_id, condition, {"deleted_at": now})

    async def batches_with_status(self, statuses: Iterable[BatchStatus]) -> list[BatchRecord]:
        rows = await self._fetch(
            sa.select(*_BATCH_COLUMNS)
            .where(batches.c.status.in_(sorted(statuses)))
            .order_by(batches.c.seq)
        )
        return [self._batch(r) for r in rows]

    async def batch_status_counts(self) -> dict[str, int]:
        rows = await self._fetch(
            sa.select(batches.c.status, sa.func.count().label("n"))
            .where(batches.c.deleted_at.is_(None))
            .group_by(batches.c.status)
        )
        return {str(row.status): int(row.n) for row in rows}

    async def apply(self, change: StatusChange) -> BatchRecord | None:
        """Apply a lifecycle change: compare-and-set on the status, the event beside it."""
        update = dict(change.update)
        values: dict[str, Any] = {k: v for k, v in update.items() if k != "ending"}
        if "ending" in update:
            values.update(_ending_values(change.update.get("ending")))
        if change.to is not None:
            values["status"] = change.to
            values[f"{change.to}_at"] = change.at
        unknown = set(values) - set(batches.c.keys())
        if unknown:
            raise ValueError(f"unknown batch fields: {sorted(unknown)}")

        async def work(conn: AsyncConnection) -> BatchRecord | None:
            current = await self._lock_batch(conn, change.batch_id)
            if current is None or current[0] not in change.expected:
                return None
            if change.lease is not None and change.lease != (current[2], current[3]):
                return None  # claimed by another engine since: fenced off
            status, project = parse_status(current[0]), current[1]
            if change.quota is not None:
                await self._reserve(conn, project, change.quota, change.at)
            await conn.execute(
                sa.update(batches).where(batches.c.id == change.batch_id).values(**values)
            )
            if change.to is not None:
                await self._event(conn, change.batch_id, project, (status, change.to), change.at)
            row = (
                await conn.execute(
                    sa.select(*_BATCH_COLUMNS).where(batches.c.id == change.batch_id)
                )
            ).one()
            return self._batch(row)

        return await self._transaction(work)

    async def _reserve(
        self, conn: AsyncConnection, project: str, quota: TokenQuota, now: int
    ) -> None:
        """Raise :class:`TokenQuotaExceeded` if ``quota.tokens`` more would take the project's
        enqueued tokens of the model past the limit (the caller then sets them on the batch)."""
        await self._lock_project(conn, project, now)
        queued = int(
            await conn.scalar(
                sa.select(sa.func.coalesce(sa.func.sum(batches.c.enqueued_tokens), 0)).where(
                    batches.c.project == project,
                    batches.c.model == quota.model,
                    batches.c.status.in_(sorted(ENQUEUED)),
                )
            )
            or 0
        )
        if queued + quota.tokens > quota.limit:
            raise TokenQuotaExceeded(queued=queued)

    async def events(
        self, *, after_seq: int = 0, limit: int = 1000, batch_id: str | None = None
    ) -> list[BatchEvent]:
        stmt = sa.select(*_EVENT_COLUMNS).where(batch_events.c.seq > after_seq)
        if batch_id is not None:
            stmt = stmt.where(batch_events.c.batch_id == batch_id)
        rows = await self._fetch(stmt.order_by(batch_events.c.seq).limit(limit))
        return [
            BatchEvent(
                seq=int(row.seq),
                batch_id=row.batch_id,
                project=row.project,
                from_status=None if row.from_status is None else parse_status(row.from_status),
                to_status=parse_status(row.to_status),
                created_at=int(row.created_at),
            )
            for row in rows
        ]

    # -- leases -----------------------------------------------------------------------------

    @staticmethod
    def _claimable(now: float) -> sa.ColumnElement[bool]:
        return sa.and_(
            batches.c.status.in_(sorted(RUNNABLE)),
            batches.c.in_progress_at.is_not(None),
            sa.or_(batches.c.lease_owner.is_(None), batches.c.lease_expires_at < now),
        )

    async def _set_if(
        self, batch_id: str, condition: sa.ColumnElement[bool], values: dict[str, Any]
    ) -> BatchRecord | None:
        """Set ``values`` (a lease, a deletion) if ``condition`` holds (compare-and-set); the
        batch after it, or ``None`` when it is missing or the condition failed."""

        async def work(conn: AsyncConnection) -> BatchRecord | None:
            result = await conn.execute(
                sa.update(batches).where(batches.c.id == batch_id, condition).values(**values)
            )
            if result.rowcount != 1:
                return None
            row = (
                await conn.execute(sa.select(*_BATCH_COLUMNS).where(batches.c.id == batch_id))
            ).one()
            return self._batch(row)

        return await self._transaction(work)

    async def claim_batches(
        self, *, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[BatchRecord]:
        """Claim up to ``limit`` runnable batches that nobody holds (or whose lease ran out),
        oldest first. Only batches that ran validation (``in_progress_at`` set) qualify.

        Each claim is a compare-and-set on the lease, so two engines sharing the store never
        both claim a batch (portable: no ``SKIP LOCKED`` needed).
        """
        candidates = await self._fetch(
            sa.select(batches.c.id).where(self._claimable(now)).order_by(batches.c.seq).limit(limit)
        )
        claimed: list[BatchRecord] = []
        for (batch_id,) in candidates:
            batch = await self._set_if(
                batch_id,
                self._claimable(now),
                {
                    "lease_owner": owner,
                    "lease_expires_at": now + lease_seconds,
                    "lease_epoch": batches.c.lease_epoch + 1,
                },
            )
            if batch is not None:
                claimed.append(batch)
        return claimed

    async def renew_lease(
        self, batch_id: str, *, owner: str, now: float, lease_seconds: float
    ) -> BatchRecord | None:
        """Extend ``owner``'s lease; the batch as it is now, or ``None`` if the lease was lost."""
        return await self._set_if(
            batch_id, batches.c.lease_owner == owner, {"lease_expires_at": now + lease_seconds}
        )

    async def release_lease(self, batch_id: str, *, owner: str) -> None:
        await self._execute(
            sa.update(batches)
            .where(batches.c.id == batch_id, batches.c.lease_owner == owner)
            .values(lease_owner=None, lease_expires_at=None)
        )

    async def release_all_leases(self) -> int:
        """Drop every lease: for a store that only this process can use (its SQLite file)."""
        return await self._execute(
            sa.update(batches)
            .where(batches.c.lease_owner.is_not(None))
            .values(lease_owner=None, lease_expires_at=None)
        )

    async def record_progress(
        self, batch_id: str, *, owner: str, completed: int, failed: int, usage: dict[str, Any]
    ) -> None:
        """Live ``request_counts`` and ``usage`` of a running batch (only by its lease holder)."""
        await self._execute(
            sa.update(batches)
            .where(batches.c.id == batch_id, batches.c.lease_owner == owner)
            .values(completed=completed, failed=failed, usage=usage)
        )

    # -- API keys ---------------------------------------------------------------------------

    async def create_api_key(self, record: ApiKeyRecord) -> None:
        await self._execute(sa.insert(api_keys).values(**dataclasses.asdict(record)))

    async def find_api_key(self, sha256: str) -> ApiKeyRecord | None:
        """The key with this digest, revoked or not."""
        rows = await self._fetch(sa.select(*_KEY_COLUMNS).where(api_keys.c.sha256 == sha256))
        return ApiKeyRecord(**rows[0]._mapping) if rows else None

    async def list_api_keys(self) -> list[ApiKeyRecord]:
        rows = await self._fetch(sa.select(*_KEY_COLUMNS).order_by(api_keys.c.seq))
        return [ApiKeyRecord(**row._mapping) for row in rows]

    async def revoke_api_key(self, sha256: str, *, now: int) -> bool:
        """Revoke a live key; whether there was one."""
        revoked = await self._execute(
            sa.update(api_keys)
            .where(api_keys.c.sha256 == sha256, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return revoked == 1

    async def has_api_keys(self) -> bool:
        """Whether any key was ever created (a revoked one still means auth is on)."""
        rows = await self._fetch(sa.select(api_keys.c.seq).limit(1))
        return bool(rows)
