"""The fake upstream itself (tests/upstream), exercised through the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import base64
import json
import math
import socket
import struct
import threading
import time
import urllib.error
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.upstream import answers, faults
from tests.upstream.fixtures import clean_upstream_fixture, upstream_fixture  # noqa: F401
from tests.upstream.process import UpstreamProcess

MOVIES = [
    "A retired safecracker is pulled into one last heist in 1960s Lisbon.",
    "Two sisters inherit a haunted lighthouse and a ledger of drowned sailors.",
    "An astronaut stranded on Europa teaches a lonely rover to play chess.",
    "A small-town baker enters a national competition and falls for the judge.",
    "Detectives chase a forger whose paintings predict the next murder.",
    "A family of raccoons plans the perfect picnic raid on a city park.",
    "A cavalry scout crosses the desert to deliver news that the war is over.",
    "A jazz pianist loses her hearing the week before her debut album.",
]


def chat_body(text: str, model: str = "gpt-4o-mini", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **extra}


@pytest.fixture
def sdk(clean_upstream: UpstreamProcess) -> Iterator[OpenAI]:
    with OpenAI(
        base_url=clean_upstream.api_url, api_key="test-key", max_retries=0, timeout=10
    ) as client:
        yield client


def async_sdk(upstream: UpstreamProcess, timeout: float = 10) -> AsyncOpenAI:
    return AsyncOpenAI(
        base_url=upstream.api_url, api_key="test-key", max_retries=0, timeout=timeout
    )


def outcome_of(exc: BaseException | None) -> str:
    """What the client saw, in the upstream's outcome vocabulary."""
    if exc is None:
        return "ok"
    if isinstance(exc, openai.InternalServerError):
        return "500"
    if isinstance(exc, openai.RateLimitError):
        return "429"
    if isinstance(exc, openai.BadRequestError):
        return "400"
    if isinstance(exc, openai.APITimeoutError):  # before its base class APIConnectionError
        return "hang"
    if isinstance(exc, openai.APIConnectionError):
        return "reset"
    if isinstance(exc, json.JSONDecodeError):
        return "malformed"
    raise AssertionError(f"unexpected exception {exc!r}")


# -- answers -------------------------------------------------------------------------------


def test_chat_answer_is_deterministic_and_counted(
    sdk: OpenAI, clean_upstream: UpstreamProcess
) -> None:
    text = "Summarise the plot of a heist film set in Lisbon"
    body = chat_body(text)
    raw_first = sdk.chat.completions.with_raw_response.create(**body)
    first = raw_first.parse()
    second = sdk.chat.completions.create(**body)
    other = sdk.chat.completions.create(**chat_body(text + " in winter"))

    assert first.model_dump() == second.model_dump()
    assert first.model_dump(exclude_unset=True) == answers.chat_completion(body)
    assert other.choices[0].message.content != first.choices[0].message.content
    assert first.object == "chat.completion"
    assert first.model == "gpt-4o-mini"
    assert first.id.startswith("chatcmpl-")
    choice = first.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    content = choice.message.content
    assert content is not None
    assert content.startswith("Echo ")
    assert content.endswith(text)
    assert first.usage is not None
    assert first.usage.prompt_tokens == 10
    assert first.usage.completion_tokens == len(content.split())
    assert first.usage.total_tokens == 10 + len(content.split())

    digest = raw_first.headers["x-upstream-digest"]
    assert digest == answers.body_digest(body)
    assert raw_first.headers["x-upstream-attempt"] == "1"
    stats = clean_upstream.stats()
    assert stats["total"] == 3
    assert stats["by_outcome"] == {"ok": 3}
    assert stats["by_path"] == {"/v1/chat/completions": 3}
    assert stats["digests"][digest] == {"attempts": 2, "outcomes": ["ok", "ok"]}
    assert stats["unique_bodies"] == 2


