"""Shared mode: the work of running batches, split between engines that share one database.

With ``database_url`` set, any number of engine processes (``batchd worker``, ``batchd serve``)
run batches together. Everything they coordinate on is here, in the database:

- **Ranges.** A batch in progress is split into ranges of its requests (``batch_ranges``,
  :attr:`~batchd.config.Settings.range_size` each). An engine claims ranges with a lease
  (``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL, so engines never wait on each other's
  claims) and every claim raises the range's ``epoch``.
- **Results.** A request's result is a row of ``batch_results`` (its exact output line and its
  tokens), written in groups by :meth:`SharedWork.write_results` in one transaction that first
  checks the writer still holds the range at the epoch it claimed (fencing: an engine whose lease
  ran out and was taken over writes nothing more) and adds the group to the batch's live
  ``request_counts`` and ``usage``. The first row of a request wins (``ON CONFLICT DO NOTHING``).
- **Ending.** Once every range is done (or the batch is cancelled or past ``expires_at``), one
  engine claims the batch itself (:meth:`SharedWork.claim_endings`), takes every range over
  (:meth:`take_ranges`: in-flight writers are fenced off), fills in the requests without a result,
  streams the rows in request order into the output and error files, and moves the batch on with
  its lease (owner and epoch) checked in the same transaction.
- **Workers and pauses.** Each engine heartbeats a ``workers`` row (what it runs); an upstream's
  429 pauses it for every engine through ``model_pauses``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from batchd.core.lifecycle import RUNNABLE, TERMINAL
from batchd.errors import BatchdError
from batchd.store.records import BatchRecord
from batchd.store.schema import (
    batch_ranges,
    batch_results,
    batches,
    model_pauses,
    replica_ejections,
    workers,
)
from batchd.store.sql import _BATCH_COLUMNS, NOTIFY_CHANNEL, SQLStore, _store_error

__all__ = ["LeaseLost", "RangeLease", "ResultRow", "SharedWork", "WorkerInfo", "lease_rows"]

log = logging.getLogger("batchd.engine")

_STREAM_ROWS = 2000  # result rows fetched per round trip while finalizing


async def lease_rows(
    conn: AsyncConnection,
    key: sa.Column[Any],
    condition: sa.ColumnElement[bool],
    columns: Sequence[sa.Column[Any]],
    *,
    postgres: bool,
    owner: str,
    expires_at: float,
    limit: int,
) -> list[sa.Row[Any]]:
    """Lease to ``owner`` up to ``limit`` rows of ``key``'s table (one with ``seq`` and the
    ``lease_*`` columns) that meet ``condition``, oldest first; the leased rows, as ``columns``.
    Each row is taken by an update that checks ``condition`` again, so that one another process
    took in between is passed over; on PostgreSQL the rows are locked, skipping locked ones."""
    table = key.table
    select = sa.select(key).where(condition).order_by(table.c.seq).limit(limit)
    if postgres:
        select = select.with_for_update(of=table, skip_locked=True)
    leased: list[sa.Row[Any]] = []
    for (value,) in (await conn.execute(select)).all():
        row = (
            await conn.execute(
                sa.update(table)
                .where(key == value, condition)
                .values(
                    lease_owner=owner,
                    lease_expires_at=expires_at,
                    lease_epoch=table.c.lease_epoch + 1,
                )
                .returning(*columns)
            )
        ).one_or_none()
        if row is not None:
            leased.append(row)
    return leased


_TOKENS = ("input_tokens", "cached_tokens", "output_tokens", "reasoning_tokens")


def _usage_sum(path: str, name: str) -> str:
    return f"coalesce((b.usage{path}->>'{name}')::bigint, 0) + s.{name}"


# The group write of shared mode on PostgreSQL, as one statement (atomic on its own): renew the
# range's lease if it is still held at its epoch, insert the rows (arrays, unnested) that are
# new, add them to the batch's counts and usage; the batch's status, or no row when the range
# was taken over (then nothing is written).
_WRITE_PG = sa.text(
    f"""
