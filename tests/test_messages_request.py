"""The request translation of Anthropic's Messages API over a chat-completions provider
(:func:`batchd.providers.messages.chat_body`): what each Messages parameter and content block
becomes in the chat body, and every value that is refused (naming its parameter) rather than
dropped or changed.

Translated requests are read by the ``openai`` SDK's request types.
"""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.chat.completion_create_params import CompletionCreateParams
from pydantic import TypeAdapter

from batchd.providers.messages import MessagesParamError, chat_body
from tests.messages_support import MODEL, call, params

CHAT_PARAMS = TypeAdapter[Any](CompletionCreateParams)
ROUTE = "is not supported on this route (it translates Messages to chat completions)"


def refused(body: Any) -> MessagesParamError:
    with pytest.raises(MessagesParamError) as caught:
        chat_body(body)
    return caught.value


# -- the request: what is mapped ----------------------------------------------------------------


def test_a_string_turn_is_one_user_message() -> None:
    chat = chat_body(params())
    assert chat == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 64,
    }
    CHAT_PARAMS.validate_python(chat)


def test_system_string_and_text_blocks_become_a_first_system_message() -> None:
    assert chat_body(params(system="Be brief."))["messages"][0] == {
        "role": "system",
        "content": "Be brief.",
    }
    blocks = [
        {"type": "text", "text": "Be brief."},
        {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}},
    ]
    assert chat_body(params(system=blocks))["messages"] == [
        {"role": "system", "content": "Be brief.\nAnswer in French."},
        {"role": "user", "content": "Hi"},
    ]
    assert chat_body(params(system=""))["messages"] == [{"role": "user", "content": "Hi"}]
    assert chat_body(params(system=[]))["messages"] == [{"role": "user", "content": "Hi"}]


def test_sampling_stop_user_and_stream_are_mapped() -> None:
    chat = chat_body(
        params(
            temperature=0.2,
            top_p=0.9,
            top_k=40,
            stop_sequences=["\n\nHuman:", "END"],
            metadata={"user_id": "user-7"},
            stream=True,
        )
    )
    assert chat == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 64,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["\n\nHuman:", "END"],
        "user": "user-7",
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_off_values_add_nothing() -> None:
    chat = chat_body(
        params(
            stream=False,
            stop_sequences=[],
            metadata={"user_id": None},
            tools=[],
            thinking={"type": "disabled"},
            container=None,
            mcp_servers=[],
            service_tier="standard_only",
            temperature=None,
        )
    )
    assert chat == chat_body(params())


def test_billing_and_placement_parameters_are_ignored() -> None:
    chat = chat_body(
        params(
            cache_control={"type": "ephemeral"},
            service_tier="auto",
            inference_geo="eu",
            speed="fast",
            diagnostics={"previous_message_id": None},
            user_profile_id="up_1",
            workspace_id="wrkspc_1",
        )
    )
    assert chat == chat_body(params())


def test_user_text_and_images_become_parts() -> None:
    content = [
        {"type": "text", "text": "What is in these?"},
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}},
    ]
    chat = chat_body(params(content))
    assert chat["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in these?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
            ],
        }
    ]
    CHAT_PARAMS.validate_python(chat)


def test_text_blocks_of_a_turn_are_joined_with_newlines() -> None:
    content = [
        {"type": "text", "text": "one"},
        {"type": "text", "text": "two", "citations": None},
    ]
    chat = chat_body(
        {
            "model": MODEL,
            "max_tokens": 8,
            "messages": [
                {"role": "user", "content": content},
                {"role": "assistant", "content": content},
                {"role": "user", "content": []},
            ],
        }
    )
    assert chat["messages"] == [
        {"role": "user", "content": "one\ntwo"},
        {"role": "assistant", "content": "one\ntwo"},
        {"role": "user", "content": ""},
    ]


