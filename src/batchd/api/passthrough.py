"""Synchronous inference routes over the batch routing table: ``POST /v1/chat/completions``,
``/v1/completions``, ``/v1/embeddings``, ``/v1/responses`` and ``GET /v1/models`` (and the same
under Azure's prefixes, see :mod:`batchd.api.azure`). ``GET /v1/models`` (and ``/v1/models/{id}``)
answers in Anthropic's shapes (``ModelInfo``, its pagination, its error envelope) to a request
with an ``anthropic-version`` header, as Anthropic's SDKs send.

They exist so that a client can try a request with the ordinary OpenAI API against batchd, with
the very model names and upstreams its batches will use, before sending a batch of them. Each
request goes to the provider of its ``body.model`` route, once (the client's SDK retries), and
the answer is relayed:

======================================  ==========================================================
what happened                           answer
======================================  ==========================================================
upstream 2xx                            its status and JSON body
upstream 4xx/5xx                        its status and JSON error body (``Retry-After`` and
                                        ``retry-after-ms`` when it asked to wait)
``"stream": true``, upstream 2xx        its body relayed chunk by chunk as it arrives
upstream unreachable / reset            502 ``server_error``/``upstream_unavailable``
upstream timeout                        504 ``server_error``/``upstream_timeout``
upstream 2xx that is not JSON           502 ``server_error``/``invalid_upstream_response``
no/bad ``model``                        400 ``missing_required_parameter``/``invalid_type``
unknown ``model``                       404 ``model_not_found``
route not serving the endpoint          400 ``unsupported_endpoint``
route that cannot stream                400 ``streaming_unsupported``
======================================  ==========================================================

Bodies pass through untouched (but for the route's ``upstream_model`` rename, which the provider
does); the upstream's API key never appears in an answer (the provider redacts its messages).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel
from starlette.convertors import Convertor, register_url_convertor
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from batchd.api.deps import Dialect, DialectDep, Services, project, services
from batchd.api.errors import ANTHROPIC_VERSION, envelope
from batchd.api.openapi import answers, json_body
from batchd.api.params import anthropic_page, one_cursor, parse_limit, read_json_object
from batchd.api.responses import JSONResponse
from batchd.errors import APIError, BadGateway, GatewayTimeout, InvalidRequest, NotFound
from batchd.protocol import ErrorResponse, Model, ModelList, rfc3339
from batchd.providers import Provider, ProviderResult
from batchd.providers.base import ProviderStream, ProviderStreamError

__all__ = [
    "INFERENCE",
    "AnthropicModelInfo",
    "AnthropicModelList",
    "Inference",
    "RelayResponse",
    "relay",
    "relayed_answers",
    "result_response",
    "router",
    "unknown_model",
]

log = logging.getLogger("batchd.api.passthrough")

# A key is needed as for the Files and Batches API (its project does not matter here).
router = APIRouter(tags=["inference"], dependencies=[Depends(project)])

ServicesDep = Annotated[Services, Depends(services)]

#: Large enough for a few images inlined as base64 ``image_url`` data URLs.
#: ``created`` of the model objects: when this server process started.
_STARTED_AT = int(time.time())
_SSE_TYPES = ("text/event-stream",)


def _body(field: str, schema: dict[str, Any]) -> dict[str, Any]:
    """A request body with a ``model`` and the endpoint's ``field``; any other OpenAI parameter
    passes through."""
    properties = {"model": {"type": "string"}, field: schema, "stream": {"type": "boolean"}}
    return json_body(required=["model", field], properties=properties)


_ANY_JSON: dict[str, Any] = {"schema": {"type": "object"}}
_RELAYED_ERROR = {
    "description": "The upstream's error, relayed",
    "content": {"application/json": _ANY_JSON},
}


def relayed_answers(envelope: type[BaseModel] = ErrorResponse) -> dict[int | str, dict[str, Any]]:
    """The ``responses=`` of a relayed route: the upstream's answer (JSON, or a stream of
    server-sent events when ``stream`` is true), batchd's errors in ``envelope``, or the
    upstream's error with its status."""
    return {
        **answers(
            None,
            400,
            404,
            413,
            429,
            502,
            504,
            ok_content={
                "application/json": _ANY_JSON,
                "text/event-stream": {"schema": {"type": "string"}},
            },
            envelope=envelope,
        ),
        **dict.fromkeys(("4XX", "5XX"), _RELAYED_ERROR),
    }


_RELAYED = relayed_answers()


# -- routes -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Inference:
    """A relayed inference endpoint: its path (under ``/v1``, ``/openai/v1``…), what it does,
    the body field it requires (and that field's schema), and whether it may stream."""

    name: str
    path: str
    summary: str
    field: str
    schema: dict[str, Any]
    streamable: bool

    @property
    def endpoint(self) -> str:
        """The batch endpoint of the route's provider: ``/v1`` + path."""
        return "/v1" + self.path