WITH held AS (
    UPDATE batch_ranges SET lease_expires_at = :expires
    WHERE batch_id = :batch AND start = :start AND owner = :owner AND epoch = :epoch
      AND NOT done
    RETURNING batch_id
), ins AS (
    INSERT INTO batch_results (batch_id, idx, ok, line, {", ".join(_TOKENS)})
    SELECT held.batch_id, r.* FROM held, unnest(
        CAST(:idx AS integer[]), CAST(:ok AS boolean[]), CAST(:line AS bytea[]),
        {", ".join(f"CAST(:{name} AS bigint[])" for name in _TOKENS)}
    ) AS r
    ON CONFLICT DO NOTHING
    RETURNING ok, {", ".join(_TOKENS)}
), s AS (
    SELECT count(*) FILTER (WHERE ok) AS completed, count(*) FILTER (WHERE NOT ok) AS failed,
        {", ".join(f"coalesce(sum({name}) FILTER (WHERE ok), 0) AS {name}" for name in _TOKENS)}
    FROM ins
)
UPDATE batches AS b SET
    completed = b.completed + s.completed,
    failed = b.failed + s.failed,
    usage = json_build_object(
        'input_tokens', {_usage_sum("", "input_tokens")},
        'input_tokens_details', json_build_object(
            'cached_tokens', {_usage_sum("->'input_tokens_details'", "cached_tokens")}),
        'output_tokens', {_usage_sum("", "output_tokens")},
        'output_tokens_details', json_build_object(
            'reasoning_tokens', {_usage_sum("->'output_tokens_details'", "reasoning_tokens")}),
        'total_tokens', {_usage_sum("", "input_tokens")} + {_usage_sum("", "output_tokens")})
FROM s, held
WHERE b.id = held.batch_id
RETURNING b.status
"""
)


class LeaseLost(BatchdError):
    """The range (or batch) was claimed by another engine: this one may not write to it."""


@dataclass(frozen=True, slots=True)
class RangeLease:
    """A claimed range ``[start, stop)`` of a batch's requests; ``index_offset`` is where its
    first entry lies in the request index."""

    batch_id: str
    start: int
    stop: int
    index_offset: int
    owner: str
    epoch: int


@dataclass(frozen=True, slots=True)
class ResultRow:
    """One request's durable result: its output-file (or error-file) line and tokens."""

    index: int
    ok: bool
    line: bytes
    tokens: tuple[int, int, int, int] | None = None


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    name: str
    started_at: float
    heartbeat_at: float
    info: dict[str, Any]


def _row_values(batch_id: str, row: ResultRow) -> dict[str, Any]:
    tokens = row.tokens or (0, 0, 0, 0)
    return {
        "batch_id": batch_id,
        "idx": row.index,
        "ok": row.ok,
        "line": row.line,
        "input_tokens": tokens[0],
        "cached_tokens": tokens[1],
        "output_tokens": tokens[2],
        "reasoning_tokens": tokens[3],
    }


def _add_usage(usage: dict[str, Any] | None, tokens: Sequence[int]) -> dict[str, Any]:
    """``usage`` (a Batch ``usage`` object, or ``None``) plus ``tokens`` (input, cached, output,
    reasoning)."""
    usage = usage or {}
    inp = int(usage.get("input_tokens", 0)) + tokens[0]
    cached = int((usage.get("input_tokens_details") or {}).get("cached_tokens", 0)) + tokens[1]
    out = int(usage.get("output_tokens", 0)) + tokens[2]
    reasoning = (
        int((usage.get("output_tokens_details") or {}).get("reasoning_tokens", 0)) + tokens[3]
    )
    return {
        "input_tokens": inp,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": out,
        "output_tokens_details": {"reasoning_tokens": reasoning},
        "total_tokens": inp + out,
    }


def _set_event(event: asyncio.Event, *_args: object) -> None:
    event.set()


