"""SQLAlchemy (async) implementation of the store."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from batchd.errors import StoreError
from batchd.store import migrate
from batchd.store.records import ApiKeyRecord, BatchRecord, FileRecord
from batchd.store.tables import api_keys, batches, files

__all__ = ["Order", "SQLStore", "Store"]

Order = Literal["asc", "desc"]

_FILE_FIELDS = [f.name for f in dataclasses.fields(FileRecord)]
_BATCH_FIELDS = [f.name for f in dataclasses.fields(BatchRecord)]
_FILE_COLUMNS = [files.c[name] for name in _FILE_FIELDS]  # not the (large) validation column
_KEY_COLUMNS = [api_keys.c[f.name] for f in dataclasses.fields(ApiKeyRecord)]


_Statement = TypeVar("_Statement", sa.Select[Any], sa.Update)


@dataclasses.dataclass(frozen=True, slots=True)
class BatchActivity:
    active: int
    created_since: int
    oldest_created_at: int | None


def _in_project(stmt: _Statement, table: sa.Table, project: str | None) -> _Statement:
    """``stmt`` limited to the rows of ``project`` (every project when ``None``: the engine)."""
    return stmt if project is None else stmt.where(table.c.project == project)


class Store(Protocol):
    """What the API and the engine need from a metadata store."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    async def create_file(
        self, record: FileRecord, *, validation: dict[str, Any] | None = None
    ) -> None: ...
    async def get_file_validation(self, file_id: str) -> dict[str, Any] | None: ...
    async def get_file(
        self, file_id: str, *, now: int, project: str | None = None
    ) -> FileRecord | None: ...
    async def file_cursor(self, file_id: str, *, project: str | None = None) -> int | None: ...
    async def list_files(
        self,
        *,
        now: int,
        purpose: str | None,
        after_seq: int | None,
        limit: int,
        order: Order,
        project: str | None = None,
    ) -> tuple[list[FileRecord], bool]: ...
    async def delete_file(
        self, file_id: str, *, now: int, project: str | None = None
    ) -> FileRecord | None: ...
    async def files_to_purge(
        self, *, now: int, active_statuses: Iterable[str], limit: int
    ) -> list[FileRecord]: ...
    async def mark_purged(self, file_id: str, *, now: int) -> None: ...

    async def create_batch(self, record: BatchRecord) -> None: ...
    async def get_batch(
        self, batch_id: str, *, project: str | None = None
    ) -> BatchRecord | None: ...
    async def batch_cursor(self, batch_id: str, *, project: str | None = None) -> int | None: ...
    async def list_batches(
        self, *, after_seq: int | None, limit: int, project: str | None = None
    ) -> tuple[list[BatchRecord], bool]: ...
    async def batches_with_status(self, statuses: Iterable[str]) -> list[BatchRecord]: ...
    async def transition(
        self, batch_id: str, from_statuses: Iterable[str], **changes: Any
    ) -> BatchRecord | None: ...

    async def claim_batches(
        self, *, owner: str, statuses: Iterable[str], now: float, lease_seconds: float, limit: int
    ) -> list[BatchRecord]: ...
    async def renew_lease(
        self, batch_id: str, *, owner: str, now: float, lease_seconds: float
    ) -> BatchRecord | None: ...
    async def release_lease(self, batch_id: str, *, owner: str) -> None: ...
    async def release_all_leases(self) -> int: ...
    async def record_progress(
        self, batch_id: str, *, owner: str, completed: int, failed: int, usage: dict[str, Any]
    ) -> None: ...

    async def stored_bytes(self, project: str, *, now: int) -> int: ...
    async def batch_activity(
        self, project: str, *, since: int, active_statuses: Iterable[str]
    ) -> BatchActivity: ...
    async def enqueued_tokens(
        self, project: str, model: str, *, statuses: Iterable[str]
    ) -> int: ...

    async def create_api_key(self, record: ApiKeyRecord) -> None: ...
    async def find_api_key(self, sha256: str) -> ApiKeyRecord | None: ...
    async def list_api_keys(self) -> list[ApiKeyRecord]: ...
    async def revoke_api_key(self, sha256: str, *, now: int) -> bool: ...
    async def has_api_keys(self) -> bool: ...


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class SQLStore:
    """The store over an SQLAlchemy async engine. Build with a URL, then ``await open()``."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine: AsyncEngine = create_async_engine(url)
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine.sync_engine, "connect", _sqlite_pragmas)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    async def open(self) -> None:
        """Bring the schema to the newest migration."""
        try:
            async with self._engine.begin() as conn:
                await conn.run_sync(migrate.upgrade_to_head)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open the metadata store at {self.url}: {exc}") from exc

    async def close(self) -> None:
        await self._engine.dispose()

    async def ping(self) -> None:
        await self._fetch(sa.select(sa.literal(1)))

    # -- helpers ----------------------------------------------------------------------------

    async def _fetch(self, stmt: sa.Executable) -> Sequence[sa.Row[Any]]:
        try:
            async with self._engine.connect() as conn:
                return (await conn.execute(stmt)).all()
        except SQLAlchemyError as exc:
            raise StoreError(str(exc)) from exc

    async def _execute(self, stmt: sa.Executable) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(stmt)
        except SQLAlchemyError as exc:
            raise StoreError(str(exc)) from exc

    @staticmethod
    def _file(row: sa.Row[Any]) -> FileRecord:
        m = row._mapping
        return FileRecord(**{name: m[name] for name in _FILE_FIELDS})

    @staticmethod
    def _batch(row: sa.Row[Any]) -> BatchRecord:
        m = row._mapping
        values = {name: m[name] for name in _BATCH_FIELDS}
        values["extra"] = values["extra"] or {}
        return BatchRecord(**values)

    @staticmethod
    def _page(rows: Sequence[sa.Row[Any]], limit: int) -> tuple[Sequence[sa.Row[Any]], bool]:
        return rows[:limit], len(rows) > limit

    # -- files ------------------------------------------------------------------------------

    async def create_file(
        self, record: FileRecord, *, validation: dict[str, Any] | None = None
    ) -> None:
        values = dataclasses.asdict(record)
        await self._execute(sa.insert(files).values(**values, validation=validation))

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
        try:
            async with self._engine.begin() as conn:
                update = sa.update(files).where(files.c.id == file_id, self._live_files(now))
                result = await conn.execute(
                    _in_project(update, files, project).values(deleted_at=now)
                )
                if result.rowcount != 1:
                    return None
                row = (
                    await conn.execute(sa.select(*_FILE_COLUMNS).where(files.c.id == file_id))
                ).one()
        except SQLAlchemyError as exc:
            raise StoreError(str(exc)) from exc
        return self._file(row)

    async def files_to_purge(
        self, *, now: int, active_statuses: Iterable[str], limit: int
    ) -> list[FileRecord]:
        """Deleted or expired files whose blob is still stored and that no active batch reads."""
        in_use = sa.exists().where(
            batches.c.input_file_id == files.c.id, batches.c.status.in_(list(active_statuses))
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

    # -- batches ----------------------------------------------------------------------------

    async def create_batch(self, record: BatchRecord) -> None:
        await self._execute(sa.insert(batches).values(**dataclasses.asdict(record)))

    async def get_batch(self, batch_id: str, *, project: str | None = None) -> BatchRecord | None:
        stmt = sa.select(batches).where(batches.c.id == batch_id)
        rows = await self._fetch(_in_project(stmt, batches, project))
        return self._batch(rows[0]) if rows else None

    async def batch_cursor(self, batch_id: str, *, project: str | None = None) -> int | None:
        stmt = sa.select(batches.c.seq).where(batches.c.id == batch_id)
        rows = await self._fetch(_in_project(stmt, batches, project))
        return int(rows[0][0]) if rows else None

    async def list_batches(
        self, *, after_seq: int | None, limit: int, project: str | None = None
    ) -> tuple[list[BatchRecord], bool]:
        stmt = _in_project(sa.select(batches), batches, project).order_by(batches.c.seq.desc())
        if after_seq is not None:
            stmt = stmt.where(batches.c.seq < after_seq)
        rows, has_more = self._page(await self._fetch(stmt.limit(limit + 1)), limit)
        return [self._batch(r) for r in rows], has_more

    async def batches_with_status(self, statuses: Iterable[str]) -> list[BatchRecord]:
        rows = await self._fetch(
            sa.select(batches).where(batches.c.status.in_(list(statuses))).order_by(batches.c.seq)
        )
        return [self._batch(r) for r in rows]

    async def transition(
        self, batch_id: str, from_statuses: Iterable[str], **changes: Any
    ) -> BatchRecord | None:
        """Apply ``changes`` only if the batch is in one of ``from_statuses`` (compare-and-set).

        Returns the updated batch, or ``None`` when the batch is missing or in another status.
        """
        unknown = set(changes) - set(_BATCH_FIELDS)
        if unknown:
            raise ValueError(f"unknown batch fields: {sorted(unknown)}")
        return await self._update_batch(
            batch_id, batches.c.status.in_(list(from_statuses)), changes
        )

    async def _update_batch(
        self, batch_id: str, condition: sa.ColumnElement[bool], values: dict[str, Any]
    ) -> BatchRecord | None:
        """Set ``values`` on the batch if ``condition`` holds (compare-and-set); the batch
        after the update, or ``None`` when it is missing or the condition failed."""
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    sa.update(batches).where(batches.c.id == batch_id, condition).values(**values)
                )
                if result.rowcount != 1:
                    return None
                row = (await conn.execute(sa.select(batches).where(batches.c.id == batch_id))).one()
        except SQLAlchemyError as exc:
            raise StoreError(str(exc)) from exc
        return self._batch(row)

    # -- leases -----------------------------------------------------------------------------

    @staticmethod
    def _claimable(statuses: Iterable[str], now: float) -> sa.ColumnElement[bool]:
        return sa.and_(
            batches.c.status.in_(list(statuses)),
            batches.c.in_progress_at.is_not(None),
            sa.or_(batches.c.lease_owner.is_(None), batches.c.lease_expires_at < now),
        )

    async def claim_batches(
        self, *, owner: str, statuses: Iterable[str], now: float, lease_seconds: float, limit: int
    ) -> list[BatchRecord]:
        """Claim up to ``limit`` batches in ``statuses`` that nobody holds (or whose lease ran
        out), oldest first. Only batches that ran validation (``in_progress_at`` set) qualify.

        Each claim is a compare-and-set on the lease, so two engines sharing the store never
        both claim a batch (portable: no ``SKIP LOCKED`` needed).
        """
        statuses = list(statuses)
        candidates = await self._fetch(
            sa.select(batches.c.id)
            .where(self._claimable(statuses, now))
            .order_by(batches.c.seq)
            .limit(limit)
        )
        claimed: list[BatchRecord] = []
        for (batch_id,) in candidates:
            batch = await self._update_batch(
                batch_id,
                self._claimable(statuses, now),
                {"lease_owner": owner, "lease_expires_at": now + lease_seconds},
            )
            if batch is not None:
                claimed.append(batch)
        return claimed

    async def renew_lease(
        self, batch_id: str, *, owner: str, now: float, lease_seconds: float
    ) -> BatchRecord | None:
        """Extend ``owner``'s lease; the batch as it is now, or ``None`` if the lease was lost."""
        return await self._update_batch(
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
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    sa.update(batches)
                    .where(batches.c.lease_owner.is_not(None))
                    .values(lease_owner=None, lease_expires_at=None)
                )
        except SQLAlchemyError as exc:
            raise StoreError(str(exc)) from exc
        return int(result.rowcount)

    async def record_progress(
        self, batch_id: str, *, owner: str, completed: int, failed: int, usage: dict[str, Any]
    ) -> None:
        """Live ``request_counts`` and ``usage`` of a running batch (only by its lease holder)."""
        await self._execute(
            sa.update(batches)
            .where(batches.c.id == batch_id, batches.c.lease_owner == owner)
            .values(completed=completed, failed=failed, usage=usage)
        )

    # -- project usage ----------------------------------------------------------------------

    async def stored_bytes(self, project: str, *, now: int) -> int:
        """Bytes of the project's live files."""
        rows = await self._fetch(
            sa.select(sa.func.coalesce(sa.func.sum(files.c.bytes), 0)).where(
                files.c.project == project, self._live_files(now)
            )
        )
        return int(rows[0][0])

    async def batch_activity(
        self, project: str, *, since: int, active_statuses: Iterable[str]
    ) -> BatchActivity:
        """The project's batches with one of ``active_statuses``, and those created at or after
        ``since`` (with the oldest of them)."""
        in_project = batches.c.project == project
        active = await self._fetch(
            sa.select(sa.func.count()).where(
                in_project, batches.c.status.in_(list(active_statuses))
            )
        )
        recent = await self._fetch(
            sa.select(sa.func.count(), sa.func.min(batches.c.created_at)).where(
                in_project, batches.c.created_at >= since
            )
        )
        row: Sequence[Any] = recent[0]
        count, oldest = row[0], row[1]
        return BatchActivity(
            active=int(active[0][0]),
            created_since=int(count),
            oldest_created_at=None if oldest is None else int(oldest),
        )

    async def enqueued_tokens(self, project: str, model: str, *, statuses: Iterable[str]) -> int:
        """Estimated tokens of the project's batches for ``model`` with one of ``statuses``."""
        rows = await self._fetch(
            sa.select(sa.func.coalesce(sa.func.sum(batches.c.enqueued_tokens), 0)).where(
                batches.c.project == project,
                batches.c.model == model,
                batches.c.status.in_(list(statuses)),
            )
        )
        return int(rows[0][0])

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
        try:
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    sa.update(api_keys)
                    .where(api_keys.c.sha256 == sha256, api_keys.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
        except SQLAlchemyError as exc:
            raise StoreError(str(exc)) from exc
        return bool(result.rowcount == 1)

    async def has_api_keys(self) -> bool:
        """Whether any key was ever created (a revoked one still means auth is on)."""
        rows = await self._fetch(sa.select(api_keys.c.seq).limit(1))
        return bool(rows)
