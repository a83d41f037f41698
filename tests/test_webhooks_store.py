"""Webhooks below the network: signatures against the reference implementation, the SSRF guard,
and the store's fan-out, claims and ordering, on SQLite and (with ``BATCHD_TEST_POSTGRES_URL``)
PostgreSQL, where two stores claim side by side and each delivery is claimed once."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from standardwebhooks.webhooks import Webhook

from batchd.config import Settings
from batchd.core import lifecycle
from batchd.errors import ConfigError
from batchd.store import BatchRecord, SQLStore
from batchd.store.migrate import alembic_config
from batchd.store.schema import batch_events, webhook_cursor
from batchd.store.webhooks import (
    GAP_SECONDS,
    DeliveryRecord,
    EndpointRecord,
    EndpointRef,
    WebhookStore,
)
from batchd.webhooks import guard, signing
from tests.records import batch_record

pytestmark = pytest.mark.anyio

NO_NETWORKS: tuple[guard.IPNetwork, ...] = ()


# -- signatures ---------------------------------------------------------------------------------


def test_signatures_verify_with_the_reference_implementation() -> None:
    secret = signing.new_secret()
    assert signing.secret_problem(secret) is None
    body = b'{"object":"event","id":"evt_1","type":"batch.completed"}'
    headers = signing.headers(secret, "msg_1", int(time.time()), body)
    assert headers["webhook-signature"].startswith("v1,")
    assert Webhook(secret).verify(body, headers)["type"] == "batch.completed"
    with pytest.raises(Exception, match="signature"):
        Webhook(signing.new_secret()).verify(body, headers)


@pytest.mark.parametrize(
    ("secret", "words"),
    [
        ("s3cr3t", "starts with 'whsec_'"),
        ("whsec_not base64!", "not valid base64"),
        ("whsec_" + "QUJD", "holds 3 bytes"),
    ],
)
def test_bad_secrets_say_what_is_wrong(secret: str, words: str) -> None:
    assert words in str(signing.secret_problem(secret))
    with pytest.raises(ConfigError, match="webhooks"):
        Settings.load(
            webhooks=[{"url": "https://example.com/h", "secret": secret}], embedded_models=False
        )


def test_a_config_endpoint_needs_one_secret_and_a_known_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = signing.new_secret()
    with pytest.raises(ConfigError, match="exactly one of secret"):
        Settings.load(webhooks=[{"url": "https://example.com/h"}], embedded_models=False)
    with pytest.raises(ConfigError, match="HOOK_SECRET"):
        Settings.load(
            webhooks=[{"url": "https://example.com/h", "secret_env": "HOOK_SECRET"}],
            embedded_models=False,
        )
    monkeypatch.setenv("HOOK_SECRET", secret)
    settings = Settings.load(
        webhooks=[
            {"url": "https://example.com/h", "secret_env": "HOOK_SECRET", "project": "team-a"}
        ],
        embedded_models=False,
    )
    [hook] = settings.webhooks
    assert hook.signing_secret == secret
    assert hook.id.startswith("whcfg_")
    assert secret not in repr(settings)
    with pytest.raises(ConfigError, match=r"events.0: Input should be .batch.completed"):
        Settings.load(
            webhooks=[{"url": "https://x.io/h", "secret": secret, "events": ["batch.done"]}],
            embedded_models=False,
        )
    with pytest.raises(ConfigError, match="not an IP address or network"):
        Settings.load(webhook_allow_networks=["intranet"], embedded_models=False)


# -- the SSRF guard -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1:8080/h", "refused: 127.0.0.1 is a loopback address"),
        ("http://localhost/h", "localhost resolves to"),
        ("http://[::1]:9/h", "refused: ::1 is a loopback address"),
        ("http://[::ffff:127.0.0.1]/h", "a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local (cloud metadata"),
        ("http://[fe80::1]/h", "a link-local"),
        ("http://10.1.2.3/h", "a private address"),
        ("http://192.168.0.10/h", "a private address"),
        ("http://[fd00::1]/h", "a private address"),
        ("http://224.0.0.1/h", "a multicast address"),
        ("http://0.0.0.0/h", "an unspecified address"),
        ("http://240.0.0.1/h", "a reserved address"),
        ("http://100.64.0.1/h", "a non-public address"),
        ("ftp://example.com/h", "not an http:// or https:// URL"),
        ("file:///etc/passwd", "not an http:// or https:// URL"),
        ("https:///h", "has no host"),
    ],
)
async def test_the_guard_refuses_what_is_not_public(url: str, words: str) -> None:
    for found in (guard.resolve_sync(url, NO_NETWORKS), await guard.resolve(url, NO_NETWORKS)):
        assert isinstance(found, str), found
        assert words in found, found
        if found.startswith("refused"):
            assert "webhook_allow_networks" in found


async def test_the_guard_allows_public_and_allowed_addresses() -> None:
    public = guard.resolve_sync("https://93.184.215.14/h", NO_NETWORKS)
    assert isinstance(public, guard.Target)
    assert (public.address, public.port, public.literal) == ("93.184.215.14", 443, True)
    allowed = guard.parse_networks(["127.0.0.0/8", "::1"])
    local = await guard.resolve("http://localhost:81/h", allowed)
    assert isinstance(local, guard.Target)
    assert local.address in ("127.0.0.1", "::1")
    assert not local.literal
    assert (local.host, local.port) == ("localhost", 81)
    mapped = guard.resolve_sync("http://[::ffff:127.0.0.1]/h", allowed)
    assert isinstance(mapped, guard.Target)


# -- the store ----------------------------------------------------------------------------------


def _batch(i: int, project: str = "default") -> BatchRecord:
    return batch_record(i, project=project)


async def _end(store: SQLStore, batch: BatchRecord, how: str = "failed") -> None:
    """Create the batch and end it: ``failed``, or ``cancelled`` by way of ``cancelling``."""
    await lifecycle.create(store, batch, admission=None)
    now = int(time.time())
    if how == "failed":
        await lifecycle.transition(store, batch.id, "failed", expected={"validating"}, at=now)
    else:
        await lifecycle.transition(store, batch.id, "cancelling", expected={"validating"}, at=now)
        await lifecycle.transition(store, batch.id, "cancelled", expected={"cancelling"}, at=now)


async def _delivered(
    hooks: WebhookStore, delivery: DeliveryRecord, owner: str, at: float, status_code: int = 200
) -> bool:
    """Record a successful attempt of a claimed delivery; whether the lease was still held."""
    return await hooks.record_attempt(
        delivery,
        owner=owner,
        at=at,
        status_code=status_code,
        error=None,
        outcome="delivered",
        next_attempt_at=None,
    )


async def _cursor(store: SQLStore) -> int:
    rows = await store._fetch(sa.select(webhook_cursor.c.seq))
    return int(rows[0][0])


async def test_fan_out_makes_one_delivery_per_terminal_event_and_endpoint(
    store: SQLStore,
) -> None:
    hooks = WebhookStore(store)
    secret = signing.new_secret()
    await hooks.add_endpoint(
        EndpointRecord("whep_a", "team-a", "https://a.example/h", secret, None, 1)
    )
    await hooks.add_endpoint(
        EndpointRecord("whep_b", "team-b", "https://b.example/h", secret, None, 1)
    )
    only_cancelled = EndpointRef("whcfg_c", "team-a", frozenset({"batch.cancelled"}))
    await _end(store, _batch(1, "team-a"), "failed")
    await _end(store, _batch(2, "team-a"), "cancelled")
    await _end(store, _batch(3, "team-c"), "failed")  # no endpoint

    now = time.time()
    assert await hooks.has_new_events()
    assert await hooks.fan_out([only_cancelled], now=now) == 3
    assert not await hooks.has_new_events()
    assert await hooks.fan_out([only_cancelled], now=now) == 0  # nothing new, nothing twice
    events = await store.events()
    assert await _cursor(store) == events[-1].seq

    found = {(d.batch_id, d.endpoint_id): d for d in await hooks.deliveries()}
    assert set(found) == {
        (_batch(1).id, "whep_a"),
        (_batch(2).id, "whep_a"),
        (_batch(2).id, "whcfg_c"),
    }
    cancelled = found[(_batch(2).id, "whep_a")]
    payload = json.loads(cancelled.payload)
    assert payload == {
        "object": "event",
        "id": payload["id"],
        "type": "batch.cancelled",
        "created_at": payload["created_at"],
        "data": {"id": _batch(2).id},
    }
    assert payload["id"].startswith("evt_")
    assert json.loads(found[(_batch(2).id, "whcfg_c")].payload)["id"] == payload["id"]
    assert cancelled.id.startswith("msg_")
    assert (cancelled.status, cancelled.attempts) == ("pending", 0)

    # A batch's replay makes the deliveries of endpoints added since.
    await hooks.add_endpoint(
        EndpointRecord("whep_late", "team-a", "https://late.example/h", secret, None, 2)
    )
    assert await hooks.fan_out_batch(_batch(1).id, [], now=now) == 1
    assert await hooks.fan_out_batch(_batch(1).id, [], now=now) == 0


async def test_the_cursor_waits_at_a_recent_gap_in_seq(store: SQLStore) -> None:
    """An event whose ``seq`` is taken but not yet committed (PostgreSQL): the cursor stops
    before the gap while it is recent, the events past it are fanned out (once), and an old gap
    (a rolled back transaction) is passed."""
    hooks = WebhookStore(store)
    await hooks.add_endpoint(
        EndpointRecord("whep_a", "default", "https://a.example/h", signing.new_secret(), None, 1)
    )
    await _end(store, _batch(1))
    await hooks.fan_out([], now=time.time())
    start = await _cursor(store)

    now = time.time()
    async with store.engine.begin() as conn:  # seq start+1 is missing: the gap
        for seq, batch in ((start + 2, _batch(2)), (start + 3, _batch(3))):
            await conn.execute(
                sa.insert(batch_events).values(
                    seq=seq,
                    batch_id=batch.id,
                    project="default",
                    from_status="validating",
                    to_status="failed",
                    created_at=int(now),
                )
            )
    assert await hooks.fan_out([], now=now) == 2
    assert await _cursor(store) == start  # the gap may still fill
    assert await hooks.fan_out([], now=now) == 0  # read again, made once
    assert await hooks.fan_out([], now=now + GAP_SECONDS + 1) == 0
    assert await _cursor(store) == start + 3  # an old gap: a transaction that never committed


async def test_claims_lease_fence_and_keep_the_order_of_a_batch(store: SQLStore) -> None:
    hooks = WebhookStore(store)
    await hooks.add_endpoint(
        EndpointRecord("whep_a", "default", "https://a.example/h", signing.new_secret(), None, 1)
    )
    await _end(store, _batch(1))
    now = time.time()
    await hooks.fan_out([], now=now)
    [first] = await hooks.deliveries()
    # A second event of the same batch to the same endpoint (a replayed fan-out of an event
    # seen later): it waits for the first.
    async with store.engine.begin() as conn:
        await conn.execute(
            sa.insert(batch_events).values(
                batch_id=_batch(1).id,
                project="default",
                from_status="cancelling",
                to_status="cancelled",
                created_at=int(now),
            )
        )
    await hooks.fan_out([], now=now)

    [claimed] = await hooks.claim(owner="a", now=now, lease_seconds=30, limit=10)
    assert claimed.id == first.id
    assert await hooks.claim(owner="b", now=now + 1, lease_seconds=30, limit=10) == []
    # The lease runs out: another process takes it over, and the first one's result is refused.
    [again] = await hooks.claim(owner="b", now=now + 31, lease_seconds=30, limit=10)
    assert again.id == first.id
    assert again.lease_epoch == claimed.lease_epoch + 1
    assert not await _delivered(hooks, claimed, owner="a", at=now + 32)
    assert await hooks.record_attempt(
        again,
        owner="b",
        at=now + 32,
        status_code=500,
        error="answered HTTP 500",
        outcome="pending",
        next_attempt_at=now + 40,
    )
    assert await hooks.claim(owner="b", now=now + 35, lease_seconds=30, limit=10) == []
    [retry] = await hooks.claim(owner="b", now=now + 40, lease_seconds=30, limit=10)
    assert (retry.id, retry.attempts, retry.last_status) == (first.id, 1, 500)
    assert await _delivered(hooks, retry, owner="b", at=now + 41, status_code=204)
    [second] = await hooks.claim(owner="b", now=now + 41, lease_seconds=30, limit=10)
    assert second.id != first.id
    assert second.event_type == "batch.cancelled"
    [done, _] = sorted(await hooks.deliveries(), key=lambda d: d.seq)
    assert (done.status, done.attempts, done.delivered_at) == ("delivered", 2, now + 41)

    # A replay sends it again from its first attempt, with the same id.
    assert await hooks.replay(now=now + 50, delivery_ids=[first.id]) == 1
    [replayed] = await hooks.deliveries(ids=[first.id])
    assert (replayed.status, replayed.attempts, replayed.id) == ("pending", 0, first.id)


async def test_two_stores_claim_each_delivery_once(store: SQLStore) -> None:
    """Two processes' stores on one database fan out and claim at once (PostgreSQL: ``FOR
    UPDATE SKIP LOCKED``, the cursor's row locked): every delivery is made once and claimed by
    exactly one of them."""
    other = SQLStore(store.url)
    await other.open()
    try:
        hooks = [WebhookStore(store), WebhookStore(other)]
        await hooks[0].add_endpoint(
            EndpointRecord(
                "whep_a", "default", "https://a.example/h", signing.new_secret(), None, 1
            )
        )
        refs = [EndpointRef("whcfg_b", "default")]
        batches = 60
        for i in range(batches):
            await _end(store, _batch(i))
        claimed: list[list[str]] = [[], []]

        async def process(which: int) -> None:
            for _ in range(40):
                now = time.time()
                await hooks[which].fan_out(refs, now=now)
                for d in await hooks[which].claim(
                    owner=f"p{which}", now=now, lease_seconds=60, limit=7
                ):
                    claimed[which].append(d.id)
                    await _delivered(hooks[which], d, owner=f"p{which}", at=now)
                await asyncio.sleep(0)

        await asyncio.gather(process(0), process(1))
        everything = claimed[0] + claimed[1]
        assert len(everything) == len(set(everything)) == 2 * batches
        assert claimed[0], "the second process claimed everything"
        assert claimed[1], "the first process claimed everything"
        deliveries = await hooks[0].deliveries(limit=1000)
        assert len(deliveries) == 2 * batches
        assert {d.status for d in deliveries} == {"delivered"}
    finally:
        await other.close()


async def test_removing_an_endpoint_fails_its_pending_deliveries(store: SQLStore) -> None:
    hooks = WebhookStore(store)
    await hooks.add_endpoint(
        EndpointRecord("whep_a", "default", "https://a.example/h", signing.new_secret(), None, 1)
    )
    await _end(store, _batch(1))
    await hooks.fan_out([], now=time.time())
    removed = await hooks.remove_endpoint("whep_a", now=time.time())
    assert removed is not None
    assert removed.url == "https://a.example/h"
    assert await hooks.remove_endpoint("whep_a", now=time.time()) is None
    [d] = await hooks.deliveries()
    assert (d.status, d.last_error) == ("failed", "the endpoint was removed")
    assert await hooks.endpoints() == []


def test_the_upgrade_starts_the_cursor_at_the_newest_event(tmp_path: Path) -> None:
    """Batches that ended before webhooks existed send nothing after the upgrade."""
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(conn), "0007")
            for i in range(3):
                conn.execute(
                    sa.insert(batch_events).values(
                        batch_id=_batch(i).id,
                        project="default",
                        from_status="validating",
                        to_status="failed",
                        created_at=1,
                    )
                )
            command.upgrade(alembic_config(conn), "head")
            assert conn.scalar(sa.select(webhook_cursor.c.seq)) == 3
    finally:
        engine.dispose()
