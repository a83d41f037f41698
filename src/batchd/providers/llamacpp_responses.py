"""``/v1/responses`` (OpenAI's Responses API) on the ``llamacpp`` provider: a request becomes the
chat request the provider already runs, and its ``chat.completion`` answer a ``response`` object
(see :mod:`batchd.providers.llamacpp`).

Pure Python, no llama.cpp. Text in, text out:

==============================================  ================================================
request                                         handling
==============================================  ================================================
``input``                                       a string (one user message) or a list of
                                                message items (``"type": "message"`` or none):
                                                roles ``user``, ``system``/``developer``,
                                                ``assistant``; content a string or a list of
                                                ``input_text`` parts (``output_text`` too in
                                                assistant messages), joined with newlines
``instructions``                                a system message before ``input``
``max_output_tokens``                           ``max_tokens``
``text.format``                                 ``text``, ``json_object``, ``json_schema``
                                                (``name``, ``schema``, ``strict``): chat's
                                                ``response_format``, grammar-constrained
``temperature``, ``top_p``                      as in chat; also chat's sampling extensions
                                                (``seed``, ``stop``, ``top_k``…)
``model``, ``metadata``, ``store``, ``user``,   ignored (``metadata`` is echoed)
``service_tier``, ``prompt_cache_key``,
``safety_identifier``, ``parallel_tool_calls``
``tools``, ``tool_choice``, ``stream``,         400 ``unsupported_parameter`` when set: each
``background``, ``previous_response_id``,       would change what the answer means
``conversation``, ``reasoning``, ``prompt``,
``include``, ``top_logprobs``,
``max_tool_calls``, ``truncation`` ("auto"),
image/file/audio parts, non-message items
anything else                                   400 ``unknown_parameter``
==============================================  ================================================

Errors that the chat parsing or the decoder report are renamed to the Responses parameters
(``messages`` → ``input``, ``max_tokens`` → ``max_output_tokens``, ``response_format`` →
``text.format``). The answer's ``status`` is ``"incomplete"`` (``incomplete_details.reason``
``"max_output_tokens"``) when the chat answer ended with ``finish_reason: "length"``.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from batchd.providers.base import ProviderResult
from batchd.providers.llamacpp_params import (
    CHAT,
    IGNORED,
    SAMPLING,
    Job,
    RequestError,
    check_keys,
    format_kind,
    invalid_type,
    invalid_value,
    json_schema_spec,
    objects,
    parse_request,
    text_content,
    unsupported,
)

__all__ = [
    "ResponsesRequest",
    "parse_responses",
    "response_body",
    "response_result",
    "to_chat",
]

_SUPPORTED = (
    "this model serves text in and text out: 'input' (a string or message items with "
    "'input_text' parts), 'instructions', 'max_output_tokens', 'temperature', 'top_p' and "
    "'text.format' (text, json_object or json_schema)"
)
#: Accepted and ignored: chat's bookkeeping parameters but ``metadata`` (echoed) and
#: ``stream_options`` (refused, as ``stream``). Chat's sampling parameters (SAMPLING: the
#: Responses ones and chat's extensions) are copied to the chat request as they are.
_IGNORED = IGNORED - {"metadata", "stream_options"}
#: Accepted only when absent or off (see _check_unsupported), with why.
_UNSUPPORTED = {
    "tools": "no tool calling",
    "tool_choice": "no tool calling",
    "max_tool_calls": "no tool calling",
    "stream": "answers are returned whole",
    "stream_options": "answers are returned whole",
    "background": "answers are returned when they are done",
    "previous_response_id": "responses are not stored; send the conversation in 'input'",
    "conversation": "conversations are not stored; send the conversation in 'input'",
    "prompt": "stored prompt templates do not exist here; send 'input' and 'instructions'",
    "reasoning": "this model does not reason",
    "include": "no additional output data is returned",
    "top_logprobs": "log probabilities are not returned",
    "truncation": "only 'disabled' (an input longer than the context is a 400)",
}
_KEYS = (
    _IGNORED
    | SAMPLING
    | set(_UNSUPPORTED)
    | {"input", "instructions", "max_output_tokens", "text", "metadata"}
)
_ROLES = frozenset({"user", "system", "developer", "assistant"})
_ITEM_KEYS = frozenset({"type", "role", "content", "id", "status"})
_MEDIA_PARTS = frozenset({"input_image", "input_file", "input_audio", "refusal"})
#: Chat parameter → the Responses parameter it came from (for error messages).
_RENAMED = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "response_format": "text.format",
}


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    """A Responses request as the chat request that runs it, and what its answer repeats."""

    chat: dict[str, Any]
    """The ``/v1/chat/completions`` body."""
    echo: dict[str, Any]
    """The request's ``instructions``, ``max_output_tokens``, ``metadata``, ``temperature``,
    ``top_p`` and ``text``, as the ``response`` object shows them."""


def parse_responses(body: Mapping[str, Any]) -> tuple[Job, ResponsesRequest]:
    """The chat :class:`Job` of a Responses request body, and the request (for
    :func:`response_result`); :class:`RequestError` naming a Responses parameter when it cannot
    be served."""
    request = to_chat(body)
    try:
        return parse_request(CHAT, request.chat), request
    except RequestError as exc:
        param, message = _renamed(exc.param, exc.message)
        raise RequestError(message, param=param, code=exc.code) from None


def to_chat(body: Mapping[str, Any]) -> ResponsesRequest:
    """The chat request of a Responses request body; :class:`RequestError` for what this
    provider cannot serve (the chat parsing checks the rest: the sampling values)."""
    if not isinstance(body, Mapping):
        raise RequestError("The request body must be a JSON object.", code="invalid_type")
    check_keys(body, _KEYS, hint=_SUPPORTED)
    _check_unsupported(body)
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise invalid_type("instructions", "a string")
    messages = _input(body.get("input"))
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    chat: dict[str, Any] = {"messages": messages}
    chat.update((key, value) for key, value in body.items() if key in SAMPLING)
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    response_format, text = _text(body.get("text"))
    if response_format is not None:
        chat["response_format"] = response_format
    echo = {
        "instructions": instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": _metadata(body.get("metadata")),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "text": text,
    }
    return ResponsesRequest(chat, echo)


def _unsupported(param: str, why: str) -> RequestError:
    return unsupported(param, f"{why}; {_SUPPORTED}")


def _check_unsupported(body: Mapping[str, Any]) -> None:
    for key, why in _UNSUPPORTED.items():
        value = body.get(key)
        if key == "tool_choice":
            off = value in (None, "none", "auto") and not body.get("tools")
        elif key == "truncation":
            off = value in (None, "disabled")
        elif key == "top_logprobs":
            off = value in (None, 0) and not isinstance(value, bool)
        elif key == "reasoning":
            off = value is None or (
                isinstance(value, Mapping) and all(v is None for v in value.values())
            )
        else:
            off = value is None or value is False or value == [] or value == {}
        if not off:
            raise _unsupported(key, why)


def _input(value: Any) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    items = objects(value, "input", "a string or a non-empty array of input items", sep="")
    return [_item(where, item) for where, item in items]


def _item(where: str, item: Mapping[str, Any]) -> dict[str, str]:
    kind = item.get("type", "message")
    if kind != "message":
        raise RequestError(
            f"Input items of type {kind!r} are not supported by this model (no tools, no "
            f"stored items): '{where}' must be a message item; {_SUPPORTED}.",
            param=f"{where}.type",
            code="unsupported_parameter",
        )
    role = item.get("role")
    if role not in _ROLES:
        raise invalid_value(
            f"{where}.role", role, "supported roles are user, system, developer and assistant"
        )
    check_keys(item, _ITEM_KEYS, where)
    kinds = ("input_text", "output_text") if role == "assistant" else ("input_text",)
    content = text_content(
        item.get("content"), f"{where}.content", kinds, sep="", media=_MEDIA_PARTS
    )
    return {"role": role, "content": content}


def _text(value: Any) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """Chat's ``response_format`` of the ``text`` parameter (``None``: free text), and the
    ``text`` the answer shows."""
    if value is None:
        return None, {"format": {"type": "text"}}
    if not isinstance(value, Mapping):
        raise invalid_type("text", "an object")
    check_keys(value, ("format", "verbosity"), "text")
    verbosity = value.get("verbosity")
    if verbosity not in (None, "medium"):
        raise _unsupported("text.verbosity", "only 'medium'")
    fmt = value.get("format")
    echo: dict[str, Any] = {"format": {"type": "text"}}
    if verbosity is not None:
        echo["verbosity"] = verbosity
    if fmt is None:
        return None, echo
    param = "text.format"
    kind = format_kind(fmt, param)
    echo["format"] = dict(fmt)
    if kind != "json_schema":
        return ({"type": kind} if kind == "json_object" else None), echo
    check_keys(fmt, ("type", "name", "schema", "strict", "description"), param)
    name, schema = json_schema_spec(fmt, param, schema_required=True)
    strict = fmt.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise invalid_type(f"{param}.strict", "a boolean")
    spec = {"name": name, "schema": schema, "strict": strict}
    return {"type": "json_schema", "json_schema": spec}, echo


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise invalid_type("metadata", "an object of string keys and string values")
    return dict(value)


def _renamed(param: str | None, message: str) -> tuple[str | None, str]:
    """A chat error's parameter and message in Responses terms."""
    if param is None:
        return param, message
    head, dot, tail = param.partition(".")
    if head not in _RENAMED:
        return param, message
    if head == "messages":
        message = message.replace("messages", "input")
    else:
        message = message.replace(head, _RENAMED[head])
    return _RENAMED[head] + dot + tail, message


