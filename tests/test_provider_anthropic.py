"""The ``anthropic`` provider against the fake upstream process (``POST /v1/messages``), and the
fake's Messages API against the official ``anthropic`` SDK (it speaks real Anthropic)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from aiohttp import web
from anthropic.types import RawMessageStreamEvent
from pydantic import TypeAdapter

from batchd.config import ModelRoute, Settings
from batchd.errors import ConfigError
from batchd.providers import ProviderRegistry, ProviderRequest, ProviderResult, build_providers
from batchd.providers.anthropic_http import (
    MESSAGES,
    AnthropicOptions,
    AnthropicProvider,
    error_type,
)
from batchd.providers.base import ProviderStream
from batchd.providers.openai_http import _prompt_prefix
from tests.upstream import answers, faults
from tests.upstream.fixtures import clean_upstream_fixture, upstream_fixture  # noqa: F401
from tests.upstream.process import UpstreamProcess

MODEL = "claude-sonnet-4-5"
SECRET = "sk-ant-test-0123456789abcdef"
EVENTS: TypeAdapter[RawMessageStreamEvent] = TypeAdapter(RawMessageStreamEvent)


def message_body(text: str, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 256,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def provider_for(
    upstream: UpstreamProcess,
    env: dict[str, str] | None = None,
    *,
    base_url: str | None = None,
    **options: Any,
) -> AnthropicProvider:
    route = ModelRoute(
        name=MODEL, provider="anthropic", base_url=base_url or upstream.base_url, **options
    )
    return AnthropicProvider.from_route(route, env or {})


async def run_one(provider: AnthropicProvider, body: dict[str, Any]) -> ProviderResult:
    [result] = await provider.execute([ProviderRequest(0, "req-0", MESSAGES, body)])
    return result


def parse_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """Server-sent events as ``(event, data)``: each ``event:`` line and its ``data:`` JSON."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        fields = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((fields["event"], TypeAdapter(dict[str, Any]).validate_json(fields["data"])))
    return events


# -- execute, forward ----------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("root", ["server", "api"])
async def test_execute_answers_the_upstream_message(
    clean_upstream: UpstreamProcess, root: str
) -> None:
    """``base_url`` may be the server's root or its ``/v1``; the body goes as it is."""
    bodies = [
        message_body("A heist in Lisbon."),
        message_body(
            "ignored",
            system=[{"type": "text", "text": "You are terse."}],
            messages=[
                {"role": "user", "content": "first"},
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "text", "text": "Two sisters, a light."}]},
            ],
            temperature=0.3,
        ),
        message_body("Cut short, by the max tokens limit.", max_tokens=3),
    ]
    group = [ProviderRequest(7 + i, f"c{i}", MESSAGES, body) for i, body in enumerate(bodies)]
    url = clean_upstream.base_url if root == "server" else clean_upstream.api_url
    async with provider_for(clean_upstream, base_url=url) as provider:
        results = await provider.execute(group)
    assert [r.index for r in results] == [7, 8, 9]
    for body, result in zip(bodies, results, strict=True):
        assert result.ok, result
        assert (result.status_code, result.error_code, result.retryable) == (200, None, False)
        assert result.body == answers.anthropic_message(body)
        anthropic.types.Message.model_validate(result.body)
        assert result.request_id == f"req_{answers.body_digest(body)[:16]}_1"
    assert results[2].body["stop_reason"] == "max_tokens"
    assert results[2].body["usage"]["output_tokens"] == 3
    assert clean_upstream.stats(digests=False)["by_path"] == {"/v1/messages": 3}


@pytest.mark.anyio
async def test_forward_and_the_upstream_model(clean_upstream: UpstreamProcess) -> None:
    body = message_body("An astronaut on Europa.")
    async with provider_for(clean_upstream, upstream_model="served-claude") as provider:
        result = await provider.forward(MESSAGES, body)
    sent = {**body, "model": "served-claude"}
    assert result.ok
    assert result.body == answers.anthropic_message(sent)
    assert [e["model"] for e in clean_upstream.requests_log()] == ["served-claude"]
    assert body["model"] == MODEL  # the caller's body is not changed


