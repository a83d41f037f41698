"""The deliverer: a background task of every process that opens the services.

Each round (on a wake-up: the store's ``NOTIFY`` on PostgreSQL, a finished attempt; else every
``webhook_poll_seconds``) it fans the new events of the outbox out into delivery rows
(:meth:`~batchd.store.webhooks.WebhookStore.fan_out`), claims the due deliveries with a lease and
sends each, at most :data:`MAX_IN_FLIGHT` at once. An attempt is one signed ``POST`` (Standard
Webhooks headers) to the address the SSRF guard checked just before, with bounded connect and
total timeouts, no redirects followed and no response body read; a 2xx delivers it, anything
else is a failed attempt, tried again after the next delay of ``webhook_retry_schedule``, and
``failed`` after the last. Bodies and secrets are never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from datetime import timedelta

from pyreqwest.client import ClientBuilder
from pyreqwest.exceptions import PyreqwestError

from batchd import __version__
from batchd.config import Settings
from batchd.errors import StoreError
from batchd.providers.http_errors import describe
from batchd.store.sql import SQLStore
from batchd.store.webhooks import DeliveryRecord, DeliveryStatus, EndpointRef, WebhookStore
from batchd.store.work import SharedWork
from batchd.webhooks import guard, signing

__all__ = ["MAX_IN_FLIGHT", "USER_AGENT", "Deliverer", "Endpoint"]

log = logging.getLogger("batchd.webhooks")

MAX_IN_FLIGHT = 16
USER_AGENT = f"batchd/{__version__} (webhooks; +https://www.standardwebhooks.com)"
_CONNECT_SECONDS = 5.0


class Endpoint:
    """Where a delivery goes and how it is signed."""

    __slots__ = ("id", "secret", "url")

    def __init__(self, endpoint_id: str, url: str, secret: str) -> None:
        self.id = endpoint_id
        self.url = url
        self.secret = secret


class Deliverer:
    """Sends the webhooks of this process's share of the deliveries (see the module)."""

    def __init__(
        self,
        store: SQLStore,
        settings: Settings,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.hooks = WebhookStore(store)
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._clock = clock
        self._configured = {
            w.id: Endpoint(w.id, w.url, w.signing_secret) for w in settings.webhooks
        }
        self._refs = [
            EndpointRef(w.id, w.project, None if w.events is None else frozenset(w.events))
            for w in settings.webhooks
        ]
        self._networks = guard.parse_networks(settings.webhook_allow_networks)
        self._schedule = tuple(settings.webhook_retry_schedule)
        self._timeout = settings.webhook_timeout_seconds
        self._poll = settings.webhook_poll_seconds
        self._lease = 2 * self._timeout + 10
        self._shared = settings.shared
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight: set[asyncio.Task[None]] = set()
        self._failing = False

    # -- running ------------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._shared:  # the data directory's own store: every lease is this process's
            await self.hooks.release()
        self._tasks.append(asyncio.create_task(self._run(), name="batchd-webhooks"))
        if self.store.engine.dialect.name == "postgresql":
            listen = SharedWork(self.store).listen(self._heard, stop=self._stop)
            self._tasks.append(asyncio.create_task(listen, name="batchd-webhooks-listen"))

    def _heard(self, _payload: str) -> None:
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def stop(self) -> None:
        """Stop at once: attempts under way are abandoned (sent again later, with the same
        ``webhook-id``) and their leases given back."""
        self._stop.set()
        self._wake.set()
        tasks = [*self._tasks, *self._in_flight]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(StoreError):
            await self.hooks.release(self.owner)

    async def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                await self.round()
                if self._failing:
                    log.info("webhooks: the store answers again")
                self._failing = False
            except StoreError as exc:
                if not self._failing:
                    log.warning("webhooks: the store failed (%s); trying again", exc)
                self._failing = True
            except Exception:  # a bug: say so, and keep the deliveries going
                log.exception("webhooks: a round failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)

    async def round(self) -> int:
        """Fan out new events and start sending the due deliveries; how many were started."""
        now = self._clock()
        if await self.hooks.has_new_events():
            await self.hooks.fan_out(self._refs, now=now)
        free = MAX_IN_FLIGHT - len(self._in_flight)
        claimed = await self.hooks.claim(
            owner=self.owner, now=now, lease_seconds=self._lease, limit=free
        )
        if not claimed:
            return 0
        stored = {e.id: e for e in await self.hooks.endpoints()}
        for delivery in claimed:
            endpoint = self._configured.get(delivery.endpoint_id)
            record = stored.get(delivery.endpoint_id)
            if endpoint is None and record is not None:
                endpoint = Endpoint(record.id, record.url, record.secret)
            task = asyncio.create_task(self._attempt(delivery, endpoint))
            self._in_flight.add(task)
            task.add_done_callback(self._done)
        return len(claimed)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("webhooks: an attempt failed: %s", task.exception())
        self._wake.set()  # a later delivery of the same batch may be due now

    # -- one attempt --------------------------------------------------------------------------

    async def _attempt(self, delivery: DeliveryRecord, endpoint: Endpoint | None) -> None:
        status: int | None = None
        if endpoint is None:
            error: str | None = "the endpoint was removed (or is no longer in the config)"
            outcome: DeliveryStatus = "failed"
        else:
            target = await guard.resolve(endpoint.url, self._networks)
            if isinstance(target, str):
                error = target
            else:
                status, error = await self._post(endpoint, target, delivery)
            outcome = "delivered" if error is None else "pending"
        at = self._clock()
        attempt = delivery.attempts + 1
        next_at: float | None = None
        if outcome == "pending":
            if attempt > len(self._schedule):
                outcome = "failed"
            else:
                next_at = at + self._schedule[attempt - 1]
        recorded = await self.hooks.record_attempt(
            delivery,
            owner=self.owner,
            at=at,
            status_code=status,
            error=error,
            outcome=outcome,
            next_attempt_at=next_at,
        )
        what = f"webhook {delivery.id} ({delivery.event_type} of {delivery.batch_id})"
        where = f"endpoint {delivery.endpoint_id}, attempt {attempt}"
        if not recorded:
            log.info("%s: %s taken over by another process; its result is not kept", what, where)
        elif outcome == "delivered":
            log.info("%s delivered (%s, HTTP %s)", what, where, status)
        elif outcome == "failed":
            log.warning("%s failed for good (%s): %s", what, where, error)
        else:
            wait = (next_at or at) - at
            log.warning("%s not delivered (%s): %s; next attempt in %gs", what, where, error, wait)

    async def _post(
        self, endpoint: Endpoint, target: guard.Target, delivery: DeliveryRecord
    ) -> tuple[int | None, str | None]:
        """POST the delivery once; ``(HTTP status, None)`` when it was delivered, else the
        status (if any) and what went wrong."""
        body = delivery.payload.encode()
        headers = signing.headers(endpoint.secret, delivery.id, int(self._clock()), body)
        headers["content-type"] = "application/json"
        builder = (
            ClientBuilder()
            .follow_redirects(False)
            .no_proxy()
            .user_agent(USER_AGENT)
            .connect_timeout(timedelta(seconds=min(_CONNECT_SECONDS, self._timeout)))
            .timeout(timedelta(seconds=self._timeout))
            .pool_max_idle_per_host(0)
        )
        if not target.literal:  # connect to the address that was checked, not a new lookup
            builder = builder.resolve(target.host, target.address, target.port)
        try:
            async with builder.build() as client:
                request = client.post(endpoint.url).headers(headers).body_bytes(body)
                # Streamed with no buffer: the status line is all that is read of the answer.
                async with request.streamed_read_buffer_limit(0).build_streamed() as response:
                    status = int(response.status)
        except PyreqwestError as exc:
            return None, describe(exc)
        except (ValueError, TypeError) as exc:  # a URL or header pyreqwest refuses
            return None, f"the request could not be made: {exc}"
        if 200 <= status < 300:
            return status, None
        if 300 <= status < 400:
            return status, (
                f"answered HTTP {status}, a redirect: batchd does not follow redirects; give the "
                "endpoint's final URL"
            )
        return status, f"answered HTTP {status}"
