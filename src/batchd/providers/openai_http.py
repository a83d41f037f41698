"""The ``openai`` provider: any OpenAI-compatible HTTP upstream (vLLM, SGLang, llama.cpp server,
Ollama, OpenAI, Azure…), over pyreqwest.

Request bodies are forwarded untouched except for an optional model rename
(``upstream_model``). :class:`HTTPProvider` does the work (for the ``anthropic`` provider of
:mod:`batchd.providers.anthropic_http` too). Outcomes are classified into
:class:`~batchd.providers.base.ProviderResult`:

==========================  ===========================================================
upstream answer             result
==========================  ===========================================================
2xx, JSON body              success, the parsed body
2xx, body not JSON          retryable ``invalid_upstream_response``
429                         retryable, ``retry_after`` from ``retry-after-ms``/``Retry-After``
408, 409, 5xx               retryable (``retry_after`` too when sent)
other 4xx                   not retryable; the upstream's JSON error body (error-file material)
timeout                     retryable ``request_timeout``
connection error / reset    retryable ``connection_error``
==========================  ===========================================================

In pyreqwest's terms: a ``RequestTimeoutError`` (connect, pool, read, write or total timeout; a
``TimeoutError``) is ``request_timeout``; every other ``PyreqwestError`` (``ConnectError``,
``ReadError``, ``WriteError``, a body that fails to decode, a closed client…) is
``connection_error``, with its root cause in the message. None escapes :meth:`execute`.

The API key is read from ``env[api_key_env]`` once, when the provider is built, and only ever
sent as ``Authorization: Bearer …``; it is redacted from every message this module produces.

Why pyreqwest (Rust reqwest and hyper, run on a tokio thread): with hundreds of requests in
flight, the HTTP client's CPU per request is most of what batchd itself costs. On a 2-core
machine against the fake upstream (10,000 chat requests, concurrency 256, 50 ms latency, uvloop,
client CPU over all threads) pyreqwest took 0.084 ms CPU per request at about 4,500 req/s,
aiohttp 0.16-0.23 ms at 3,500-4,200 req/s (aiosonic 0.18-0.19; rnet 0.11-0.13, but GPL).
``bench/http_clients.py`` measures it again.

One thing pyreqwest (0.15) does differently from aiohttp: a request whose task is cancelled (a
batch cancelled or stopped past its grace period) is not aborted; it runs on in pyreqwest's
runtime until it is answered or times out, holding its connection slot, and the answer is
dropped. A stream closed before its end (:meth:`_HTTPStream.aclose`) is aborted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, ClassVar, Literal, Self

import orjson
from pydantic import Field, field_validator, model_validator
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import PyreqwestError
from pyreqwest.http import HeaderMap, Url
from pyreqwest.request import StreamRequest
from pyreqwest.response import Response

from batchd.config import ModelRoute
from batchd.errors import ConfigError
from batchd.providers.base import (
    DispatchLimits,
    Provider,
    ProviderOptions,
    ProviderRequest,
    ProviderResult,
    ProviderStream,
    ProviderStreamError,
)
from batchd.providers.http_errors import describe
from batchd.providers.packing import EMBEDDINGS, send_packed
from batchd.providers.replicas import Breaker, Replica, ReplicaSet, prefix_hash

__all__ = [
    "ClientFactory",
    "HTTPOptions",
    "HTTPProvider",
    "OpenAIOptions",
    "OpenAIProvider",
    "ReplicaOptions",
    "parse_retry_after",
]

logger = logging.getLogger(__name__)

#: Batch endpoint → path under ``base_url`` (which ends in ``/v1``).
_PATHS: dict[str, str] = {
    "/v1/chat/completions": "/chat/completions",
    "/v1/completions": "/completions",
    "/v1/embeddings": "/embeddings",
    "/v1/responses": "/responses",
    "/v1/moderations": "/moderations",
}
_RETRYABLE_STATUSES = frozenset({408, 409, 429})
_MAX_ERROR_TEXT = 1000

#: Builds the client from a builder that carries the provider's settings (see OpenAIProvider).
ClientFactory = Callable[[ClientBuilder], Client]


def _check_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise ValueError("must start with http:// or https://")
    value = value.rstrip("/")
    # Parsed here so that a URL no request could use (no host, a bad port) is a config error at
    # start-up, not a connection error on every line of every batch.
    Url(value)
    return value


class ReplicaOptions(ProviderOptions):
    """One server of ``base_urls`` given as a table: ``{url, api_key_env, max_concurrency,
    weight}``."""

    url: str = Field(min_length=1)
    api_key_env: str | None = Field(default=None, min_length=1)
    """Its own API key's variable (default: the route's ``api_key_env``)."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Its own limit of requests in flight (default: the route's, else 64)."""
    weight: float = Field(default=1.0, gt=0)
    """Relative capacity: a replica of weight 2 gets twice the load for the same in-flight count."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        return _check_url(value)


class HTTPOptions(ProviderOptions):
    """Settings of a route to an HTTP upstream (the extra keys of its ``[[models]]`` entry)."""

    base_url: str | None = Field(default=None, min_length=1)
    """The upstream's API root, e.g. ``http://127.0.0.1:8000/v1``."""
    base_urls: tuple[str | ReplicaOptions, ...] | None = Field(default=None, min_length=1)
    """Several servers of the same model (replicas): URLs, or tables with their own
    ``api_key_env``, ``max_concurrency`` and ``weight``; see :mod:`batchd.providers.replicas`."""
    api_key_env: str | None = Field(default=None, min_length=1)
    """The name of the environment variable holding the API key."""
    upstream_model: str | None = Field(default=None, min_length=1)
    """Sent as ``body.model`` instead of the model name the client used."""
    max_concurrency: int | None = Field(default=None, ge=1)
    """Requests in flight over the route (default 64; with ``base_urls``: the sum of the
    replicas' limits, each 64 by default)."""
    failure_threshold: int = Field(default=5, ge=1)
    """Failures in a row (no answer, a timeout, a 5xx) that eject a replica."""
    eject_seconds: float = Field(default=5.0, gt=0)
    """How long a replica stays ejected at first (doubled at each ejection, up to 60 s)."""
    prefix_affinity: bool = False
    """Requests whose prompts share their first ``affinity_prefix_chars`` characters prefer the
    same replica (its prefix cache stays warm)."""
    affinity_prefix_chars: int = Field(default=1000, ge=32)
    upstream_max_concurrency: int | None = Field(default=None, ge=1)
    """Requests in flight to this ``base_url`` over every model routed to it (the smallest
    value set on those models applies)."""
    rpm: int | None = Field(default=None, ge=1)
    """Requests per minute the upstream allows this model (no budget when unset)."""
    tpm: int | None = Field(default=None, ge=1)
    """Tokens per minute the upstream allows this model (no budget when unset)."""
    adaptive: bool = False
    """Learn how many requests the upstream takes, from ``min_concurrency`` up to
    ``max_concurrency`` (:mod:`batchd.engine.adaptive`)."""
    min_concurrency: int = Field(default=1, ge=1)
    timeout: float = Field(default=600.0, gt=0)
    """Seconds for one request, connection to last byte."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers sent with every request."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        return None if value is None else _check_url(value)

    @field_validator("base_urls")
    @classmethod
    def _http_urls(
        cls, value: tuple[str | ReplicaOptions, ...] | None
    ) -> tuple[str | ReplicaOptions, ...] | None:
        if value is None:
            return None
        return tuple(_check_url(item) if isinstance(item, str) else item for item in value)

    @model_validator(mode="after")
    def _one_kind_of_url(self) -> Self:
        if self.base_url is None and self.base_urls is None:
            raise ValueError(
                "base_url is required: the upstream's API root, e.g. "
                'base_url = "http://127.0.0.1:8000/v1" (or base_urls = [...] for several '
                "servers of the model)"
            )
        if self.base_url is not None and self.base_urls is not None:
            raise ValueError("set base_url (one server) or base_urls (several), not both")
        return self

    def replicas(self) -> list[ReplicaOptions]:
        """Every server of the route, with its defaults filled in from the route's."""
        items: tuple[str | ReplicaOptions, ...] = (
            (self.base_url or "",) if self.base_urls is None else self.base_urls
        )
        default = self.max_concurrency if self.base_urls is None else None
        found: list[ReplicaOptions] = []
        for item in items:
            replica = ReplicaOptions(url=item) if isinstance(item, str) else item
            found.append(
                replica.model_copy(
                    update={
                        "api_key_env": replica.api_key_env or self.api_key_env,
                        "max_concurrency": replica.max_concurrency or default or 64,
                    }
                )
            )
        return found

    @property
    def concurrency(self) -> int:
        """The route's limit of requests in flight: set, else the sum of its replicas'."""
        if self.max_concurrency is not None:
            return self.max_concurrency
        return sum(r.max_concurrency or 64 for r in self.replicas())

    @field_validator("headers")
    @classmethod
    def _valid_headers(cls, value: dict[str, str]) -> dict[str, str]:
        HeaderMap(value)  # a name or value HTTP does not allow (a newline…) is a config error
        return value