def test_json_mode_gives_movie_categories_and_summary(sdk: OpenAI) -> None:
    seen: set[tuple[str, ...]] = set()
    for movie in MOVIES:
        body = chat_body(
            f"Categorise this movie: {movie}",
            response_format={"type": "json_object"},
            messages=[
                {"role": "system", "content": "Answer with JSON: categories and summary."},
                {"role": "user", "content": f"Categorise this movie: {movie}"},
            ],
        )
        content = sdk.chat.completions.create(**body).choices[0].message.content
        again = sdk.chat.completions.create(**body).choices[0].message.content
        assert content == again
        assert content is not None
        parsed = json.loads(content)
        assert set(parsed) == {"categories", "summary"}
        categories = parsed["categories"]
        assert 1 <= len(categories) <= 3
        assert len(set(categories)) == len(categories)
        assert all(isinstance(c, str) and c in answers.GENRES for c in categories)
        assert isinstance(parsed["summary"], str)
        assert movie.split()[-1] in parsed["summary"]
        seen.add(tuple(categories))
    assert len(seen) >= 4, "categories should depend on the movie"


def test_json_schema_answer_matches_the_schema(sdk: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "categories": {"type": "array", "items": {"type": "string"}},
            "summary": {"type": "string"},
            "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
            "rating": {"type": "number", "minimum": 0, "maximum": 10},
            "family_friendly": {"type": "boolean"},
            "tone": {"type": "string", "enum": ["light", "dark", "mixed"]},
            "cast": {
                "type": "array",
                "minItems": 2,
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "lead": {"type": "boolean"}},
                    "required": ["name", "lead"],
                    "additionalProperties": False,
                },
            },
        },
        "required": ["categories", "summary", "year", "rating", "family_friendly", "tone", "cast"],
        "additionalProperties": False,
    }
    fmt = {
        "type": "json_schema",
        "json_schema": {"name": "movie", "schema": schema, "strict": True},
    }
    content = (
        sdk.chat.completions.create(**chat_body(MOVIES[2], response_format=fmt))
        .choices[0]
        .message.content
    )
    assert content is not None
    parsed = json.loads(content)
    jsonschema.validate(parsed, schema)
    assert parsed["categories"] == answers.movie_answer(MOVIES[2])["categories"]


def test_completions_endpoint(sdk: OpenAI) -> None:
    result = sdk.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["hello there world", "second prompt"]
    )
    assert result.object == "text_completion"
    assert [c.index for c in result.choices] == [0, 1]
    assert result.choices[0].text.endswith("hello there world")
    assert result.choices[1].text.endswith("second prompt")
    assert result.usage is not None
    assert result.usage.prompt_tokens == 5
    again = sdk.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=["hello there world", "second prompt"]
    )
    assert again.model_dump() == result.model_dump()


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def test_embeddings(sdk: OpenAI) -> None:
    model = "text-embedding-3-small"
    inputs = ["the quick brown fox", "jumps over", "the lazy dog"]
    result = sdk.embeddings.create(
        model=model, input=inputs, dimensions=64, encoding_format="float"
    )
    assert [d.index for d in result.data] == [0, 1, 2]
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 64 for v in vectors)
    assert all(abs(_norm(v) - 1.0) < 1e-5 for v in vectors)
    assert len({tuple(v) for v in vectors}) == 3
    assert result.usage.prompt_tokens == 4 + 2 + 3

    single = sdk.embeddings.create(model=model, input="jumps over", encoding_format="float")
    full = single.data[0].embedding
    assert len(full) == 1536  # the model's default size
    assert abs(_norm(full) - 1.0) < 1e-5
    prefix = full[:64]
    shortened = [v / _norm(prefix) for v in prefix]
    assert all(abs(a - b) < 1e-5 for a, b in zip(shortened, vectors[1], strict=True))

    b64 = sdk.embeddings.create(model=model, input=inputs, dimensions=64, encoding_format="base64")
    for item, vector in zip(b64.data, vectors, strict=True):
        assert isinstance(item.embedding, str)
        raw = base64.b64decode(item.embedding)
        assert list(struct.unpack("<64f", raw)) == vector

    # The SDK's default asks for base64 and decodes it.
    decoded = sdk.embeddings.create(model=model, input=inputs, dimensions=64)
    assert [list(d.embedding) for d in decoded.data] == vectors

    tokens = sdk.embeddings.create(model="text-embedding-3-large", input=[[1, 2, 3], [4, 5]])
    assert [len(d.embedding) for d in tokens.data] == [3072, 3072]
    assert tokens.usage.prompt_tokens == 5