@pytest.mark.anyio
async def test_an_alias_is_sent_as_the_route_name(clean_upstream: UpstreamProcess) -> None:
    route = ModelRoute(
        name=MODEL,
        provider="anthropic",
        aliases=("claude-latest",),
        base_url=clean_upstream.api_url,
    )
    provider = ProviderRegistry.default(plugins=False).build(route, {})
    assert isinstance(provider, AnthropicProvider)
    async with provider:
        aliased = await run_one(provider, message_body("A quiet film.", model="claude-latest"))
        other = await run_one(provider, message_body("A quiet film.", model="claude-other"))
    assert aliased.body == answers.anthropic_message(message_body("A quiet film."))
    assert other.body["model"] == "claude-other"  # not an alias: sent as it is


@pytest.mark.anyio
async def test_another_endpoint_is_unsupported(clean_upstream: UpstreamProcess) -> None:
    async with provider_for(clean_upstream) as provider:
        [result] = await provider.execute(
            [ProviderRequest(0, "c", "/v1/chat/completions", message_body("x"))]
        )
    assert (result.error_code, result.retryable) == ("unsupported_endpoint", False)
    assert clean_upstream.stats(digests=False)["total"] == 0


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_400_is_final_with_the_upstream_body(clean_upstream: UpstreamProcess) -> None:
    injected = message_body("FAULT:400 please")
    async with provider_for(clean_upstream) as provider:
        marker = await run_one(provider, injected)
        invalid = await run_one(provider, {**message_body("no limit"), "max_tokens": 0})
    request_id = f"req_{answers.body_digest(injected)[:16]}_1"
    assert (marker.status_code, marker.retryable, marker.retry_after) == (400, False, None)
    assert marker.error_code == "invalid_request_error"
    assert marker.error_message == "Injected bad request (FAULT:400)."
    assert marker.request_id == request_id
    assert marker.body == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "Injected bad request (FAULT:400)."},
        "request_id": request_id,
    }
    assert (invalid.status_code, invalid.error_code, invalid.retryable) == (
        400,
        "invalid_request_error",
        False,
    )
    assert "max_tokens" in (invalid.error_message or "")


@pytest.mark.anyio
async def test_500_and_429_are_retryable(clean_upstream: UpstreamProcess) -> None:
    clean_upstream.control(retry_after=0.25)
    twice = message_body("FAULT:500x2 then fine")
    async with provider_for(clean_upstream) as provider:
        limited = await run_one(provider, message_body("FAULT:429 slow down"))
        outcomes = [await run_one(provider, twice) for _ in range(3)]
    assert (limited.status_code, limited.retryable) == (429, True)
    assert limited.error_code == "rate_limit_error"
    assert limited.retry_after == pytest.approx(0.25)
    assert limited.body["error"]["type"] == "rate_limit_error"
    assert [r.status_code for r in outcomes] == [500, 500, 200]
    assert (outcomes[0].error_code, outcomes[0].retryable) == ("api_error", True)
    assert outcomes[2].body == answers.anthropic_message(twice)


