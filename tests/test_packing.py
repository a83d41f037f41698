"""Packed embeddings (:mod:`batchd.providers.packing`): which lines go together, how the answer
is split back with each line's usage, and end to end through ``batchd serve`` against the fake
upstream: the same vectors as one request a line with a fraction of the upstream calls, a bad
input failing only its own line, a retryable failure retried line by line."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from openai import OpenAI

from batchd.providers.base import ProviderRequest
from batchd.providers.packing import Pack, _shares, plan, split
from tests.engine_support import (
    Served,
    fetch_results,
    request_line,
    served,
    to_jsonl,
    wait_for_batch,
)

EMB = "/v1/embeddings"
MODEL = "text-embedding-3-small"


def req(index: int, **body: Any) -> ProviderRequest:
    return ProviderRequest(index, f"c{index}", EMB, {"model": MODEL, **body})


# -- planning and splitting ----------------------------------------------------------------------


def test_compatible_lines_are_packed_in_order() -> None:
    group = [
        req(0, input="a"),
        req(1, input=["b", "c"]),
        req(2, input="d", encoding_format="base64"),  # another body: another pack
        req(3, input=[1, 2, 3]),  # one token array
        req(4, input="e", encoding_format="base64"),
        req(5, input=7),  # not an input OpenAI takes: alone, the upstream answers it
        req(6, input="f", dimensions=256),  # a pack of one: alone, unchanged
    ]
    packs, alone = plan(group, max_inputs=64, max_tokens=10_000)
    assert [(p.slots, p.sizes) for p in packs] == [([0, 1, 3], [1, 2, 1]), ([2, 4], [1, 1])]
    assert packs[0].body == {"model": MODEL, "input": ["a", "b", "c", [1, 2, 3]]}
    assert packs[1].body == {"model": MODEL, "encoding_format": "base64", "input": ["d", "e"]}
    assert alone == [5, 6]


def test_packs_stop_at_the_input_and_token_limits() -> None:
    group = [req(i, input=["x" * 40] * 3) for i in range(5)]  # 3 inputs, ~33 tokens each line
    packs, alone = plan(group, max_inputs=7, max_tokens=10_000)
    assert [p.slots for p in packs] == [[0, 1], [2, 3]]
    assert alone == [4]
    packs, alone = plan(group, max_inputs=64, max_tokens=70)
    assert [p.slots for p in packs] == [[0, 1], [2, 3]]
    big = [req(0, input=["x"] * 65), req(1, input="y"), req(2, input="z")]
    packs, alone = plan(big, max_inputs=64, max_tokens=10_000)
    assert ([p.slots for p in packs], alone) == ([[1, 2]], [0])


def test_split_gives_each_line_its_vectors_and_usage() -> None:
    pack = Pack([0, 1, 2], [1, 2, 1], [10, 20, 1], {})
    data = [{"object": "embedding", "index": i, "embedding": [float(i)]} for i in range(4)]
    body = {
        "object": "list",
        "data": data[::-1],  # any order
        "model": "m",
        "usage": {"prompt_tokens": 31, "total_tokens": 31},
    }
    lines = split(pack, body)
    assert lines is not None
    assert [[item["embedding"] for item in line["data"]] for line in lines] == [
        [[0.0]],
        [[1.0], [2.0]],
        [[3.0]],
    ]
    assert [[item["index"] for item in line["data"]] for line in lines] == [[0], [0, 1], [0]]
    assert [line["usage"]["prompt_tokens"] for line in lines] == [10, 20, 1]
    assert list(lines[1]) == ["object", "data", "model", "usage"]
    assert split(pack, {**body, "data": data[:3]}) is None  # a vector missing
    assert split(pack, {**body, "usage": None}) is None
    assert split(pack, "not json") is None


@pytest.mark.parametrize(
    ("total", "weights"), [(31, [10, 20, 1]), (7, [1, 1, 1]), (0, [3, 4]), (100, [1, 999])]
)
def test_shares_add_up(total: int, weights: list[int]) -> None:
    parts = _shares(total, weights)
    assert sum(parts) == total
    assert all(
        abs(part - total * w / sum(weights)) < 1 for part, w in zip(parts, weights, strict=True)
    )


# -- end to end ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("packing")
    with served(
        root,
        {"name": MODEL, "pack_inputs": 8, "max_concurrency": 4},
        {"retry_after": 0.05},
        max_attempts=3,
        retry_base_seconds=0.05,
        retry_cap_seconds=0.2,
    ) as env:
        yield env


def embeddings_batch(client: OpenAI, lines: list[dict[str, Any]]) -> str:
    file_id = client.files.create(file=("emb.jsonl", to_jsonl(lines)), purpose="batch").id
    return client.batches.create(input_file_id=file_id, endpoint=EMB, completion_window="24h").id


def vectors_of(line: dict[str, Any]) -> list[Any]:
    out = []
    for item in line["response"]["body"]["data"]:
        vector = item["embedding"]
        out.append(base64.b64decode(vector) if isinstance(vector, str) else vector)
    return out


def test_packed_lines_get_the_vectors_of_single_requests(env: Served) -> None:
    env.upstream.reset()
    bodies: list[dict[str, Any]] = [
        {"model": MODEL, "input": f"text number {i}"} for i in range(40)
    ]
    bodies[5] = {"model": MODEL, "input": ["two", "inputs here"]}
    bodies[9] = {"model": MODEL, "input": "base64 one", "encoding_format": "base64"}
    bodies[10] = {"model": MODEL, "input": "base64 two", "encoding_format": "base64"}
    lines = [request_line(f"e{i}", body, url=EMB) for i, body in enumerate(bodies)]
    batch = wait_for_batch(env.client, env.server, embeddings_batch(env.client, lines))
    packed_calls = env.upstream.stats(digests=False)["total"]
    assert packed_calls <= 8  # 40 lines, 8 inputs a call at most, the base64 pair apart
    results = fetch_results(env.client, batch, [line["custom_id"] for line in lines])
    by_id = {line["custom_id"]: line for line in results.output}
    # each body alone, straight to the upstream: the same vectors and the same total usage
    total = 0
    for i, body in enumerate(bodies):
        alone = env.upstream.call("POST", "/v1/embeddings", body)
        line = by_id[f"e{i}"]
        assert vectors_of(line) == vectors_of({"response": {"body": alone}})
        assert [item["index"] for item in line["response"]["body"]["data"]] == list(
            range(len(alone["data"]))
        )
        total += alone["usage"]["prompt_tokens"]
    assert batch["usage"]["input_tokens"] == total


def test_a_bad_input_fails_only_its_line(env: Served) -> None:
    env.upstream.reset()
    bodies = [{"model": MODEL, "input": f"fine {i}"} for i in range(8)]
    bodies[3] = {"model": MODEL, "input": "FAULT:400 this one"}
    bodies[6] = {"model": MODEL, "input": "FAULT:500x1 flaky"}
    lines = [request_line(f"b{i}", body, url=EMB) for i, body in enumerate(bodies)]
    batch = wait_for_batch(env.client, env.server, embeddings_batch(env.client, lines))
    results = fetch_results(env.client, batch, [line["custom_id"] for line in lines])
    assert [line["custom_id"] for line in results.errors] == ["b3"]
    assert results.errors[0]["response"]["status_code"] == 400
    assert len(results.output) == 7