def test_models_list(sdk: OpenAI) -> None:
    ids = {m.id for m in sdk.models.list()}
    assert {"gpt-4o-mini", "text-embedding-3-small"} <= ids


def test_stream_sync(sdk: OpenAI) -> None:
    body = chat_body(MOVIES[0] + " " + MOVIES[1])
    expected = sdk.chat.completions.create(**body)
    pieces: list[str] = []
    finish: list[str | None] = []
    usage = None
    with sdk.chat.completions.create(
        **body, stream=True, stream_options={"include_usage": True}
    ) as stream:
        for chunk in stream:
            assert chunk.object == "chat.completion.chunk"
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finish.append(choice.finish_reason)
    assert len(pieces) > 3
    assert "".join(pieces) == expected.choices[0].message.content
    assert finish[-1] == "stop"
    assert set(finish[:-1]) == {None}
    assert usage is not None
    assert expected.usage is not None
    assert usage.total_tokens == expected.usage.total_tokens


@pytest.mark.anyio
async def test_stream_async(clean_upstream: UpstreamProcess) -> None:
    body = chat_body(MOVIES[3], response_format={"type": "json_object"})
    async with async_sdk(clean_upstream) as client:
        stream = await client.chat.completions.create(**body, stream=True)
        text = ""
        async with stream:
            async for chunk in stream:
                for choice in chunk.choices:
                    text += choice.delta.content or ""
    assert json.loads(text) == answers.movie_answer(MOVIES[3])
    assert clean_upstream.stats()["by_outcome"] == {"ok": 1}


def test_bad_requests_are_deterministic_400s(sdk: OpenAI, clean_upstream: UpstreamProcess) -> None:
    with pytest.raises(openai.BadRequestError) as missing:
        sdk.post(
            "/chat/completions",
            body={"messages": [{"role": "user", "content": "hi"}]},
            cast_to=object,
        )
    assert missing.value.param == "model"
    with pytest.raises(openai.BadRequestError) as bad_model:
        sdk.chat.completions.create(**chat_body("hi", model="bad-request-1"))
    assert bad_model.value.code == "invalid_model"
    assert "bad-request-1" in bad_model.value.message
    # Deterministic: the same body fails the same way however often it is sent, and no
    # probability overrides it.
    clean_upstream.control(p_500=1.0)
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(**chat_body("hi", model="bad-request-1"))
    with pytest.raises(openai.BadRequestError) as marker:
        sdk.chat.completions.create(**chat_body("please FAULT:400 now"))
    assert marker.value.code == "injected_fault"
    assert clean_upstream.stats(digests=False)["by_outcome"] == {"400": 4}


# -- faults ----------------------------------------------------------------------------------

FAULT_EXCEPTIONS: list[tuple[str, type[BaseException]]] = [
    ("500", openai.InternalServerError),
    ("429", openai.RateLimitError),
    ("hang", openai.APITimeoutError),
    ("reset", openai.APIConnectionError),
    ("malformed", json.JSONDecodeError),
]


@pytest.mark.parametrize(("kind", "error"), FAULT_EXCEPTIONS)
def test_marker_fault_seen_by_sync_client(
    sdk: OpenAI, clean_upstream: UpstreamProcess, kind: str, error: type[BaseException]
) -> None:
    client = sdk.with_options(timeout=2.0)
    with pytest.raises(error) as caught:
        client.chat.completions.create(**chat_body(f"movie FAULT:{kind} please"))
    assert outcome_of(caught.value) == kind
    if kind == "429":
        assert isinstance(caught.value, openai.RateLimitError)
        assert caught.value.response.headers["retry-after"] == "1"
        assert caught.value.response.headers["retry-after-ms"] == "1000"
        assert caught.value.code == "rate_limit_exceeded"
    stats = clean_upstream.wait_idle()
    assert stats["by_outcome"] == {kind: 1}
    assert stats["total"] == 1


