"""Webhooks in the store: endpoints, the fan-out of the outbox into deliveries, and their claims.

The outbox (``batch_events``, one row per status change, written with the change) is the one
source. A delivery row is made from an event before anything is sent:

- **Fan-out.** :meth:`WebhookStore.fan_out` reads the events after the stored cursor
  (``webhook_cursor``), inserts a ``webhook_deliveries`` row for each terminal event and each
  endpoint of the event's project that wants it, and advances the cursor, in one transaction
  that holds the cursor's row (``FOR UPDATE`` on PostgreSQL; SQLite's write lock): what a crash
  interrupts is done again, and a delivery's id (its ``webhook-id``, derived from the batch, the
  event and the endpoint) makes a second insert of it a no-op. On PostgreSQL ``seq`` values are
  committed in any order, so the cursor only moves over a gap in them once the event after the
  gap is :data:`GAP_SECONDS` old (a transaction that took a ``seq`` and never committed); the
  events past the gap are fanned out meanwhile, and again (no-ops) until the cursor passes.
- **Claims.** A due delivery (``pending``, ``next_attempt_at`` passed, no live lease, and no
  earlier pending delivery of the same batch to the same endpoint: in order per batch and
  endpoint) is claimed with a lease whose epoch every claim raises (``FOR UPDATE SKIP LOCKED``
  on PostgreSQL, so processes never wait on each other); an attempt is recorded only by the
  holder of the lease at its epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from batchd.core.lifecycle import TERMINAL
from batchd.store.schema import batch_events, webhook_cursor, webhook_deliveries, webhook_endpoints
from batchd.store.sql import SQLStore
from batchd.store.work import lease_rows

__all__ = [
    "GAP_SECONDS",
    "DeliveryRecord",
    "DeliveryStatus",
    "EndpointRecord",
    "EndpointRef",
    "WebhookStore",
    "delivery_id",
    "event_id",
    "event_type",
]

#: How old the event after a gap in ``seq`` must be before the fan-out's cursor passes the gap.
GAP_SECONDS = 60
_CURSOR = "fanout"
_FAN_OUT_EVENTS = 500

DeliveryStatus = Literal["pending", "delivered", "failed"]
_STATUSES: dict[str, DeliveryStatus] = {
    "pending": "pending",
    "delivered": "delivered",
    "failed": "failed",
}


def event_type(status: str) -> str | None:
    """The webhook event of a change to ``status`` (``batch.completed``…), ``None`` when a
    change to it sends none (not terminal)."""
    return f"batch.{status}" if status in TERMINAL else None


def _digest(*parts: object) -> str:
    return hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()[:24]


def event_id(batch_id: str, seq: int) -> str:
    """The ``evt_…`` id of an event of the outbox (the same for every endpoint)."""
    return f"evt_{_digest(batch_id, seq)}"


def delivery_id(batch_id: str, seq: int, endpoint_id: str) -> str:
    """The ``msg_…`` id of an event's delivery to an endpoint: its ``webhook-id``."""
    return f"msg_{_digest(batch_id, seq, endpoint_id)}"


@dataclass(frozen=True, slots=True)
class EndpointRef:
    """What the fan-out needs of an endpoint: its id, project and the events it wants
    (``None``: all)."""

    id: str
    project: str
    events: frozenset[str] | None = None

    def wants(self, project: str, kind: str) -> bool:
        return self.project == project and (self.events is None or kind in self.events)


@dataclass(frozen=True, slots=True)
class EndpointRecord:
    """An endpoint added with ``batchd webhooks add``."""

    id: str
    project: str
    url: str
    secret: str
    events: tuple[str, ...] | None
    created_at: int

    @property
    def ref(self) -> EndpointRef:
        events = None if self.events is None else frozenset(self.events)
        return EndpointRef(self.id, self.project, events)


@dataclass(frozen=True, slots=True)
class DeliveryRecord:
    """One event's delivery to one endpoint, with its last attempt."""

    seq: int
    id: str
    endpoint_id: str
    project: str
    batch_id: str
    event_seq: int
    event_type: str
    payload: str
    status: DeliveryStatus
    attempts: int
    next_attempt_at: float | None
    last_attempt_at: float | None
    last_status: int | None
    last_error: str | None
    delivered_at: float | None
    created_at: int
    lease_epoch: int