def test_a_system_turn_is_a_system_message_in_place() -> None:
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": [{"type": "text", "text": "Now answer in French."}]},
        {"role": "user", "content": "Bye"},
    ]
    assert chat_body({"model": MODEL, "max_tokens": 8, "messages": messages})["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Now answer in French."},
        {"role": "user", "content": "Bye"},
    ]


def test_tool_use_and_tool_result_blocks_become_tool_calls_and_tool_messages() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_call_1",
                    "name": "weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_01XYZ", "name": "weather", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_call_1", "content": "18°C"},
                {"type": "text", "text": "Thanks."},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01XYZ",
                    "content": [{"type": "text", "text": "city"}, {"type": "text", "text": "?"}],
                    "is_error": True,
                },
            ],
        },
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "plain-id", "name": "noop", "input": {}}],
        },
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "plain-id"}]},
    ]
    chat = chat_body({"model": MODEL, "max_tokens": 64, "messages": messages})
    assert chat["messages"] == [
        {"role": "user", "content": "Weather in Paris and Rome?"},
        {
            "role": "assistant",
            "content": "Let me check.",
            "tool_calls": [
                call("call_1", "weather", '{"city":"Paris"}'),
                call("01XYZ", "weather", "{}"),
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "01XYZ", "content": "Error: city\n?"},
        {"role": "user", "content": "Thanks."},
        {"role": "assistant", "content": None, "tool_calls": [call("plain-id", "noop", "{}")]},
        {"role": "tool", "tool_call_id": "plain-id", "content": ""},
    ]
    CHAT_PARAMS.validate_python(chat)


def test_an_empty_error_result_still_says_error() -> None:
    content = [{"type": "tool_result", "tool_use_id": "toolu_a", "content": "", "is_error": True}]
    assert chat_body(params(content))["messages"] == [
        {"role": "tool", "tool_call_id": "a", "content": "Error"}
    ]


WEATHER = {
    "name": "weather",
    "description": "The weather of a city.",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
}
WEATHER_FUNCTION: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather of a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, {}),
        ({"type": "auto"}, {"tool_choice": "auto"}),
        ({"type": "any"}, {"tool_choice": "required"}),
        ({"type": "none"}, {"tool_choice": "none"}),
        (
            {"type": "tool", "name": "weather"},
            {"tool_choice": {"type": "function", "function": {"name": "weather"}}},
        ),
        (
            {"type": "auto", "disable_parallel_tool_use": True},
            {"tool_choice": "auto", "parallel_tool_calls": False},
        ),
        (
            {"type": "tool", "name": "weather", "disable_parallel_tool_use": True},
            {
                "tool_choice": {"type": "function", "function": {"name": "weather"}},
                "parallel_tool_calls": False,
            },
        ),
        ({"type": "any", "disable_parallel_tool_use": False}, {"tool_choice": "required"}),
    ],
)
def test_tools_and_tool_choice(choice: Any, expected: dict[str, Any]) -> None:
    extra = {} if choice is None else {"tool_choice": choice}
    tools = [WEATHER, {**WEATHER, "name": "plain", "description": "", "type": "custom"}]
    chat = chat_body(params(tools=tools, **extra))
    plain = {
        "type": "function",
        "function": {"name": "plain", "parameters": WEATHER_FUNCTION["function"]["parameters"]},
    }
    assert chat == {**chat_body(params()), "tools": [WEATHER_FUNCTION, plain], **expected}
    CHAT_PARAMS.validate_python(chat)


def test_a_strict_tool_stays_strict_and_cache_control_is_ignored() -> None:
    tool = {**WEATHER, "strict": True, "cache_control": {"type": "ephemeral"}}
    tool["eager_input_streaming"] = True
    [function] = chat_body(params(tools=[tool]))["tools"]
    assert function == {
        "type": "function",
        "function": {**WEATHER_FUNCTION["function"], "strict": True},
    }