@pytest.mark.anyio
async def test_every_fault_seen_by_async_client(clean_upstream: UpstreamProcess) -> None:
    clean_upstream.control(retry_after=0.25)
    async with async_sdk(clean_upstream, timeout=2.0) as client:
        results = await asyncio.gather(
            *(
                client.chat.completions.create(**chat_body(f"FAULT:{kind}"))
                for kind, _ in FAULT_EXCEPTIONS
            ),
            client.chat.completions.create(**chat_body("no fault here")),
            return_exceptions=True,
        )
    seen = [outcome_of(r if isinstance(r, BaseException) else None) for r in results]
    assert seen == [kind for kind, _ in FAULT_EXCEPTIONS] + ["ok"]
    rate_limited = results[1]
    assert isinstance(rate_limited, openai.RateLimitError)
    assert rate_limited.response.headers["retry-after"] == "0.25"
    assert rate_limited.response.headers["retry-after-ms"] == "250"


def test_reset_is_a_tcp_rst(clean_upstream: UpstreamProcess) -> None:
    def send(text: str) -> bytes:
        payload = json.dumps(chat_body(text)).encode()
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
        ).encode()
        with socket.create_connection(("127.0.0.1", clean_upstream.port), timeout=5) as sock:
            sock.sendall(head + payload)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            return data

    assert send("fine").startswith(b"HTTP/1.1 200 OK")
    with pytest.raises(ConnectionResetError):
        send("FAULT:reset")


def test_fail_first_n(sdk: OpenAI, clean_upstream: UpstreamProcess) -> None:
    clean_upstream.control(fail_first_n=2)
    body = chat_body("try me three times")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(**body)
    assert sdk.chat.completions.create(**body).choices[0].finish_reason == "stop"

    clean_upstream.control(fail_first_n=1, fail_first_kind="429")
    other = chat_body("another body")
    with pytest.raises(openai.RateLimitError):
        sdk.chat.completions.create(**other)
    sdk.chat.completions.create(**other)
    sdk.chat.completions.create(**body)  # attempt 4 of the first body: fine

    digests = clean_upstream.stats()["digests"]
    assert digests[answers.body_digest(body)] == {
        "attempts": 4,
        "outcomes": ["500", "500", "ok", "ok"],
    }
    assert digests[answers.body_digest(other)]["outcomes"] == ["429", "ok"]
    log = clean_upstream.requests_log()
    assert [(e["attempt"], e["outcome"], e["reason"]) for e in log[:3]] == [
        (1, "500", "fail_first_n"),
        (2, "500", "fail_first_n"),
        (3, "ok", "none"),
    ]
    assert all(e["state"] == "done" for e in log)


def test_marker_with_attempt_limit_and_switch(sdk: OpenAI, clean_upstream: UpstreamProcess) -> None:
    body = chat_body("flaky FAULT:500x2 request")
    for _ in range(2):
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(**body)
    sdk.chat.completions.create(**body)
    permanent = chat_body("always FAULT:429")
    for _ in range(3):
        with pytest.raises(openai.RateLimitError):
            sdk.chat.completions.create(**permanent)
    # A marker in a later message, or inside content parts, counts too.
    parts: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "x FAULT:500"}]},
        ],
    }
    with pytest.raises(openai.InternalServerError):
        sdk.chat.completions.create(**parts)
    # Not a marker: a different word after the colon.
    sdk.chat.completions.create(**chat_body("FAULT:hangover is a film"))
    clean_upstream.control(markers=False)
    sdk.chat.completions.create(**permanent)
    assert clean_upstream.stats(digests=False)["by_outcome"] == {"500": 3, "429": 3, "ok": 3}