_DELIVERY_FIELDS = [f.name for f in dataclasses.fields(DeliveryRecord)]
_DELIVERY_COLUMNS = [webhook_deliveries.c[name] for name in _DELIVERY_FIELDS]
_ENDPOINT_COLUMNS = [webhook_endpoints.c[f.name] for f in dataclasses.fields(EndpointRecord)]


def _delivery(row: sa.Row[Any]) -> DeliveryRecord:
    values = dict(row._mapping)
    values["status"] = _STATUSES[values["status"]]
    return DeliveryRecord(**{name: values[name] for name in _DELIVERY_FIELDS})


async def _endpoints(conn: AsyncConnection, configured: Sequence[EndpointRef]) -> list[EndpointRef]:
    """The endpoints there are now: ``configured`` and those of the store."""
    stored = (await conn.execute(sa.select(*_ENDPOINT_COLUMNS))).all()
    return [*configured, *(_endpoint(row).ref for row in stored)]


def _deliveries(
    batch_id: str,
    seq: int,
    kind: str,
    event: Any,
    endpoints: Sequence[EndpointRef],
    now: float,
) -> list[dict[str, Any]]:
    """The rows of the deliveries of the event ``seq`` of the batch ``batch_id`` (``event``: its
    row, with ``project`` and ``created_at``) to the ``endpoints`` that want it."""
    payload = json.dumps(
        {
            "object": "event",
            "id": event_id(batch_id, seq),
            "type": kind,
            "created_at": int(event.created_at),
            "data": {"id": batch_id},
        },
        separators=(",", ":"),
    )
    return [
        {
            "id": delivery_id(batch_id, seq, endpoint.id),
            "endpoint_id": endpoint.id,
            "project": event.project,
            "batch_id": batch_id,
            "event_seq": seq,
            "event_type": kind,
            "payload": payload,
            "status": "pending",
            "next_attempt_at": now,
            "created_at": int(now),
        }
        for endpoint in endpoints
        if endpoint.wants(event.project, kind)
    ]


def _endpoint(row: sa.Row[Any]) -> EndpointRecord:
    m = row._mapping
    events = None if m["events"] is None else tuple(m["events"])
    return EndpointRecord(m["id"], m["project"], m["url"], m["secret"], events, m["created_at"])