@pytest.mark.parametrize("kind", ["auto", "none"])
def test_auto_or_none_without_tools_adds_nothing(kind: str) -> None:
    assert chat_body(params(tool_choice={"type": kind})) == chat_body(params())


def test_output_format_becomes_a_strict_json_schema() -> None:
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    chat = chat_body(params(output_config={"format": {"type": "json_schema", "schema": schema}}))
    assert chat["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "output", "schema": schema, "strict": True},
    }
    assert chat_body(params(output_config={"effort": None, "format": None})) == chat_body(params())


# -- the request: what is checked and refused ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}, "model", "required"),
        (params(model=""), "model", "non-empty string"),
        (params(model=7), "model", "non-empty string"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
            "max_tokens",
            "required",
        ),
        (params(max_tokens=-1), "max_tokens", "at least 1"),
        (params(max_tokens=True), "max_tokens", "at least 1"),
        (params(max_tokens="64"), "max_tokens", "at least 1"),
        (params(max_tokens=1.5), "max_tokens", "at least 1"),
        (params(max_tokens=0), "max_tokens", "ask for 1 or more"),
        ({"model": MODEL, "max_tokens": 5}, "messages", "required"),
        (params(messages=[]), "messages", "non-empty array"),
        (params(messages="Hi"), "messages", "non-empty array"),
        (params(messages=["Hi"]), "messages[0]", "an object"),
        (params(messages=[{"role": "tool", "content": "x"}]), "messages[0].role", "'user'"),
        (params(messages=[{"role": "user", "content": 3}]), "messages[0].content", "a string"),
        (params(messages=[{"role": "user"}]), "messages[0].content", "a string"),
        (params([{"text": "no type"}]), "messages[0].content[0].type", "a string"),
        (params(["text"]), "messages[0].content[0]", "content block"),
        (params([{"type": "text"}]), "messages[0].content[0].text", "a string"),
        (params(temperature=1.5), "temperature", "from 0 to 1"),
        (params(temperature="hot"), "temperature", "from 0 to 1"),
        (params(top_p=-0.1), "top_p", "from 0 to 1"),
        (params(top_k=-1), "top_k", "at least 0"),
        (params(top_k=2.5), "top_k", "at least 0"),
        (params(stop_sequences="END"), "stop_sequences", "array of non-empty strings"),
        (params(stop_sequences=[""]), "stop_sequences", "array of non-empty strings"),
        (params(stream="yes"), "stream", "a boolean"),
        (params(metadata="u"), "metadata", "an object"),
        (params(metadata={"user_id": 5}), "metadata.user_id", "a string"),
        (params(system=5), "system", "a string or an array of text blocks"),
        (params(system=[{"type": "image"}]), "system[0].type", "'text' here"),
        (params(tools={"name": "x"}), "tools", "an array"),
        (params(tools=[{"name": "x"}]), "tools[0].input_schema", "JSON schema"),
        (params(tools=[{"input_schema": {}}]), "tools[0].name", "non-empty string"),
        (params(tools=[{**WEATHER, "strict": "yes"}]), "tools[0].strict", "a boolean"),
        (params(tool_choice={"type": "all"}), "tool_choice", "'auto', 'any', 'tool'"),
        (params(tool_choice={"type": "any"}), "tools", "when tool_choice is 'any'"),
        (params(tools=[WEATHER], tool_choice={"type": "tool"}), "tool_choice.name", "the name"),
        (
            params(tools=[WEATHER], tool_choice={"type": "auto", "disable_parallel_tool_use": 1}),
            "tool_choice.disable_parallel_tool_use",
            "a boolean",
        ),
        (params(output_config={"format": {"type": "text"}}), "output_config.format", "json_schema"),
        (
            params(output_config={"format": {"type": "json_schema"}}),
            "output_config.format.schema",
            "JSON schema",
        ),
    ],
)
def test_invalid_values_name_the_parameter(body: Any, param: str, words: str) -> None:
    error = refused(body)
    assert error.param == param
    assert f"'{param}'" in error.message
    assert words in error.message