@pytest.mark.anyio
async def test_random_faults_follow_the_seeded_decision(clean_upstream: UpstreamProcess) -> None:
    settings = {
        "seed": 1234,
        "p_500": 0.2,
        "p_429": 0.1,
        "p_hang": 0.05,
        "p_reset": 0.05,
        "p_malformed": 0.05,
        "retry_after": 0,
    }
    config = faults.FaultConfig().updated(settings)
    clean_upstream.control(**settings)
    bodies = [chat_body(f"movie number {i}") for i in range(120)]

    async def run_all() -> list[str]:
        async with async_sdk(clean_upstream, timeout=3.0) as client:
            results = await asyncio.gather(
                *(client.chat.completions.create(**body) for body in bodies),
                return_exceptions=True,
            )
        return [outcome_of(r if isinstance(r, BaseException) else None) for r in results]

    def predicted(attempt: int) -> list[str]:
        decisions = [
            faults.decide(config, answers.body_digest(b), attempt, answers.request_texts(b))
            for b in bodies
        ]
        return [d.fault or "ok" for d in decisions]

    first = await run_all()
    assert first == predicted(1)
    counts = Counter(first)
    assert set(counts) == {"ok", "500", "429", "hang", "reset", "malformed"}
    assert 10 <= counts["500"] <= 40

    second = await run_all()  # attempt 2 of every body: a fresh draw
    assert second == predicted(2)
    assert second != first

    clean_upstream.wait_idle()
    clean_upstream.reset(config=False)  # attempt numbers start again; settings kept
    assert await run_all() == first
    stats = clean_upstream.wait_idle()
    assert stats["total"] == len(bodies)
    assert dict(stats["by_outcome"]) == dict(counts)


@pytest.mark.anyio
async def test_latency_concurrency_and_reset(clean_upstream: UpstreamProcess) -> None:
    clean_upstream.control(latency_ms=300)
    async with async_sdk(clean_upstream) as client:

        async def one(i: int) -> float:
            start = time.monotonic()
            await client.embeddings.create(
                model="text-embedding-3-small", input=f"text {i}", dimensions=8
            )
            return time.monotonic() - start

        began = time.monotonic()
        durations = await asyncio.gather(*(one(i) for i in range(16)))
        elapsed = time.monotonic() - began
    assert min(durations) >= 0.3
    assert elapsed < 1.5, "requests should have been served concurrently"
    stats = clean_upstream.stats()
    assert stats["total"] == 16
    assert stats["max_in_flight"] == 16
    assert stats["in_flight"] == 0
    assert stats["by_path"] == {"/v1/embeddings": 16}
    assert len(stats["digests"]) == 16

    clean_upstream.reset()
    stats = clean_upstream.stats()
    assert stats["total"] == 0
    assert stats["max_in_flight"] == 0
    assert stats["digests"] == {}
    assert clean_upstream.current_config()["latency_ms"] == 0


