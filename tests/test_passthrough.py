"""The synchronous routes (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/models``) of a real ``batchd serve`` process, driven with the ``openai`` SDK, against the
fake upstream in its own process; plus a small SSE upstream in a thread of this process for what
the fake cannot do (hold a stream open half-way, break it, notice its client leaving), and an
in-process app for routes whose provider lacks an endpoint or streaming."""

from __future__ import annotations

import asyncio
import base64
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, cast

import httpx
import openai
import orjson
import pytest
from aiohttp import web
from fastapi import FastAPI
from fastapi.testclient import TestClient
from openai import OpenAI

from batchd.api import passthrough
from batchd.api.deps import Services
from batchd.api.errors import install_error_handlers
from batchd.api.middleware import RequestContextMiddleware
from batchd.config import Settings
from batchd.providers import Provider, ProviderOptions, ProviderRequest, ProviderResult
from batchd.providers.table import ModelTable
from tests.serverproc import BatchdServer, free_port, write_config
from tests.upstream import answers
from tests.upstream.process import UpstreamProcess

SECRET = "sk-passthrough-0123456789abcdef"


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chat_chunk(content: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-gated",
        "object": "chat.completion.chunk",
        "created": answers.CREATED,
        "model": "gated",
        "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": None}],
    }


class GatedUpstream:
    """An SSE chat upstream on its own event loop in a thread of the test process.

    The last user message says what it does after the first chunk: ``"gate"`` waits for
    :meth:`open_gate` and then finishes; ``"break"`` resets the connection. :attr:`left` is set
    when a client goes away while its stream is open.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.left = threading.Event()
        self._gate = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> GatedUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def open_gate(self) -> None:
        self.loop.call_soon_threadsafe(self._gate.set)

    def reset(self) -> None:
        self.loop.call_soon_threadsafe(self._gate.clear)
        self.left.clear()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        action = body["messages"][-1]["content"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(_sse(_chat_chunk("first ")))
            if action == "break":
                assert request.transport is not None
                request.transport.abort()
                return response
            await self._gate.wait()
            await response.write(_sse(_chat_chunk("second")))
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.left.set()
            raise
        return response


@dataclass(frozen=True)
class Stack:
    upstream: UpstreamProcess
    gated: GatedUpstream
    server: BatchdServer
    down_port: int


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """One fake upstream, one gated upstream and one ``batchd serve`` for the module."""
    root = tmp_path_factory.mktemp("passthrough")
    upstream = UpstreamProcess(root).start()
    gated = GatedUpstream().start()
    down_port = free_port()  # nothing listens there
    here = {"provider": "openai", "base_url": upstream.api_url}
    models: list[dict[str, Any]] = [
        {"name": "gpt-4o-mini", **here},
        {"name": "gpt-3.5-turbo-instruct", **here},
        {"name": "text-embedding-3-small", **here},
        {"name": "renamed", **here, "upstream_model": "gpt-4o"},
        {"name": "meta-llama/Llama-3.1-8B", **here, "upstream_model": "gpt-4o-mini"},
        {"name": "impatient", **here, "timeout": 0.5},
        {"name": "gated", "provider": "openai", "base_url": gated.api_url},
        {
            "name": "down",
            "provider": "openai",
            "base_url": f"http://127.0.0.1:{down_port}/v1",
            "api_key_env": "PASSTHROUGH_KEY",
        },
    ]
    config = write_config(root / "batchd.toml", models=models)
    server = BatchdServer(root / "data", config, env={"PASSTHROUGH_KEY": SECRET})
    try:
        server.start()
        yield Stack(upstream, gated, server, down_port)
    finally:
        server.stop()
        gated.stop()
        errors = upstream.stats(digests=False)["internal_errors"]
        upstream.stop()
        assert errors == 0, f"the fake upstream hit {errors} internal errors"


@pytest.fixture
def client(stack: Stack) -> Iterator[OpenAI]:
    with OpenAI(base_url=stack.server.api_url, api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture
def direct(stack: Stack) -> Iterator[OpenAI]:
    """A client of the fake upstream itself, for what it answers without batchd."""
    with OpenAI(base_url=stack.upstream.api_url, api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.server.base_url, timeout=10) as c:
        yield c


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def received(upstream: UpstreamProcess, since: int) -> list[dict[str, Any]]:
    """The upstream's log entries of ``/v1`` requests after the first ``since``."""
    return [e for e in upstream.requests_log(since) if e["path"].startswith("/v1/")]