class Overloaded:
    """An in-process upstream whose ``POST /v1/messages`` answers 529 with a plain-text body
    (not Anthropic's envelope), and keeps the headers it was sent (names in lower case)."""

    def __init__(self) -> None:
        self.headers: list[dict[str, str]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> Overloaded:
        app = web.Application()
        app.router.add_post("/v1/messages", self._answer)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()

    async def _answer(self, request: web.Request) -> web.Response:
        self.headers.append({name.lower(): value for name, value in request.headers.items()})
        headers = {"retry-after": "2", "request-id": "req_overloaded"}
        return web.Response(status=529, text="Overloaded", headers=headers)


@pytest.mark.anyio
async def test_529_is_retryable_and_gets_an_anthropic_error_body() -> None:
    async with Overloaded() as up:
        route = ModelRoute(
            name="m",
            provider="anthropic",
            base_url=up.url,
            api_key_env="KEY",
            anthropic_version="2099-01-01",
            headers={"anthropic-beta": "some-feature"},
        )
        async with AnthropicProvider.from_route(route, {"KEY": SECRET}) as provider:
            result = await run_one(provider, message_body("x"))
    assert (result.status_code, result.retryable, result.retry_after) == (529, True, 2.0)
    assert result.error_code == "upstream_http_529"  # no Anthropic error body: no error type
    assert result.request_id == "req_overloaded"
    message = "the upstream answered HTTP 529: Overloaded"
    assert result.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": message},
    }
    [sent] = up.headers
    assert sent["x-api-key"] == SECRET
    assert sent["anthropic-version"] == "2099-01-01"
    assert sent["anthropic-beta"] == "some-feature"
    assert sent["content-type"] == "application/json"
    assert "authorization" not in sent


@pytest.mark.anyio
async def test_the_key_goes_in_x_api_key_and_is_redacted(clean_upstream: UpstreamProcess) -> None:
    clean_upstream.control(api_key=SECRET)
    async with provider_for(clean_upstream, {"K": SECRET}, api_key_env="K") as provider:
        assert (await run_one(provider, message_body("ok"))).ok
        assert SECRET not in repr(provider.options)
    clean_upstream.control(api_key="the-key-the-upstream-wants")
    async with provider_for(clean_upstream, {"K": SECRET}, api_key_env="K") as provider:
        denied = await run_one(provider, message_body("ok"))
    assert (denied.status_code, denied.error_code, denied.retryable) == (
        401,
        "authentication_error",
        False,
    )
    assert SECRET not in repr(denied)  # the fake quotes the key it was sent
    assert denied.body["error"]["message"] == "Incorrect API key provided: ***."


# -- streams -------------------------------------------------------------------------------------


async def read_stream(stream: ProviderStream) -> bytes:
    try:
        return b"".join([chunk async for chunk in stream.chunks()])
    finally:
        await stream.aclose()


@pytest.mark.anyio
async def test_stream_relays_anthropic_events(clean_upstream: UpstreamProcess) -> None:
    body = message_body("A jazz pianist loses her hearing the week before her debut album.")
    async with provider_for(clean_upstream) as provider:
        stream = await provider.stream(MESSAGES, {**body, "stream": True})
        assert isinstance(stream, ProviderStream), stream
        raw = await read_stream(stream)
        refused = await provider.stream(MESSAGES, message_body("FAULT:400 no", stream=True))
    assert (stream.status_code, stream.content_type.split(";")[0]) == (200, "text/event-stream")
    digest = answers.body_digest({**body, "stream": True})
    assert stream.request_id == f"req_{digest[:16]}_1"
    events = parse_events(raw)
    names = [name for name, _ in events]
    assert names[:3] == ["message_start", "content_block_start", "ping"]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    parsed = [EVENTS.validate_python(data) for name, data in events if name != "ping"]
    assert [event.type for event in parsed] == [name for name in names if name != "ping"]
    text = "".join(
        event.delta.text
        for event in parsed
        if event.type == "content_block_delta" and event.delta.type == "text_delta"
    )
    assert text == answers.anthropic_text(body)
    assert parsed[-2].type == "message_delta"
    assert parsed[-2].delta.stop_reason == "end_turn"
    assert parsed[-2].usage.output_tokens == answers.count_tokens(text)
    assert isinstance(refused, ProviderResult)
    assert (refused.status_code, refused.error_code, refused.retryable) == (
        400,
        "invalid_request_error",
        False,
    )


@pytest.mark.anyio
async def test_a_malformed_stream_is_relayed_as_it_came(clean_upstream: UpstreamProcess) -> None:
    async with provider_for(clean_upstream) as provider:
        stream = await provider.stream(MESSAGES, message_body("FAULT:malformed", stream=True))
        assert isinstance(stream, ProviderStream)
        raw = await read_stream(stream)
    assert raw.startswith(b"event: message_start\n")
    assert raw.endswith(b'data: {"type": "content_bl\n\n')


