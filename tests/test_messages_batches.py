"""Batches of Anthropic Messages requests (``"url": "/v1/messages"``) through ``batchd serve``
with the OpenAI Batch API, against the fake upstream: on a chat route (each request translated,
each answer a ``Message``), on an ``anthropic`` route (relayed as it is), a parameter that cannot
be translated failing only its line with Anthropic's error body, a missing ``max_tokens`` failing
validation with its line number, and the result cache answering a batch submitted again."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from openai import OpenAI

from batchd.providers.messages import chat_body
from tests.engine_support import (
    MODEL,
    fetch_results,
    model_route,
    request_line,
    sdk,
    to_jsonl,
    upstream_attempts,
    wait_for_batch,
)
from tests.serverproc import BatchdServer, write_config
from tests.upstream import answers
from tests.upstream.process import UpstreamProcess

MESSAGES = "/v1/messages"
NATIVE = "claude-native"  # a route on the fake upstream's own /v1/messages


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tmp_path_factory.mktemp("upstream"), latency_ms=1) as process:
        yield process


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamProcess) -> Iterator[OpenAI]:
    root = tmp_path_factory.mktemp("messages-batches")
    routes = [
        model_route(upstream, aliases=["claude-haiku-4-5"], cache=True),
        {"name": NATIVE, "provider": "anthropic", "base_url": upstream.base_url},
    ]
    config = write_config(root / "batchd.toml", models=routes)
    server = BatchdServer(root / "data", config).start()
    try:
        with sdk(server) as openai_client:
            yield openai_client
    finally:
        server.stop()


def params(text: str, model: str = "claude-haiku-4-5", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def run(client: OpenAI, bodies: list[dict[str, Any]]) -> tuple[dict[str, Any], Any]:
    lines = [request_line(f"m{i}", body, url=MESSAGES) for i, body in enumerate(bodies)]
    file_id = client.files.create(file=("m.jsonl", to_jsonl(lines)), purpose="batch").id
    created = client.batches.create(
        input_file_id=file_id,
        endpoint=MESSAGES,  # type: ignore[arg-type]
        completion_window="24h",
    )
    batch = wait_for_batch(client, None, created.id, ("completed", "failed"))
    if batch["status"] == "failed":
        return batch, None
    return batch, fetch_results(client, batch, [line["custom_id"] for line in lines])


def test_a_chat_route_answers_each_line_with_a_message(
    client: OpenAI, upstream: UpstreamProcess
) -> None:
    bodies = [params(f"Classify item {i}.", system="One word.") for i in range(6)]
    bodies[4] = params("Think first.", thinking={"type": "enabled", "budget_tokens": 1024})
    batch, results = run(client, bodies)
    assert batch["status"] == "completed"
    output = {line["custom_id"]: line["response"]["body"] for line in results.output}
    assert sorted(output) == ["m0", "m1", "m2", "m3", "m5"]
    for custom_id, body in output.items():
        message = anthropic.types.Message.model_validate(body)
        sent = {**chat_body(bodies[int(custom_id[1:])]), "model": MODEL}
        chat = answers.chat_completion(sent)
        assert message.content[0].text == chat["choices"][0]["message"]["content"]  # type: ignore[union-attr]
        assert message.model == MODEL  # the route that answered, not the alias
        assert message.usage.input_tokens == chat["usage"]["prompt_tokens"]
    [refused] = results.errors
    assert refused["custom_id"] == "m4"
    assert refused["response"]["status_code"] == 400
    error = refused["response"]["body"]
    assert error["type"] == "error"
    assert error["error"]["type"] == "invalid_request_error"
    assert "thinking" in error["error"]["message"]
    thinking = {**chat_body(bodies[0]), "model": MODEL}
    assert upstream_attempts(upstream, [thinking]) == [1]
    usage = batch["usage"]
    assert usage["input_tokens"] == sum(
        anthropic.types.Message.model_validate(b).usage.input_tokens for b in output.values()
    )


def test_an_anthropic_route_relays_each_line(client: OpenAI) -> None:
    bodies = [params(f"Native {i}.", model=NATIVE) for i in range(4)]
    batch, results = run(client, bodies)
    assert batch["status"] == "completed"
    for line in results.output:
        body = line["response"]["body"]
        expected = answers.anthropic_message(bodies[int(line["custom_id"][1:])])
        assert body["content"] == expected["content"]
        assert body["usage"]["input_tokens"] == expected["usage"]["input_tokens"]
    assert batch["usage"]["output_tokens"] == sum(
        line["response"]["body"]["usage"]["output_tokens"] for line in results.output
    )


def test_a_line_without_max_tokens_fails_validation_with_its_line(client: OpenAI) -> None:
    bodies = [params("fine"), {k: v for k, v in params("no max").items() if k != "max_tokens"}]
    batch, _ = run(client, bodies)
    assert batch["status"] == "failed"
    [error] = batch["errors"]["data"]
    assert error["line"] == 2
    assert "max_tokens" in error["message"]


def test_greedy_messages_come_back_from_the_cache(
    client: OpenAI, upstream: UpstreamProcess
) -> None:
    bodies = [params(f"Cached question {i}.", temperature=0) for i in range(5)]
    run(client, bodies)
    _, again = run(client, bodies)
    assert all("headers" in line["response"] for line in again.output)
    sent = [{**chat_body(body), "model": MODEL} for body in bodies]
    assert upstream_attempts(upstream, sent) == [1] * 5


def test_a_message_batch_on_an_anthropic_route_is_relayed(client: OpenAI) -> None:
    """Anthropic's Message Batches API on a route of an Anthropic-compatible upstream: each
    request relayed as it is, each result the upstream's own Message."""
    requests = [
        {"custom_id": f"n{i}", "params": params(f"Relay {i}.", model=NATIVE)} for i in range(3)
    ]
    base_url = str(client.base_url).removesuffix("/").removesuffix("/v1")
    with anthropic.Anthropic(base_url=base_url, api_key="-", max_retries=0) as sdk:
        batch = sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        batch_id = batch.id
        wait_for_batch(client, None, batch_id, ("completed",))
        assert sdk.messages.batches.retrieve(batch_id).request_counts.succeeded == 3
        results = {line.custom_id: line.result for line in sdk.messages.batches.results(batch_id)}
    for request in requests:
        result = results[request["custom_id"]]
        assert result.type == "succeeded"
        expected = answers.anthropic_message(request["params"])
        assert result.message.content[0].text == expected["content"][0]["text"]  # type: ignore[union-attr]
        assert result.message.usage.input_tokens == expected["usage"]["input_tokens"]