# -- chat completions ---------------------------------------------------------------------------


def test_chat_completion_is_what_the_upstream_answers(client: OpenAI, direct: OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You sort films."},
            *user("A heist in Lisbon, told backwards."),
        ],
        "temperature": 0.2,
        "n": 2,
    }
    raw = client.chat.completions.with_raw_response.create(**kwargs)
    ours = raw.parse()
    assert ours.model_dump() == direct.chat.completions.create(**kwargs).model_dump()
    assert ours.choices[0].message.content == answers.chat_content(kwargs)
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.headers["x-upstream-request-id"].startswith("req_")


def test_multimodal_body_reaches_the_upstream_untouched(stack: Stack, client: OpenAI) -> None:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is in this picture?"},
                    {
                        "type": "image_url",
                        "image_url": {
                            "url": "data:image/png;base64,"
                            + base64.b64encode(b"\x89PNG\r\n\x1a\n" * 32).decode(),
                            "detail": "low",
                        },
                    },
                ],
            }
        ],
        "max_tokens": 20,
        "metadata": {"nested": "kept"},
    }
    since = len(stack.upstream.requests_log())
    answer = client.chat.completions.create(**body)
    [entry] = received(stack.upstream, since)
    assert entry["digest"] == answers.body_digest(body)
    assert answer.choices[0].message.content == answers.chat_content(body)


def test_upstream_model_rename_is_what_the_upstream_sees(stack: Stack, client: OpenAI) -> None:
    since = len(stack.upstream.requests_log())
    answer = client.chat.completions.create(model="renamed", messages=user("Rename me."))
    [entry] = received(stack.upstream, since)
    assert entry["model"] == "gpt-4o"
    assert entry["digest"] == answers.body_digest(
        {"model": "gpt-4o", "messages": user("Rename me.")}
    )
    assert answer.model == "gpt-4o"  # the upstream's answer, relayed as it is


def test_streamed_chat_has_the_content_of_the_whole_answer(stack: Stack, client: OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": user("A long story about a lighthouse keeper who collects clocks and storms."),
    }
    whole = client.chat.completions.create(**kwargs)
    with client.chat.completions.create(
        **kwargs, stream=True, stream_options={"include_usage": True}
    ) as stream:
        chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == whole.choices[0].message.content
    assert len([c for c in chunks if c.choices]) > 3
    assert chunks[-1].usage is not None
    assert whole.usage is not None
    assert chunks[-1].usage.total_tokens == whole.usage.total_tokens


def test_stream_is_sse_and_relayed_byte_for_byte(stack: Stack, http: httpx.Client) -> None:
    body = {"model": "gpt-4o-mini", "messages": user("Bytes, please."), "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"].startswith("req_")
        assert "content-length" not in response.headers
        raw = response.read()
    with httpx.Client(timeout=10) as c:
        expected = c.post(stack.upstream.api_url + "/chat/completions", json=body).content
    assert raw == expected
    assert raw.endswith(b"data: [DONE]\n\n")


def test_stream_chunks_arrive_before_the_upstream_finishes(stack: Stack, client: OpenAI) -> None:
    stack.gated.reset()
    # The upstream holds everything after its first chunk back until the gate opens: had batchd
    # buffered the stream, the first chunk would never come and the client would time out.
    with client.with_options(timeout=5).chat.completions.create(
        model="gated", messages=user("gate"), stream=True
    ) as stream:
        iterator = iter(stream)
        assert next(iterator).choices[0].delta.content == "first "
        stack.gated.open_gate()
        rest = [c.choices[0].delta.content for c in iterator]
    assert rest == ["second"]