_TEXT_OR_ARRAY: dict[str, Any] = {"type": ["string", "array"]}
INFERENCE = (
    Inference(
        "chat_completions",
        "/chat/completions",
        "Create a chat completion",
        "messages",
        {"type": "array", "items": {"type": "object"}},
        streamable=True,
    ),
    Inference("completions", "/completions", "Create a completion", "prompt", _TEXT_OR_ARRAY, True),
    Inference("embeddings", "/embeddings", "Create embeddings", "input", _TEXT_OR_ARRAY, False),
    Inference("responses", "/responses", "Create a model response", "input", _TEXT_OR_ARRAY, True),
)


def _relay_route(item: Inference) -> Callable[[Request, Services], Awaitable[Response]]:
    async def route(request: Request, svc: ServicesDep) -> Response:
        return await relay(request, svc, item.endpoint, streamable=item.streamable)

    return route


for _item in INFERENCE:
    router.add_api_route(
        _item.path,
        _relay_route(_item),
        methods=["POST"],
        name=_item.name,
        summary=f"{_item.summary} (relayed to the model's route)",
        openapi_extra=_body(_item.field, _item.schema),
        responses=_RELAYED,
    )


# -- models -----------------------------------------------------------------------------------


class AnthropicModelInfo(BaseModel):
    """A model of the routing table as Anthropic's Models API describes one (``ModelInfo``):
    what batchd knows, ``null`` for what it does not (``capabilities``, ``max_tokens``…)."""

    type: Literal["model"] = "model"
    id: str
    display_name: str
    #: RFC 3339: when this server process started (the ``created`` of OpenAI's list).
    created_at: str
    lifecycle: Literal["active", "deprecated", "retired"] = "active"
    deprecated_at: str | None = None
    retires_at: str | None = None
    line: str | None = None
    max_input_tokens: int | None = None
    max_tokens: int | None = None
    capabilities: dict[str, Any] | None = None


class AnthropicModelList(BaseModel):
    """A page of Anthropic's model list: ``first_id``/``last_id`` are ``null`` on an empty
    page."""

    data: list[AnthropicModelInfo]
    has_more: bool
    first_id: str | None
    last_id: str | None


_CREATED_AT = rfc3339(_STARTED_AT)
_LIFECYCLES = ("active", "deprecated", "retired")
_LIST_LIMIT, _LIST_MAX = 20, 1000

_ANTHROPIC_STYLE = (
    " With an `anthropic-version` header (Anthropic's SDKs send it: `client.models.list()`, "
    "`client.models.retrieve(id)`), on `/v1`, the answer is Anthropic's instead: "
)
_LIST_DESCRIPTION = (
    "Every name a request may use: each route's name, then each alias, as OpenAI's list."
    + _ANTHROPIC_STYLE
    + "a page of `ModelInfo` objects (`data`, `has_more`, `first_id`, `last_id`), paged with "
    "`limit` (1 to 1000, 20 by default), `after_id` or `before_id`; and errors in Anthropic's "
    "envelope."
)
_RETRIEVE_DESCRIPTION = (
    "One name of the routing table (a route's name or an alias), as OpenAI's model."
    + _ANTHROPIC_STYLE
    + "its `ModelInfo`; and errors (404 for an unknown model) in Anthropic's envelope."
)


def _models_answers(ok: Any, description: str) -> dict[int | str, dict[str, Any]]:
    """:func:`answers` with a 200 that is OpenAI's or Anthropic's (``ok``, a union)."""
    documented = answers(None, 400, 404)
    documented[200] = {"model": ok, "description": description}
    return documented


@router.get(
    "/models",
    summary="List the models of the routing table",
    description=_LIST_DESCRIPTION,
    responses=_models_answers(
        ModelList | AnthropicModelList, "OpenAI's model list, or Anthropic's page of models"
    ),
)
async def list_models(request: Request, svc: ServicesDep, dialect: DialectDep) -> Response:
    names = [*svc.providers, *svc.providers.aliases]
    if await _anthropic_style(request, dialect):
        return JSONResponse(_anthropic_page(request, svc, names))
    return JSONResponse({"object": "list", "data": [_model_object(n) for n in names]})


class _ModelName(Convertor[str]):
    """Any model name: with slashes (``meta-llama/Llama-3.1-8B``), and with any other character,
    so that every name reaches the route (``:path`` matches ``.*$``, which stops at a newline and
    drops a last one: ``gpt-4o-mini%0A`` would be ``gpt-4o-mini``)."""

    regex = r"[\s\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("model_name", _ModelName())


