"""The provider layer: the ``openai`` provider against the fake upstream process, option
validation, the registry, and the retry strategy (unit tests with a seeded RNG)."""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import random
from collections.abc import Sequence
from typing import Any, ClassVar

import pytest
from aiohttp import web
from pyreqwest.client import Client, ClientBuilder
from pyreqwest.exceptions import ClientClosedError

from batchd.config import ModelRoute, Settings
from batchd.engine.retry import RetryDecision, RetryStrategy
from batchd.errors import ConfigError
from batchd.providers import (
    ENTRY_POINT_GROUP,
    Provider,
    ProviderRegistry,
    ProviderRequest,
    ProviderResult,
    build_providers,
)
from batchd.providers.base import ProviderStream, ProviderStreamError
from batchd.providers.openai_http import OpenAIOptions, OpenAIProvider, parse_retry_after
from tests.upstream import answers
from tests.upstream.fixtures import clean_upstream_fixture, upstream_fixture  # noqa: F401
from tests.upstream.process import UpstreamProcess

CHAT = "/v1/chat/completions"
SECRET = "sk-test-0123456789abcdef"


def chat_body(text: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


def route(upstream: UpstreamProcess, **options: Any) -> ModelRoute:
    return ModelRoute(name="gpt-4o-mini", provider="openai", base_url=upstream.api_url, **options)


def provider_for(
    upstream: UpstreamProcess, env: dict[str, str] | None = None, **options: Any
) -> OpenAIProvider:
    return OpenAIProvider.from_route(route(upstream, **options), env or {})


async def run_one(
    provider: Provider, body: dict[str, Any], endpoint: str = CHAT, index: int = 0
) -> ProviderResult:
    [result] = await provider.execute([ProviderRequest(index, f"req-{index}", endpoint, body)])
    assert result.index == index
    return result


# -- success: bodies pass through ------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("endpoint", "body", "answer"),
    [
        (
            CHAT,
            chat_body("A heist in Lisbon.", temperature=0.2, response_format={"type": "text"}),
            answers.chat_completion,
        ),
        (
            "/v1/completions",
            {"model": "gpt-3.5-turbo-instruct", "prompt": ["one", "two"], "max_tokens": 7},
            answers.completion,
        ),
        (
            "/v1/embeddings",
            {"model": "text-embedding-3-small", "input": ["a", "b"], "dimensions": 8},
            answers.embeddings,
        ),
    ],
)
async def test_success_passes_body_through(
    clean_upstream: UpstreamProcess, endpoint: str, body: dict[str, Any], answer: Any
) -> None:
    async with provider_for(clean_upstream) as provider:
        result = await run_one(provider, body, endpoint, index=3)
    assert result.ok
    assert result.status_code == 200
    assert result.error_code is None
    assert not result.retryable
    assert result.body == answer(body)
    digest = answers.body_digest(body)
    assert result.request_id == f"req_{digest[:16]}_1"
    assert clean_upstream.attempts(digest) == 1


@pytest.mark.anyio
async def test_azure_endpoint_spelling(clean_upstream: UpstreamProcess) -> None:
    body = chat_body("Two sisters and a lighthouse.")
    async with provider_for(clean_upstream) as provider:
        result = await run_one(provider, body, "/chat/completions")
    assert result.ok
    assert result.body == answers.chat_completion(body)


@pytest.mark.anyio
async def test_model_rename(clean_upstream: UpstreamProcess) -> None:
    body = chat_body("An astronaut on Europa.")
    async with provider_for(clean_upstream, upstream_model="served-model") as provider:
        result = await run_one(provider, body)
    forwarded = {**body, "model": "served-model"}
    assert result.ok
    assert result.body == answers.chat_completion(forwarded)
    assert result.request_id == f"req_{answers.body_digest(forwarded)[:16]}_1"
    assert [e["model"] for e in clean_upstream.requests_log()] == ["served-model"]
    assert body["model"] == "gpt-4o-mini"  # the caller's body is not changed


@pytest.mark.anyio
async def test_group_results_in_order(clean_upstream: UpstreamProcess) -> None:
    bodies = [chat_body(f"movie {i}") for i in range(5)]
    bodies[2] = chat_body("FAULT:400 here")
    group = [ProviderRequest(10 + i, f"c{i}", CHAT, b) for i, b in enumerate(bodies)]
    async with provider_for(clean_upstream) as provider:
        results = await provider.execute(group)
    assert [r.index for r in results] == [10, 11, 12, 13, 14]
    assert [r.ok for r in results] == [True, True, False, True, True]


