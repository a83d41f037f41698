"""The cross-batch result cache: a request answered before is answered again from the store.

A route with ``cache = true`` keeps the successful answers of its cacheable requests, and a later
request of the same project with the same body gets the stored answer instead of an upstream
call, in any batch, until ``cache_ttl_seconds`` pass. So a batch submitted again after a fix of a
few lines costs only the lines that changed.

What may be cached
    Embeddings, and generations (chat completions, completions, responses) whose body sets
    ``temperature`` to 0: the answers a second call would give again. Only successful (2xx)
    answers of the route itself are stored, not those of a fallback route.
The key
    The SHA-256 of the route, the endpoint and the request body as canonical JSON (keys sorted at
    every level), without ``model``: a route's name and its aliases share answers, two routes
    never do. Rows are per project: no project sees another's answers.
A hit
    Its output line is the stored ``response`` (status, the upstream's ``request_id``, the body
    byte for byte the same) plus ``response.headers`` = ``{"x-batchd-cache": "hit", "age":
    seconds since it was stored}``; the OpenAI body is not changed. In the batch's ``usage`` its
    input tokens count as ``cached_tokens`` too (:func:`batchd.engine.journal.is_cached`).
Within a batch
    Requests with the same key wait for the first one's answer instead of being sent again (its
    followers); if that one fails, they are sent themselves.

Lookups cost one query per chunk of requests read (:class:`~batchd.engine.inputs.Feed`), not one
per request; answers are stored in batches of :data:`_PUT_BATCH`. The cache is an optimisation:
a store that does not answer makes every request a miss (and is logged once a minute), it never
fails a batch. The cap (``cache_max_bytes``) is kept by :meth:`ResultCache.prune`: expired
answers, then the oldest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio.to_thread
import orjson

from batchd.engine.inputs import Item
from batchd.engine.journal import CACHE_HEADER, JournalEntry
from batchd.engine.throttle import Throttle
from batchd.errors import StoreError
from batchd.providers.base import ProviderRequest, ProviderResult
from batchd.store.cache import CachedAnswer, CacheStore
from batchd.validation import normalize_url

__all__ = ["CACHE_HEADER", "Recall", "ResultCache", "cacheable", "request_digest"]

log = logging.getLogger("batchd.engine")

_EMBEDDINGS = "/v1/embeddings"
_GENERATIONS = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/messages"}
)
_PUT_BATCH = 512  # answers stored per transaction
_MAX_PUTS = 4  # statements storing answers at once, per dispatch
_MAX_UNSTORED = 16 * _PUT_BATCH  # answers waiting to be stored; beyond it the oldest are skipped
_MAX_ANSWER_FRACTION = 16  # an answer over cache_max_bytes / this is not stored


def cacheable(endpoint: str, body: Mapping[str, Any]) -> bool:
    """Whether the answer to ``body`` on ``endpoint`` may be reused: embeddings always,
    generations with ``temperature`` 0."""
    path = normalize_url(endpoint)
    if path == _EMBEDDINGS:
        return True
    if path in _GENERATIONS:
        temperature = body.get("temperature")
        return type(temperature) in (int, float) and temperature == 0
    return False


def request_digest(route: str, endpoint: str, body: Mapping[str, Any]) -> bytes:
    """The cache key of ``body`` on ``route``: SHA-256 of the route, the endpoint and the body as
    canonical JSON (keys sorted), ``model`` left out (a name or an alias of the route)."""
    rest = {key: value for key, value in body.items() if key != "model"}
    digest = hashlib.sha256(b"%s\0%s\0" % (route.encode(), normalize_url(endpoint).encode()))
    digest.update(orjson.dumps(rest, option=orjson.OPT_SORT_KEYS))
    return digest.digest()


def hit_response(response: Mapping[str, Any], age: float) -> dict[str, Any]:
    """A stored ``response`` as a hit's output line carries it: marked in ``headers``."""
    return {**response, "headers": {CACHE_HEADER: "hit", "age": str(max(0, int(age)))}}


