"""The ``openai`` provider: any OpenAI-compatible HTTP upstream (vLLM, SGLang, llama.cpp server,
Ollama, OpenAI, Azure…), over aiohttp.

Request bodies are forwarded untouched except for an optional model rename
(``upstream_model``). Outcomes are classified into :class:`~batchd.providers.base.ProviderResult`:

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

The API key is read from ``env[api_key_env]`` once, when the provider is built, and only ever
sent as ``Authorization: Bearer …``; it is redacted from every message this module produces.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self

import aiohttp
import orjson
from pydantic import Field, field_validator

from batchd.config import ModelRoute
from batchd.errors import ConfigError
from batchd.providers.base import Provider, ProviderOptions, ProviderRequest, ProviderResult

__all__ = ["OpenAIOptions", "OpenAIProvider", "parse_retry_after"]

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


class OpenAIOptions(ProviderOptions):
    """Settings of an ``openai`` route (the extra keys of its ``[[models]]`` entry)."""

    base_url: str = Field(min_length=1)
    """The upstream's API root, e.g. ``http://127.0.0.1:8000/v1``."""
    api_key_env: str | None = Field(default=None, min_length=1)
    """The name of the environment variable holding the API key."""
    upstream_model: str | None = Field(default=None, min_length=1)
    """Sent as ``body.model`` instead of the model name the client used."""
    max_concurrency: int = Field(default=64, ge=1)
    timeout: float = Field(default=600.0, gt=0)
    """Seconds for one request, connection to last byte."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra headers sent with every request."""

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")


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


class OpenAIProvider(Provider):
    """Forwards requests to an OpenAI-compatible server, one HTTP request per batch line."""

    name: ClassVar[str] = "openai"
    endpoints: ClassVar[frozenset[str]] = frozenset(_PATHS)
    max_group_size: ClassVar[int] = 1
    Options: ClassVar[type[ProviderOptions]] = OpenAIOptions

    options: OpenAIOptions

    def __init__(
        self,
        model: str,
        options: OpenAIOptions,
        *,
        api_key: str | None = None,
        session: aiohttp.ClientSession | None = None,
        connector: aiohttp.BaseConnector | None = None,
    ) -> None:
        """``session`` (not closed by the provider) or ``connector`` (owned by the session the
        provider makes) replace the default transport, for tests."""
        super().__init__(model, options)
        if session is not None and connector is not None:
            raise ValueError("pass a session or a connector, not both")
        self._api_key = api_key
        self._session = session
        self._owns_session = session is None
        self._connector = connector
        self._semaphore = asyncio.Semaphore(options.max_concurrency)
        self._timeout = aiohttp.ClientTimeout(total=options.timeout)
        headers = {**options.headers, "Content-Type": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = headers

    @classmethod
    def from_route(cls, route: ModelRoute, env: Mapping[str, str]) -> Self:
        options = cls.parse_options(route)
        assert isinstance(options, OpenAIOptions)
        api_key = None
        if options.api_key_env is not None:
            api_key = env.get(options.api_key_env)
            if not api_key:
                raise ConfigError(
                    f"model {route.name!r}: the environment variable {options.api_key_env!r} "
                    "(api_key_env) is not set; set it to the upstream's API key, or remove "
                    "api_key_env for an upstream that needs none"
                )
        return cls(route.name, options, api_key=api_key)

    async def start(self) -> None:
        if self._session is not None:
            return
        connector = self._connector or aiohttp.TCPConnector(limit=self.options.max_concurrency)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._owns_session:
            await session.close()

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        session = self._session
        if session is None:
            raise RuntimeError(f"{self!r} is not started")
        if len(group) == 1:
            return [await self._one(session, group[0])]
        return list(await asyncio.gather(*(self._one(session, r) for r in group)))

    # -- one request ---------------------------------------------------------------------------

    def _url(self, endpoint: str) -> str | None:
        path = _PATHS.get(endpoint) or _PATHS.get("/v1" + endpoint)
        return None if path is None else self.options.base_url + path

    def _payload(self, body: Mapping[str, Any]) -> bytes:
        if self.options.upstream_model is not None:
            body = {**body, "model": self.options.upstream_model}
        return orjson.dumps(body)

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    async def _one(
        self, session: aiohttp.ClientSession, request: ProviderRequest
    ) -> ProviderResult:
        url = self._url(request.endpoint)
        if url is None:
            return ProviderResult.failure(
                request.index,
                "unsupported_endpoint",
                f"model {self.model!r} does not serve {request.endpoint}",
                retryable=False,
            )
        try:
            payload = self._payload(request.body)
        except TypeError as exc:
            return ProviderResult.failure(
                request.index, "invalid_request", f"body is not JSON: {exc}", retryable=False
            )
        async with self._semaphore:
            try:
                async with session.post(
                    url, data=payload, headers=self._headers, timeout=self._timeout
                ) as response:
                    raw = await response.read()
                    return self._classify(request.index, response, raw)
            except TimeoutError:
                return ProviderResult.failure(
                    request.index,
                    "request_timeout",
                    f"the upstream did not answer within {self.options.timeout:g}s",
                    retryable=True,
                )
            except aiohttp.ClientError as exc:
                message = self._redact(f"{type(exc).__name__}: {exc}")
                logger.debug("model %s: request %d: %s", self.model, request.index, message)
                return ProviderResult.failure(
                    request.index, "connection_error", message, retryable=True
                )

    def _classify(self, index: int, response: aiohttp.ClientResponse, raw: bytes) -> ProviderResult:
        status = response.status
        request_id = response.headers.get("x-request-id")
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
        code = error.get("code") if isinstance(error.get("code"), str) else None
        message = error.get("message") if isinstance(error.get("message"), str) else None
        if message is None:
            text = raw[:_MAX_ERROR_TEXT].decode("utf-8", "replace").strip()
            message = f"the upstream answered HTTP {status}" + (f": {text}" if text else "")
        retryable = status in _RETRYABLE_STATUSES or status >= 500
        if not parsed or not isinstance(body, dict) or "error" not in body:
            body = {
                "error": {
                    "message": message,
                    "type": "upstream_error",
                    "param": None,
                    "code": code,
                }
            }
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