class OpenAIOptions(HTTPOptions):
    """Settings of an ``openai`` route: :class:`HTTPOptions` and the packing of embeddings."""

    pack_inputs: int = Field(default=64, ge=1, le=2048)
    """Embeddings: the inputs of several lines sent as one upstream request, up to this many
    (1: every line alone); see :mod:`batchd.providers.packing`."""
    pack_tokens: int = Field(default=300_000, ge=1)
    """Embeddings: the most tokens (estimated) of one packed request."""


def parse_retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(eq=False, slots=True)
class _Transport:
    """How to reach one replica: its URLs, its headers (its key), its client."""

    urls: dict[str, Url]
    headers: HeaderMap
    client: Client | None = None
    owns_client: bool = True
    request_headers: HeaderMap | None = None
    """Headers sent with each request: only on a client given from outside."""


def _prompt_prefix(body: Mapping[str, Any], chars: int) -> str:
    """The first ``chars`` characters of a request's prompt: the text of its messages in order
    (chat; an Anthropic body's ``system`` first), its ``prompt`` (completions) or ``input``
    (responses, embeddings)."""
    parts: list[str] = []
    size = 0
    messages = body.get("messages")
    items: list[Any] = (
        [body.get("system"), *messages]
        if isinstance(messages, list)
        else [body.get("prompt"), body.get("input")]
    )
    for item in items:
        content = item.get("content") if isinstance(item, dict) else item
        if isinstance(content, list):
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if isinstance(content, str):
            parts.append(content)
            size += len(content)
            if size >= chars:
                break
    return "".join(parts)[:chars]