# -- the answer -----------------------------------------------------------------------------------


def response_body(chat: Mapping[str, Any], request: ResponsesRequest) -> dict[str, Any]:
    """The ``response`` object of a ``chat.completion`` answer to ``request``'s chat body."""
    [choice] = chat["choices"]
    incomplete = choice["finish_reason"] == "length"
    status = "incomplete" if incomplete else "completed"
    usage = chat["usage"]
    details = usage.get("prompt_tokens_details") or {}
    echo = request.echo
    temperature, top_p = echo["temperature"], echo["top_p"]
    text = {
        "type": "output_text",
        "text": choice["message"]["content"],
        "annotations": [],
        "logprobs": [],
    }
    return {
        "id": "resp_" + secrets.token_hex(24),
        "object": "response",
        "created_at": chat["created"],
        "completed_at": None if incomplete else chat["created"],
        "status": status,
        "background": False,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": echo["instructions"],
        "max_output_tokens": echo["max_output_tokens"],
        "max_tool_calls": None,
        "model": chat["model"],
        "output": [
            {
                "type": "message",
                "id": "msg_" + secrets.token_hex(24),
                "status": status,
                "role": "assistant",
                "content": [text],
            }
        ],
        "parallel_tool_calls": False,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "temperature": 1.0 if temperature is None else float(temperature),
        "text": echo["text"],
        "tool_choice": "none",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0 if top_p is None else float(top_p),
        "truncation": "disabled",
        "usage": {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {
                "cached_tokens": details.get("cached_tokens", 0),
                "cache_write_tokens": 0,  # no explicit prompt caching
            },
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage["total_tokens"],
        },
        "user": None,
        "metadata": echo["metadata"],
    }


def response_result(result: ProviderResult, request: ResponsesRequest) -> ProviderResult:
    """The result of a Responses request from the result of its chat request: a ``response``
    object, or the chat error with the Responses parameter names."""
    if result.ok and isinstance(result.body, Mapping):
        return dataclasses.replace(result, body=response_body(result.body, request))
    error = result.body.get("error") if isinstance(result.body, Mapping) else None
    if not isinstance(error, Mapping) or not isinstance(error.get("message"), str):
        return result  # no parameter to rename (a server error, a closed provider)
    param, message = _renamed(error.get("param"), error["message"])
    if param == error.get("param"):
        return result
    return dataclasses.replace(
        result,
        body={"error": {**error, "param": param, "message": message}},
        error_message=message,
    )
