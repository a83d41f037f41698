"""Anthropic's answers out of chat-completions answers: a whole ``Message``
(:func:`message_body`), the server-sent events of a streamed one (:func:`message_events`,
:class:`MessagesStream`), the error envelope (:func:`error_body`), and the pieces the two share
(stop reasons, usage, ids). :mod:`batchd.providers.messages` re-exports the public ones and
holds the request side.

A ``chat.completion`` body (its first choice) becomes a Message: a ``text`` block when the text
(or ``refusal``) is not empty, then a ``tool_use`` block per tool call (``input`` parsed from
its ``arguments``; a :class:`ValueError` when they are no JSON object, as for a body with no
choices).

A chat-completions stream (``data: {chunk}`` lines, ``data: [DONE]`` last; lines split
anywhere, ``\\n``, ``\\r\\n`` or ``\\r`` ends) becomes Anthropic's (``event: <type>`` and
``data: <json>`` each):

==============================================  ================================================
chat-completions stream                         Messages stream
==============================================  ================================================
the first chunk                                 ``message_start``: a Message with no content,
                                                its id from the chunk's, ``input_tokens`` from
                                                the chunk's usage when it has one, else 0
a run of ``delta.content`` (or ``refusal``)     ``content_block_start`` (``text``), a
                                                ``content_block_delta`` (``text_delta``) per
                                                fragment, ``content_block_stop``
``delta.tool_calls`` of one ``index``           a ``tool_use`` block (id ``toolu_`` + the
                                                call's, its name) opened once the name is
                                                known, its ``arguments`` fragments as
                                                ``input_json_delta``'s ``partial_json``
``finish_reason``, the last ``usage``           ``message_delta`` (``stop_reason``,
                                                ``stop_sequence``, ``usage``) and
                                                ``message_stop`` at ``[DONE]``
``data: {"error": …}`` (or llama.cpp's          ``event: error`` with :func:`error_body`; the
``error:`` line), a chunk that is not JSON,     stream ends there
the end before ``[DONE]`` and before any
``finish_reason``, a broken upstream
(:class:`~batchd.providers.base.ProviderStreamError`)
==============================================  ================================================

Only choice 0 is read (a Messages request never asks for more); ``reasoning_content`` is left
out (``thinking`` is refused on the request side). A ``tool_calls`` fragment for a call whose
block was already closed (no upstream is known to interleave calls) is still sent, with that
block's index.

Stop reasons: ``stop`` → ``end_turn`` (``stop_sequence`` when the choice's ``stop_reason``
names the matched string, as vLLM's does), ``length`` → ``max_tokens``, ``tool_calls`` and
``function_call`` → ``tool_use`` (also ``stop`` when the answer has tool calls),
``content_filter`` → ``refusal``, anything else → ``end_turn``. Usage: ``input_tokens`` is
``prompt_tokens`` less the cached ones, which are ``cache_read_input_tokens`` (Anthropic counts
them apart: the prompt is the sum of the three input counts); ``cache_creation_input_tokens``
is 0.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from batchd.providers.base import ProviderStream, ProviderStreamError

__all__ = [
    "MessagesStream",
    "error_body",
    "error_type",
    "message_body",
    "message_events",
    "message_id",
    "stop_reason",
    "tool_use_id",
    "upstream_message",
    "usage",
]

_FINISH_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
#: Anthropic's error type of an HTTP status (other 4xx: invalid_request_error, the rest api_error).
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
    529: "overloaded_error",
}
#: A message that says no answer came in time (batchd's own: "did not answer within …s", and
#: "sent nothing for …s" of a stream).
_TIMEOUT = re.compile(
    r"time[ds]?[ -]?out|timed out|did not answer within|sent nothing for", re.IGNORECASE
)
_ID_TAIL = re.compile(r"[A-Za-z0-9_-]{1,200}")
_EOL = re.compile(rb"\r\n|\r|\n")


# -- the pieces a whole Message shares ----------------------------------------------------------


def stop_reason(finish_reason: Any, *, tools: bool, matched: Any = None) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` of a chat choice that ended with
    ``finish_reason``; ``tools``: the answer has tool calls; ``matched``: the choice's
    ``stop_reason`` (vLLM names the stop string that ended it there)."""
    reason = _FINISH_REASONS.get(finish_reason) if isinstance(finish_reason, str) else None
    if reason in (None, "end_turn") and tools:
        return "tool_use", None
    if reason == "end_turn" and isinstance(matched, str) and matched:
        return "stop_sequence", matched
    return reason or "end_turn", None