def _reach(replica: Replica) -> tuple[_Transport, Client]:
    transport = replica.transport
    if not isinstance(transport, _Transport) or transport.client is None:
        raise RuntimeError(f"replica {replica.name} is not started")
    return transport, transport.client


Outcome = Literal["ok", "failed", "rate_limited"]


def _outcome(result: ProviderResult) -> Outcome:
    """What a result says of the replica that gave it (see :meth:`ReplicaSet.release`)."""
    status = result.status_code
    if status == 429:
        return "rate_limited"
    if status is None and not result.ok and result.error_code in _REPLICA_FAULTS:
        return "failed"
    if status is not None and status >= 500:
        return "failed"
    return "ok"


_REPLICA_FAULTS = frozenset({"connection_error", "request_timeout"})


class HTTPProvider(Provider):
    """Forwards requests to an HTTP server (or to one of its replicas), one HTTP request per
    batch line: what :class:`OpenAIProvider` and the ``anthropic`` provider share. A subclass sets
    :attr:`paths`, and may change the headers (:meth:`_headers`) and the errors' shape."""

    #: Batch endpoint → path under the API root (``base_url``, which ends in ``/v1``).
    paths: ClassVar[Mapping[str, str]] = {}
    #: The headers that carry the upstream's request id, the first one sent wins.
    request_id_headers: ClassVar[tuple[str, ...]] = ("x-request-id",)
    streaming: ClassVar[bool] = True

    options: HTTPOptions

    def __init__(
        self,
        model: str,
        options: HTTPOptions,
        *,
        api_key: str | None = None,
        client: Client | None = None,
        build_client: ClientFactory | None = None,
        replica_keys: Sequence[str | None] | None = None,
    ) -> None:
        """``client`` (used as it is, never closed by the provider; the provider's headers are
        sent with each request) or ``build_client`` (given the provider's configured builder,
        returns the client the provider then owns) replace the default transport, for tests.
        ``replica_keys``: the API key of each replica (default: ``api_key`` for every one)."""
        super().__init__(model, options)
        if client is not None and build_client is not None:
            raise ValueError("pass a client or build_client, not both")
        specs = options.replicas()
        keys = list(replica_keys) if replica_keys is not None else [api_key] * len(specs)
        self._keys = sorted({key for key in keys if key}, key=len, reverse=True)
        self._key_bytes = [key.encode() for key in self._keys]
        self._build_client = build_client
        self._timeout = timedelta(seconds=options.timeout)
        replicas: list[Replica] = []
        for spec, key in zip(specs, keys, strict=True):
            headers = self._headers(key)
            # Parsed once: pyreqwest would parse a string URL on every request.
            urls = {endpoint: Url(spec.url + path) for endpoint, path in self.paths.items()}
            transport = _Transport(urls, headers)
            if client is not None:
                transport.client, transport.owns_client = client, False
                transport.request_headers = headers
            base = Url(spec.url)
            #: host:port, for the log (the whole URL could carry a password).
            name = f"{base.host_str}:{base.port_or_known_default}"
            limit = spec.max_concurrency or 64
            replicas.append(Replica(name, limit, spec.weight, transport=transport))
        breaker = Breaker(options.failure_threshold, options.eject_seconds)
        self._replicas = ReplicaSet(model, replicas, breaker)
        self._upstream = replicas[0].name if len(replicas) == 1 else f"{len(replicas)} replicas"
        self._started_flag = False

    @classmethod
    def from_route(cls, route: ModelRoute, env: Mapping[str, str]) -> Self:
        options = cls.parse_options(route)
        assert isinstance(options, HTTPOptions)
        keys: list[str | None] = []
        for spec in options.replicas():
            api_key = None
            if spec.api_key_env is not None:
                api_key = env.get(spec.api_key_env)
                if not api_key:
                    raise ConfigError(
                        f"model {route.name!r}: the environment variable {spec.api_key_env!r} "
                        "(api_key_env) is not set; set it to the upstream's API key, or remove "
                        "api_key_env for an upstream that needs none"
                    )
            keys.append(api_key)
        return cls(route.name, options, replica_keys=keys)

    def limits(self) -> DispatchLimits:
        options = self.options
        upstream = options.base_url or "replicas:" + ",".join(
            spec.url for spec in options.replicas()
        )
        return DispatchLimits(
            max_concurrency=options.concurrency,
            upstream_max_concurrency=options.upstream_max_concurrency,
            rpm=options.rpm,
            tpm=options.tpm,
            upstream=upstream,
            adaptive=options.adaptive,
            min_concurrency=options.min_concurrency,
        )

    def _headers(self, key: str | None) -> HeaderMap:
        """The headers of every request to a replica whose API key is ``key``."""
        headers = HeaderMap(self.options.headers)
        headers.insert("Content-Type", "application/json")
        if key:
            # Sensitive: pyreqwest masks it in the repr of the headers and of the requests.
            headers.insert("Authorization", f"Bearer {key}", is_sensitive=True)
        return headers

    @property
    def replica_set(self) -> ReplicaSet:
        """The route's servers and their health."""
        return self._replicas

    def replica_states(self) -> list[dict[str, object]]:
        """Each replica's health and load (``/health``)."""
        return self._replicas.describe()

    async def start(self) -> None:
        if self._started_flag:
            return
        for replica in self._replicas.replicas:
            transport = replica.transport
            assert isinstance(transport, _Transport)
            if transport.client is not None:
                continue
            builder = (
                ClientBuilder()
                # Requests in flight (a stream until read to its end or closed): the bound that
                # max_concurrency sets on the replica.
                .max_connections(replica.limit)
                .default_headers(transport.headers)
                # A stream may rightly last longer than ``timeout`` in all; what must not exceed
                # it is the wait for the connection, for the status line, and between two
                # chunks. The total applies per batch request (see _send).
                .connect_timeout(self._timeout)
                .read_timeout(self._timeout)
                # As aiohttp did (trust_env off): no HTTP(S)_PROXY from the environment; an API
                # client keeps no cookies, which is pyreqwest's default.
                .no_proxy()
            )
            factory = self._build_client
            transport.client = builder.build() if factory is None else factory(builder)
        self._started_flag = True

    async def close(self) -> None:
        self._started_flag = False
        for replica in self._replicas.replicas:
            transport = replica.transport
            assert isinstance(transport, _Transport)
            client, owned = transport.client, transport.owns_client
            if owned:
                transport.client = None
            if client is not None and owned:
                await client.close()

    def _check_started(self) -> None:
        if not self._started_flag:
            raise RuntimeError(f"{self!r} is not started")

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        self._check_started()
        if len(group) == 1:
            return [await self._one(group[0])]
        return list(await asyncio.gather(*(self._one(r) for r in group)))

    # -- one request ---------------------------------------------------------------------------

    @classmethod
    def _path(cls, endpoint: str) -> str | None:
        if endpoint in cls.paths:
            return endpoint
        return "/v1" + endpoint if "/v1" + endpoint in cls.paths else None

    def _payload(self, body: Mapping[str, Any]) -> bytes:
        if self.options.upstream_model is not None:
            body = {**body, "model": self.options.upstream_model}
        elif self.aliases and body.get("model") in self.aliases:
            body = {**body, "model": self.model}  # the upstream knows the route's name
        return orjson.dumps(body)

    def _redact(self, text: str) -> str:
        for key in self._keys:
            text = text.replace(key, "***")
        return text

    def _describe_error(self, exc: PyreqwestError) -> str:
        """What went wrong, for a message: no URL and no API key in it."""
        return self._redact(describe(exc, f"the upstream of model '{self.model}'"))

    def _prepare(self, request: ProviderRequest) -> tuple[str, bytes] | ProviderResult:
        """The endpoint key and payload of ``request``, or the failure that stops it before
        sending."""
        path = self._path(request.endpoint)
        if path is None:
            return ProviderResult.failure(
                request.index,
                "unsupported_endpoint",
                f"model {self.model!r} does not serve {request.endpoint}",
                retryable=False,
            )
        try:
            return path, self._payload(request.body)
        except TypeError as exc:
            return ProviderResult.failure(
                request.index, "invalid_request", f"body is not JSON: {exc}", retryable=False
            )

    def _unanswered(self, index: int, exc: PyreqwestError, replica: Replica) -> ProviderResult:
        """The result of a request that got no complete answer (a timeout, a reset)."""
        if isinstance(exc, TimeoutError):
            return ProviderResult.failure(
                index,
                "request_timeout",
                f"the upstream did not answer within {self.options.timeout:g}s",
                retryable=True,
            )
        message = self._describe_error(exc)
        logger.debug("model %s (%s): request %d: %s", self.model, replica.name, index, message)
        return ProviderResult.failure(index, "connection_error", message, retryable=True)

    async def _one(self, request: ProviderRequest) -> ProviderResult:
        """Send ``request`` to the least loaded replica; on a failure that is the replica's (no
        answer, a 5xx, a 429), to another, without it counting as one of the request's
        attempts, until each was tried once."""
        prepared = self._prepare(request)
        if isinstance(prepared, ProviderResult):
            return prepared
        path, payload = prepared

        async def send(replica: Replica) -> ProviderResult:
            return await self._send(replica, request.index, path, payload)

        answer = await self._failover(send, self._affinity(request.body))
        assert isinstance(answer, ProviderResult)
        return answer

    def _affinity(self, body: Mapping[str, Any]) -> int | None:
        """The hash of the prompt's first ``affinity_prefix_chars`` characters, when prefix
        affinity is on and the prompt is at least that long."""
        options = self.options
        if not options.prefix_affinity or len(self._replicas) < 2:
            return None
        text = _prompt_prefix(body, options.affinity_prefix_chars)
        return prefix_hash(text) if len(text) >= options.affinity_prefix_chars else None

    async def _failover(
        self,
        attempt: Callable[[Replica], Awaitable[ProviderResult | ProviderStream]],
        affinity: int | None = None,
    ) -> ProviderResult | ProviderStream:
        """``attempt`` on the least loaded replica, then on another while the failure is the
        replica's (no answer, a 5xx, a 429), each replica once; the last answer. A stream keeps
        its replica's slot until it is closed."""
        replicas = self._replicas
        tried: list[Replica] = []
        result: ProviderResult | None = None
        while (replica := await replicas.acquire(tried, affinity)) is not None:
            started = time.perf_counter()
            try:
                answer = await attempt(replica)
            except BaseException:
                replicas.release(replica, "ok")  # cancelled: says nothing of the replica
                raise
            if isinstance(answer, ProviderStream):
                return answer
            result = answer
            outcome = _outcome(result)
            replicas.release(replica, outcome, result.retry_after, started, result.status_code)
            if outcome == "ok" or len(replicas) == 1:
                return result
            tried.append(replica)
        assert result is not None
        return result

    async def _send(
        self, replica: Replica, index: int, path: str, payload: bytes
    ) -> ProviderResult:
        transport, client = _reach(replica)
        # No semaphore here: the client's max_connections bounds the requests in flight, and
        # the engine bounds them too; the client carries the headers.
        builder = client.post(transport.urls[path])
        builder = builder.body_bytes(payload).timeout(self._timeout)
        if transport.request_headers is not None:
            builder = builder.headers(transport.request_headers)
        try:
            response = await builder.build().send()  # the whole body is read by then
            raw = await response.bytes()
        except PyreqwestError as exc:
            return self._unanswered(index, exc, replica)
        return self._classify(index, response, memoryview(raw))

    # -- one streamed request (the synchronous routes) ---------------------------------------

    async def stream(
        self, endpoint: str, body: Mapping[str, Any]
    ) -> ProviderStream | ProviderResult:
        """POST ``body`` (renamed model and all) and hand back the answer as it arrives.

        The stream keeps one of the ``max_concurrency`` slots until it is closed, as a
        request of a batch would (pyreqwest holds the slot until the body is read or closed).
        An error status is read whole and classified like :meth:`execute` does, so the caller
        can relay it as an ordinary HTTP error. A replica that fails before the first byte (no
        answer, a 5xx, a 429) hands the request to another.
        """
        self._check_started()
        prepared = self._prepare(ProviderRequest(0, "", endpoint, body))
        if isinstance(prepared, ProviderResult):
            return prepared
        path, payload = prepared
        return await self._failover(
            lambda replica: self._open_stream(replica, path, payload), self._affinity(body)
        )

    async def _open_stream(
        self, replica: Replica, path: str, payload: bytes
    ) -> ProviderStream | ProviderResult:
        transport, client = _reach(replica)
        # A buffer limit of 0: hand each chunk on as it arrives, and return as soon as the
        # status line is in (pyreqwest would otherwise gather up to 64 KiB first).
        builder = client.post(transport.urls[path])
        builder = builder.body_bytes(payload).streamed_read_buffer_limit(0)
        if transport.request_headers is not None:
            builder = builder.headers(transport.request_headers)
        request = builder.build_streamed()
        # The response outlives this call, so the request's context is entered here and left
        # by the stream's aclose (or below, for an error status).
        try:
            response = await request.__aenter__()
        except PyreqwestError as exc:
            return self._unanswered(0, exc, replica)
        if 200 <= response.status < 300:

            def done() -> None:
                self._replicas.release(replica, "ok")

            request_id = self._request_id(response)
            return _HTTPStream(
                request, response, request_id, self._describe_error, self.options.timeout, done
            )
        try:
            raw = await response.bytes()
        except PyreqwestError as exc:
            return self._unanswered(0, exc, replica)
        finally:
            await request.__aexit__(None, None, None)
        return self._classify(0, response, memoryview(raw))

    def _classify(self, index: int, response: Response, raw: memoryview) -> ProviderResult:
        if self._key_bytes:
            data = bytes(raw)  # one copy, only for a route with a key
            for key in self._key_bytes:
                if key in data:  # an upstream echoed it
                    data = data.replace(key, b"***")
            raw = memoryview(data)
        status = response.status
        request_id = self._request_id(response)
        try:
            body: Any = orjson.loads(raw)
            parsed = True
        except orjson.JSONDecodeError:
            body, parsed = None, False
        if 200 <= status < 300:
            if parsed:
                return ProviderResult.success(index, status, body, request_id)
            return ProviderResult.failure(
                index,
                "invalid_upstream_response",
                f"the upstream answered HTTP {status} with a body that is not JSON",
                retryable=True,
                status_code=status,
                request_id=request_id,
            )
        error = body.get("error") if isinstance(body, dict) else None
        error = error if isinstance(error, dict) else {}
        code = self._error_code(error)
        message = error.get("message") if isinstance(error.get("message"), str) else None
        if message is None:
            text = bytes(raw[:_MAX_ERROR_TEXT]).decode("utf-8", "replace").strip()
            message = f"the upstream answered HTTP {status}" + (f": {text}" if text else "")
        retryable = status in _RETRYABLE_STATUSES or status >= 500
        if not parsed or not isinstance(body, dict) or "error" not in body:
            body = self._error_body(status, message, code)
        return ProviderResult.failure(
            index,
            code or f"upstream_http_{status}",
            self._redact(message),
            retryable=retryable,
            status_code=status,
            body=body,
            request_id=request_id,
            retry_after=parse_retry_after(response.headers) if retryable else None,
        )

    def _request_id(self, response: Response) -> str | None:
        """The upstream's request id: the first of :attr:`request_id_headers` it sent."""
        for name in self.request_id_headers:
            if value := response.get_header(name):
                return value
        return None

    @staticmethod
    def _error_code(error: Mapping[str, Any]) -> str | None:
        """The code an upstream's error object (``body.error``) names, if any."""
        code = error.get("code")
        return code if isinstance(code, str) else None

    @staticmethod
    def _error_body(status: int, message: str, code: str | None) -> dict[str, Any]:
        """The error body of a failure whose upstream sent none that says what went wrong."""
        error = {"message": message, "type": "upstream_error", "param": None, "code": code}
        return {"error": error}


