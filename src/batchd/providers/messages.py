"""Anthropic's Messages API (``/v1/messages``) on a provider that speaks OpenAI chat completions
(``openai``, ``llamacpp``): a Messages request becomes a chat-completions request
(:func:`chat_body`), the chat answer a ``Message`` (:func:`message_body`), an error answer
Anthropic's error envelope (:func:`error_body`) and a streamed answer Anthropic's events
(:func:`message_events`; the answer side lives in :mod:`batchd.providers.messages_stream`).
:class:`MessagesBridge` wraps such a provider so that it serves Messages requests;
:func:`messages_provider` gives it, or the provider itself when that serves ``/v1/messages``.

Pure translation: no I/O but the wrapped provider's. Nothing is dropped that would change the
answer; what cannot be passed on is a :class:`MessagesParamError` (a 400
``invalid_request_error`` that names the parameter):

==============================================  ================================================
Messages request                                chat-completions request
==============================================  ================================================
``model`` (required)                            ``model`` (the provider renames it as usual)
``max_tokens`` (required, at least 1)           ``max_tokens``
``system``: a string or ``text`` blocks         a first ``system`` message
``messages`` (required): roles ``user``,        the same roles; content a string, or blocks
``assistant``, ``system``                       (texts joined with newlines)
``image`` blocks (user turns)                   ``image_url`` parts: ``base64`` a data URL,
                                                ``url`` the URL
``tool_use`` blocks (assistant turns)           ``tool_calls`` (arguments: ``input`` as JSON)
``tool_result`` blocks (user turns)             ``tool`` messages ahead of the turn's other
                                                content; text only, ``is_error`` as an
                                                ``Error:`` prefix
``temperature``, ``top_p``, ``top_k``           the same (``top_k`` as llama.cpp and vLLM take)
``stop_sequences``                              ``stop``
``metadata.user_id``                            ``user``
``stream``                                      ``stream``, ``stream_options.include_usage``
``tools``: custom tools                         function tools (``input_schema`` as
                                                ``parameters``; ``strict`` passed on)
``tool_choice``: ``auto``, ``any``, ``tool``,   ``auto``, ``required``, the named function,
``none``; ``disable_parallel_tool_use``         ``none``; ``parallel_tool_calls: false``
``output_config.format`` (``json_schema``)      ``response_format`` ``json_schema``, strict
``cache_control`` (anywhere),                   ignored: billing, placement and attribution,
``service_tier`` (``auto``, ``standard_only``), or (``citations`` of a text block) notes
``inference_geo``, ``speed``, ``diagnostics``,  beside a text that is passed on
``user_profile_id``, ``workspace_id``, a
tool's ``eager_input_streaming``, ``citations``
``thinking`` (but ``disabled``),                refused: each would change the answer, and
``output_config.effort``, ``container``,        chat completions have nothing to carry it
``context_management``, ``mcp_servers``,
server tools and their blocks, ``document``,
``search_result``, ``container_upload`` and
``thinking`` blocks, images in assistant turns
or tool results, ``file`` image sources,
another ``service_tier``, unknown parameters
==============================================  ================================================

Tool ids: an answer's call id ``X`` becomes ``toolu_X``; a request's ``toolu_X`` goes up as
``X``, so that the upstream sees its own ids again (Mistral's templates insist on theirs). A
last ``assistant`` message (Anthropic's prefill) goes up as it is: llama.cpp's server continues
it, other upstreams may start a new turn after it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from batchd.protocol import MESSAGES_ENDPOINT
from batchd.providers.base import Provider, ProviderRequest, ProviderResult, ProviderStream
from batchd.providers.messages_stream import (
    MessagesStream,
    error_body,
    message_body,
    message_events,
)

__all__ = [
    "CHAT",
    "MESSAGES",
    "MessagesBridge",
    "MessagesParamError",
    "chat_body",
    "error_body",
    "message_body",
    "message_events",
    "messages_provider",
]

CHAT = "/v1/chat/completions"
MESSAGES = MESSAGES_ENDPOINT

_ROUTE = "on this route (it translates Messages to chat completions)"
#: Top-level parameters refused when set (not null, empty or off), with why.
_REFUSED = {
    "thinking": "the upstream's reasoning is not returned as thinking blocks; only "
    "{'type': 'disabled'} is accepted",
    "container": "there are no code-execution containers",
    "context_management": "the conversation is sent as it is, never edited",
    "mcp_servers": "there are no MCP connectors",
}
_IGNORED = frozenset(
    {"cache_control", "inference_geo", "speed", "diagnostics", "user_profile_id", "workspace_id"}
)
_KNOWN = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
        "stream",
        "tools",
        "tool_choice",
        "output_config",
        "service_tier",
        *_REFUSED,
        *_IGNORED,
    }
)
#: Content blocks refused wherever they are, with why.
_REFUSED_BLOCKS = {
    "document": "documents cannot be passed to a chat model; send their text in text blocks",
    "search_result": "search results cannot be passed to a chat model; send their text in text "
    "blocks",
    "container_upload": "there are no code-execution containers",
    "thinking": "thinking blocks cannot be passed to a chat model; leave them out of the turn",
    "redacted_thinking": "thinking blocks cannot be passed to a chat model; leave them out of "
    "the turn",
}
_TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


class MessagesParamError(Exception):
    """A Messages request (or route) that cannot be served by translation: :attr:`message`
    names the parameter and says what to do; a request's answer is a 400
    ``invalid_request_error``."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        """The parameter at fault (``messages[1].content[0].source``…), when there is one."""


def _unsupported(param: str, why: str) -> MessagesParamError:
    return MessagesParamError(
        f"'{param}' is not supported {_ROUTE}: {why}; remove it.", param=param
    )


def _invalid(param: str, expected: str) -> MessagesParamError:
    return MessagesParamError(f"'{param}' must be {expected}.", param=param)


def _unknown(param: str) -> MessagesParamError:
    return MessagesParamError(
        f"'{param}' is not a parameter this route knows (it translates Messages to chat "
        "completions and passes nothing on unread); remove it.",
        param=param,
    )


def _is_off(value: Any) -> bool:
    return value is None or value is False or value == [] or value == {}


def _check_keys(value: Mapping[str, Any], known: frozenset[str], where: str) -> None:
    for key in value:
        if key not in known:
            raise _unknown(f"{where}.{key}")


# -- the request --------------------------------------------------------------------------------


def chat_body(params: Mapping[str, Any]) -> dict[str, Any]:
    """The chat-completions request body of a Messages request's parameters (see the module's
    table); :class:`MessagesParamError` for what cannot be passed on."""
    if not isinstance(params, Mapping):
        raise MessagesParamError("The request body must be a JSON object of Messages parameters.")
    chat: dict[str, Any] = {"model": _model(params.get("model"))}
    max_tokens = _max_tokens(params.get("max_tokens"))
    messages = _messages(params.get("messages"))
    for key, value in params.items():
        if key not in _KNOWN:
            raise _unknown(key)
        off = _is_off(value) or (key == "thinking" and value == {"type": "disabled"})
        if key in _REFUSED and not off:
            raise _unsupported(key, _REFUSED[key])
    chat["messages"] = _system(params.get("system")) + messages
    chat["max_tokens"] = max_tokens
    _sampling(params, chat)
    tools = _tools(params.get("tools"))
    if tools:
        chat["tools"] = tools
    chat.update(_tool_choice(params.get("tool_choice"), tools=bool(tools)))
    _metadata(params.get("metadata"), chat)
    _output_config(params.get("output_config"), chat)
    tier = params.get("service_tier")
    if tier not in (None, "auto", "standard_only"):
        raise _unsupported("service_tier", f"{tier!r} (only 'auto' and 'standard_only')")
    stream = params.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _invalid("stream", "a boolean")
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _model(value: Any) -> str:
    if value is None:
        raise MessagesParamError(
            "'model' is required: the name of the model to answer.", param="model"
        )
    if not isinstance(value, str) or not value:
        raise _invalid("model", "a non-empty string")
    return value


def _max_tokens(value: Any) -> int:
    if value is None:
        raise MessagesParamError(
            "'max_tokens' is required: the most tokens the answer may have.", param="max_tokens"
        )
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _invalid("max_tokens", "an integer of at least 1")
    if value == 0:
        raise _unsupported("max_tokens", "0 only warms Anthropic's prompt cache; ask for 1 or more")
    return value


def _sampling(params: Mapping[str, Any], chat: dict[str, Any]) -> None:
    for key in ("temperature", "top_p"):
        value = params.get(key)
        if value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
            raise _invalid(key, "a number from 0 to 1")
        chat[key] = value
    top_k = params.get("top_k")
    if top_k is not None:
        if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 0:
            raise _invalid("top_k", "an integer of at least 0")
        chat["top_k"] = top_k
    stop = params.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise _invalid("stop_sequences", "an array of non-empty strings")
        if stop:
            chat["stop"] = list(stop)


def _metadata(value: Any, chat: dict[str, Any]) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise _invalid("metadata", "an object")
    _check_keys(value, frozenset({"user_id"}), "metadata")
    user = value.get("user_id")
    if user is not None and not isinstance(user, str):
        raise _invalid("metadata.user_id", "a string")
    if user:
        chat["user"] = user


def _output_config(value: Any, chat: dict[str, Any]) -> None:
    if value is None:
        return
    if not isinstance(value, Mapping):
        raise _invalid("output_config", "an object")
    _check_keys(value, frozenset({"effort", "format"}), "output_config")
    if value.get("effort") is not None:
        raise _unsupported("output_config.effort", "the upstream's effort cannot be set")
    fmt = value.get("format")
    if fmt is None:
        return
    if not isinstance(fmt, Mapping) or fmt.get("type") != "json_schema":
        raise _invalid("output_config.format", "an object of type 'json_schema' with a 'schema'")
    _check_keys(fmt, frozenset({"type", "schema"}), "output_config.format")
    schema = fmt.get("schema")
    if not isinstance(schema, Mapping):
        raise _invalid("output_config.format.schema", "a JSON schema object")
    spec = {"name": "output", "schema": dict(schema), "strict": True}
    chat["response_format"] = {"type": "json_schema", "json_schema": spec}


# -- the conversation ---------------------------------------------------------------------------


def _system(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    text = value if isinstance(value, str) else _texts(value, "system")
    return [{"role": "system", "content": text}] if text else []


def _texts(value: Any, where: str) -> str:
    """The text of a list of text blocks, joined with newlines."""
    if not isinstance(value, list):
        raise _invalid(where, "a string or an array of text blocks")
    texts = []
    for position, block in enumerate(value):
        at = f"{where}[{position}]"
        kind = _block_type(block, at)
        if kind != "text":
            raise _invalid(f"{at}.type", "'text' here")
        texts.append(_text(block, at))
    return "\n".join(texts)


def _messages(value: Any) -> list[dict[str, Any]]:
    if value is None:
        raise MessagesParamError(
            "'messages' is required: the conversation, user and assistant turns.",
            param="messages",
        )
    if not isinstance(value, list) or not value:
        raise _invalid("messages", "a non-empty array of messages")
    chat: list[dict[str, Any]] = []
    for position, message in enumerate(value):
        where = f"messages[{position}]"
        if not isinstance(message, Mapping):
            raise _invalid(where, "an object with a 'role' and a 'content'")
        _check_keys(message, frozenset({"role", "content"}), where)
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str | list):
            raise _invalid(f"{where}.content", "a string or an array of content blocks")
        if role == "user":
            chat.extend(_user(content, where))
        elif role == "assistant":
            chat.append(_assistant(content, where))
        elif role == "system":
            text = content if isinstance(content, str) else _texts(content, f"{where}.content")
            chat.append({"role": "system", "content": text})
        else:
            raise _invalid(f"{where}.role", "'user', 'assistant' or 'system'")
    return chat


def _user(content: str | list[Any], where: str) -> list[dict[str, Any]]:
    """A user turn: its tool results as ``tool`` messages, then the rest as one user message."""
    if isinstance(content, str):
        return [{"role": "user", "content": content}]
    results: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for position, block in enumerate(content):
        at = f"{where}.content[{position}]"
        kind = _block_type(block, at)
        if kind == "text":
            parts.append({"type": "text", "text": _text(block, at)})
        elif kind == "image":
            parts.append(_image(block, at))
        elif kind == "tool_result":
            results.append(_tool_result(block, at))
        else:
            raise _misplaced(kind, at, "user")
    if results and not parts:
        return results
    if all(part["type"] == "text" for part in parts):
        return [*results, {"role": "user", "content": "\n".join(p["text"] for p in parts)}]
    return [*results, {"role": "user", "content": parts}]


def _assistant(content: str | list[Any], where: str) -> dict[str, Any]:
    if isinstance(content, str):
        return {"role": "assistant", "content": content}
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for position, block in enumerate(content):
        at = f"{where}.content[{position}]"
        kind = _block_type(block, at)
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "tool_use":
            calls.append(_tool_call(block, at))
        else:
            raise _misplaced(kind, at, "assistant")
    if not calls:
        return {"role": "assistant", "content": "\n".join(texts)}
    return {"role": "assistant", "content": "\n".join(texts) or None, "tool_calls": calls}


def _block_type(block: Any, at: str) -> str:
    if not isinstance(block, Mapping):
        raise _invalid(at, "a content block (an object with a 'type')")
    kind = block.get("type")
    if not isinstance(kind, str):
        raise _invalid(f"{at}.type", "a string")
    return kind


def _misplaced(kind: str, at: str, role: str) -> MessagesParamError:
    """The error for a block of type ``kind`` that a ``role`` turn cannot have here."""
    if kind in _REFUSED_BLOCKS:
        return _unsupported(at, f"{kind} blocks: {_REFUSED_BLOCKS[kind]}")
    if kind in ("server_tool_use", "mcp_tool_use", "mcp_tool_result") or (
        kind.endswith("_tool_result") and kind != "tool_result"
    ):
        return _unsupported(at, f"{kind} blocks: server tools do not exist here")
    allowed = {"user": "text, image and tool_result", "assistant": "text and tool_use"}
    if kind in ("text", "image", "tool_use", "tool_result"):
        return _unsupported(at, f"{kind} blocks in {role} turns (they take {allowed[role]})")
    return _invalid(f"{at}.type", f"a content block type of {role} turns ({allowed[role]})")


def _text(block: Mapping[str, Any], at: str) -> str:
    _check_keys(block, frozenset({"type", "text", "cache_control", "citations"}), at)
    text = block.get("text")
    if not isinstance(text, str):
        raise _invalid(f"{at}.text", "a string")
    return text


def _image(block: Mapping[str, Any], at: str) -> dict[str, Any]:
    _check_keys(block, frozenset({"type", "source", "cache_control", "transformations"}), at)
    if not _is_off(block.get("transformations")):
        raise _unsupported(f"{at}.transformations", "images go to the upstream as they are")
    source = block.get("source")
    where = f"{at}.source"
    if not isinstance(source, Mapping):
        raise _invalid(where, "an object of type 'base64' or 'url'")
    kind = source.get("type")
    if kind == "base64":
        _check_keys(source, frozenset({"type", "media_type", "data"}), where)
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not media.startswith("image/"):
            raise _invalid(f"{where}.media_type", "a string such as 'image/png'")
        if not isinstance(data, str) or not data:
            raise _invalid(f"{where}.data", "a base64 string")
        url = f"data:{media};base64,{data}"
    elif kind == "url":
        _check_keys(source, frozenset({"type", "url"}), where)
        found = source.get("url")
        if not isinstance(found, str) or not found:
            raise _invalid(f"{where}.url", "a URL string")
        url = found
    elif kind == "file":
        raise _unsupported(where, "file sources name Anthropic's Files API; send base64 or a url")
    else:
        raise _invalid(f"{where}.type", "'base64' or 'url'")
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_call(block: Mapping[str, Any], at: str) -> dict[str, Any]:
    known = frozenset({"type", "id", "name", "input", "cache_control", "caller", "toolset_name"})
    _check_keys(block, known, at)
    if block.get("caller") not in (None, {"type": "direct"}):
        raise _unsupported(f"{at}.caller", "tools are called directly here, by the model")
    if block.get("toolset_name") is not None:
        raise _unsupported(f"{at}.toolset_name", "there are no toolsets")
    name, arguments = block.get("name"), block.get("input")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{at}.name", "a non-empty string")
    if not isinstance(arguments, Mapping):
        raise _invalid(f"{at}.input", "an object")
    function = {"name": name, "arguments": orjson.dumps(dict(arguments)).decode()}
    return {"id": _call_id(block.get("id"), f"{at}.id"), "type": "function", "function": function}


def _call_id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise _invalid(where, "a non-empty string")
    return value.removeprefix("toolu_") or value


def _tool_result(block: Mapping[str, Any], at: str) -> dict[str, Any]:
    known = frozenset({"type", "tool_use_id", "content", "is_error", "cache_control"})
    _check_keys(block, known | {"toolset_name"}, at)
    if block.get("toolset_name") is not None:
        raise _unsupported(f"{at}.toolset_name", "there are no toolsets")
    call_id = _call_id(block.get("tool_use_id"), f"{at}.tool_use_id")
    content = block.get("content")
    if content is None:
        text = ""
    elif isinstance(content, str):
        text = content
    elif isinstance(content, list):
        text = _result_texts(content, f"{at}.content")
    else:
        raise _invalid(f"{at}.content", "a string or an array of text blocks")
    is_error = block.get("is_error")
    if is_error is not None and not isinstance(is_error, bool):
        raise _invalid(f"{at}.is_error", "a boolean")
    if is_error:
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": call_id, "content": text}


def _result_texts(blocks: list[Any], where: str) -> str:
    texts = []
    for position, block in enumerate(blocks):
        at = f"{where}[{position}]"
        kind = _block_type(block, at)
        if kind == "text":
            texts.append(_text(block, at))
        elif kind == "image":
            raise _unsupported(
                at,
                "a chat tool message carries text only; send the image in an "
                "image block of the same user turn",
            )
        elif kind in _REFUSED_BLOCKS:
            raise _unsupported(at, f"{kind} blocks: {_REFUSED_BLOCKS[kind]}")
        else:
            raise _unsupported(at, f"{kind} blocks in a tool result (it takes text blocks)")
    return "\n".join(texts)


# -- tools --------------------------------------------------------------------------------------

_TOOL_KEYS = frozenset(
    {
        "type",
        "name",
        "description",
        "input_schema",
        "cache_control",
        "strict",
        "eager_input_streaming",
        "input_examples",
        "defer_loading",
        "allowed_callers",
    }
)


def _tools(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid("tools", "an array of tools")
    return [_tool(tool, f"tools[{position}]") for position, tool in enumerate(value)]


def _tool(tool: Any, at: str) -> dict[str, Any]:
    if not isinstance(tool, Mapping):
        raise _invalid(at, "an object with a 'name' and an 'input_schema'")
    kind = tool.get("type")
    if kind not in (None, "custom"):
        raise _unsupported(
            at,
            f"the server tool {kind!r}: only custom tools (name, description, "
            "input_schema) are passed on",
        )
    _check_keys(tool, _TOOL_KEYS, at)
    if not _is_off(tool.get("input_examples")):
        raise _unsupported(f"{at}.input_examples", "a chat function has no examples")
    if tool.get("defer_loading"):
        raise _unsupported(f"{at}.defer_loading", "there is no tool search")
    if tool.get("allowed_callers") not in (None, ["direct"]):
        raise _unsupported(f"{at}.allowed_callers", "tools are called directly here, by the model")
    name, description, schema = tool.get("name"), tool.get("description"), tool.get("input_schema")
    if not isinstance(name, str) or not name:
        raise _invalid(f"{at}.name", "a non-empty string")
    if description is not None and not isinstance(description, str):
        raise _invalid(f"{at}.description", "a string")
    if not isinstance(schema, Mapping):
        raise _invalid(f"{at}.input_schema", "a JSON schema object")
    function: dict[str, Any] = {"name": name}
    if description:
        function["description"] = description
    function["parameters"] = dict(schema)
    strict = tool.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise _invalid(f"{at}.strict", "a boolean")
    if strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def _tool_choice(value: Any, *, tools: bool) -> dict[str, Any]:
    """The chat parameters of a ``tool_choice`` (none without tools: no tool can be chosen)."""
    if value is None:
        return {}
    kind = value.get("type") if isinstance(value, Mapping) else None
    if not isinstance(value, Mapping) or kind not in ("auto", "any", "tool", "none"):
        raise _invalid("tool_choice", "an object of type 'auto', 'any', 'tool' or 'none'")
    known = {"type"} if kind == "none" else {"type", "disable_parallel_tool_use"}
    _check_keys(value, frozenset(known | ({"name"} if kind == "tool" else set())), "tool_choice")
    disable = value.get("disable_parallel_tool_use")
    if disable is not None and not isinstance(disable, bool):
        raise _invalid("tool_choice.disable_parallel_tool_use", "a boolean")
    if not tools:
        if kind in ("auto", "none"):
            return {}
        raise _invalid("tools", f"a non-empty array of tools when tool_choice is {kind!r}")
    if kind == "tool":
        name = value.get("name")
        if not isinstance(name, str) or not name:
            raise _invalid("tool_choice.name", "the name of one of the tools")
        choice: Any = {"type": "function", "function": {"name": name}}
    else:
        choice = _TOOL_CHOICES[kind]
    chat = {"tool_choice": choice}
    if disable:
        chat["parallel_tool_calls"] = False
    return chat


# -- the provider wrapper -----------------------------------------------------------------------


class MessagesBridge:
    """A provider that serves ``/v1/chat/completions``, serving Messages requests: each is
    translated (:func:`chat_body`), sent as a chat request, and its answer translated back
    (:func:`message_body`, :func:`error_body`, :func:`message_events`).

    A request that cannot be translated is a 400 ``invalid_request_error`` result and never
    reaches the provider; an answer that did not come (a timeout, a refused connection) is the
    provider's result as it is; a 2xx that is not a chat completion is a retryable
    ``invalid_upstream_response``, as the ``openai`` provider makes of a body not JSON.
    """

    endpoints = frozenset({MESSAGES})

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        """The wrapped provider (it serves ``/v1/chat/completions``)."""

    @property
    def model(self) -> str:
        return self.provider.model

    @property
    def name(self) -> str:
        return self.provider.name

    @property
    def streaming(self) -> bool:
        return self.provider.streaming

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        """Answer a group of Messages requests: one result per request, in the same order; those
        that translate go to the provider in one :meth:`Provider.execute` call."""
        results: list[ProviderResult | None] = [None] * len(group)
        sent: list[tuple[int, ProviderRequest]] = []
        for position, request in enumerate(group):
            prepared = self._prepare(request.index, request.endpoint, request.body, stream=False)
            if isinstance(prepared, ProviderResult):
                results[position] = prepared
            else:
                chat = ProviderRequest(request.index, request.custom_id, CHAT, prepared)
                sent.append((position, chat))
        if sent:
            answers = await self.provider.execute([chat for _, chat in sent])
            for (position, _chat), answer in zip(sent, answers, strict=True):
                results[position] = _answer(answer, self.provider.model)
        return [result for result in results if result is not None]

    async def forward(self, endpoint: str, body: Mapping[str, Any]) -> ProviderResult:
        """One Messages request outside any batch (see :meth:`Provider.forward`, whose
        signature this keeps: ``endpoint`` must be ``/v1/messages``)."""
        prepared = self._prepare(0, endpoint, body, stream=False)
        if isinstance(prepared, ProviderResult):
            return prepared
        return _answer(await self.provider.forward(CHAT, prepared), self.provider.model)

    async def stream(
        self, endpoint: str, body: Mapping[str, Any]
    ) -> ProviderStream | ProviderResult:
        """One streamed Messages request: a stream of Anthropic's events once the upstream
        answered 2xx, else the result :meth:`forward` would have given (see
        :meth:`Provider.stream`; ``endpoint`` must be ``/v1/messages``)."""
        prepared = self._prepare(0, endpoint, body, stream=True)
        if isinstance(prepared, ProviderResult):
            return prepared
        started = await self.provider.stream(CHAT, prepared)
        if isinstance(started, ProviderResult):
            return _answer(started, self.provider.model)
        return MessagesStream(started, model=self.provider.model)

    def _prepare(
        self, index: int, endpoint: str, body: Mapping[str, Any], *, stream: bool
    ) -> dict[str, Any] | ProviderResult:
        """The chat body of one Messages request, or its result: a 400 for what does not
        translate, ``unsupported_endpoint`` for another endpoint (as providers answer it)."""
        if endpoint != MESSAGES:
            return ProviderResult.failure(
                index,
                "unsupported_endpoint",
                f"the Messages bridge of model {self.model!r} serves {MESSAGES}, not {endpoint}",
                retryable=False,
            )
        try:
            chat = chat_body(body)
        except MessagesParamError as exc:
            return _refused(index, exc.message)
        if stream:
            chat["stream"] = True
            chat["stream_options"] = {"include_usage": True}
        elif chat.get("stream"):
            return _refused(
                index,
                "'stream' must be false or absent here: this request is answered whole (a batch "
                "request, or a call that does not stream); remove it.",
            )
        return chat

    def __repr__(self) -> str:
        return f"<MessagesBridge over {self.provider!r}>"


def messages_provider(provider: Provider) -> Provider | MessagesBridge:
    """What serves ``/v1/messages`` for ``provider``'s route: the provider itself when it does,
    a :class:`MessagesBridge` over it when it serves ``/v1/chat/completions``; else
    :class:`MessagesParamError` naming the endpoints it serves."""
    if MESSAGES in provider.endpoints:
        return provider
    if CHAT in provider.endpoints:
        return MessagesBridge(provider)
    served = ", ".join(sorted(provider.endpoints)) or "none"
    raise MessagesParamError(
        f"The model '{provider.model}' (provider '{provider.name}') serves neither {MESSAGES} "
        f"nor {CHAT} (which Messages requests are translated to); it serves: {served}.",
        param="model",
    )


def _refused(index: int, message: str) -> ProviderResult:
    return ProviderResult.failure(
        index,
        "invalid_request_error",
        message,
        retryable=False,
        status_code=400,
        body=error_body(400, None, message),
    )


def _answer(result: ProviderResult, route: str) -> ProviderResult:
    """A chat request's result as its Messages request's, naming the model the answer names (or
    the route's name): the model that answered, never an alias (as on every route)."""
    status = result.status_code
    if result.ok and status is not None:
        chat: Any = result.body  # message_body reads what it is
        named = chat.get("model") if isinstance(chat, Mapping) else None
        try:
            body = message_body(chat, model=named if isinstance(named, str) and named else route)
        except ValueError as exc:
            return ProviderResult.failure(
                result.index,
                "invalid_upstream_response",
                f"the upstream answered HTTP {status} with a body that is not a chat "
                f"completion ({exc})",
                retryable=True,
                status_code=status,
                request_id=result.request_id,
            )
        return ProviderResult.success(result.index, status, body, result.request_id)
    if status is not None and result.body is not None:
        body = error_body(status, result.body, result.error_message)
        return dataclasses.replace(result, body=body)
    return result