def test_in_flight_and_disconnect_are_counted(clean_upstream: UpstreamProcess) -> None:
    clean_upstream.control(latency_ms=2000)
    with OpenAI(base_url=clean_upstream.api_url, api_key="k", max_retries=0, timeout=0.4) as client:
        holder: list[BaseException] = []

        def call() -> None:
            try:
                client.chat.completions.create(**chat_body("slow one"))
            except openai.APITimeoutError as exc:
                holder.append(exc)

        thread = threading.Thread(target=call)
        thread.start()
        deadline = time.monotonic() + 2
        while clean_upstream.stats(digests=False)["in_flight"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        thread.join()
    assert len(holder) == 1
    stats = clean_upstream.wait_idle()
    assert stats["disconnected"] == 1
    assert clean_upstream.requests_log()[0]["state"] == "disconnected"


def test_api_key_check(sdk: OpenAI, clean_upstream: UpstreamProcess) -> None:
    clean_upstream.control(api_key="sk-upstream")
    with pytest.raises(openai.AuthenticationError):
        sdk.chat.completions.create(**chat_body("hi"))
    with OpenAI(base_url=clean_upstream.api_url, api_key="sk-upstream", max_retries=0) as client:
        client.chat.completions.create(**chat_body("hi"))
    assert clean_upstream.stats(digests=False)["by_outcome"] == {"401": 1, "ok": 1}


def test_control_validation(clean_upstream: UpstreamProcess) -> None:
    before = clean_upstream.current_config()
    for bad in ({"p_501": 0.1}, {"p_500": 0.7, "p_429": 0.5}, {"latency_ms": "fast"}):
        with pytest.raises(urllib.error.HTTPError) as caught:
            clean_upstream.control(**bad)
        assert caught.value.code == 400
        caught.value.close()
    assert clean_upstream.current_config() == before
    assert clean_upstream.control(latency_ms=5, seed=3)["latency_ms"] == 5.0


# -- the process ---------------------------------------------------------------------------


def test_process_flags_and_clean_sigterm_with_a_hung_request(tmp_path: Path) -> None:
    proc = UpstreamProcess(tmp_path, p_500=1.0, retry_after=2.5, markers=False)
    with proc:
        assert proc.port > 0
        assert f"LISTENING {proc.base_url}" in proc.output()
        config = proc.current_config()
        assert (config["p_500"], config["retry_after"], config["markers"]) == (1.0, 2.5, False)
        with OpenAI(base_url=proc.api_url, api_key="k", max_retries=0) as client:
            with pytest.raises(openai.InternalServerError):
                client.chat.completions.create(**chat_body("FAULT:429 ignored"))
            proc.control(p_500=0.0, p_hang=1.0)
            errors: list[BaseException] = []

            def call() -> None:
                try:
                    client.chat.completions.create(**chat_body("hang until shutdown"))
                except openai.APIConnectionError as exc:
                    errors.append(exc)

            thread = threading.Thread(target=call)
            thread.start()
            while proc.stats(digests=False)["in_flight"] == 0:
                time.sleep(0.01)
            began = time.monotonic()
            assert proc.stop() == 0
            assert time.monotonic() - began < 3
            thread.join(5)
        assert not thread.is_alive()
        assert len(errors) == 1
        assert not isinstance(errors[0], openai.APITimeoutError)
    assert not proc.alive()


# -- the pure parts -----------------------------------------------------------------------------


def test_fault_decision_precedence_and_rates() -> None:
    config = faults.FaultConfig(p_500=0.2, p_429=0.1, p_hang=0.05, p_reset=0.05, seed=9)
    digests = [answers.body_digest({"i": i}) for i in range(4000)]
    counts = Counter(faults.decide(config, d, 1).fault for d in digests)
    assert abs(counts["500"] / 4000 - 0.2) < 0.03
    assert abs(counts["429"] / 4000 - 0.1) < 0.02
    assert abs(counts["hang"] / 4000 - 0.05) < 0.015
    assert abs(counts[None] / 4000 - 0.6) < 0.03
    assert "malformed" not in counts

    always = faults.FaultConfig(p_500=1.0, fail_first_n=1, fail_first_kind="reset", seed=1)
    assert faults.decide(always, digests[0], 1, ["FAULT:hang"]).fault == "hang"
    assert faults.decide(always, digests[0], 1, ["FAULT:hangs"]).fault == "reset"
    assert faults.decide(always, digests[0], 2).fault == "500"
    assert faults.decide(always, digests[0], 2, ["FAULT:malformedx1"]).reason == "random"

    jittery = faults.FaultConfig(latency_ms=50, jitter_ms=20, seed=4)
    latencies = {faults.decide(jittery, d, 1).latency_s for d in digests[:50]}
    assert all(0.05 <= s < 0.07 for s in latencies)
    assert len(latencies) > 40
    assert faults.decide(jittery, digests[0], 1) == faults.decide(jittery, digests[0], 1)


def test_body_digest_ignores_key_order_and_whitespace() -> None:
    a = json.loads('{"model": "m", "messages": [{"role": "user", "content": "x"}]}')
    b = json.loads('{"messages":[{"content":"x","role":"user"}],"model":"m"}')
    assert answers.body_digest(a) == answers.body_digest(b)
    assert answers.body_digest(a) != answers.body_digest({**a, "model": "n"})


def test_movie_answers_over_many_inputs() -> None:
    sizes: Counter[int] = Counter()
    genres: Counter[str] = Counter()
    for i in range(3000):
        answer = answers.movie_answer(f"Movie {i}: a film about case number {i * 7919}")
        categories = answer["categories"]
        assert len(set(categories)) == len(categories)
        assert set(categories) <= set(answers.GENRES)
        sizes[len(categories)] += 1
        genres.update(categories)
        assert answer["summary"].endswith(f"case number {i * 7919}")
    assert set(sizes) == {1, 2, 3}
    assert min(sizes.values()) > 800
    assert set(genres) == set(answers.GENRES)
