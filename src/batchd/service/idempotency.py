"""``Idempotency-Key`` on ``POST /v1/files`` and ``POST /v1/batches`` (a batchd extension, as
Stripe and the IETF draft ``draft-ietf-httpapi-idempotency-key-header`` define it).

A client that retries a create after a timeout or a dropped connection sends the same key: the
first call with it runs and its answer is kept 24 hours (per project, in the store, so every
process of a shared deployment sees it); a later call with the same key and the same request gets
that answer again (``Idempotent-Replayed: true``) instead of creating a second file or batch.
The same key with another request (another body, or the other endpoint) is a 409
``idempotency_key_reused``; a call while the first is still running is a 409
``idempotency_key_in_use`` (retry it shortly). A call that fails keeps nothing: it may be retried
with the same key.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from batchd.errors import Conflict, InvalidRequest
from batchd.store.idempotency import IdempotencyStore, KeyRecord

__all__ = ["HEADER", "IdempotencyService", "Replay", "digest_of"]

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_MAX_KEY = 255
_PURGE_EVERY = 3600.0  # seconds between purges of the expired keys


def digest_of(parts: Iterable[bytes]) -> str:
    """The SHA-256 of a request's parts (each length-prefixed, so no two splits collide)."""
    hasher = hashlib.sha256()
    for part in parts:
        hasher.update(b"%d:" % len(part))
        hasher.update(part)
    return hasher.hexdigest()


@dataclass(frozen=True, slots=True)
class Replay:
    """The first call's answer, to send again."""

    status_code: int
    body: bytes


class IdempotencyService:
    """Claims, answers and replays of idempotency keys."""

    def __init__(self, keys: IdempotencyStore, clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self.clock = clock
        self._purged = 0.0

    @staticmethod
    def check_key(key: str) -> str:
        """``key`` if it is usable: 1 to 255 printable ASCII characters."""
        if not 1 <= len(key) <= _MAX_KEY or not all(" " <= c <= "~" for c in key):
            raise InvalidRequest(
                f"Invalid '{HEADER}' header: use 1 to {_MAX_KEY} printable ASCII characters "
                "(a UUID, for example), the same on every retry of one call.",
                param=HEADER,
                code="invalid_idempotency_key",
            )
        return key

    async def claim(
        self, project: str, key: str, request: str, digest: str | None
    ) -> KeyRecord | None:
        """Claim ``key`` for this call (``None``: run it, then :meth:`complete` or
        :meth:`release`), or the row of the call that has it (see :meth:`replay`)."""
        now = self.clock()
        if now - self._purged >= _PURGE_EVERY:
            self._purged = now
            await self.keys.purge(now=now)
        return await self.keys.claim(project, self.check_key(key), request, digest, now=now)

    @staticmethod
    def check_usable(record: KeyRecord, request: str, digest: str | None) -> None:
        """The 409 for a call whose key another request holds (``digest``: its body's, when
        known) or a call that is still running; nothing when the first answer may be sent."""
        if record.request != request or (
            digest is not None and record.digest is not None and record.digest != digest
        ):
            raise Conflict(
                f"This '{HEADER}' was already used for another request ({record.request} with "
                "another body) in the last 24 hours. Use a new key for a new request.",
                param=HEADER,
                code="idempotency_key_reused",
            )
        if record.status_code is None or record.response is None:
            raise Conflict(
                f"A request with this '{HEADER}' is still being processed. Retry it in a few "
                "seconds to get its answer.",
                param=HEADER,
                code="idempotency_key_in_use",
            )

    @classmethod
    def replay(cls, record: KeyRecord, request: str, digest: str) -> Replay:
        """The first call's answer for a call with the same key, if it is the same request."""
        cls.check_usable(record, request, digest)
        assert record.status_code is not None
        assert record.response is not None
        return Replay(record.status_code, record.response.encode())

    async def complete(
        self, project: str, key: str, digest: str, status_code: int, body: bytes
    ) -> None:
        await self.keys.complete(
            project, key, digest=digest, status_code=status_code, response=body.decode()
        )

    async def release(self, project: str, key: str) -> None:
        await self.keys.release(project, key)

    async def once(
        self,
        project: str,
        key: str,
        request: str,
        digest: str,
        call: Callable[[], Awaitable[tuple[int, bytes]]],
    ) -> tuple[Replay, bool]:
        """Run ``call`` once per key: its answer, and whether it is a replay."""
        record = await self.claim(project, key, request, digest)
        if record is not None:
            return self.replay(record, request, digest), True
        try:
            status_code, body = await call()
        except BaseException:
            await self.release(project, key)
            raise
        await self.complete(project, key, digest, status_code, body)
        return Replay(status_code, body), False