@pytest.mark.anyio
async def test_unsupported_endpoint_is_a_result(clean_upstream: UpstreamProcess) -> None:
    async with provider_for(clean_upstream) as provider:
        result = await run_one(provider, chat_body("x"), "/v1/images/generations")
    assert result.error_code == "unsupported_endpoint"
    assert not result.retryable
    assert clean_upstream.stats(digests=False)["total"] == 0


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_500_is_retryable(clean_upstream: UpstreamProcess) -> None:
    async with provider_for(clean_upstream) as provider:
        result = await run_one(provider, chat_body("FAULT:500 please"))
    assert not result.ok
    assert result.status_code == 500
    assert result.retryable
    assert result.error_code
    assert result.request_id is not None
    assert result.body["error"]["type"] == "server_error"


@pytest.mark.anyio
async def test_500x2_then_success(clean_upstream: UpstreamProcess) -> None:
    body = chat_body("FAULT:500x2 twice")
    async with provider_for(clean_upstream) as provider:
        outcomes = [await run_one(provider, body) for _ in range(3)]
    assert [r.status_code for r in outcomes] == [500, 500, 200]
    assert outcomes[2].body == answers.chat_completion(body)


@pytest.mark.anyio
async def test_429_carries_retry_after(clean_upstream: UpstreamProcess) -> None:
    clean_upstream.control(retry_after=0.25)
    async with provider_for(clean_upstream) as provider:
        result = await run_one(provider, chat_body("FAULT:429 slow down"))
    assert result.status_code == 429
    assert result.retryable
    assert result.retry_after == pytest.approx(0.25)


@pytest.mark.anyio
async def test_reset_is_connection_error(clean_upstream: UpstreamProcess) -> None:
    async with provider_for(clean_upstream) as provider:
        result = await run_one(provider, chat_body("FAULT:reset now"))
    assert result.error_code == "connection_error"
    assert result.status_code is None
    assert result.retryable
    # The message reaches the client (the error file): the model, never the upstream's address.
    assert result.error_message is not None
    assert "on the upstream of model 'gpt-4o-mini'" in result.error_message
    assert f"127.0.0.1:{clean_upstream.port}" not in result.error_message


@pytest.mark.anyio
async def test_malformed_2xx_is_retryable(clean_upstream: UpstreamProcess) -> None:
    async with provider_for(clean_upstream) as provider:
        result = await run_one(provider, chat_body("FAULT:malformed body"))
    assert result.error_code == "invalid_upstream_response"
    assert result.status_code == 200
    assert result.retryable
    assert not result.ok


@pytest.mark.anyio
async def test_hang_times_out(clean_upstream: UpstreamProcess) -> None:
    async with provider_for(clean_upstream, timeout=0.3) as provider:
        result = await run_one(provider, chat_body("FAULT:hang forever"))
    assert result.error_code == "request_timeout"
    assert result.status_code is None
    assert result.retryable
    clean_upstream.wait_idle()


@pytest.mark.anyio
async def test_400_is_final_with_upstream_error_body(clean_upstream: UpstreamProcess) -> None:
    async with provider_for(clean_upstream) as provider:
        injected = await run_one(provider, chat_body("FAULT:400 bad"))
        rejected = await run_one(provider, chat_body("fine", model="bad-request-model"))
    assert injected.status_code == 400
    assert not injected.retryable
    assert injected.error_code == "injected_fault"
    assert injected.body == {
        "error": {
            "message": "Injected bad request (FAULT:400).",
            "type": "invalid_request_error",
            "param": None,
            "code": "injected_fault",
        }
    }
    assert rejected.status_code == 400
    assert not rejected.retryable
    assert rejected.body["error"]["param"] == "model"
    assert rejected.error_code == "invalid_model"
    assert rejected.retry_after is None


@pytest.mark.anyio
async def test_unreachable_upstream_is_connection_error() -> None:
    up = ModelRoute(name="m", provider="openai", base_url="http://127.0.0.1:9/v1")
    async with OpenAIProvider.from_route(up, {}) as provider:
        result = await run_one(provider, chat_body("x"))
    assert result.error_code == "connection_error"
    assert result.retryable
    assert result.error_message is not None
    assert "ConnectError on the upstream of model 'm'" in result.error_message
    assert "127.0.0.1" not in result.error_message


