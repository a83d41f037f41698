"""The cross-batch result cache in the store: stored answers by (project, request digest).

A row per (project, digest) (:mod:`batchd.engine.cache` says what the 32-byte SHA-256 digest
covers and which requests may be cached), holding the answer's ``{"status_code", "request_id",
"body"}`` as JSON until ``expires_at``. Being in the store, one cache serves every process of a
shared database.

:meth:`CacheStore.lookup` answers many digests with one query (the engine asks once per chunk of
requests read, not once per request); :meth:`CacheStore.put` stores many answers with one
statement executed for every row (``INSERT … ON CONFLICT DO UPDATE``: two engines that answered
the same request both succeed, the later answer wins); :meth:`CacheStore.prune` drops expired
answers, then those that expire first (the oldest, for one TTL) while the cache holds more than
its cap. Reads write nothing: no "last used" time is kept, because writing one back per hit
would cost a hit path as much as storing the answer did (one index, ``expires_at``, serves both
prunes).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from batchd.store.schema import result_cache
from batchd.store.sql import SQLStore

__all__ = ["CacheStore", "CachedAnswer"]

_T = result_cache
_COLUMNS = ("project", "digest", "model", "response", "size", "created_at", "expires_at")
_PRUNE_PAGE = 1000  # rows read per step while the oldest answers are dropped


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A stored answer: its ``response`` JSON and when it was stored."""

    response: bytes
    created_at: float


class CacheStore:
    """The result-cache queries, over a :class:`~batchd.store.SQLStore`'s engine."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        dialect = store.engine.dialect
        insert = (postgresql.insert if dialect.name == "postgresql" else sqlite.insert)(_T)
        upsert = insert.on_conflict_do_update(
            index_elements=[_T.c.project, _T.c.digest],
            set_={name: insert.excluded[name] for name in _COLUMNS[2:]},
        )
        # The statement as the driver's SQL with positional parameters, executed with a tuple a
        # row (executemany): SQLAlchemy's bind processing would cost ~14 us a row, more than
        # SQLite's own insert.
        compiled = upsert.compile(dialect=dialect, column_keys=list(_COLUMNS))
        if compiled.positiontup != list(_COLUMNS):
            raise AssertionError(f"unexpected parameters of {compiled}: {compiled.positiontup}")
        self._upsert = str(compiled)

    async def lookup(
        self, project: str, digests: Collection[bytes], *, now: float
    ) -> dict[bytes, CachedAnswer]:
        """The live answers of ``project`` among ``digests``, by digest (one query)."""
        if not digests:
            return {}
        rows = await self.store._fetch(
            sa.select(_T.c.digest, _T.c.response, _T.c.created_at).where(
                (_T.c.project == project)
                & _T.c.digest.in_(list(set(digests)))
                & (_T.c.expires_at > now)
            )
        )
        return {
            bytes(row.digest): CachedAnswer(bytes(row.response), row.created_at) for row in rows
        }

    async def put(
        self,
        project: str,
        model: str,
        answers: Sequence[tuple[bytes, bytes]],
        *,
        now: float,
        ttl: float,
    ) -> int:
        """Store ``(digest, response JSON)`` answers of ``project`` for ``ttl`` seconds, replacing
        any stored under the same digest; the bytes stored."""
        latest = dict(answers)  # one row per digest: a statement may not touch a row twice
        if not latest:
            return 0
        expires = now + ttl
        rows = [
            (project, digest, model, response, len(response), now, expires)
            for digest, response in latest.items()
        ]
        upsert = self._upsert

        async def work(conn: AsyncConnection) -> None:
            await conn.exec_driver_sql(upsert, rows)

        await self.store._transaction(work)
        return sum(row[4] for row in rows)

    async def prune(self, *, now: float, max_bytes: int) -> int:
        """Drop the expired answers, then those that expire first while more than ``max_bytes``
        are stored (down to nine tenths of it, so that pruning is not needed again at once);
        how many were dropped."""
        dropped = await self.store._execute(sa.delete(_T).where(_T.c.expires_at <= now))
        [(total,)] = await self.store._fetch(sa.select(sa.func.coalesce(sa.func.sum(_T.c.size), 0)))
        excess = int(total) - (max_bytes if int(total) <= max_bytes else max_bytes * 9 // 10)
        while excess > 0:
            rows = await self.store._fetch(
                sa.select(_T.c.project, _T.c.digest, _T.c.size)
                .order_by(_T.c.expires_at)
                .limit(_PRUNE_PAGE)
            )
            if not rows:
                break
            victims: list[tuple[str, bytes]] = []
            for row in rows:
                victims.append((row.project, bytes(row.digest)))
                excess -= row.size
                if excess <= 0:
                    break
            dropped += await self.store._execute(
                sa.delete(_T).where(sa.tuple_(_T.c.project, _T.c.digest).in_(victims))
            )
        return dropped

    async def usage(self) -> tuple[int, int]:
        """``(answers, bytes)`` stored, expired ones included until the next prune."""
        [row] = await self.store._fetch(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(_T.c.size), 0)).select_from(_T)
        )
        count, size = (int(value) for value in row)
        return count, size

    async def clear(self, project: str | None = None, model: str | None = None) -> int:
        """Drop the stored answers (of ``project``, of ``model``, or all); how many."""
        where: sa.ColumnElement[bool] = sa.true()
        if project is not None:
            where = where & (_T.c.project == project)
        if model is not None:
            where = where & (_T.c.model == model)
        return await self.store._execute(sa.delete(_T).where(where))
