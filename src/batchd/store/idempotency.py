"""Idempotency keys in the store: the first call with a key claims it, later ones get its answer.

A row per (project, key), kept :data:`TTL_SECONDS` (24 h). :meth:`IdempotencyStore.claim` inserts
a pending row (no ``status_code``) unless one is there, in one statement (``INSERT … ON CONFLICT
DO NOTHING``), so of two concurrent calls with a key exactly one claims it, on SQLite and on
PostgreSQL alike, whichever process they reach. The claimer runs the call and stores its answer
(:meth:`~IdempotencyStore.complete`), or gives the key back when the call failed
(:meth:`~IdempotencyStore.release`): only answers that created something are kept, so a call
that failed (a bad file, a full disk) can be retried with the same key. A pending row older than
:data:`PENDING_SECONDS` is left over from a process that died mid-call, and is claimed again.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from batchd.store.schema import idempotency_keys
from batchd.store.sql import SQLStore

__all__ = ["PENDING_SECONDS", "TTL_SECONDS", "IdempotencyStore", "KeyRecord"]

#: How long a key is remembered: a call with the same key within it gets the first answer.
TTL_SECONDS = 24 * 3600
#: How long a first call may run before its key is taken for abandoned (its process died).
PENDING_SECONDS = 3600.0

_T = idempotency_keys


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A key's row: the call that claimed it and, once it answered, its answer."""

    request: str
    digest: str | None
    status_code: int | None  # None: the first call is still running
    response: str | None
    created_at: float


class IdempotencyStore:
    """The idempotency-key queries, over a :class:`~batchd.store.SQLStore`'s engine."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        postgres = store.engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if postgres else sqlite.insert

    async def claim(
        self, project: str, key: str, request: str, digest: str | None, *, now: float
    ) -> KeyRecord | None:
        """Claim ``key`` for a call (``None``), or the row of the call that has it. An expired
        row, or a pending one older than :data:`PENDING_SECONDS`, is replaced."""

        async def work(conn: AsyncConnection) -> KeyRecord | None:
            mine = (_T.c.project == project) & (_T.c.key == key)
            stale = (_T.c.expires_at <= now) | (
                _T.c.status_code.is_(None) & (_T.c.created_at <= now - PENDING_SECONDS)
            )
            await conn.execute(sa.delete(_T).where(mine & stale))
            values = {
                "project": project,
                "key": key,
                "request": request,
                "digest": digest,
                "created_at": now,
                "expires_at": now + TTL_SECONDS,
            }
            insert = self._insert(_T).values(**values).on_conflict_do_nothing()
            if (await conn.execute(insert)).rowcount:
                return None
            row = (
                await conn.execute(
                    sa.select(
                        _T.c.request, _T.c.digest, _T.c.status_code, _T.c.response, _T.c.created_at
                    ).where(mine)
                )
            ).one()
            return KeyRecord(*row)

        return await self.store._transaction(work)

    async def complete(
        self, project: str, key: str, *, digest: str, status_code: int, response: str
    ) -> None:
        """Store the answer of the call that claimed ``key``."""
        await self.store._execute(
            sa.update(_T)
            .where((_T.c.project == project) & (_T.c.key == key) & _T.c.status_code.is_(None))
            .values(digest=digest, status_code=status_code, response=response)
        )

    async def release(self, project: str, key: str) -> None:
        """Give back a key whose call failed: the next call with it runs."""
        await self.store._execute(
            sa.delete(_T).where(
                (_T.c.project == project) & (_T.c.key == key) & _T.c.status_code.is_(None)
            )
        )

    async def purge(self, *, now: float) -> int:
        """Forget the expired keys; how many."""
        return await self.store._execute(sa.delete(_T).where(_T.c.expires_at <= now))