class ResultCache:
    """The process's result cache: :meth:`recall` for a dispatch, :meth:`prune` to keep the cap."""

    def __init__(
        self,
        store: CacheStore,
        max_bytes: int,
        *,
        faults: Throttle,
        clock: Callable[[], float] = time.time,
        own_store: bool = False,
    ) -> None:
        """``own_store``: the cache's database is its own (``cache_database_url``), opened by
        :meth:`open` and closed by :meth:`close`."""
        self.store = store
        self.own_store = own_store
        self.max_bytes = max_bytes
        self.faults = faults
        self.clock = clock
        self._added = 0  # bytes stored since the last prune
        self._pruning: asyncio.Task[int] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    def recall(
        self,
        *,
        project: str,
        route: str,
        endpoint: str,
        ttl: float,
        settle: Callable[[list[JournalEntry]], None],
        tally: Callable[[str, int], None] | None = None,
    ) -> Recall:
        r"""A dispatch's use of the cache: ``settle`` takes the entries answered from it,
        ``tally`` is told the ``hit``\ s and ``miss``\ es."""
        return Recall(self, project, route, endpoint, ttl, settle, tally or _no_tally)

    async def prune(self) -> int:
        """Drop expired answers, then the oldest above the cap; how many."""
        self._added = 0
        dropped = await self.store.prune(now=self.clock(), max_bytes=self.max_bytes)
        if dropped:
            log.info("result cache: %d answers dropped (expired, or over the cap)", dropped)
        return dropped

    def _stored(self, size: int) -> None:
        """``size`` bytes were stored: prune once an eighth of the cap was added since."""
        self._added += size
        if self._added > self.max_bytes // 8 and (self._pruning is None or self._pruning.done()):
            self._pruning = self._spawn(self.prune(), "pruning")

    def _spawn(self, work: Awaitable[Any], what: str) -> asyncio.Task[Any]:
        async def run() -> Any:
            try:
                return await work
            except StoreError as exc:
                self.faults.warning("result-cache", "result cache: %s waits: %s", what, exc)
                return None

        task = asyncio.ensure_future(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def open(self) -> None:
        """Open the cache's own database (migrated), if it has one."""
        if self.own_store:
            await self.store.store.open()

    async def close(self) -> None:
        """Wait for the answers being stored and a prune under way; close an own database."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.own_store:
            await self.store.store.close()


class Recall:
    """One dispatch's use of the cache: :meth:`screen` answers what it can of each chunk read,
    :meth:`remember` stores the answers of what was sent, :meth:`close` stores the rest."""

    def __init__(
        self,
        cache: ResultCache,
        project: str,
        route: str,
        endpoint: str,
        ttl: float,
        settle: Callable[[list[JournalEntry]], None],
        tally: Callable[[str, int], None],
    ) -> None:
        self._cache = cache
        self._tally = tally
        self._project = project
        self._route = route
        self._endpoint = endpoint
        self._ttl = ttl
        self._settle = settle
        self._leaders: dict[int, bytes] = {}  # index of a request sent: its key
        self._followers: dict[bytes, list[Item]] = {}  # key of a request sent: who waits for it
        self._answers: list[tuple[bytes, bytes]] = []  # to store
        self._putting: set[asyncio.Task[Any]] = set()  # answers being stored
        self.requeue: Callable[[list[Item]], None] | None = None
        """Where the followers of a failed request go to be sent themselves (the feed)."""

    def _keys(self, chunk: Sequence[Item]) -> list[bytes | None]:
        route, endpoint = self._route, self._endpoint
        return [
            request_digest(route, endpoint, body) if cacheable(endpoint, body) else None
            for _, _, body in chunk
        ]

    async def screen(self, chunk: list[Item]) -> list[Item]:
        """The requests of ``chunk`` to send: the rest were answered from the cache (handed to
        ``settle``) or wait for a request with the same key that is being sent."""
        keys = await anyio.to_thread.run_sync(self._keys, chunk)
        ask = [key for key in set(keys) if key is not None and key not in self._followers]
        cache = self._cache
        now = cache.clock()
        found: dict[bytes, CachedAnswer] = {}
        if ask:
            try:
                found = await cache.store.lookup(self._project, ask, now=now)
            except StoreError as exc:  # every request is a miss until the store answers
                cache.faults.warning("result-cache", "result cache: lookups wait: %s", exc)
            else:
                if cache.faults.recovered("result-cache"):
                    log.info("result cache: the store answers again")
        send: list[Item] = []
        hits: list[JournalEntry] = []
        misses = 0
        for item, key in zip(chunk, keys, strict=True):
            if key is None:
                send.append(item)
                continue
            answer = found.get(key)
            if answer is not None:
                response = hit_response(orjson.loads(answer.response), now - answer.created_at)
                hits.append(JournalEntry(item[0], item[1], response=response))
            elif key in self._followers:
                self._followers[key].append(item)
            else:
                self._followers[key] = []
                self._leaders[item[0]] = key
                send.append(item)
                misses += 1
        if misses:
            self._tally("miss", misses)
        if hits:
            self._tally("hit", len(hits))
            self._settle(hits)
        return send

    def remember(
        self,
        group: Sequence[ProviderRequest],
        results: Sequence[ProviderResult],
        entries: Sequence[JournalEntry],
    ) -> None:
        """Keep the answers of ``group`` that may be cached: ``results`` are the route's own
        (before any fallback), ``entries`` the final ones. Their followers get the answer, or
        are sent themselves when the request failed."""
        answered: list[JournalEntry] = []
        for request, result, entry in zip(group, results, entries, strict=True):
            key = self._leaders.pop(request.index, None)
            if key is None:
                continue
            followers = self._followers.pop(key)
            if not result.ok or entry.response is None:
                if followers and self.requeue is not None:
                    self.requeue(followers)
                continue
            data = orjson.dumps(entry.response)
            if len(data) <= self._cache.max_bytes // _MAX_ANSWER_FRACTION:
                self._answers.append((key, data))
            if followers:
                response = hit_response(entry.response, 0)
                answered += [
                    JournalEntry(item[0], item[1], response=response) for item in followers
                ]
        if answered:
            self._tally("hit", len(answered))
            self._settle(answered)
        if len(self._answers) >= _PUT_BATCH and len(self._putting) < _MAX_PUTS:
            self._flush()
        elif len(self._answers) >= _MAX_UNSTORED:  # the store is too slow: skip some
            del self._answers[:_PUT_BATCH]

    def _flush(self) -> None:
        answers, self._answers = self._answers, []
        if answers:
            task = self._cache._spawn(self._put(answers), "storing answers")
            self._putting.add(task)
            task.add_done_callback(self._putting.discard)

    async def _put(self, answers: list[tuple[bytes, bytes]]) -> None:
        cache = self._cache
        size = await cache.store.put(
            self._project, self._route, answers, now=cache.clock(), ttl=self._ttl
        )
        cache._stored(size)

    async def close(self) -> None:
        """Store the answers not stored yet, and wait until they are (or failed, logged): once a
        batch ends, its answers are in the cache."""
        self._flush()
        if self._putting:
            await asyncio.gather(*self._putting, return_exceptions=True)


def _no_tally(result: str, count: int) -> None:
    return None