# -- options -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "pattern"),
    [
        ({"base_url": "http://x", "pack_inputs": 4}, r"unknown option 'pack_inputs'"),
        ({"base_url": "http://x", "max_concurency": 4}, r"unknown option 'max_concurency'"),
        ({}, r"base_url is required"),
        ({"base_url": "ftp://x"}, r"option 'base_url'.*http://"),
        ({"base_url": "http://x", "anthropic_version": ""}, r"option 'anthropic_version'"),
        ({"base_url": "http://x", "anthropic_version": "a\nb"}, r"option 'anthropic_version'"),
    ],
)
def test_options_validation(options: dict[str, Any], pattern: str) -> None:
    route = ModelRoute(name="claude", provider="anthropic", **options)
    with pytest.raises(ConfigError, match=pattern) as info:
        AnthropicProvider.from_route(route, {})
    assert "'claude'" in info.value.message
    assert "anthropic_version" in info.value.message  # among the known options


def test_options_defaults_and_limits() -> None:
    options = AnthropicOptions(base_url="http://h:1/")
    assert (options.base_url, options.anthropic_version) == ("http://h:1/v1", "2023-06-01")
    assert AnthropicOptions(base_url="http://h:1/v1/").base_url == "http://h:1/v1"
    several = AnthropicOptions(base_urls=["http://a", {"url": "http://b/v1", "weight": 2}])
    assert [r.url for r in several.replicas()] == ["http://a/v1", "http://b/v1"]
    settings = Settings(
        models=(
            ModelRoute(
                name="c", provider="anthropic", base_url="http://h:1", max_concurrency=3, rpm=60
            ),
        )
    )
    [provider] = build_providers(settings, {}).values()
    assert isinstance(provider, AnthropicProvider)
    limits = provider.limits()
    assert (limits.max_concurrency, limits.rpm, limits.upstream) == (3, 60, "http://h:1/v1")
    assert limits.group_sizes == ()


def test_error_types_of_statuses() -> None:
    assert [error_type(s) for s in (400, 401, 413, 418, 429, 500, 503, 504, 529)] == [
        "invalid_request_error",
        "authentication_error",
        "request_too_large",
        "invalid_request_error",  # Anthropic's type for a 4xx it names no other for
        "rate_limit_error",
        "api_error",
        "overloaded_error",  # a 503 is an overloaded server (Anthropic's own is a 529)
        "timeout_error",
        "overloaded_error",
    ]


def test_prefix_affinity_reads_the_system_prompt_first() -> None:
    body = message_body(
        "ignored",
        system=[{"type": "text", "text": "Shared instructions. "}],
        messages=[{"role": "user", "content": [{"type": "text", "text": "The question."}]}],
    )
    assert _prompt_prefix(body, 1000) == "Shared instructions. The question."
    assert _prompt_prefix({**body, "system": "Plain. "}, 10) == "Plain. The"


def test_a_missing_key_variable_is_a_config_error(upstream: UpstreamProcess) -> None:
    with pytest.raises(ConfigError, match=r"'NOPE_KEY'.*not set"):
        provider_for(upstream, {}, api_key_env="NOPE_KEY")


# -- the fake upstream, through the official SDK ---------------------------------------------


@pytest.fixture
def sdk(clean_upstream: UpstreamProcess) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(
        base_url=clean_upstream.base_url, api_key="x", max_retries=0, timeout=10
    ) as client:
        yield client


def test_sdk_create_and_stream(sdk: anthropic.Anthropic, clean_upstream: UpstreamProcess) -> None:
    body = message_body("A family of raccoons plans the perfect picnic raid.", system="Be brief.")
    created = sdk.messages.create(**body)
    assert created == anthropic.types.Message.model_validate(answers.anthropic_message(body))
    assert created.content[0].type == "text"
    assert created.content[0].text == answers.anthropic_text(body)
    assert created.usage.input_tokens == 2 + 9
    with sdk.messages.stream(**body) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == created.content[0].text
    assert [(block.type, block.text) for block in final.content] == [("text", text)]
    assert (final.stop_reason, final.usage.output_tokens) == (
        "end_turn",
        created.usage.output_tokens,
    )
    stats = clean_upstream.stats()
    assert stats["by_path"] == {"/v1/messages": 2}
    assert stats["digests"][answers.body_digest(body)] == {"attempts": 1, "outcomes": ["ok"]}