def test_client_leaving_a_stream_abandons_the_upstream_request(
    stack: Stack, http: httpx.Client
) -> None:
    stack.gated.reset()
    body = {"model": "gated", "messages": user("gate"), "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        first = next(response.iter_bytes())
        assert first.startswith(b"data: ")
    assert stack.gated.left.wait(5), "batchd kept the upstream stream open after its client left"
    stack.gated.open_gate()


def test_stream_that_breaks_half_way_ends_with_an_error_event(client: OpenAI) -> None:
    with client.chat.completions.create(model="gated", messages=user("break"), stream=True) as s:
        iterator = iter(s)
        assert next(iterator).choices[0].delta.content == "first "
        with pytest.raises(openai.APIError, match="failed while streaming"):
            next(iterator)


def test_stream_refused_by_the_upstream_is_an_ordinary_error(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=user("FAULT:400 please"), stream=True
        )
    assert caught.value.status_code == 400
    assert caught.value.code == "injected_fault"


# -- completions and embeddings -----------------------------------------------------------------


def test_completion_plain_and_streamed(client: OpenAI, direct: OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": "gpt-3.5-turbo-instruct",
        "prompt": "Once upon a time in a small village by the sea there lived",
        "max_tokens": 16,
    }
    whole = client.completions.create(**kwargs)
    assert whole.model_dump() == direct.completions.create(**kwargs).model_dump()
    with client.completions.create(**kwargs, stream=True) as stream:
        text = "".join(chunk.choices[0].text for chunk in stream)
    assert text == whole.choices[0].text


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_embeddings(client: OpenAI, encoding_format: str | None) -> None:
    inputs = ["a quiet harbour", "a loud market"]
    extra: dict[str, Any] = {} if encoding_format is None else {"encoding_format": encoding_format}
    answer = client.embeddings.create(
        model="text-embedding-3-small", input=inputs, dimensions=16, **extra
    )
    expected = answers.embeddings(
        {"model": "text-embedding-3-small", "input": inputs, "dimensions": 16, **extra}
    )
    got = [item.embedding for item in answer.data]
    if encoding_format == "base64":
        assert got == [item["embedding"] for item in expected["data"]]
    else:  # the SDK asks for base64 when no format is given, and decodes it
        assert got == [answers.embedding_vector(text, 16) for text in inputs]
    assert answer.usage.total_tokens == expected["usage"]["total_tokens"]


# -- models -------------------------------------------------------------------------------------


def test_models_list_every_route(client: OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == [
        "gpt-4o-mini",
        "gpt-3.5-turbo-instruct",
        "text-embedding-3-small",
        "renamed",
        "meta-llama/Llama-3.1-8B",
        "impatient",
        "gated",
        "down",
    ]
    assert {(m.object, m.owned_by) for m in models} == {("model", "batchd")}
    assert all(isinstance(m.created, int) and m.created > 0 for m in models)


def test_models_retrieve(client: OpenAI, http: httpx.Client) -> None:
    model = client.models.retrieve("renamed")
    assert (model.id, model.object, model.owned_by) == ("renamed", "model", "batchd")
    response = http.get("/v1/models/meta-llama/Llama-3.1-8B")
    assert response.status_code == 200
    assert response.json()["id"] == "meta-llama/Llama-3.1-8B"


def test_models_retrieve_unknown(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("gpt-5-ultra")
    assert caught.value.code == "model_not_found"
    assert caught.value.body == {
        "message": caught.value.body["message"],  # type: ignore[index]
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }


# -- routing errors -----------------------------------------------------------------------------


def test_unknown_model_is_404_naming_the_configured_ones(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-5-ultra", messages=user("hi"))
    error = caught.value
    assert error.code == "model_not_found"
    assert error.param == "model"
    assert error.response.headers["x-should-retry"] == "false"
    assert "'gpt-5-ultra'" in error.message
    assert "'gpt-4o-mini'" in error.message
    assert "[[models]]" in error.message


@pytest.mark.parametrize(
    ("content", "param", "code"),
    [
        (b'{"messages": []}', "model", "missing_required_parameter"),
        (b'{"model": 7, "messages": []}', "model", "invalid_type"),
        (b"[1, 2]", None, "invalid_type"),
        (b"{not json", None, "invalid_json"),
    ],
)
def test_bad_bodies_are_400(
    http: httpx.Client, content: bytes, param: str | None, code: str
) -> None:
    response = http.post(
        "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": param,
            "code": code,
        }
    }


# -- upstream errors ----------------------------------------------------------------------------


def test_upstream_400_is_relayed_with_its_body(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("FAULT:400 now"))
    assert caught.value.status_code == 400
    assert caught.value.body == {
        "message": "Injected bad request (FAULT:400).",
        "type": "invalid_request_error",
        "param": None,
        "code": "injected_fault",
    }


def test_upstream_validation_400_is_relayed(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("hi"), n=500)
    assert caught.value.param == "n"
    assert caught.value.code == "invalid_value"


def test_upstream_429_is_relayed_with_retry_after(client: OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("FAULT:429 now"))
    headers = caught.value.response.headers
    assert (headers["retry-after"], headers["retry-after-ms"]) == ("1", "1000")
    assert "x-should-retry" not in headers
    assert caught.value.code == "rate_limit_exceeded"
    assert caught.value.type == "requests"


def test_upstream_500_is_relayed(client: OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model="text-embedding-3-small", input="FAULT:500 now")
    assert caught.value.status_code == 500
    assert caught.value.type == "server_error"
    assert "injected" in caught.value.message


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_down_is_502(stack: Stack, client: OpenAI, stream: bool) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="down", messages=user("anyone?"), stream=stream)
    error = caught.value
    assert error.status_code == 502
    assert (error.type, error.code) == ("server_error", "upstream_unavailable")
    assert "'down' could not be reached" in error.message
    assert "ConnectError on the upstream of model 'down'" in error.message
    # The upstream's address is the operator's business (the log has it), not the client's.
    assert f"127.0.0.1:{stack.down_port}" not in error.response.text
    assert SECRET not in error.response.text


def test_upstream_timeout_is_504(client: OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="impatient", messages=user("FAULT:hang now"))
    error = caught.value
    assert error.status_code == 504
    assert (error.type, error.code) == ("server_error", "upstream_timeout")
    assert "0.5s" in error.message


def test_upstream_reset_is_502(client: OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="FAULT:reset now")
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unavailable"


def test_upstream_malformed_answer_is_502(client: OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=user("FAULT:malformed"))
    assert caught.value.status_code == 502
    assert caught.value.code == "invalid_upstream_response"


# -- providers without an endpoint or without streaming (in-process) ----------------------------


class EmbeddingsOnly(Provider):
    """A provider that serves embeddings only and cannot stream: the base class's defaults."""

    name: ClassVar[str] = "embeddings-only"
    endpoints: ClassVar[frozenset[str]] = frozenset({"/v1/embeddings"})

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        return [
            ProviderResult.success(r.index, 200, {"object": "list", "seen": dict(r.body)})
            for r in group
        ]


def local_client(providers: dict[str, Provider] | None) -> TestClient:
    """The passthrough routes in-process, over ``providers`` (``None``: still starting up)."""
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(passthrough.router, prefix="/v1")
    app.add_middleware(RequestContextMiddleware)
    none = cast(Any, None)  # the passthrough routes use only the settings and the providers
    table = ModelTable(providers or {})
    services = Services(Settings(embedded_models=False), none, none, none, table, none, none)
    app.state.services = None if providers is None else services
    return TestClient(app, base_url="http://batchd.test")


def test_default_forward_is_one_execute() -> None:
    with local_client({"local": EmbeddingsOnly("local", ProviderOptions())}) as local:
        response = local.post("/v1/embeddings", json={"model": "local", "input": "x"})
    assert response.status_code == 200
    assert response.json() == {"object": "list", "seen": {"model": "local", "input": "x"}}


def test_endpoint_the_route_does_not_serve_is_400() -> None:
    with local_client({"local": EmbeddingsOnly("local", ProviderOptions())}) as local:
        response = local.post("/v1/chat/completions", json={"model": "local", "messages": []})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("model", "unsupported_endpoint")
    assert "/v1/embeddings" in error["message"]


def test_stream_on_a_provider_that_cannot_is_400() -> None:
    class CompletionsOnly(EmbeddingsOnly):
        endpoints: ClassVar[frozenset[str]] = frozenset({"/v1/completions"})

    with local_client({"local": CompletionsOnly("local", ProviderOptions())}) as local:
        body = {"model": "local", "prompt": "x", "stream": True}
        response = local.post("/v1/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["param"], error["code"]) == ("stream", "streaming_unsupported")
    assert "does not support streaming" in error["message"]


def test_starting_up_is_503() -> None:
    with local_client(None) as local:
        response = local.get("/v1/models")
    assert response.status_code == 503
    assert response.json()["error"]["type"] == "server_error"