def test_a_body_that_is_not_an_object_is_refused() -> None:
    error = refused(["model"])
    assert error.param is None
    assert "JSON object" in error.message


def block_in(role: str, block: dict[str, Any]) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": 8, "messages": [{"role": role, "content": [block]}]}


IMAGE = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
SERVER_TOOL_USE = {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search", "input": {}}


@pytest.mark.parametrize(
    ("body", "param", "why"),
    [
        (params(thinking={"type": "enabled", "budget_tokens": 2048}), "thinking", "thinking"),
        (params(thinking={"type": "adaptive"}), "thinking", "thinking"),
        (params(container="container_1"), "container", "containers"),
        (params(container={"type": "disabled"}), "container", "containers"),
        (params(context_management={"edits": []}), "context_management", "never edited"),
        (
            params(mcp_servers=[{"type": "url", "url": "https://x", "name": "x"}]),
            "mcp_servers",
            "MCP",
        ),
        (params(output_config={"effort": "high"}), "output_config.effort", "effort"),
        (params(service_tier="priority"), "service_tier", "'priority'"),
        (
            params(tools=[{"type": "web_search_20250305", "name": "web_search"}]),
            "tools[0]",
            "server tool 'web_search_20250305'",
        ),
        (
            params(tools=[{**WEATHER, "input_examples": [{"city": "Oslo"}]}]),
            "tools[0].input_examples",
            "examples",
        ),
        (
            params(tools=[{**WEATHER, "defer_loading": True}]),
            "tools[0].defer_loading",
            "tool search",
        ),
        (
            params(tools=[{**WEATHER, "allowed_callers": ["code_execution_20250825"]}]),
            "tools[0].allowed_callers",
            "directly",
        ),
        (
            block_in(
                "user",
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "x"},
                },
            ),
            "messages[0].content[0]",
            "document blocks",
        ),
        (
            block_in(
                "user",
                {"type": "search_result", "source": "s", "title": "t", "content": []},
            ),
            "messages[0].content[0]",
            "search_result blocks",
        ),
        (
            block_in("user", {"type": "container_upload", "file_id": "file_1"}),
            "messages[0].content[0]",
            "container_upload blocks",
        ),
        (
            block_in("assistant", {"type": "thinking", "thinking": "hm", "signature": "s"}),
            "messages[0].content[0]",
            "thinking blocks",
        ),
        (
            block_in("assistant", {"type": "redacted_thinking", "data": "x"}),
            "messages[0].content[0]",
            "thinking blocks",
        ),
        (block_in("assistant", SERVER_TOOL_USE), "messages[0].content[0]", "server tools"),
        (
            block_in(
                "user",
                {"type": "web_search_tool_result", "tool_use_id": "srvtoolu_1", "content": []},
            ),
            "messages[0].content[0]",
            "server tools",
        ),
        (block_in("assistant", IMAGE), "messages[0].content[0]", "image blocks in assistant turns"),
        (
            block_in("user", {"type": "tool_use", "id": "t", "name": "n", "input": {}}),
            "messages[0].content[0]",
            "tool_use blocks in user turns",
        ),
        (
            block_in("assistant", {"type": "tool_result", "tool_use_id": "t"}),
            "messages[0].content[0]",
            "tool_result blocks in assistant turns",
        ),
        (
            block_in("user", {"type": "image", "source": {"type": "file", "file_id": "file_1"}}),
            "messages[0].content[0].source",
            "Files API",
        ),
        (
            block_in("user", {**IMAGE, "transformations": {"downscale": "auto"}}),
            "messages[0].content[0].transformations",
            "as they are",
        ),
        (
            block_in("user", {"type": "tool_result", "tool_use_id": "t", "content": [IMAGE]}),
            "messages[0].content[0].content[0]",
            "text only",
        ),
        (
            block_in(
                "user",
                {
                    "type": "tool_result",
                    "tool_use_id": "t",
                    "content": [{"type": "document", "source": {}}],
                },
            ),
            "messages[0].content[0].content[0]",
            "document blocks",
        ),
        (
            block_in(
                "assistant",
                {
                    **SERVER_TOOL_USE,
                    "type": "tool_use",
                    "caller": {"type": "code_execution_20250825"},
                },
            ),
            "messages[0].content[0].caller",
            "directly",
        ),
    ],
)
def test_what_would_change_the_answer_is_refused(body: Any, param: str, why: str) -> None:
    error = refused(body)
    assert error.param == param
    assert error.message.startswith(f"'{param}' {ROUTE}: ")
    assert why in error.message
    assert error.message.endswith("; remove it.")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (params(n=2), "n"),
        (params(frequency_penalty=0.5), "frequency_penalty"),
        (params(metadata={"user_id": "u", "tenant": "t"}), "metadata.tenant"),
        (params(messages=[{"role": "user", "content": "x", "name": "bob"}]), "messages[0].name"),
        (params([{"type": "text", "text": "x", "extra": 1}]), "messages[0].content[0].extra"),
        (params(tools=[{**WEATHER, "parameters": {}}]), "tools[0].parameters"),
        (
            params(tool_choice={"type": "none", "disable_parallel_tool_use": True}),
            "tool_choice.disable_parallel_tool_use",
        ),
        (params(output_config={"verbosity": "low"}), "output_config.verbosity"),
        (
            block_in(
                "user", {"type": "image", "source": {"type": "url", "url": "u", "detail": "hi"}}
            ),
            "messages[0].content[0].source.detail",
        ),
    ],
)
def test_unknown_parameters_are_refused_not_dropped(body: Any, param: str) -> None:
    error = refused(body)
    assert error.param == param
    assert error.message == (
        f"'{param}' is not a parameter this route knows (it translates Messages to chat "
        "completions and passes nothing on unread); remove it."
    )


