"""Shared mode: a running batch's result rows as of one moment (its partial results).

One read-only transaction holds a snapshot of the database (``REPEATABLE READ`` on PostgreSQL;
on SQLite, a deferred transaction whose first read fixes the snapshot in WAL mode) from the
batch's row to the last result streamed: the status, the count of the rows of the kind asked for
and the rows themselves all come from the same snapshot, so the count and the lines agree and a
batch that ends meanwhile (its rows deleted once its files are published) does not change what
the read sees. Rows stream in request order (``batch_results`` has no insertion order: its key
is ``(batch_id, idx)``), through a server-side cursor, a few thousand at a time.

The snapshot holds a pooled connection until the stream ends or is closed: its caller bounds how
many are open at once.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from batchd.blocks import LineBlocks
from batchd.core.lifecycle import TERMINAL
from batchd.store.records import BatchRecord
from batchd.store.schema import batch_results, batches
from batchd.store.sql import _BATCH_COLUMNS, SQLStore, _store_error

__all__ = ["RowSnapshot", "open_row_snapshot"]

_ROWS = 2000  # rows fetched per round trip


@dataclass(slots=True)
class RowSnapshot:
    """The batch (``None``: no such batch in the project) and, for a batch that has not ended,
    the count of its result rows of one kind; stream them once with :meth:`chunks` (which
    closes the snapshot), or :meth:`close` it."""

    batch: BatchRecord | None
    lines: int
    _conn: AsyncConnection
    _batch_id: str
    _ok: bool
    _closed: bool = field(default=False)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._conn.close()  # read only: the rollback keeps nothing

    async def chunks(self) -> AsyncIterator[bytes]:
        """The rows' lines in request order, in blocks of about 1 MiB."""
        r = batch_results.c
        stmt = (
            sa.select(r.line)
            .where(r.batch_id == self._batch_id, r.ok == self._ok)
            .order_by(r.idx)
            .execution_options(yield_per=_ROWS)
        )
        try:
            result = await self._conn.stream(stmt)
            gathered = LineBlocks()
            async for rows in result.partitions(_ROWS):
                if (block := gathered.add(line for (line,) in rows)) is not None:
                    yield block
            if (block := gathered.rest()) is not None:
                yield block
        except SQLAlchemyError as exc:
            raise _store_error(exc) from exc
        finally:
            await self.close()


async def open_row_snapshot(
    store: SQLStore, batch_id: str, *, project: str, ok: bool
) -> RowSnapshot:
    """Open a snapshot and read the batch and (unless it ended) the count of its rows whose
    ``ok`` is ``ok``."""
    conn: AsyncConnection | None = None
    try:
        conn = await store.engine.connect()
        if conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ")
            await conn.begin()
            await conn.exec_driver_sql("SET TRANSACTION READ ONLY")
        else:  # pysqlite opens no transaction for reads by itself
            await conn.exec_driver_sql("BEGIN")
        b = batches.c
        found = (
            await conn.execute(
                sa.select(*_BATCH_COLUMNS).where(b.id == batch_id, b.project == project)
            )
        ).first()
        batch = SQLStore._batch(found) if found is not None else None
        lines = 0
        if batch is not None and batch.status not in TERMINAL:
            r = batch_results.c
            count = sa.select(sa.func.count()).where(r.batch_id == batch_id, r.ok == ok)
            lines = int((await conn.execute(count)).scalar_one())
    except BaseException as exc:
        if conn is not None:
            await conn.close()
        if isinstance(exc, SQLAlchemyError):
            raise _store_error(exc) from exc
        raise
    return RowSnapshot(batch, lines, conn, batch_id, ok)
