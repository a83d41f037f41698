"""The provider interface: what the engine hands a provider and what it gets back.

A provider serves one ``[[models]]`` route. The engine gives it a *group* of requests (at most
:attr:`DispatchLimits.group_size`) and gets back one :class:`ProviderResult` per request, in the
same order. A request that fails (an upstream 400, a timeout, a reset connection) is a result
with an ``error_code``, never an exception: per-line failures are data. Exceptions from
:meth:`Provider.execute` mean a bug or a provider that cannot work at all.

Each provider class declares its capabilities as class attributes (``endpoints``,
``streaming``) and its settings as a pydantic :attr:`Provider.Options` model with
``extra="forbid"``, validated from ``route.options`` when the routing table is built.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from batchd.config import ModelRoute
from batchd.errors import ConfigError, ProviderError

__all__ = [
    "DispatchLimits",
    "Provider",
    "ProviderOptions",
    "ProviderRequest",
    "ProviderResult",
    "ProviderStream",
    "ProviderStreamError",
]


# The two per-request types are plain (not frozen) dataclasses: a frozen one costs ~2 µs more to
# build, and the engine builds one of each per request. Neither is changed after it is built.
@dataclass(slots=True)
class ProviderRequest:
    """One request of a batch, as the provider sees it."""

    index: int
    """The 0-based line number in the input file."""
    custom_id: str
    endpoint: str
    """The endpoint the batch names, e.g. ``/v1/chat/completions``."""
    body: Mapping[str, Any]
    """The request body exactly as the input line gave it."""


@dataclass(slots=True)
class ProviderResult:
    """What came of one request: a response body, or an error (retryable or not)."""

    index: int
    status_code: int | None
    """The upstream's HTTP status; ``None`` when no response arrived (timeout, reset)."""
    body: Any | None
    """The parsed response body (on success, or the upstream's JSON error body)."""
    request_id: str | None
    """The upstream's request id (``x-request-id``), when it sent one."""
    error_code: str | None
    """``None`` on success; otherwise the upstream's error code or one of batchd's own
    (``request_timeout``, ``connection_error``, ``invalid_upstream_response``…)."""
    error_message: str | None
    retryable: bool
    retry_after: float | None
    """Seconds the upstream asked to wait before retrying (``Retry-After``), if any."""

    @property
    def ok(self) -> bool:
        """A successful response: a 2xx status with no error."""
        return (
            self.error_code is None
            and self.status_code is not None
            and 200 <= self.status_code < 300
        )

    @classmethod
    def success(
        cls, index: int, status_code: int, body: Any, request_id: str | None = None
    ) -> ProviderResult:
        """A successful response."""
        return cls(index, status_code, body, request_id, None, None, False, None)

    @classmethod
    def failure(
        cls,
        index: int,
        code: str,
        message: str,
        *,
        retryable: bool,
        status_code: int | None = None,
        body: Any | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> ProviderResult:
        """A failed request; ``code`` must not be empty."""
        if not code:
            raise ValueError("a failed ProviderResult needs an error code")
        return cls(
            index=index,
            status_code=status_code,
            body=body,
            request_id=request_id,
            error_code=code,
            error_message=message,
            retryable=retryable,
            retry_after=retry_after,
        )


@dataclass(frozen=True, slots=True)
class DispatchLimits:
    """How hard the engine may drive a provider (see :meth:`Provider.limits`)."""

    max_concurrency: int = 1
    """Request groups of this model in flight at once, over all batches (for an in-process
    engine: its number of instances)."""
    group_size: int = 1
    """The most requests :meth:`Provider.execute` takes at once (an in-process engine batches
    them; an HTTP provider sends one request a call)."""
    rpm: int | None = None
    """Requests per minute, or ``None`` for no budget."""
    tpm: int | None = None
    """Tokens per minute (estimated before sending, corrected by the response's usage)."""
    upstream: str | None = None
    """Models with the same ``upstream`` share one backoff: a 429 pauses them all."""
    upstream_max_concurrency: int | None = None
    """Requests in flight to ``upstream`` over all its models (the smallest value set on any of
    them applies), or ``None`` for no bound beyond each model's own."""
    adaptive: bool = False
    """Learn the concurrency the upstream takes, between ``min_concurrency`` and
    ``max_concurrency`` (:mod:`batchd.engine.adaptive`)."""
    min_concurrency: int = 1
    group_sizes: tuple[tuple[str, int], ...] = ()
    """``group_size`` for some endpoints (``/v1/embeddings`` of a route that packs them)."""

    def group_size_for(self, endpoint: str) -> int:
        """The most requests of a batch on ``endpoint`` that :meth:`Provider.execute` takes."""
        path = endpoint if endpoint.startswith("/v1/") else "/v1" + endpoint
        return dict(self.group_sizes).get(path, self.group_size)


class ProviderStreamError(ProviderError):
    """A stream broke after it started (reset, timeout): the client already has the status line,
    so this can only end the stream, not become an HTTP error."""


class ProviderStream(abc.ABC):
    """A streamed upstream answer with a 2xx status: the status and content type are known, the
    body arrives chunk by chunk (for ``"stream": true`` requests of the synchronous routes).

    It holds an upstream connection: whoever gets one must :meth:`aclose` it, also when the
    client goes away half-way (that abandons the upstream request, which is the point).
    """

    def __init__(self, status_code: int, content_type: str, request_id: str | None = None) -> None:
        self.status_code = status_code
        self.content_type = content_type
        self.request_id = request_id
        """The upstream's ``x-request-id``, when it sent one."""

    @abc.abstractmethod
    def chunks(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive, untouched; :class:`ProviderStreamError` when the
        upstream fails before the end."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the connection; safe to call more than once and before the end."""


class ProviderOptions(BaseModel):
    """Base class of the per-provider settings models: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Provider(abc.ABC):
    """Serves the requests of one configured model.

    Lifecycle: build (``from_route``, no I/O) → ``await start()`` → ``execute`` any number of
    times, concurrently → ``await close()``. Also an async context manager doing start/close.
    """

    #: The name used in ``provider = "…"`` of a route.
    name: ClassVar[str]
    #: The batch endpoints this provider can serve.
    endpoints: ClassVar[frozenset[str]]
    #: The settings model, validated from ``route.options``.
    Options: ClassVar[type[ProviderOptions]] = ProviderOptions
    #: Whether :meth:`stream` is implemented (``"stream": true`` on the synchronous routes).
    streaming: ClassVar[bool] = False

    def __init__(self, model: str, options: ProviderOptions) -> None:
        self.model = model
        self.options = options
        #: The route's aliases (set by the registry): a provider that sends ``body.model`` on
        #: sends its route's name instead of one of these, so that the answer names the model.
        self.aliases: frozenset[str] = frozenset()

    @classmethod
    def parse_options(cls, route: ModelRoute) -> ProviderOptions:
        """``route.options`` validated by :attr:`Options`; :class:`ConfigError` names the key."""
        try:
            return cls.Options.model_validate(route.options)
        except ValidationError as exc:
            problems = "; ".join(_describe(err) for err in exc.errors())
            known = ", ".join(sorted(cls.Options.model_fields)) or "none"
            raise ConfigError(
                f"model {route.name!r} (provider {route.provider!r}): {problems} "
                f"(known options: {known})"
            ) from None

    @classmethod
    def from_route(cls, route: ModelRoute, env: Mapping[str, str]) -> Self:
        """Build a provider for ``route``; ``env`` is the environment to resolve secrets from.

        No I/O happens here: connections are made in :meth:`start`.
        """
        return cls(route.name, cls.parse_options(route))

    async def start(self) -> None:  # noqa: B027 (an optional hook)
        """Acquire resources (connection pools, loaded models)."""

    async def close(self) -> None:  # noqa: B027 (an optional hook)
        """Release what :meth:`start` acquired; safe to call more than once."""

    def limits(self) -> DispatchLimits:
        """The engine's concurrency and rate budgets for this model (one at a time by default)."""
        return DispatchLimits(upstream=self.model)

    @abc.abstractmethod
    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        """Run a group of requests; one result per request, in the same order."""

    async def forward(self, endpoint: str, body: Mapping[str, Any]) -> ProviderResult:
        """One request outside any batch, for the synchronous routes (``POST
        /v1/chat/completions``…): the result of one attempt, never retried, because the client
        that waits for it retries on its own terms. By default one :meth:`execute` call."""
        [result] = await self.execute([ProviderRequest(0, "", endpoint, body)])
        return result

    async def stream(
        self, endpoint: str, body: Mapping[str, Any]
    ) -> ProviderStream | ProviderResult:
        """Start one streamed request (``"stream": true``) outside any batch.

        A :class:`ProviderStream` once the upstream answered 2xx; otherwise the
        :class:`ProviderResult` that :meth:`forward` would have given (an upstream error status,
        a timeout, a refused connection), so the caller can still answer with a proper HTTP
        error. Only providers with :attr:`streaming` set implement it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not stream answers")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} model={self.model!r}>"


def _describe(err: ErrorDetails) -> str:
    where = ".".join(str(p) for p in err["loc"]) or "options"
    if err["type"] == "extra_forbidden":
        return f"unknown option {where!r}"
    return f"option {where!r}: {err['msg']}"