@pytest.mark.parametrize(
    ("block", "param", "words"),
    [
        ({"type": "video"}, "messages[0].content[0].type", "text, image and tool_result"),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "png", "data": "x"}},
            "messages[0].content[0].source.media_type",
            "image/png",
        ),
        (
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": ""}},
            "messages[0].content[0].source.data",
            "base64",
        ),
        ({"type": "image", "source": {"type": "url"}}, "messages[0].content[0].source.url", "URL"),
        (
            {"type": "image", "source": {"type": "s3"}},
            "messages[0].content[0].source.type",
            "'url'",
        ),
        ({"type": "image"}, "messages[0].content[0].source", "'base64' or 'url'"),
        (
            {"type": "tool_result", "tool_use_id": ""},
            "messages[0].content[0].tool_use_id",
            "non-empty",
        ),
        (
            {"type": "tool_result", "tool_use_id": "t", "content": 5},
            "messages[0].content[0].content",
            "text blocks",
        ),
        (
            {"type": "tool_result", "tool_use_id": "t", "is_error": "yes"},
            "messages[0].content[0].is_error",
            "a boolean",
        ),
    ],
)
def test_malformed_user_blocks_name_the_parameter(
    block: dict[str, Any], param: str, words: str
) -> None:
    error = refused(block_in("user", block))
    assert error.param == param
    assert words in error.message


@pytest.mark.parametrize(
    ("block", "param"),
    [
        ({"type": "tool_use", "id": "t", "name": "", "input": {}}, "messages[0].content[0].name"),
        ({"type": "tool_use", "id": "t", "name": "n", "input": []}, "messages[0].content[0].input"),
        ({"type": "tool_use", "name": "n", "input": {}}, "messages[0].content[0].id"),
    ],
)
def test_malformed_tool_use_blocks_name_the_parameter(block: dict[str, Any], param: str) -> None:
    assert refused(block_in("assistant", block)).param == param