class WebhookStore:
    """The webhook queries, over a :class:`~batchd.store.SQLStore`'s engine."""

    def __init__(self, store: SQLStore) -> None:
        self.store = store
        self._postgres = store.engine.dialect.name == "postgresql"
        self._insert = postgresql.insert if self._postgres else sqlite.insert

    # -- endpoints ------------------------------------------------------------------------------

    async def add_endpoint(self, record: EndpointRecord) -> None:
        values = dataclasses.asdict(record)
        values["events"] = None if record.events is None else list(record.events)
        await self.store._execute(sa.insert(webhook_endpoints).values(**values))

    async def endpoints(self, *, project: str | None = None) -> list[EndpointRecord]:
        stmt = sa.select(*_ENDPOINT_COLUMNS).order_by(webhook_endpoints.c.seq)
        if project is not None:
            stmt = stmt.where(webhook_endpoints.c.project == project)
        return [_endpoint(row) for row in await self.store._fetch(stmt)]

    async def remove_endpoint(self, endpoint_id: str, *, now: float) -> EndpointRecord | None:
        """Delete the endpoint; its pending deliveries fail (``endpoint removed``). The endpoint
        as it was, or ``None`` when there is none with this id."""

        async def work(conn: AsyncConnection) -> EndpointRecord | None:
            row = (
                await conn.execute(
                    sa.select(*_ENDPOINT_COLUMNS).where(webhook_endpoints.c.id == endpoint_id)
                )
            ).one_or_none()
            if row is None:
                return None
            await conn.execute(
                sa.delete(webhook_endpoints).where(webhook_endpoints.c.id == endpoint_id)
            )
            await conn.execute(
                sa.update(webhook_deliveries)
                .where(
                    webhook_deliveries.c.endpoint_id == endpoint_id,
                    webhook_deliveries.c.status == "pending",
                )
                .values(
                    status="failed",
                    last_error="the endpoint was removed",
                    next_attempt_at=None,
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            return _endpoint(row)

        return await self.store._transaction(work)

    # -- fan-out --------------------------------------------------------------------------------

    async def _cursor(self, conn: AsyncConnection, *, lock: bool) -> int:
        """The cursor (created at the newest event if missing), held until the transaction
        ends with ``lock``."""
        c = webhook_cursor
        if lock and not self._postgres:  # SQLite: a write first takes the database's lock
            await conn.execute(sa.update(c).where(c.c.name == _CURSOR).values(seq=c.c.seq))
        select = sa.select(c.c.seq).where(c.c.name == _CURSOR)
        if lock and self._postgres:
            select = select.with_for_update()
        seq = await conn.scalar(select)
        if seq is None:
            newest = await conn.scalar(
                sa.select(sa.func.coalesce(sa.func.max(batch_events.c.seq), 0))
            )
            await conn.execute(
                self._insert(c).values(name=_CURSOR, seq=int(newest or 0)).on_conflict_do_nothing()
            )
            seq = await conn.scalar(select)
        return int(seq or 0)

    async def has_new_events(self) -> bool:
        """Whether events wait to be fanned out (a read, no lock)."""
        cursor = sa.select(webhook_cursor.c.seq).where(webhook_cursor.c.name == _CURSOR)
        rows = await self.store._fetch(
            sa.select(batch_events.c.seq)
            .where(batch_events.c.seq > sa.func.coalesce(cursor.scalar_subquery(), 0))
            .limit(1)
        )
        return bool(rows)

    async def fan_out(self, configured: Sequence[EndpointRef], *, now: float) -> int:
        """Make the deliveries of the events after the cursor (to the endpoints of the store
        and ``configured``) and advance the cursor, in one transaction; the deliveries made."""

        async def work(conn: AsyncConnection) -> int:
            cursor = await self._cursor(conn, lock=True)
            events = (
                await conn.execute(
                    sa.select(
                        batch_events.c.seq,
                        batch_events.c.batch_id,
                        batch_events.c.project,
                        batch_events.c.to_status,
                        batch_events.c.created_at,
                    )
                    .where(batch_events.c.seq > cursor)
                    .order_by(batch_events.c.seq)
                    .limit(_FAN_OUT_EVENTS)
                )
            ).all()
            if not events:
                return 0
            endpoints = await _endpoints(conn, configured)
            values: list[dict[str, Any]] = []
            advance, expected, gap_seen = cursor, cursor + 1, False
            for event in events:
                seq = int(event.seq)
                if seq != expected and int(event.created_at) > now - GAP_SECONDS:
                    gap_seen = True  # an earlier seq may still commit: keep the cursor before it
                if not gap_seen:
                    advance = seq
                expected = seq + 1
                kind = event_type(event.to_status)
                if kind is None:
                    continue
                values += _deliveries(event.batch_id, seq, kind, event, endpoints, now)
            made = await self._insert_deliveries(conn, values)
            if advance != cursor:
                await conn.execute(
                    sa.update(webhook_cursor)
                    .where(webhook_cursor.c.name == _CURSOR)
                    .values(seq=advance)
                )
            return made

        return await self.store._transaction(work)

    async def fan_out_batch(
        self, batch_id: str, configured: Sequence[EndpointRef], *, now: float
    ) -> int:
        """Make the missing deliveries of a batch's terminal event to the endpoints there are
        now (a replay of a batch that ended before an endpoint was added); the deliveries
        made."""

        async def work(conn: AsyncConnection) -> int:
            events = (
                await conn.execute(
                    sa.select(
                        batch_events.c.seq,
                        batch_events.c.project,
                        batch_events.c.to_status,
                        batch_events.c.created_at,
                    )
                    .where(
                        batch_events.c.batch_id == batch_id,
                        batch_events.c.to_status.in_(sorted(TERMINAL)),
                    )
                    .order_by(batch_events.c.seq)
                )
            ).all()
            endpoints = await _endpoints(conn, configured)
            values: list[dict[str, Any]] = []
            for event in events:
                kind = event_type(event.to_status)
                assert kind is not None
                values += _deliveries(batch_id, int(event.seq), kind, event, endpoints, now)
            return await self._insert_deliveries(conn, values)

        return await self.store._transaction(work)

    async def _insert_deliveries(self, conn: AsyncConnection, values: list[dict[str, Any]]) -> int:
        """Insert the deliveries not made yet (a delivery's id is that of its event and
        endpoint); the deliveries made."""
        made = 0
        for at in range(0, len(values), 500):
            stmt = self._insert(webhook_deliveries).values(values[at : at + 500])
            result = await conn.execute(stmt.on_conflict_do_nothing(index_elements=["id"]))
            made += max(int(result.rowcount), 0)
        return made

    # -- claims and attempts --------------------------------------------------------------------

    @staticmethod
    def _due(now: float) -> sa.ColumnElement[bool]:
        d = webhook_deliveries
        earlier = d.alias("earlier")
        blocked = (
            sa.exists()
            .where(
                earlier.c.batch_id == d.c.batch_id,
                earlier.c.endpoint_id == d.c.endpoint_id,
                earlier.c.seq < d.c.seq,
                earlier.c.status == "pending",
            )
            .correlate(d)
        )
        return sa.and_(
            d.c.status == "pending",
            d.c.next_attempt_at <= now,
            sa.or_(d.c.lease_owner.is_(None), d.c.lease_expires_at < now),
            ~blocked,
        )

    async def claim(
        self, *, owner: str, now: float, lease_seconds: float, limit: int
    ) -> list[DeliveryRecord]:
        """Claim up to ``limit`` due deliveries, oldest first, each with a lease of
        ``lease_seconds`` and its epoch raised."""
        if limit <= 0:
            return []
        d = webhook_deliveries

        async def work(conn: AsyncConnection) -> list[DeliveryRecord]:
            rows = await lease_rows(
                conn,
                d.c.seq,
                self._due(now),
                _DELIVERY_COLUMNS,
                postgres=self._postgres,
                owner=owner,
                expires_at=now + lease_seconds,
                limit=limit,
            )
            return [_delivery(row) for row in rows]

        # A read first: most polls find nothing due, and need no transaction that writes.
        if not await self.store._fetch(sa.select(d.c.seq).where(self._due(now)).limit(1)):
            return []
        return await self.store._transaction(work)

    async def record_attempt(
        self,
        delivery: DeliveryRecord,
        *,
        owner: str,
        at: float,
        status_code: int | None,
        error: str | None,
        outcome: DeliveryStatus,
        next_attempt_at: float | None,
    ) -> bool:
        """Record an attempt of a claimed delivery and give its lease back: ``delivered``,
        ``failed`` (the last attempt), or ``pending`` again until ``next_attempt_at``; whether
        the lease was still held (else nothing is written: another process took it over)."""
        d = webhook_deliveries
        values: dict[str, Any] = {
            "attempts": d.c.attempts + 1,
            "last_attempt_at": at,
            "last_status": status_code,
            "last_error": error,
            "status": outcome,
            "next_attempt_at": next_attempt_at if outcome == "pending" else None,
            "lease_owner": None,
            "lease_expires_at": None,
        }
        if outcome == "delivered":
            values["delivered_at"] = at
        written = await self.store._execute(
            sa.update(d)
            .where(
                d.c.seq == delivery.seq,
                d.c.lease_owner == owner,
                d.c.lease_epoch == delivery.lease_epoch,
                d.c.status == "pending",
            )
            .values(**values)
        )
        return written == 1

    async def release(self, owner: str | None = None) -> int:
        """Give back the leases of ``owner`` (a process stopping), or every lease (``None``: a
        store only this process uses, at its start)."""
        d = webhook_deliveries
        held = d.c.lease_owner.is_not(None) if owner is None else d.c.lease_owner == owner
        return await self.store._execute(
            sa.update(d).where(held).values(lease_owner=None, lease_expires_at=None)
        )

    # -- reading and replaying ------------------------------------------------------------------

    async def deliveries(
        self, *, batch_id: str | None = None, ids: Iterable[str] | None = None, limit: int = 50
    ) -> list[DeliveryRecord]:
        """Deliveries, newest first (of a batch, or with these ids, when given)."""
        d = webhook_deliveries
        stmt = sa.select(*_DELIVERY_COLUMNS).order_by(d.c.seq.desc()).limit(limit)
        if batch_id is not None:
            stmt = stmt.where(d.c.batch_id == batch_id)
        if ids is not None:
            stmt = stmt.where(d.c.id.in_(list(ids)))
        return [_delivery(row) for row in await self.store._fetch(stmt)]

    async def replay(
        self, *, now: float, delivery_ids: Sequence[str] = (), batch_id: str | None = None
    ) -> int:
        """Send deliveries again from their first attempt (the same ``webhook-id``): these ids,
        or every delivery of ``batch_id``; how many will be sent."""
        d = webhook_deliveries
        condition = d.c.id.in_(list(delivery_ids)) if batch_id is None else d.c.batch_id == batch_id
        return await self.store._execute(
            sa.update(d)
            .where(condition)
            .values(
                status="pending",
                attempts=0,
                next_attempt_at=now,
                delivered_at=None,
                lease_owner=None,
                lease_expires_at=None,
            )
        )
