"""Shared helpers for the tests of Anthropic's Messages API over a chat-completions provider
(:mod:`batchd.providers.messages` and :mod:`batchd.providers.messages_stream`):
``test_messages_request``, ``test_messages_answer`` and ``test_messages_bridge``.

Messages params and chat completions to translate, chat-completion streams as server-sent events
with the Messages events they translate to (every event parsed by the ``anthropic`` SDK's own
types), and the fake chat-completions providers a :class:`MessagesBridge` is put over.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any, ClassVar

from anthropic.types import RawMessageStreamEvent
from anthropic.types.shared import ErrorResponse
from pydantic import TypeAdapter

from batchd.providers.base import (
    Provider,
    ProviderOptions,
    ProviderRequest,
    ProviderResult,
    ProviderStream,
)
from batchd.providers.messages import CHAT, MESSAGES, message_events

MODEL = "claude-route"
EVENT = TypeAdapter[Any](RawMessageStreamEvent)


def params(content: Any = "Hi", **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": content}],
        **extra,
    }


def completion(
    content: str | None = "Hello!",
    *,
    finish: str | None = "stop",
    calls: list[Any] | None = None,
    usage: dict[str, Any] | None = None,
    **choice: Any,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if calls is not None:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "upstream-model",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
        "usage": usage or {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def call(call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# -- streams ------------------------------------------------------------------------------------


def sse(*chunks: Any) -> bytes:
    return b"".join(
        b"data: " + (c if isinstance(c, bytes) else json.dumps(c).encode()) + b"\n\n"
        for c in chunks
    )


def delta(
    content: str | None = None,
    *,
    finish: str | None = None,
    calls: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    **choice: Any,
) -> dict[str, Any]:
    part: dict[str, Any] = {}
    if content is not None:
        part["content"] = content
    if calls is not None:
        part["tool_calls"] = calls
    chunk: dict[str, Any] = {
        "id": "chatcmpl-s1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": part, "finish_reason": finish, **choice}],
    }
    if usage is not None:
        chunk["usage"] = usage
    return chunk


def call_delta(
    index: int, arguments: str, call_id: str | None = None, name: str | None = None
) -> dict[str, Any]:
    function: dict[str, Any] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    fragment: dict[str, Any] = {"index": index, "function": function}
    if call_id is not None:
        fragment.update(id=call_id, type="function")
    return fragment


FINAL_USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
USAGE_CHUNK = {"id": "chatcmpl-s1", "choices": [], "usage": FINAL_USAGE}
TEXT_STREAM = sse(
    {"id": "chatcmpl-s1", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
    delta("Hel"),
    delta("lo"),
    delta(finish="stop"),
    USAGE_CHUNK,
    b"[DONE]",
)


async def translate(chunks: Sequence[bytes], *, fail: Exception | None = None) -> bytes:
    async def upstream() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk
        if fail is not None:
            raise fail

    return b"".join([out async for out in message_events(upstream(), model=MODEL)])


def events(raw: bytes) -> list[dict[str, Any]]:
    """Each event of a Messages stream, its name line checked against its type and its data
    parsed by the SDK (error events by the SDK's ErrorResponse)."""
    assert raw.endswith(b"\n\n")
    found = []
    for block in raw.decode().split("\n\n")[:-1]:
        name_line, data_line = block.split("\n")
        name = name_line.removeprefix("event: ")
        data = json.loads(data_line.removeprefix("data: "))
        assert name == data["type"]
        if name == "error":
            ErrorResponse.model_validate(data)
        else:
            EVENT.validate_python(data)
        found.append(data)
    return found


def bytewise(raw: bytes) -> list[bytes]:
    return [raw[i : i + 1] for i in range(len(raw))]


def no_usage_start(message_id: str = "msg_s1", input_tokens: int = 0) -> dict[str, Any]:
    return {
        "type": "message_start",
        "message": {
            "id": message_id,
            "type": "message",
            "role": "assistant",
            "model": MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": 0,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        },
    }


def message_end(
    reason: str, usage: dict[str, int], sequence: str | None = None
) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage,
        },
        {"type": "message_stop"},
    ]


FULL_USAGE = {
    "input_tokens": 9,
    "output_tokens": 4,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}
TEXT_EVENTS = [
    no_usage_start(),
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo"}},
    {"type": "content_block_stop", "index": 0},
    *message_end("end_turn", FULL_USAGE),
]


TOOL_STREAM = sse(
    delta("Let me check."),
    delta(calls=[call_delta(0, "", "call_a", "weather")]),
    delta(calls=[call_delta(0, '{"city": ')]),
    delta(calls=[call_delta(0, '"Paris"}')]),
    delta(calls=[call_delta(1, '{"city": "Rome"}', "call_b", "weather")]),
    delta(finish="tool_calls"),
    USAGE_CHUNK,
    b"[DONE]",
)


# -- fake providers -----------------------------------------------------------------------------


class FakeStream(ProviderStream):
    def __init__(self, chunks: Sequence[bytes]) -> None:
        super().__init__(200, "text/event-stream; charset=utf-8", "req-stream")
        self._chunks = chunks
        self.closed = 0

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk

    async def aclose(self) -> None:
        self.closed += 1


class FakeChat(Provider):
    """Answers each chat request from a script keyed by its last user message."""

    name: ClassVar[str] = "fake"
    endpoints: ClassVar[frozenset[str]] = frozenset({CHAT})
    streaming: ClassVar[bool] = True

    def __init__(
        self, answers: Mapping[str, Callable[[int], ProviderResult]] | None = None
    ) -> None:
        super().__init__("route-model", ProviderOptions())
        self.answers = answers or {}
        self.groups: list[list[ProviderRequest]] = []
        self.forwarded: list[tuple[str, Mapping[str, Any]]] = []
        self.streamed: list[tuple[str, Mapping[str, Any]]] = []
        self.started: ProviderStream | ProviderResult = FakeStream([TEXT_STREAM])

    def _answer(self, request: ProviderRequest) -> ProviderResult:
        said = request.body["messages"][-1]["content"]
        make = self.answers.get(said)
        if make is not None:
            return make(request.index)
        return ProviderResult.success(request.index, 200, completion(f"echo {said}"), "req-1")

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        self.groups.append(list(group))
        return [self._answer(request) for request in group]

    async def forward(self, endpoint: str, body: Mapping[str, Any]) -> ProviderResult:
        self.forwarded.append((endpoint, body))
        return self._answer(ProviderRequest(0, "", endpoint, body))

    async def stream(
        self, endpoint: str, body: Mapping[str, Any]
    ) -> ProviderStream | ProviderResult:
        self.streamed.append((endpoint, body))
        return self.started


class Served(Provider):
    name: ClassVar[str] = "native"
    endpoints: ClassVar[frozenset[str]] = frozenset({MESSAGES, CHAT})

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        raise NotImplementedError


class Embeddings(Served):
    name: ClassVar[str] = "vectors"
    endpoints: ClassVar[frozenset[str]] = frozenset({"/v1/embeddings"})


def request(index: int, body: Mapping[str, Any]) -> ProviderRequest:
    return ProviderRequest(index, f"req-{index}", MESSAGES, body)


def http_error(
    status: int, message: str, retry_after: float | None = None
) -> Callable[[int], ProviderResult]:
    def make(index: int) -> ProviderResult:
        return ProviderResult.failure(
            index,
            "upstream_code",
            message,
            retryable=status >= 429,
            status_code=status,
            body={
                "error": {"message": message, "type": "x", "param": None, "code": "upstream_code"}
            },
            request_id="req-err",
            retry_after=retry_after,
        )

    return make
