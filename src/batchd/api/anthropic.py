"""Anthropic's Messages API over the routing table: ``POST /v1/messages``, whole or streamed.

Anthropic's SDKs work unchanged (``Anthropic(base_url="http://batchd:8080", api_key=KEY)``): the
key comes in ``x-api-key`` (or ``Authorization: Bearer``), every request must carry a known
``anthropic-version``, and every error answers in Anthropic's envelope (:mod:`batchd.api.errors`).

A request goes to the route of its ``model`` (a name or an alias, e.g. ``claude-haiku-4-5`` on a
local model), once (the client's SDK retries):

- a route on an Anthropic-compatible upstream (``provider = "anthropic"``) gets the request as
  it is, and its answer is relayed;
- a route that serves chat completions (``openai``, ``llamacpp``) gets it translated, and its
  answer (or its stream of events) is translated back (:mod:`batchd.providers.messages`); a
  parameter that cannot be translated is a 400 naming it, never dropped.
"""

from __future__ import annotations

import re
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from batchd.api.deps import Services, project, services
from batchd.api.errors import anthropic_envelope
from batchd.api.openapi import json_body
from batchd.api.params import read_json_object
from batchd.api.passthrough import (
    RelayResponse,
    relayed_answers,
    result_response,
    unknown_model,
)
from batchd.errors import InvalidRequest
from batchd.protocol import AnthropicErrorResponse
from batchd.providers import ProviderResult
from batchd.providers.messages import MESSAGES, MessagesParamError, messages_provider

__all__ = ["anthropic_version", "router"]

#: ``anthropic-version`` is a date: 2023-06-01 in the API's documentation, newer ones from newer
#: SDKs (anthropic 2.17 sends 2026-10-21). The Messages API batchd serves is the same for each.
_VERSION = re.compile(r"^20[2-9][0-9]-[01][0-9]-[0-3][0-9]$")


async def anthropic_version(request: Request) -> str:
    """The request's ``anthropic-version``: required, and a version (a date)."""
    version = request.headers.get("anthropic-version")
    if version is None:
        raise InvalidRequest(
            "anthropic-version: header is required (Anthropic's SDKs send it; with curl add "
            "-H 'anthropic-version: 2023-06-01').",
            param="anthropic-version",
        )
    if not _VERSION.match(version) or version < "2023-01-01":
        raise InvalidRequest(
            f"anthropic-version: {version!r} is not a valid version; send a version date such "
            "as 2023-06-01.",
            param="anthropic-version",
        )
    return version


router = APIRouter(tags=["anthropic"], dependencies=[Depends(project), Depends(anthropic_version)])

ServicesDep = Annotated[Services, Depends(services)]

_MESSAGE_BODY = json_body(
    required=["model", "max_tokens", "messages"],
    properties={
        "model": {"type": "string"},
        "max_tokens": {"type": "integer"},
        "messages": {"type": "array", "items": {"type": "object"}},
        "stream": {"type": "boolean"},
    },
)


@router.post(
    "/messages",
    name="create_message",
    summary="Create a message (Anthropic's Messages API, on the model's route)",
    openapi_extra=_MESSAGE_BODY,
    responses=relayed_answers(AnthropicErrorResponse),
)
async def create_message(request: Request, svc: ServicesDep) -> Response:
    body = await read_json_object(request, max_bytes=svc.settings.max_request_body_bytes)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model: Field required (a model name, e.g. claude-haiku-4-5).")
    provider = svc.providers.get(model)
    if provider is None:
        raise unknown_model(model, svc)
    try:
        target = messages_provider(provider)
    except MessagesParamError as exc:
        raise InvalidRequest(str(exc), param="model") from None
    if body.get("stream") is True:
        if not target.streaming:
            raise InvalidRequest(
                f"The model '{model}' cannot stream; send the request without \"stream\": true.",
                param="stream",
            )
        started = await target.stream(MESSAGES, body)
        if isinstance(started, ProviderResult):
            return result_response(provider.model, started)
        return RelayResponse(provider.model, started, _error_event)
    return result_response(provider.model, await target.forward(MESSAGES, body))


def _error_event(message: str) -> bytes:
    """Anthropic's ``error`` event, for a stream that broke half-way."""
    error = anthropic_envelope(message, 500, None)
    return b"event: error\ndata: " + orjson.dumps(error) + b"\n\n"