def usage(chat_usage: Any) -> dict[str, int]:
    """A Message's ``usage`` from a chat answer's (zeros for what it lacks)."""
    found = chat_usage if isinstance(chat_usage, Mapping) else {}
    prompt = _count(found.get("prompt_tokens"))
    details = found.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else 0
    cached = min(cached, prompt)
    return {
        "input_tokens": prompt - cached,
        "output_tokens": _count(found.get("completion_tokens")),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def message_id(chat_id: Any) -> str:
    """``msg_`` + the chat answer's id less its ``chatcmpl-`` (random hex when it has none)."""
    if isinstance(chat_id, str):
        if chat_id.startswith("msg_"):
            return chat_id
        tail = chat_id.removeprefix("chatcmpl-")
        if _ID_TAIL.fullmatch(tail):
            return "msg_" + tail
    return "msg_" + secrets.token_hex(12)


def tool_use_id(call_id: Any) -> str:
    """``toolu_`` + a chat tool call's id (random hex when it has none). The request side strips
    the ``toolu_`` again, so that the upstream sees its own ids when the client sends them back."""
    if isinstance(call_id, str) and call_id:
        return call_id if call_id.startswith("toolu_") else "toolu_" + call_id
    return "toolu_" + secrets.token_hex(12)


def error_body(status: int | None, body: Any, message: str | None = None) -> dict[str, Any]:
    """Anthropic's error envelope ``{"type": "error", "error": {"type", "message"}}`` of an
    OpenAI-style error answer: its ``error.message`` (or a bare ``error``, ``message`` or
    ``detail`` string), else ``message``, else a sentence naming the status.

    The type follows the status: 400 ``invalid_request_error``, 401 ``authentication_error``,
    402 ``billing_error``, 403 ``permission_error``, 404 ``not_found_error``, 413
    ``request_too_large``, 429 ``rate_limit_error``, 408 and 504 ``timeout_error``, 503 and 529
    ``overloaded_error``, another 4xx ``invalid_request_error`` (as Anthropic's API does), no
    status with a message that speaks of a timeout ``timeout_error``, anything else
    ``api_error``.
    """
    text = upstream_message(body) or message
    if not text:
        text = f"the upstream answered HTTP {status}" if status else "the upstream failed"
    if status is not None:
        kind = error_type(status)
    elif _TIMEOUT.search(text):
        kind = "timeout_error"
    else:
        kind = "api_error"
    return {"type": "error", "error": {"type": kind, "message": text}}


def error_type(status: int) -> str:
    """Anthropic's error ``type`` for an HTTP error status (the one table of batchd: its own
    errors on Anthropic's routes, an upstream's translated, an Anthropic upstream's without a
    body); another 4xx is ``invalid_request_error`` (as Anthropic's API does), the rest
    ``api_error``."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def upstream_message(body: Any) -> str | None:
    """The message of an error body: its ``error.message`` (OpenAI's envelope), or a bare
    ``error``, ``message`` or ``detail`` string."""
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, Mapping):
        error = error.get("message")
    for text in (error, body.get("message"), body.get("detail")):
        if isinstance(text, str) and text:
            return text
    return None


# -- a whole answer ---------------------------------------------------------------------------


def message_body(chat: Mapping[str, Any], *, model: str) -> dict[str, Any]:
    """The Anthropic ``Message`` of a ``chat.completion`` body (its first choice), named
    ``model``; :class:`ValueError` for a body that is not a chat completion."""
    choices = chat.get("choices") if isinstance(chat, Mapping) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise ValueError("no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, Mapping):
        raise ValueError("the choice has no message")
    content: list[dict[str, Any]] = []
    text = _answer_text(message)
    if text:
        content.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    calls = [] if calls is None else calls
    if not isinstance(calls, list):
        raise ValueError("tool_calls is not an array")
    if isinstance(message.get("function_call"), Mapping):
        calls = [*calls, {"function": message["function_call"]}]
    content.extend(_tool_use(call, position) for position, call in enumerate(calls))
    reason, sequence = stop_reason(
        choice.get("finish_reason"), tools=bool(calls), matched=choice.get("stop_reason")
    )
    return {
        "id": message_id(chat.get("id")),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(chat.get("usage")),
    }


def _answer_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, list):  # text parts, as some servers answer
        content = "".join(
            part["text"]
            for part in content
            if isinstance(part, Mapping) and isinstance(part.get("text"), str)
        )
    elif content is not None and not isinstance(content, str):
        raise ValueError("the message content is not a string")
    refusal = message.get("refusal")
    return content or (refusal if isinstance(refusal, str) else "")


def _tool_use(call: Any, position: int) -> dict[str, Any]:
    function = call.get("function") if isinstance(call, Mapping) else None
    name = function.get("name") if isinstance(function, Mapping) else None
    if not isinstance(function, Mapping) or not isinstance(name, str):
        raise ValueError(f"tool call {position} has no function name")
    arguments = function.get("arguments")
    try:
        parsed = orjson.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError(f"the arguments of tool call {position} ({name}) are not a JSON object")
    return {"type": "tool_use", "id": tool_use_id(call.get("id")), "name": name, "input": parsed}


# -- the stream ---------------------------------------------------------------------------------


class MessagesStream(ProviderStream):
    """A provider's chat-completions stream, sent on as a Messages stream (text/event-stream)."""

    def __init__(self, inner: ProviderStream, *, model: str) -> None:
        super().__init__(inner.status_code, "text/event-stream", inner.request_id)
        self.inner = inner
        self.model = model
        """The model name the Message events show."""

    def chunks(self) -> AsyncIterator[bytes]:
        return message_events(self.inner.chunks(), model=self.model)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def message_events(chunks: AsyncIterator[bytes], *, model: str) -> AsyncIterator[bytes]:
    """Anthropic's server-sent events of a chat-completions stream's bytes (see the module's
    table). Each input chunk gives at most one output chunk: the events it completed.

    A :class:`~batchd.providers.base.ProviderStreamError` from ``chunks`` becomes an ``error``
    event that ends the stream (the status line is sent: an event is the one way left to tell
    the client). ``chunks`` is closed when this ends, however it ends.
    """
    reader = _EventReader()
    message = _Translation(model)
    try:
        try:
            async for chunk in chunks:
                out = b"".join(message.event(kind, data) for kind, data in reader.feed(chunk))
                if out:
                    yield out
                if message.ended:
                    return
        except ProviderStreamError as exc:
            yield message.fail(error_body(None, None, f"the upstream stream broke: {exc}"))
            return
        out = b"".join(message.event(kind, data) for kind, data in reader.end()) + message.end()
        if out:
            yield out
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


class _EventReader:
    """Server-sent events out of bytes split anywhere: ``(kind, data)`` per event, ``kind``
    ``"error"`` for an ``event: error`` or llama.cpp's ``error:`` field, else ``"data"``."""

    def __init__(self) -> None:
        self._rest = b""
        self._data: list[bytes] = []
        self._kind = "data"

    def feed(self, chunk: bytes) -> Iterator[tuple[str, bytes]]:
        buffer = self._rest + chunk
        start = 0
        while (end := _EOL.search(buffer, start)) is not None:
            if end.group() == b"\r" and end.end() == len(buffer):
                break  # its "\n" may come with the next chunk
            yield from self._line(buffer[start : end.start()])
            start = end.end()
        self._rest = buffer[start:]

    def end(self) -> Iterator[tuple[str, bytes]]:
        """The events the last chunk left unfinished."""
        rest, self._rest = self._rest.rstrip(b"\r"), b""
        if rest:
            yield from self._line(rest)
        yield from self._line(b"")

    def _line(self, line: bytes) -> Iterator[tuple[str, bytes]]:
        if not line:
            if self._data:
                yield self._kind, b"\n".join(self._data)
            self._data, self._kind = [], "data"
            return
        name, _, value = line.partition(b":")
        value = value.removeprefix(b" ")
        if name == b"data":
            self._data.append(value)
        elif name == b"error":
            self._data.append(value)
            self._kind = "error"
        elif name == b"event" and value.strip() == b"error":
            self._kind = "error"
        # comments (":…"), other event names, "id:" and "retry:" say nothing here


@dataclass(slots=True)
class _Tool:
    """One tool call of the answer, by its chat ``index``."""

    call_id: str | None = None
    name: str = ""
    block: int | None = None
    """Its content block's index, once started."""
    pending: list[str] = field(default_factory=list)
    """Argument fragments that came before the name."""


class _Translation:
    """The Messages events of one chat-completions stream, event by event."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.started = False
        self.ended = False
        self.blocks = 0
        self.open: int | None = None
        """The index of the content block now open."""
        self.text_open = False
        self.tools: dict[int, _Tool] = {}
        self.finish_reason: Any = None
        self.matched: Any = None
        self.usage: Any = None

    def event(self, kind: str, data: bytes) -> bytes:
        """The events of one upstream event."""
        if self.ended:
            return b""
        if kind == "data" and data.strip() == b"[DONE]":
            return self.finish()
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            text = data[:200].decode("utf-8", "replace")
            return self.fail(error_body(None, None, f"the upstream sent an event not JSON: {text}"))
        if kind == "error" or (isinstance(chunk, Mapping) and "error" in chunk):
            return self.fail(error_body(_error_status(chunk), chunk))
        if not isinstance(chunk, Mapping):
            return self.fail(error_body(None, None, "the upstream sent an event not an object"))
        return self.chunk(chunk)

    def chunk(self, chunk: Mapping[str, Any]) -> bytes:
        out = [] if self.started else [self.start(chunk)]
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, Mapping) and choice.get("index", 0) == 0:
                out.extend(self.choice(choice))
        return b"".join(out)

    def start(self, chunk: Mapping[str, Any]) -> bytes:
        self.started = True
        counts = usage(chunk.get("usage"))
        counts["output_tokens"] = 0
        message: dict[str, Any] = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": counts,
        }
        return _sse({"type": "message_start", "message": message})

    def choice(self, choice: Mapping[str, Any]) -> Iterator[bytes]:
        delta = choice.get("delta")
        delta = delta if isinstance(delta, Mapping) else {}
        for key in ("content", "refusal"):
            text = delta.get(key)
            if isinstance(text, str) and text:
                yield from self.text(text)
        calls = delta.get("tool_calls")
        for position, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, Mapping):
                yield from self.tool_call(position, call)
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        if choice.get("stop_reason") is not None:
            self.matched = choice["stop_reason"]

    def text(self, text: str) -> Iterator[bytes]:
        if not self.text_open:
            yield from self.close()
            yield self.begin({"type": "text", "text": ""})
            self.text_open = True
        yield self.delta({"type": "text_delta", "text": text})

    def tool_call(self, position: int, call: Mapping[str, Any]) -> Iterator[bytes]:
        index = call.get("index")
        key = index if isinstance(index, int) else position
        tool = self.tools.setdefault(key, _Tool())
        if tool.call_id is None and isinstance(call.get("id"), str):
            tool.call_id = call["id"]
        function = call.get("function")
        function = function if isinstance(function, Mapping) else {}
        if not tool.name and isinstance(function.get("name"), str):
            tool.name = function["name"]
        arguments = function.get("arguments")
        fragment = arguments if isinstance(arguments, str) else ""
        if tool.block is not None:
            if fragment:
                yield self.delta({"type": "input_json_delta", "partial_json": fragment}, tool.block)
            return
        if fragment:
            tool.pending.append(fragment)
        if tool.name:
            yield from self.begin_tool(tool)

    def begin_tool(self, tool: _Tool) -> Iterator[bytes]:
        yield from self.close()
        block = {
            "type": "tool_use",
            "id": tool_use_id(tool.call_id),
            "name": tool.name,
            "input": {},
        }
        yield self.begin(block)
        tool.block = self.open
        if tool.pending:
            partial = "".join(tool.pending)
            tool.pending.clear()
            yield self.delta({"type": "input_json_delta", "partial_json": partial})

    def begin(self, block: dict[str, Any]) -> bytes:
        self.open, self.blocks = self.blocks, self.blocks + 1
        return _sse({"type": "content_block_start", "index": self.open, "content_block": block})

    def delta(self, delta: dict[str, Any], index: int | None = None) -> bytes:
        at = self.open if index is None else index
        return _sse({"type": "content_block_delta", "index": at, "delta": delta})

    def close(self) -> Iterator[bytes]:
        if self.open is not None:
            yield _sse({"type": "content_block_stop", "index": self.open})
        self.open, self.text_open = None, False

    def finish(self) -> bytes:
        """``message_delta`` and ``message_stop``: the upstream's stream is complete."""
        out = [b""] if self.started else [self.start({})]
        for tool in self.tools.values():
            if tool.block is None:  # a call whose name never came: its arguments still go
                out.extend(self.begin_tool(tool))
        out.extend(self.close())
        reason, sequence = stop_reason(
            self.finish_reason, tools=bool(self.tools), matched=self.matched
        )
        counts = usage(self.usage) if self.usage is not None else {"output_tokens": 0}
        delta = {"stop_reason": reason, "stop_sequence": sequence}
        out.append(_sse({"type": "message_delta", "delta": delta, "usage": counts}))
        out.append(_sse({"type": "message_stop"}))
        self.ended = True
        return b"".join(out)

    def end(self) -> bytes:
        """What the end of the upstream's bytes gives: the end of a message that had its
        ``finish_reason`` (a ``[DONE]`` was left out), else an error (the stream was cut)."""
        if self.ended:
            return b""
        if self.finish_reason is not None:
            return self.finish()
        return self.fail(error_body(None, None, "the upstream stream ended before its answer did"))

    def fail(self, error: dict[str, Any]) -> bytes:
        """An ``error`` event, after the open block's end; nothing comes after it."""
        out = b"".join(self.close())
        self.ended = True
        return out + _sse(error)


def _error_status(chunk: Any) -> int | None:
    """The HTTP status a streamed error names (``error.code``, as vLLM sends it), if any."""
    error = chunk.get("error") if isinstance(chunk, Mapping) else None
    code = error.get("code") if isinstance(error, Mapping) else None
    return code if isinstance(code, int) and not isinstance(code, bool) and code >= 400 else None


def _sse(event: Mapping[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"