class OpenAIProvider(HTTPProvider):
    """Forwards requests to an OpenAI-compatible server (or to one of its replicas), one HTTP
    request per batch line; embeddings lines packed (``pack_inputs``)."""

    name: ClassVar[str] = "openai"
    endpoints: ClassVar[frozenset[str]] = frozenset(_PATHS)
    Options: ClassVar[type[ProviderOptions]] = OpenAIOptions
    paths: ClassVar[Mapping[str, str]] = _PATHS

    options: OpenAIOptions

    def limits(self) -> DispatchLimits:
        packed = self.options.pack_inputs
        sizes = ((EMBEDDINGS, packed),) if packed > 1 else ()
        return dataclasses.replace(super().limits(), group_sizes=sizes)

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        options = self.options
        packs = options.pack_inputs > 1 and len(group) > 1
        if packs and self._path(group[0].endpoint) == EMBEDDINGS:
            self._check_started()
            return await send_packed(group, self._one, options.pack_inputs, options.pack_tokens)
        return await super().execute(group)


class _HTTPStream(ProviderStream):
    """A 2xx pyreqwest response relayed as it arrives; holds a concurrency slot until closed."""

    def __init__(
        self,
        request: StreamRequest,
        response: Response,
        request_id: str | None,
        describe: Callable[[PyreqwestError], str],
        timeout: float,
        done: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(
            response.status,
            response.get_header("Content-Type") or "application/octet-stream",
            request_id,
        )
        self._request: StreamRequest | None = request
        self._response = response
        self._describe = describe
        self._timeout = timeout
        self._done = done

    async def chunks(self) -> AsyncIterator[bytes]:
        reader = self._response.body_reader
        try:
            while (chunk := await reader.read_chunk()) is not None:
                yield bytes(chunk)  # Starlette sends bytes (or memoryviews), not pyreqwest's Bytes
        except TimeoutError:  # pyreqwest's ReadTimeoutError: nothing within the read timeout
            raise ProviderStreamError(f"the upstream sent nothing for {self._timeout:g}s") from None
        except PyreqwestError as exc:
            message = self._describe(exc)
            raise ProviderStreamError(f"the upstream connection broke: {message}") from None

    async def aclose(self) -> None:
        request, self._request = self._request, None
        if request is None:
            return
        done, self._done = self._done, None
        if done is not None:
            done()  # the replica's slot is free again
        # An unfinished body cannot go back to the pool: pyreqwest drops the connection, and
        # the upstream sees its client leave (it may stop generating); a finished one already
        # went back. Either way the concurrency slot is free again.
        await request.__aexit__(None, None, None)
