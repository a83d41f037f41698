"""The provider interface: what the engine hands a provider and what it gets back.

A provider serves one ``[[models]]`` route. The engine gives it a *group* of requests (at most
:attr:`Provider.max_group_size`) and gets back one :class:`ProviderResult` per request, in the
same order. A request that fails (an upstream 400, a timeout, a reset connection) is a result
with an ``error_code``, never an exception: per-line failures are data. Exceptions from
:meth:`Provider.execute` mean a bug or a provider that cannot work at all.

Each provider class declares its capabilities as class attributes (``endpoints``,
``max_group_size``) and its settings as a pydantic :attr:`Provider.Options` model with
``extra="forbid"``, validated from ``route.options`` when the routing table is built.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import ErrorDetails

from batchd.config import ModelRoute
from batchd.errors import ConfigError

__all__ = ["Provider", "ProviderOptions", "ProviderRequest", "ProviderResult"]


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """One request of a batch, as the provider sees it."""

    index: int
    """The 0-based line number in the input file."""
    custom_id: str
    endpoint: str
    """The endpoint the batch names, e.g. ``/v1/chat/completions``."""
    body: Mapping[str, Any]
    """The request body exactly as the input line gave it."""


@dataclass(frozen=True, slots=True)
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
        return cls(
            index=index,
            status_code=status_code,
            body=body,
            request_id=request_id,
            error_code=None,
            error_message=None,
            retryable=False,
            retry_after=None,
        )

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
    #: The most requests :meth:`execute` takes at once.
    max_group_size: ClassVar[int] = 1
    #: The settings model, validated from ``route.options``.
    Options: ClassVar[type[ProviderOptions]] = ProviderOptions

    def __init__(self, model: str, options: ProviderOptions) -> None:
        self.model = model
        self.options = options

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

    @abc.abstractmethod
    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        """Run a group of requests; one result per request, in the same order."""

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
