"""The ``anthropic`` provider: an Anthropic-compatible HTTP upstream (Anthropic's API, or a server
that speaks its Messages API), relaying ``POST /v1/messages`` without translation.

It is the ``openai`` provider's machinery (:class:`~batchd.providers.openai_http.HTTPProvider`)
with Anthropic's conventions:

- the API key goes in ``x-api-key`` (redacted from every message, as the ``openai`` provider's
  bearer token is), next to ``anthropic-version`` (the ``anthropic_version`` option);
- ``base_url`` is the server's root or its ``/v1``: ``http://host:port`` and
  ``http://host:port/v1`` both reach ``http://host:port/v1/messages``;
- the request id comes from ``request-id`` (else ``x-request-id``);
- a failure's ``error_code`` is the Anthropic error ``type`` of its body (``invalid_request_error``,
  ``rate_limit_error``, ``overloaded_error``…); an error answer without such a body gets one,
  ``{"type": "error", "error": {"type": …, "message": …}}`` typed after its status
  (:func:`error_type`), its ``error_code`` then ``upstream_http_<status>``.

The rest is the ``openai`` provider's: the body is sent as it is but for ``model`` (the route's
name when the client used an alias, ``upstream_model`` when set); several servers in
``base_urls`` with their circuit breakers; 429 and 5xx (529 ``overloaded_error`` among them)
retryable with ``retry_after`` from ``retry-after``, 408 and 409 too (as Anthropic's own SDK
retries them), other 4xx final with the upstream's error body and status; no answer is a
retryable ``connection_error`` or ``request_timeout``; ``"stream": true`` relays the server-sent
events byte for byte (``text/event-stream``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import Field, field_validator
from pyreqwest.http import HeaderMap

from batchd.protocol import MESSAGES_ENDPOINT
from batchd.providers.base import ProviderOptions
from batchd.providers.messages_stream import error_type
from batchd.providers.openai_http import HTTPOptions, HTTPProvider, ReplicaOptions

__all__ = ["MESSAGES", "AnthropicOptions", "AnthropicProvider", "error_type"]

#: The endpoint this provider serves.
MESSAGES = MESSAGES_ENDPOINT


def _api_root(url: str) -> str:
    """``url`` (a server's root or its ``/v1``, already checked) as the API root, ``…/v1``."""
    return url if url.endswith("/v1") else url + "/v1"


class AnthropicOptions(HTTPOptions):
    """Settings of an ``anthropic`` route: those of an ``openai`` route but the packing of
    embeddings, and ``anthropic_version``."""

    anthropic_version: str = Field(default="2023-06-01", min_length=1)
    """Sent as the ``anthropic-version`` header of every request."""

    # These run after HTTPOptions' checks of the same fields (pydantic runs a base class's
    # validators first): the URLs are already well-formed, with no trailing slash.
    @field_validator("base_url")
    @classmethod
    def _api_root_url(cls, value: str | None) -> str | None:
        return None if value is None else _api_root(value)

    @field_validator("base_urls")
    @classmethod
    def _api_root_urls(
        cls, value: tuple[str | ReplicaOptions, ...] | None
    ) -> tuple[str | ReplicaOptions, ...] | None:
        if value is None:
            return None
        return tuple(
            _api_root(item)
            if isinstance(item, str)
            else item.model_copy(update={"url": _api_root(item.url)})
            for item in value
        )

    @field_validator("anthropic_version")
    @classmethod
    def _header_value(cls, value: str) -> str:
        HeaderMap({"anthropic-version": value})  # no newline or other byte a header refuses
        return value


class AnthropicProvider(HTTPProvider):
    """Relays Messages requests to an Anthropic-compatible server (or to one of its replicas),
    one HTTP request per batch line."""

    name: ClassVar[str] = "anthropic"
    endpoints: ClassVar[frozenset[str]] = frozenset({MESSAGES})
    Options: ClassVar[type[ProviderOptions]] = AnthropicOptions
    paths: ClassVar[Mapping[str, str]] = {MESSAGES: "/messages"}
    request_id_headers: ClassVar[tuple[str, ...]] = ("request-id", "x-request-id")

    options: AnthropicOptions

    def _headers(self, key: str | None) -> HeaderMap:
        """The ``openai`` provider's headers, with the key in ``x-api-key`` instead of
        ``Authorization``, and ``anthropic-version``."""
        headers = super()._headers(None)
        headers.insert("anthropic-version", self.options.anthropic_version)
        if key:
            # Sensitive: pyreqwest masks it in the repr of the headers and of the requests.
            headers.insert("x-api-key", key, is_sensitive=True)
        return headers

    @staticmethod
    def _error_code(error: Mapping[str, Any]) -> str | None:
        """The ``type`` of an Anthropic error object (``body.error``), if it has one."""
        kind = error.get("type")
        return kind if isinstance(kind, str) and kind else None

    @staticmethod
    def _error_body(status: int, message: str, code: str | None) -> dict[str, Any]:
        """Anthropic's error envelope, for an error answer whose body is not one."""
        kind = code or error_type(status)
        return {"type": "error", "error": {"type": kind, "message": message}}