@router.get(
    "/models/{model:model_name}",
    summary="Retrieve a model of the routing table",
    description=_RETRIEVE_DESCRIPTION,
    responses=_models_answers(Model | AnthropicModelInfo, "OpenAI's model, or Anthropic's"),
)
async def retrieve_model(
    model: str, request: Request, svc: ServicesDep, dialect: DialectDep
) -> Response:
    anthropic_style = await _anthropic_style(request, dialect)
    if model not in svc.providers:
        raise unknown_model(model, svc)
    if anthropic_style:
        return JSONResponse(_anthropic_model(model, svc).model_dump())
    return JSONResponse(_model_object(model))


def _model_object(name: str) -> dict[str, Any]:
    return Model(id=name, created=_STARTED_AT, owned_by="batchd").model_dump()


# -- the models in Anthropic's shapes ---------------------------------------------------------


async def _anthropic_style(request: Request, dialect: Dialect) -> bool:
    """Whether the models routes answer in Anthropic's shapes: a request on ``/v1`` (not Azure's
    prefixes) that carries ``anthropic-version``, which must then be a version (a 400 if not)."""
    if dialect != "openai" or ANTHROPIC_VERSION not in request.headers:
        return False
    # batchd.api.anthropic imports this module: the import waits for the first call
    from batchd.api.anthropic import anthropic_version

    await anthropic_version(request)
    return True


def _anthropic_model(name: str, svc: Services) -> AnthropicModelInfo:
    route = svc.providers.aliases.get(name)
    display = name if route is None else f"{name} (alias of {route})"
    return AnthropicModelInfo(id=name, display_name=display, created_at=_CREATED_AT)


def _anthropic_page(request: Request, svc: Services, names: list[str]) -> dict[str, Any]:
    """The page of ``names`` that Anthropic's query parameters ask for: ``limit`` names after
    ``after_id``, before ``before_id`` (``has_more``: more in that direction) or from the first;
    ``lifecycle`` (``lifecycle[]`` as the SDKs send it) keeps them all (each is ``active``) or
    none."""
    query = request.query_params
    limit = parse_limit(query.get("limit"), default=_LIST_LIMIT, maximum=_LIST_MAX)
    after, before = query.get("after_id"), query.get("before_id")
    one_cursor(after, before)
    lifecycles = [*query.getlist("lifecycle[]"), *query.getlist("lifecycle")]
    for value in lifecycles:
        if value not in _LIFECYCLES:
            raise InvalidRequest(
                f"lifecycle: {value!r} is not one of {', '.join(_LIFECYCLES)}.",
                param="lifecycle",
            )
    cursor = after if after is not None else before
    param = "after_id" if after is not None else "before_id"
    if cursor is not None and cursor not in names:
        raise InvalidRequest(
            f"{param}: {cursor!r} is not a model of this server (GET /v1/models lists them).",
            param=param,
        )
    if lifecycles and "active" not in lifecycles:
        page, has_more = [], False  # every model of the routing table is active
    elif before is not None:
        end = names.index(before)
        start = max(0, end - limit)
        page, has_more = names[start:end], start > 0
    else:
        start = 0 if after is None else names.index(after) + 1
        page, has_more = names[start : start + limit], start + limit < len(names)
    return anthropic_page([_anthropic_model(name, svc).model_dump() for name in page], has_more)


# -- the relay --------------------------------------------------------------------------------


async def relay(
    request: Request,
    svc: Services,
    endpoint: str,
    *,
    streamable: bool,
    deployment: str | None = None,
) -> Response:
    """Relay one request to the provider of its model's route (``deployment``, Azure's path
    parameter, names the model instead of ``body.model``)."""
    body = await read_json_object(request, max_bytes=svc.settings.max_request_body_bytes)
    if deployment is not None:
        body["model"] = deployment
    provider = _provider_for(svc, _model_name(body), endpoint)
    if streamable and body.get("stream") is True:
        return await _start_stream(provider, endpoint, body)
    result = await provider.forward(endpoint, body)
    for fallback in _fallbacks(svc, provider, endpoint):
        if result.ok or not result.retryable:
            break
        provider = fallback  # the route's fallback (fallback = [...]) takes a failed request
        result = await provider.forward(endpoint, {**body, "model": provider.model})
    return result_response(provider.model, result)


def _fallbacks(svc: Services, provider: Provider, endpoint: str) -> list[Provider]:
    """The providers of the route's fallback routes that serve ``endpoint``, in order."""
    route = svc.settings.route(provider.model)
    found = []
    for name in () if route is None else route.fallback:
        fallback = svc.providers.get(name)
        if fallback is not None and endpoint in fallback.endpoints:
            found.append(fallback)
    return found