class SharedWork:
    """The shared-mode queries, over a :class:`~batchd.store.SQLStore`'s engine."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self._engine = store.engine
        self._postgres = self._engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self._postgres else sqlite.insert

    # -- planning and claiming ranges -----------------------------------------------------------

    async def unplanned(self, *, limit: int) -> list[BatchRecord]:
        """Batches in progress whose requests are not split into ranges yet."""
        has_ranges = sa.exists().where(batch_ranges.c.batch_id == batches.c.id)
        rows = await self.store._fetch(
            sa.select(*_BATCH_COLUMNS)
            .where(
                batches.c.status == "in_progress",
                batches.c.ending.is_(None),
                batches.c.total > 0,
                ~has_ranges,
            )
            .order_by(batches.c.seq)
            .limit(limit)
        )
        return [self.store._batch(row) for row in rows]

    async def add_ranges(self, batch_id: str, ranges: Iterable[tuple[int, int, int]]) -> None:
        """Store the ranges ``(start, stop, index_offset)`` of a batch (once: a second planner's
        ranges, the same, are ignored)."""
        values = [
            {"batch_id": batch_id, "start": a, "stop": b, "index_offset": o} for a, b, o in ranges
        ]
        if not values:
            return

        async def work(conn: AsyncConnection) -> None:
            for at in range(0, len(values), 1000):
                stmt = self._insert(batch_ranges).values(values[at : at + 1000])
                await conn.execute(stmt.on_conflict_do_nothing())

        await self.store._transaction(work)

    async def claim_ranges(
        self,
        *,
        owner: str,
        now: float,
        lease_seconds: float,
        limit: int,
        skip: Sequence[str] = (),
    ) -> list[RangeLease]:
        """Claim up to ``limit`` ranges nobody holds (or whose lease ran out) of batches in
        progress (not those of ``skip``), oldest batch first; each claim raises the range's
        epoch."""
        r = batch_ranges
        free = sa.and_(~r.c.done, sa.or_(r.c.owner.is_(None), r.c.lease_expires_at < now))
        running = sa.and_(
            batches.c.status == "in_progress",
            batches.c.ending.is_(None),
            sa.or_(batches.c.expires_at.is_(None), batches.c.expires_at > now),
        )

        async def work(conn: AsyncConnection) -> list[RangeLease]:
            select = (
                sa.select(r.c.batch_id, r.c.start)
                .join(batches, batches.c.id == r.c.batch_id)
                .where(free, running, r.c.batch_id.not_in(list(skip)))
                .order_by(batches.c.seq, r.c.start)
                .limit(limit)
            )
            if self._postgres:
                select = select.with_for_update(of=r, skip_locked=True)
            claimed: list[RangeLease] = []
            for batch_id, start in (await conn.execute(select)).all():
                row = (
                    await conn.execute(
                        sa.update(r)
                        .where(r.c.batch_id == batch_id, r.c.start == start, free)
                        .values(
                            owner=owner, lease_expires_at=now + lease_seconds, epoch=r.c.epoch + 1
                        )
                        .returning(r.c.stop, r.c.index_offset, r.c.epoch)
                    )
                ).one_or_none()
                if row is not None:
                    claimed.append(
                        RangeLease(batch_id, start, row.stop, row.index_offset, owner, row.epoch)
                    )
            return claimed

        return await self.store._transaction(work)

    @staticmethod
    def _held(lease: RangeLease) -> sa.ColumnElement[bool]:
        r = batch_ranges
        return sa.and_(
            r.c.batch_id == lease.batch_id,
            r.c.start == lease.start,
            r.c.owner == lease.owner,
            r.c.epoch == lease.epoch,
            ~r.c.done,
        )

    async def _renew(
        self, conn: AsyncConnection, lease: RangeLease, now: float, lease_seconds: float
    ) -> None:
        result = await conn.execute(
            sa.update(batch_ranges)
            .where(self._held(lease))
            .values(lease_expires_at=now + lease_seconds)
        )
        if result.rowcount != 1:
            raise LeaseLost(
                f"batch {lease.batch_id}: requests {lease.start}-{lease.stop - 1} were taken "
                "over by another engine"
            )

    async def renew_range(self, lease: RangeLease, *, now: float, lease_seconds: float) -> str:
        """Extend the lease; the batch's status. :class:`LeaseLost` when it was taken over."""

        async def work(conn: AsyncConnection) -> str:
            await self._renew(conn, lease, now, lease_seconds)
            status = await conn.scalar(
                sa.select(batches.c.status).where(batches.c.id == lease.batch_id)
            )
            return str(status)

        return await self.store._transaction(work)

    async def release_range(self, lease: RangeLease, *, done: bool = False) -> bool:
        """Give the range back (``done``: every request of it has a result); whether it was
        still held."""
        return (
            await self.store._execute(
                sa.update(batch_ranges)
                .where(self._held(lease))
                .values(owner=None, lease_expires_at=None, done=done)
            )
            == 1
        )

    async def release_ranges(self, owner: str) -> int:
        """Give back every range ``owner`` holds (a worker stopping)."""
        return await self.store._execute(
            sa.update(batch_ranges)
            .where(batch_ranges.c.owner == owner, ~batch_ranges.c.done)
            .values(owner=None, lease_expires_at=None)
        )

    async def done_indices(self, batch_id: str, start: int, stop: int) -> list[int]:
        """The requests of ``[start, stop)`` that have a result."""
        rows = await self.store._fetch(
            sa.select(batch_results.c.idx).where(
                batch_results.c.batch_id == batch_id,
                batch_results.c.idx >= start,
                batch_results.c.idx < stop,
            )
        )
        return [int(row[0]) for row in rows]

    # -- results --------------------------------------------------------------------------------

    async def _insert_results(
        self, conn: AsyncConnection, batch_id: str, rows: Sequence[ResultRow]
    ) -> str:
        """Insert the rows that are new and add them to the batch's counts and usage; the
        batch's status."""
        by_index = {row.index: row for row in rows}
        # One statement, compiled once and cached, sent as multi-row VALUES in batches
        # (SQLAlchemy's "insertmanyvalues"): the rows a conflict skipped are not returned.
        stmt = self._insert(batch_results).on_conflict_do_nothing().returning(batch_results.c.idx)
        result = await conn.execute(stmt, [_row_values(batch_id, row) for row in rows])
        inserted = [by_index[int(i)] for (i,) in result.all()]
        completed = sum(1 for row in inserted if row.ok)
        tokens = [0, 0, 0, 0]
        for row in inserted:
            if row.tokens is not None:
                for k in range(4):
                    tokens[k] += row.tokens[k]
        found = (
            await conn.execute(
                sa.update(batches)
                .where(batches.c.id == batch_id)
                .values(
                    completed=batches.c.completed + completed,
                    failed=batches.c.failed + (len(inserted) - completed),
                )
                .returning(batches.c.status, batches.c.usage)
            )
        ).one_or_none()
        if found is None:
            raise LeaseLost(f"batch {batch_id} is gone")
        if any(tokens):
            await conn.execute(
                sa.update(batches)
                .where(batches.c.id == batch_id)
                .values(usage=_add_usage(found.usage, tokens))
            )
        return str(found.status)

    async def write_results(
        self, lease: RangeLease, rows: Sequence[ResultRow], *, now: float, lease_seconds: float
    ) -> str:
        """Make ``rows`` durable if the range is still held at its epoch (renewing the lease in
        the same transaction); the batch's status. :class:`LeaseLost` otherwise, and nothing is
        written. On PostgreSQL this is one statement (:data:`_WRITE_PG`), one round trip."""
        if self._postgres:
            return await self._write_pg(lease, rows, now + lease_seconds)

        async def work(conn: AsyncConnection) -> str:
            await self._renew(conn, lease, now, lease_seconds)
            return await self._insert_results(conn, lease.batch_id, rows)

        return await self.store._transaction(work)

    async def _write_pg(self, lease: RangeLease, rows: Sequence[ResultRow], expires: float) -> str:
        tokens = [row.tokens or (0, 0, 0, 0) for row in rows]
        params: dict[str, Any] = {
            "batch": lease.batch_id,
            "start": lease.start,
            "owner": lease.owner,
            "epoch": lease.epoch,
            "expires": expires,
            "idx": [row.index for row in rows],
            "ok": [row.ok for row in rows],
            "line": [row.line for row in rows],
            **{name: [t[k] for t in tokens] for k, name in enumerate(_TOKENS)},
        }
        found = await self.store._autocommit(_WRITE_PG, params)
        if not found:
            raise LeaseLost(
                f"batch {lease.batch_id}: requests {lease.start}-{lease.stop - 1} were taken "
                "over by another engine"
            )
        return str(found[0][0])

    async def fill_results(self, batch: tuple[str, str, int], rows: Sequence[ResultRow]) -> None:
        """The finalizer's rows (cancelled, expired, unroutable requests), if it still holds the
        batch: ``batch`` is ``(id, owner, epoch)``; :class:`LeaseLost` otherwise."""
        batch_id, owner, epoch = batch

        async def work(conn: AsyncConnection) -> None:
            held = await conn.scalar(
                sa.select(sa.func.count())
                .select_from(batches)
                .where(
                    batches.c.id == batch_id,
                    batches.c.lease_owner == owner,
                    batches.c.lease_epoch == epoch,
                )
            )
            if not held:
                raise LeaseLost(f"batch {batch_id} was taken over by another engine")
            await self._insert_results(conn, batch_id, rows)

        await self.store._transaction(work)

    async def take_ranges(self, batch_id: str, owner: str) -> int:
        """Take over every range of the batch for its finalizer ``owner``: a writer still
        holding one is fenced off (its next write fails). The number of ranges."""
        return await self.store._execute(
            sa.update(batch_ranges)
            .where(batch_ranges.c.batch_id == batch_id)
            .values(owner=owner, lease_expires_at=None, done=True, epoch=batch_ranges.c.epoch + 1)
        )

    async def live_ranges(self, batch_id: str, *, now: float) -> int:
        """Ranges of the batch whose lease is live (requests may be in flight)."""
        rows = await self.store._fetch(
            sa.select(sa.func.count())
            .select_from(batch_ranges)
            .where(
                batch_ranges.c.batch_id == batch_id,
                ~batch_ranges.c.done,
                batch_ranges.c.owner.is_not(None),
                batch_ranges.c.lease_expires_at >= now,
            )
        )
        return int(rows[0][0])

    async def stream_results(
        self, batch_id: str, *, columns: Sequence[str] = ("idx", "ok", "line")
    ) -> AsyncIterator[Sequence[sa.Row[Any]]]:
        """The batch's result rows in request order, ``_STREAM_ROWS`` at a time (a server-side
        cursor: memory stays bounded whatever the batch's size)."""
        stmt = (
            sa.select(*(batch_results.c[name] for name in columns))
            .where(batch_results.c.batch_id == batch_id)
            .order_by(batch_results.c.idx)
            .execution_options(yield_per=_STREAM_ROWS)
        )
        try:
            async with self._engine.connect() as conn:
                result = await conn.stream(stmt)
                async for part in result.partitions(_STREAM_ROWS):
                    yield part
        except SQLAlchemyError as exc:
            raise _store_error(exc) from exc

    async def ended_with_rows(self, *, limit: int) -> list[str]:
        """Batches that ended but still have result rows or ranges (their finalizer died
        between the last transition and :meth:`discard`)."""
        r, b = batch_results.c, batches.c
        rows = await self.store._fetch(
            sa.select(b.id)
            .where(
                b.status.in_(sorted(TERMINAL)),
                sa.or_(
                    sa.exists().where(r.batch_id == b.id),
                    sa.exists().where(batch_ranges.c.batch_id == b.id),
                ),
            )
            .limit(limit)
        )
        return [str(row.id) for row in rows]

    async def discard(self, batch_id: str) -> None:
        """Delete a finished batch's result rows and ranges (its files hold them now)."""

        async def work(conn: AsyncConnection) -> None:
            await conn.execute(sa.delete(batch_results).where(batch_results.c.batch_id == batch_id))
            await conn.execute(sa.delete(batch_ranges).where(batch_ranges.c.batch_id == batch_id))

        await self.store._transaction(work)

    # -- whole batches: validation and endings --------------------------------------------------

    async def _claim(
        self,
        condition: sa.ColumnElement[bool],
        *,
        owner: str,
        now: float,
        lease_seconds: float,
        limit: int,
    ) -> list[BatchRecord]:
        free = sa.or_(batches.c.lease_owner.is_(None), batches.c.lease_expires_at < now)

        async def work(conn: AsyncConnection) -> list[BatchRecord]:
            rows = await lease_rows(
                conn,
                batches.c.id,
                sa.and_(condition, free),
                _BATCH_COLUMNS,
                postgres=self._postgres,
                owner=owner,
                expires_at=now + lease_seconds,
                limit=limit,
            )
            return [self.store._batch(row) for row in rows]

        return await self.store._transaction(work)

    async def claim_validations(
        self, *, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[BatchRecord]:
        """Claim batches waiting for validation (or cancelled while they waited)."""
        waiting = sa.or_(
            batches.c.status == "validating",
            sa.and_(batches.c.status == "cancelling", batches.c.in_progress_at.is_(None)),
        )
        return await self._claim(
            waiting, owner=owner, now=now, lease_seconds=lease_seconds, limit=limit
        )

    async def claim_endings(
        self, *, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[BatchRecord]:
        """Claim batches whose run is over, to end them: every range done, or cancelled, past
        ``expires_at``, or with an ending already recorded (a finalizer that died)."""
        r = batch_ranges
        undone = sa.exists().where(r.c.batch_id == batches.c.id, ~r.c.done)
        planned = sa.exists().where(r.c.batch_id == batches.c.id)
        over = sa.or_(
            batches.c.status != "in_progress",
            batches.c.ending.is_not(None),
            sa.and_(batches.c.expires_at.is_not(None), batches.c.expires_at <= now),
            batches.c.total == 0,
            sa.and_(planned, ~undone),
        )
        condition = sa.and_(
            batches.c.status.in_(sorted(RUNNABLE)), batches.c.in_progress_at.is_not(None), over
        )
        return await self._claim(
            condition, owner=owner, now=now, lease_seconds=lease_seconds, limit=limit
        )

    async def progress(self, batch_ids: Iterable[str]) -> dict[str, tuple[str, int, int, int]]:
        """``(status, completed, failed, total)`` of each batch (those that exist)."""
        ids = sorted(set(batch_ids))
        if not ids:
            return {}
        b = batches.c
        rows = await self.store._fetch(
            sa.select(b.id, b.status, b.completed, b.failed, b.total).where(b.id.in_(ids))
        )
        return {
            str(row.id): (str(row.status), int(row.completed), int(row.failed), int(row.total))
            for row in rows
        }

    # -- workers and pauses ---------------------------------------------------------------------

    async def heartbeat(
        self, name: str, *, started_at: float, now: float, info: dict[str, Any]
    ) -> None:
        stmt = self._insert(workers).values(
            name=name, started_at=started_at, heartbeat_at=now, info=info
        )
        await self.store._execute(
            stmt.on_conflict_do_update(
                index_elements=["name"], set_={"heartbeat_at": now, "info": info}
            )
        )

    async def remove_worker(self, name: str) -> None:
        await self.store._execute(sa.delete(workers).where(workers.c.name == name))

    async def live_workers(self, *, now: float, ttl: float) -> list[WorkerInfo]:
        """Workers whose last heartbeat is younger than ``ttl`` seconds, by name; older rows
        (workers that died) are removed."""
        await self.store._execute(sa.delete(workers).where(workers.c.heartbeat_at < now - 10 * ttl))
        rows = await self.store._fetch(
            sa.select(workers).where(workers.c.heartbeat_at >= now - ttl).order_by(workers.c.name)
        )
        return [
            WorkerInfo(row.name, float(row.started_at), float(row.heartbeat_at), row.info or {})
            for row in rows
        ]

    async def _keep_later(
        self, table: sa.Table, keys: dict[str, str], column: str, until: float
    ) -> None:
        """Upsert ``keys`` with ``column = until``, never moving an existing time earlier."""
        later = (sa.func.greatest if self._postgres else sa.func.max)(table.c[column], until)
        stmt = self._insert(table).values(**keys, **{column: until})
        await self.store._execute(
            stmt.on_conflict_do_update(index_elements=list(keys), set_={column: later})
        )

    async def pause_model(self, model: str, *, until: float) -> None:
        """Pause ``model``'s upstream for every engine until ``until`` (extending, never
        shortening, a pause already set)."""
        await self._keep_later(model_pauses, {"model": model}, "paused_until", until)

    async def pauses(self, *, now: float) -> dict[str, float]:
        """The models paused now, with the time their pause ends."""
        rows = await self.store._fetch(
            sa.select(model_pauses.c.model, model_pauses.c.paused_until).where(
                model_pauses.c.paused_until > now
            )
        )
        return {str(row.model): float(row.paused_until) for row in rows}

    async def eject_replica(self, model: str, replica: str, *, until: float) -> None:
        """Record that ``replica`` of ``model`` is ejected until ``until`` (for every engine)."""
        keys = {"model": model, "replica": replica}
        await self._keep_later(replica_ejections, keys, "open_until", until)

    async def readmit_replica(self, model: str, replica: str) -> None:
        await self.store._execute(
            sa.delete(replica_ejections).where(
                replica_ejections.c.model == model, replica_ejections.c.replica == replica
            )
        )

    async def ejections(self, *, now: float) -> dict[tuple[str, str], float]:
        """The replicas ejected now: ``(model, replica)`` → when the ejection ends."""
        rows = await self.store._fetch(
            sa.select(replica_ejections).where(replica_ejections.c.open_until > now)
        )
        return {(str(row.model), str(row.replica)): float(row.open_until) for row in rows}

    # -- wake-ups -------------------------------------------------------------------------------

    async def listen(self, on_event: Callable[[str], None], *, stop: asyncio.Event) -> None:
        """Call ``on_event("<batch id> <status>")`` for every status change any process commits
        (PostgreSQL ``LISTEN``), until ``stop`` is set; reconnects after a lost connection.
        Returns at once on SQLite (one process: nothing to hear)."""
        if not self._postgres:
            return
        delay = 0.5
        while not stop.is_set():
            try:
                async with self._engine.connect() as conn:
                    raw = await conn.get_raw_connection()
                    pg: Any = raw.driver_connection
                    lost = asyncio.Event()

                    def heard(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
                        on_event(payload)

                    await pg.add_listener(NOTIFY_CHANNEL, heard)
                    pg.add_termination_listener(functools.partial(_set_event, lost))
                    on_event("")  # (re)connected: changes may have been missed meanwhile
                    delay = 0.5
                    waiters = [asyncio.ensure_future(e.wait()) for e in (stop, lost)]
                    try:
                        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        for waiter in waiters:
                            waiter.cancel()
                    if lost.is_set():
                        await conn.invalidate()
                    else:
                        await pg.remove_listener(NOTIFY_CHANNEL, heard)
            except (SQLAlchemyError, OSError) as exc:
                log.debug("listening for batch events failed (%s); retrying in %gs", exc, delay)
            if not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                delay = min(delay * 2, 10.0)
