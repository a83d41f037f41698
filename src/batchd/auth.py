"""API keys and projects.

A request names its key with ``Authorization: Bearer <key>`` (OpenAI's SDK) or ``api-key: <key>``
(Azure's). A key is known by its SHA-256 only: from ``[[api_keys]]`` in the configuration (``key``
or ``key_sha256``) or from the store (``batchd keys create``, which shows the key once). Each key
belongs to a project, and every file and batch belongs to the project of the key that created it;
another project's objects are invisible (404, never 403, never listed).

Authentication is on as soon as one key exists, in the configuration or the store (a key made
while the server runs counts within a few seconds). With none, every request belongs to the
``default`` project, and ``batchd serve`` binds to loopback only unless ``--insecure``.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping

from batchd.config import Settings
from batchd.errors import Unauthorized
from batchd.store import Store

__all__ = ["DEFAULT_PROJECT", "Authenticator", "key_digest", "key_from_headers", "mask_key"]

DEFAULT_PROJECT = "default"
_CACHE_SECONDS = 5.0  # how long a store lookup (found, not found, revoked) is trusted


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def mask_key(key: str) -> str:
    """Enough of ``key`` to recognise it in a message, never enough to use it."""
    return f"{key[:3]}…{key[-3:]}" if len(key) >= 12 else "…"


def key_from_headers(headers: Mapping[str, str]) -> str | None:
    """The key of ``Authorization: Bearer …`` or, failing that, ``api-key: …`` (Azure's
    clients) or ``x-api-key: …`` (Anthropic's)."""
    authorization = headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    for name in ("api-key", "x-api-key"):
        key = headers.get(name)
        if key and key.strip():
            return key.strip()
    return None


class Authenticator:
    """Which project a request's key belongs to (see the module docstring)."""

    def __init__(
        self, settings: Settings, store: Store, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._configured = {entry.sha256: entry.project for entry in settings.api_keys}
        self._admins = frozenset(entry.sha256 for entry in settings.api_keys if entry.admin)
        self._store = store
        self._clock = clock
        # digest -> (when, project, admin): a store lookup, trusted for _CACHE_SECONDS
        self._found: dict[str, tuple[float, str | None, bool]] = {}
        self._required: tuple[float, bool] | None = None

    async def required(self) -> bool:
        """Whether requests need a key: a key exists in the configuration or the store."""
        if self._configured:
            return True
        now = self._clock()
        if self._required is None or now - self._required[0] > _CACHE_SECONDS:
            self._required = (now, await self._store.has_api_keys())
        return self._required[1]

    async def project(self, headers: Mapping[str, str]) -> str:
        """The project of the request's key; :class:`Unauthorized` for no key or a wrong one."""
        if not await self.required():
            return DEFAULT_PROJECT
        key = key_from_headers(headers)
        if key is None:
            raise Unauthorized(
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY), "
                "or in an api-key or x-api-key header.",
                code="invalid_api_key",
            )
        project = await self._lookup(key_digest(key))
        if project is None:
            raise Unauthorized(
                f"Incorrect API key provided: {mask_key(key)}. Use a key from batchd's "
                "configuration ([[api_keys]]) or one made with `batchd keys create`.",
                code="invalid_api_key",
            )
        return project

    def is_admin(self, key: str) -> bool:
        """Whether ``key`` is an admin key (``admin = true`` in the configuration, or made with
        ``batchd keys create --admin``): the dashboard shows it every project. Ask after
        :meth:`project` accepted the key (a store key's answer is the one it looked up)."""
        digest = key_digest(key)
        found = self._found.get(digest)
        return digest in self._admins or (found is not None and found[2])

    async def _lookup(self, digest: str) -> str | None:
        configured = self._configured.get(digest)
        if configured is not None:
            return configured
        now = self._clock()
        cached = self._found.get(digest)
        if cached is not None and now - cached[0] <= _CACHE_SECONDS:
            return cached[1]
        record = await self._store.find_api_key(digest)
        valid = record is not None and record.revoked_at is None
        project = record.project if record is not None and valid else None
        if len(self._found) > 10_000:  # bounded: wrong keys must not grow it forever
            self._found.clear()
        self._found[digest] = (now, project, record is not None and valid and record.admin)
        return project