def test_sdk_sees_anthropic_errors(
    sdk: anthropic.Anthropic, clean_upstream: UpstreamProcess
) -> None:
    clean_upstream.control(retry_after=0.5)
    with pytest.raises(anthropic.RateLimitError) as limited:
        sdk.messages.create(**message_body("FAULT:429"))
    assert limited.value.response.headers["retry-after"] == "0.5"
    assert limited.value.request_id == limited.value.response.headers["x-request-id"]
    with pytest.raises(anthropic.InternalServerError) as failed:
        sdk.messages.create(**message_body("FAULT:500"))
    assert failed.value.body == {
        "type": "error",
        "error": {
            "type": "api_error",
            "message": "The server had an error while processing your request (injected).",
        },
        "request_id": failed.value.request_id,
    }
    with pytest.raises(anthropic.BadRequestError, match="messages"):
        sdk.messages.create(model=MODEL, max_tokens=8, messages=[])
    with pytest.raises(anthropic.BadRequestError, match="role"):
        sdk.messages.create(
            model=MODEL,
            max_tokens=8,
            messages=[{"role": "system", "content": "x"}],  # type: ignore[typeddict-item]
        )
    with pytest.raises(anthropic.APIConnectionError):
        sdk.messages.create(**message_body("FAULT:reset"))
    clean_upstream.control(api_key="right")
    with pytest.raises(anthropic.AuthenticationError):
        sdk.messages.create(**message_body("hi"))
    assert sdk.with_options(api_key="right").messages.create(**message_body("hi")).id
    outcomes = clean_upstream.stats(digests=False)["by_outcome"]
    assert outcomes == {"429": 1, "500": 1, "400": 2, "reset": 1, "401": 1, "ok": 1}


def test_fault_machinery_on_the_messages_path(
    sdk: anthropic.Anthropic, clean_upstream: UpstreamProcess
) -> None:
    """``fail_first_n``, the seeded probabilities, latency and the hidden capacity apply."""
    clean_upstream.control(fail_first_n=1, fail_first_kind="500")
    body = message_body("Detectives chase a forger.")
    with pytest.raises(anthropic.InternalServerError):
        sdk.messages.create(**body)
    assert sdk.messages.create(**body).id == answers.anthropic_message(body)["id"]
    assert clean_upstream.attempts(answers.body_digest(body)) == 2
    clean_upstream.reset()
    clean_upstream.control(p_500=0.5, seed=3)
    config = faults.FaultConfig(p_500=0.5, seed=3)
    for i in range(12):
        body = message_body(f"film {i}")
        fault = faults.decide(config, answers.body_digest(body), 1).fault
        try:
            sdk.messages.create(**body)
            seen = None
        except anthropic.InternalServerError:
            seen = "500"
        assert seen == fault


@pytest.mark.anyio
async def test_hidden_capacity_answers_anthropic_429s(clean_upstream: UpstreamProcess) -> None:
    clean_upstream.control(capacity=2, latency_ms=500)
    async with anthropic.AsyncAnthropic(
        base_url=clean_upstream.base_url, api_key="x", max_retries=0, timeout=10
    ) as client:
        results = await asyncio.gather(
            *(client.messages.create(**message_body(f"film {i}")) for i in range(5)),
            return_exceptions=True,
        )
    limited = [r for r in results if isinstance(r, anthropic.RateLimitError)]
    assert len(limited) == 3
    assert isinstance(limited[0].body, dict)
    assert limited[0].body["error"]["type"] == "rate_limit_error"
    assert sum(isinstance(r, anthropic.types.Message) for r in results) == 2