# -- concurrency, keys, transport ----------------------------------------------------------------


@pytest.mark.anyio
async def test_concurrency_is_bounded(clean_upstream: UpstreamProcess) -> None:
    clean_upstream.control(latency_ms=60)
    async with provider_for(clean_upstream, max_concurrency=3) as provider:
        results = await asyncio.gather(
            *(run_one(provider, chat_body(f"film {i}"), index=i) for i in range(15))
        )
    assert all(r.ok for r in results)
    stats = clean_upstream.stats(digests=False)
    assert stats["total"] == 15
    assert stats["max_in_flight"] == 3


@pytest.mark.anyio
async def test_api_key_sent_as_bearer_and_never_leaked(
    clean_upstream: UpstreamProcess, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clean_upstream.control(api_key=SECRET)
    env = {"UPSTREAM_KEY": SECRET}
    async with provider_for(clean_upstream, env, api_key_env="UPSTREAM_KEY") as provider:
        results = [
            await run_one(provider, chat_body("ok")),
            await run_one(provider, chat_body("FAULT:400 x")),
            await run_one(provider, chat_body("FAULT:reset x")),
        ]
        assert SECRET not in repr(provider)
        assert SECRET not in repr(provider.options)
    assert results[0].ok
    for result in results:
        assert SECRET not in repr(result)
    assert SECRET not in caplog.text
    async with provider_for(clean_upstream) as keyless:
        denied = await run_one(keyless, chat_body("ok"))
    assert denied.status_code == 401
    assert not denied.retryable
    assert denied.error_code == "invalid_api_key"


@pytest.mark.anyio
async def test_an_upstream_that_echoes_the_key_gets_it_redacted(
    clean_upstream: UpstreamProcess,
) -> None:
    """The fake upstream's 401 quotes the key it was sent, as a careless server might: the
    result (a line of the error file, or the synchronous route's answer) has ``***`` instead."""
    clean_upstream.control(api_key="the-key-the-upstream-wants")
    async with provider_for(clean_upstream, {"K": SECRET}, api_key_env="K") as provider:
        denied = await run_one(provider, chat_body("ok"))
        forwarded = await provider.forward("/v1/chat/completions", chat_body("ok"))
    for result in (denied, forwarded):
        assert result.status_code == 401
        assert SECRET not in repr(result)
        assert isinstance(result.body, dict)
        assert result.body["error"]["message"] == "Incorrect API key provided: ***."


def test_missing_api_key_env_is_config_error(upstream: UpstreamProcess) -> None:
    with pytest.raises(ConfigError, match=r"'gpt-4o-mini'.*'NOPE_KEY'.*not set"):
        provider_for(upstream, {}, api_key_env="NOPE_KEY")


@pytest.mark.anyio
async def test_injected_client_is_not_closed(clean_upstream: UpstreamProcess) -> None:
    async with ClientBuilder().build() as client:
        options = OpenAIOptions(base_url=clean_upstream.api_url)
        provider = OpenAIProvider("gpt-4o-mini", options, client=client)
        async with provider:
            result = await run_one(provider, chat_body("hello"))
        assert result.ok
        # Still open: the provider's headers went with the request, not onto the client.
        answer = await client.get(f"{clean_upstream.api_url}/models").build().send()
        assert answer.status == 200


@pytest.mark.anyio
async def test_built_client_is_owned_and_close_twice(clean_upstream: UpstreamProcess) -> None:
    built: list[Client] = []

    def build_client(builder: ClientBuilder) -> Client:
        client = builder.max_connections(2).build()  # after the provider's own settings
        built.append(client)
        return client

    clean_upstream.control(latency_ms=60)
    provider = OpenAIProvider(
        "gpt-4o-mini", OpenAIOptions(base_url=clean_upstream.api_url), build_client=build_client
    )
    await provider.start()
    results = await asyncio.gather(
        *(run_one(provider, chat_body(f"hi {i}"), index=i) for i in range(6))
    )
    assert all(r.ok for r in results)
    assert clean_upstream.stats(digests=False)["max_in_flight"] == 2
    await provider.close()
    await provider.close()
    [client] = built
    with pytest.raises(ClientClosedError):
        await client.get(f"{clean_upstream.api_url}/models").build().send()
    with pytest.raises(RuntimeError, match="not started"):
        await run_one(provider, chat_body("hi"))


@pytest.mark.anyio
async def test_client_and_build_client_exclude_each_other() -> None:
    options = OpenAIOptions(base_url="http://h/v1")
    async with ClientBuilder().build() as client:
        with pytest.raises(ValueError, match="not both"):
            OpenAIProvider("m", options, client=client, build_client=ClientBuilder.build)


# -- streams (a small SSE upstream on the test's own loop: holds, stalls, breaks) -------------


class HeldStream:
    """``POST /v1/chat/completions``: with ``"stream": true`` one SSE chunk, then what the last
    message says: ``hold`` (until :attr:`gate` is set, then ``[DONE]``), ``stall`` (nothing
    more), ``break`` (the connection aborted); without, a small JSON answer."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.left = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.api_url = ""

    async def __aenter__(self) -> HeldStream:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.api_url = f"http://127.0.0.1:{port}/v1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            return web.json_response({"ok": True})
        action = body["messages"][-1]["content"]
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            await response.write(b"data: first\n\n")
            if action == "break":
                assert request.transport is not None
                request.transport.abort()
                return response
            if action == "stall":
                await asyncio.sleep(30)
            await self.gate.wait()
            await response.write(b"data: [DONE]\n\n")
            await response.write_eof()
        except (asyncio.CancelledError, ConnectionResetError):
            self.left.set()
            raise
        return response


async def open_stream(provider: OpenAIProvider, action: str) -> ProviderStream:
    stream = await provider.stream(CHAT, chat_body(action, stream=True))
    assert isinstance(stream, ProviderStream), stream
    return stream


async def collect(stream: ProviderStream, into: list[bytes]) -> None:
    async for chunk in stream.chunks():
        into.append(chunk)


@pytest.mark.anyio
async def test_stream_relays_chunks_as_they_come_and_holds_a_slot() -> None:
    async with HeldStream() as up:
        route = ModelRoute(name="m", provider="openai", base_url=up.api_url, max_concurrency=1)
        async with OpenAIProvider.from_route(route, {}) as provider:
            stream = await open_stream(provider, "hold")
            assert (stream.status_code, stream.content_type) == (200, "text/event-stream")
            chunks = stream.chunks()
            assert await anext(chunks) == b"data: first\n\n"  # the rest is still held back
            waiting = asyncio.create_task(run_one(provider, chat_body("after")))
            await asyncio.sleep(0.3)
            assert not waiting.done()  # the stream has the one slot
            up.gate.set()
            assert [c async for c in chunks] == [b"data: [DONE]\n\n"]
            await stream.aclose()
            await stream.aclose()
            assert (await asyncio.wait_for(waiting, 5)).body == {"ok": True}


@pytest.mark.anyio
async def test_stream_closed_early_abandons_the_upstream_request() -> None:
    async with HeldStream() as up:
        route = ModelRoute(name="m", provider="openai", base_url=up.api_url, max_concurrency=1)
        async with OpenAIProvider.from_route(route, {}) as provider:
            stream = await open_stream(provider, "hold")
            assert await anext(stream.chunks()) == b"data: first\n\n"
            await stream.aclose()
            await asyncio.wait_for(up.left.wait(), 5)
            assert (await run_one(provider, chat_body("next"))).ok  # the slot is free again


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("stall", r"sent nothing for 0\.3s"),
        ("break", r"connection broke: ReadError on the upstream of model 'm': "),
    ],
)
async def test_stream_failing_half_way_is_a_stream_error(action: str, message: str) -> None:
    async with HeldStream() as up:
        route = ModelRoute(name="m", provider="openai", base_url=up.api_url, timeout=0.3)
        async with OpenAIProvider.from_route(route, {}) as provider:
            stream = await open_stream(provider, action)
            received: list[bytes] = []
            with pytest.raises(ProviderStreamError, match=message):
                await collect(stream, received)
            await stream.aclose()
    assert received == [b"data: first\n\n"]


@pytest.mark.anyio
async def test_stream_error_status_and_refusal_are_results(clean_upstream: UpstreamProcess) -> None:
    async with provider_for(clean_upstream) as provider:
        refused = await provider.stream(CHAT, chat_body("FAULT:400 no", stream=True))
        streamed = await provider.stream(CHAT, chat_body("A quiet film.", stream=True))
        assert isinstance(streamed, ProviderStream)
        body = b"".join([c async for c in streamed.chunks()])
        await streamed.aclose()
    assert isinstance(refused, ProviderResult)
    assert (refused.status_code, refused.error_code, refused.retryable) == (
        400,
        "injected_fault",
        False,
    )
    assert body.endswith(b"data: [DONE]\n\n")
    up = ModelRoute(name="m", provider="openai", base_url="http://127.0.0.1:9/v1")
    async with OpenAIProvider.from_route(up, {}) as provider:
        unreachable = await provider.stream(CHAT, chat_body("x", stream=True))
    assert isinstance(unreachable, ProviderResult)
    assert unreachable.error_code == "connection_error"
    assert "Connection refused" in (unreachable.error_message or "")


def test_parse_retry_after() -> None:
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after": "Thu, 01 Jan 2026 00:00:10 GMT"}, now=1767225600.0)
    assert parse_retry_after(
        {"retry-after": "Thu, 01 Jan 2026 00:00:10 GMT"}, now=1767225600.0
    ) == pytest.approx(10.0)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


# -- options and registry ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"base_url": "http://x/v1", "max_concurency": 4}, r"unknown option 'max_concurency'"),
        ({}, r"base_url is required: the upstream's API root"),
        (
            {"base_url": "http://x/v1", "base_urls": ["http://y/v1"]},
            r"set base_url \(one server\) or base_urls \(several\), not both",
        ),
        ({"base_urls": ["ftp://y/v1"]}, r"must start with http:// or https://"),
        ({"base_url": "ftp://x"}, r"option 'base_url'.*http://"),
        ({"base_url": "http://x/v1", "max_concurrency": 0}, r"option 'max_concurrency'"),
        ({"base_url": "http://x/v1", "timeout": -1}, r"option 'timeout'"),
        ({"base_url": "http://"}, r"option 'base_url'.*empty host"),
        ({"base_url": "http://x:99999/v1"}, r"option 'base_url'.*invalid port"),
        ({"base_url": "http://x/v1", "headers": {"X-A": "a\nb"}}, r"option 'headers'"),
    ],
)
def test_options_validation(options: dict[str, Any], pattern: str) -> None:
    bad = ModelRoute(name="my-model", provider="openai", **options)
    with pytest.raises(ConfigError, match=pattern) as info:
        OpenAIProvider.from_route(bad, {})
    assert "'my-model'" in info.value.message
    assert "known options:" in info.value.message


def test_options_defaults() -> None:
    options = OpenAIOptions(base_url="http://h:1/v1/")
    assert options.base_url == "http://h:1/v1"
    assert options.concurrency == 64
    assert options.timeout == 600
    assert options.headers == {}
    several = OpenAIOptions(
        base_urls=["http://a/v1", {"url": "http://b/v1/", "max_concurrency": 8, "weight": 2}],
        api_key_env="KEY",
    )
    replicas = several.replicas()
    assert [(r.url, r.max_concurrency, r.weight, r.api_key_env) for r in replicas] == [
        ("http://a/v1", 64, 1.0, "KEY"),
        ("http://b/v1", 8, 2.0, "KEY"),
    ]
    assert several.concurrency == 72  # the sum, unless set
    assert several.model_copy(update={"max_concurrency": 10}).concurrency == 10


class EchoProvider(Provider):
    """A fake provider for registry tests: answers every request with its own body."""

    name: ClassVar[str] = "echo"
    endpoints: ClassVar[frozenset[str]] = frozenset({CHAT})

    async def execute(self, group: Sequence[ProviderRequest]) -> list[ProviderResult]:
        return [ProviderResult.success(r.index, 200, dict(r.body)) for r in group]


def register_echo(registry: ProviderRegistry) -> None:
    registry.register("echo-hook", EchoProvider)


def test_build_providers() -> None:
    settings = Settings(
        models=(
            ModelRoute(name="a", provider="openai", base_url="http://h/v1"),
            ModelRoute(
                name="b",
                provider="openai",
                base_url="http://h/v1",
                api_key_env="K",
                max_concurrency=2,
            ),
        )
    )
    providers = build_providers(settings, {"K": SECRET})
    assert set(providers) == {"a", "b"}
    assert all(isinstance(p, OpenAIProvider) for p in providers.values())
    assert providers["b"].options == OpenAIOptions(
        base_url="http://h/v1", api_key_env="K", max_concurrency=2
    )


def test_unknown_provider_lists_known_ones() -> None:
    settings = Settings(models=(ModelRoute(name="m", provider="nosuch"),))
    with pytest.raises(ConfigError, match=r"model 'm': unknown provider 'nosuch'.*openai"):
        build_providers(settings, {})


@pytest.mark.anyio
async def test_entry_points_register_providers() -> None:
    points = [
        importlib.metadata.EntryPoint("echo", f"{__name__}:EchoProvider", ENTRY_POINT_GROUP),
        importlib.metadata.EntryPoint("hook", f"{__name__}:register_echo", ENTRY_POINT_GROUP),
    ]
    registry = ProviderRegistry.default(plugins=False)
    registry.load_entry_points(points)
    assert registry.names() == [
        "anthropic",
        "echo",
        "echo-hook",
        "llamacpp",
        "openai",
        "sentence-transformers",
    ]
    settings = Settings(models=(ModelRoute(name="e", provider="echo-hook"),))
    providers = build_providers(settings, {}, registry)
    async with providers["e"] as provider:
        [result] = await provider.execute([ProviderRequest(0, "c", CHAT, {"x": 1})])
    assert result.body == {"x": 1}
    with pytest.raises(ConfigError, match="unknown option 'x'"):
        build_providers(
            Settings(models=(ModelRoute(name="e", provider="echo", x=1),)), {}, registry
        )


def test_bad_entry_points() -> None:
    registry = ProviderRegistry()
    broken = importlib.metadata.EntryPoint("broken", "no_such_module_xyz:P", ENTRY_POINT_GROUP)
    with pytest.raises(ConfigError, match=r"'broken'.*failed to load"):
        registry.load_entry_points([broken])
    not_provider = importlib.metadata.EntryPoint("np", "random:Random", ENTRY_POINT_GROUP)
    with pytest.raises(ConfigError, match=r"'np'.*neither"):
        registry.load_entry_points([not_provider])
    with pytest.raises(ConfigError, match="abstract"):
        registry.register("base", Provider)
    registry.register("echo", EchoProvider)
    with pytest.raises(ConfigError, match="registered twice"):
        registry.register("echo", OpenAIProvider)


# -- retry strategy --------------------------------------------------------------------------


def failed(retryable: bool = True, retry_after: float | None = None) -> ProviderResult:
    return ProviderResult.failure(
        0, "server_error", "boom", retryable=retryable, status_code=500, retry_after=retry_after
    )


def test_retry_full_jitter_is_deterministic_and_bounded() -> None:
    strategy = RetryStrategy(max_attempts=8, base=0.5, cap=4.0, rng=random.Random(7))
    again = RetryStrategy(max_attempts=8, base=0.5, cap=4.0, rng=random.Random(7))
    delays = []
    for attempt in range(1, 8):
        decision = strategy.decide(attempt, failed(), now=0.0, deadline=None)
        assert decision == again.decide(attempt, failed(), now=0.0, deadline=None)
        assert decision.retry
        assert 0.0 <= decision.delay <= min(4.0, 0.5 * 2 ** (attempt - 1))
        delays.append(decision.delay)
    assert len(set(delays)) == len(delays)  # jittered


def test_retry_stops() -> None:
    strategy = RetryStrategy(max_attempts=3, rng=random.Random(1))
    assert strategy.decide(1, failed(retryable=False), 0.0, None) == RetryDecision(False, 0.0)
    assert strategy.decide(2, failed(), 0.0, None).retry
    assert not strategy.decide(3, failed(), 0.0, None).retry
    assert not strategy.decide(1, ProviderResult.success(0, 200, {}), 0.0, None).retry


def test_retry_honours_retry_after_and_deadline() -> None:
    strategy = RetryStrategy(base=0.1, cap=0.2, rng=random.Random(3))
    decision = strategy.decide(1, failed(retry_after=5.0), now=100.0, deadline=200.0)
    assert decision == RetryDecision(True, 5.0)
    assert not strategy.decide(1, failed(retry_after=5.0), now=100.0, deadline=104.0).retry
    assert not strategy.decide(1, failed(), now=100.0, deadline=100.0).retry
    for seed in range(50):
        jittered = RetryStrategy(base=1.0, cap=8.0, rng=random.Random(seed))
        assert jittered.decide(4, failed(retry_after=0.5), 0.0, None).delay >= 0.5


def test_retry_strategy_validation() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        RetryStrategy(max_attempts=0)
    with pytest.raises(ValueError, match="base"):
        RetryStrategy(base=0)
    with pytest.raises(ValueError, match="cap"):
        RetryStrategy(base=2, cap=1)
    with pytest.raises(ValueError, match="error code"):
        ProviderResult.failure(0, "", "x", retryable=False)