def _model_name(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None or model == "":
        raise InvalidRequest(
            "You must provide a model parameter.",
            param="model",
            code="missing_required_parameter",
        )
    if not isinstance(model, str):
        raise InvalidRequest("'model' must be a string.", param="model", code="invalid_type")
    return model


def _provider_for(svc: Services, model: str, endpoint: str) -> Provider:
    """The provider of ``model``'s route, if it serves ``endpoint``: the same table batches use."""
    provider = svc.providers.get(model)
    if provider is None:
        raise unknown_model(model, svc)
    if endpoint not in provider.endpoints:
        served = ", ".join(sorted(provider.endpoints)) or "none"
        raise InvalidRequest(
            f"The model '{model}' (provider '{provider.name}') does not serve {endpoint}; "
            f"it serves: {served}.",
            param="model",
            code="unsupported_endpoint",
        )
    return provider


def unknown_model(model: str, svc: Services) -> NotFound:
    return NotFound(
        f"The model '{model}' does not exist on this batchd server. {svc.providers.hint(model)}",
        param="model",
        code="model_not_found",
    )


def result_response(model: str, result: ProviderResult) -> Response:
    """The upstream's answer as ours: its status and JSON body, or a 5xx that says what failed."""
    status = result.status_code
    relayable = result.ok or (status is not None and status >= 400 and result.body is not None)
    if not relayable or status is None:
        raise _gateway_error(model, result)
    return JSONResponse(result.body, status_code=status, headers=_relayed_headers(result))


def _relayed_headers(result: ProviderResult) -> dict[str, str]:
    headers: dict[str, str] = {}
    if result.request_id:
        headers["x-upstream-request-id"] = result.request_id
    if result.retry_after is not None:
        headers["retry-after"] = str(math.ceil(result.retry_after))
        headers["retry-after-ms"] = str(round(result.retry_after * 1000))
    return headers


def _gateway_error(model: str, result: ProviderResult) -> APIError:
    """The error for a request the upstream gave no usable answer to."""
    code = result.error_code
    detail = result.error_message or "no detail"
    log.warning("model %s: no usable upstream answer: %s (%s)", model, code, detail)
    if code == "request_timeout":
        return GatewayTimeout(
            f"The upstream of model '{model}' did not answer in time: {detail}.",
            code="upstream_timeout",
        )
    if code == "connection_error":
        return BadGateway(
            f"The upstream of model '{model}' could not be reached ({detail}). Check that it is "
            "running and that the route's base_url points at it.",
            code="upstream_unavailable",
        )
    if code in ("unsupported_endpoint", "invalid_request"):
        return InvalidRequest(detail, code=code)
    return BadGateway(
        f"The upstream of model '{model}' gave no usable answer: {detail}.",
        code=code if code == "invalid_upstream_response" else "upstream_error",
    )


# -- streaming --------------------------------------------------------------------------------


async def _start_stream(provider: Provider, endpoint: str, body: dict[str, Any]) -> Response:
    if not provider.streaming:
        raise InvalidRequest(
            f"The model '{provider.model}' does not support streaming (provider "
            f"'{provider.name}' answers whole responses only); send the request without "
            '"stream": true.',
            param="stream",
            code="streaming_unsupported",
        )
    started = await provider.stream(endpoint, body)
    if isinstance(started, ProviderResult):
        return result_response(provider.model, started)
    return RelayResponse(provider.model, started)


class RelayResponse(StreamingResponse):
    """Sends a provider stream on as each chunk arrives, and closes it however the response
    ends: finished, the client gone (which abandons the upstream request), or an error."""

    def __init__(
        self,
        model: str,
        stream: ProviderStream,
        error_event: Callable[[str], bytes] | None = None,
    ) -> None:
        """``error_event``: the server-sent event that tells the client of a stream broken
        half-way (by default an OpenAI error envelope as a ``data:`` event)."""
        self._model = model
        self._stream = stream
        self._error_event = error_event or _openai_error_event
        headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
        if stream.request_id:
            headers["x-upstream-request-id"] = stream.request_id
        self._chunks = self._relay()
        super().__init__(
            self._chunks,
            status_code=stream.status_code,
            headers=headers,
            media_type=stream.content_type,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._chunks.aclose()
            await self._stream.aclose()

    async def _relay(self) -> AsyncGenerator[bytes]:
        try:
            async for chunk in self._stream.chunks():
                yield chunk
        except ProviderStreamError as exc:
            log.warning("model %s: the upstream stream broke: %s", self._model, exc)
            if not self._stream.content_type.startswith(_SSE_TYPES):
                raise  # the connection is dropped: the client sees an incomplete body
            # The status line is sent: an error event is the one way left to tell the client
            # (the SDKs raise an APIError for it) rather than end as if complete.
            yield self._error_event(
                f"The upstream of model '{self._model}' failed while streaming: {exc}"
            )


def _openai_error_event(message: str) -> bytes:
    error = envelope(message, type="server_error", code="upstream_stream_error")
    return b"data: " + orjson.dumps(error) + b"\n\n"
