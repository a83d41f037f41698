"""The cross-batch result cache (:mod:`batchd.engine.cache`, :mod:`batchd.store.cache`): which
requests may be cached and under which key; the store's lookups, expiry and cap on SQLite and
(with ``BATCHD_TEST_POSTGRES_URL``) PostgreSQL; a store that fails; the usage of a cached line;
and end to end through ``batchd serve`` against the fake upstream, which counts the calls per body
digest: a batch submitted again after a fix costs only the changed lines, duplicates within a
batch are sent once, projects do not share answers, packed embeddings come back from the cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openai import OpenAI

from batchd.engine.cache import Recall, ResultCache, cacheable, hit_response, request_digest
from batchd.engine.dispatch import entry_of
from batchd.engine.journal import Journal, JournalEntry, Usage
from batchd.engine.throttle import Throttle
from batchd.errors import StoreError
from batchd.providers.base import ProviderRequest, ProviderResult
from batchd.store import SQLStore
from batchd.store.cache import CachedAnswer, CacheStore
from tests.engine_support import (
    MODEL,
    Served,
    chat_body,
    fetch_results,
    request_line,
    served,
    shared_mode,
    to_jsonl,
    upstream_attempts,
    wait_for_batch,
)
from tests.upstream.process import UpstreamProcess

CHAT = "/v1/chat/completions"
EMB = "/v1/embeddings"
T0 = 1_800_000_000.0
KEY_A = "key-of-cache-project-a-0123456789"
KEY_B = "key-of-cache-project-b-0123456789"
ALIAS = "gpt-cached"


# -- what may be cached, and the key ----------------------------------------------------------


def test_embeddings_and_greedy_generations_are_cacheable() -> None:
    assert cacheable(EMB, {"input": "x"})
    assert cacheable("/embeddings", {"input": "x"})
    assert cacheable(CHAT, {"temperature": 0})
    assert cacheable("/v1/completions", {"temperature": 0.0})
    assert cacheable("/v1/responses", {"temperature": 0})
    assert not cacheable(CHAT, {})  # the default temperature is 1
    assert not cacheable(CHAT, {"temperature": 0.2})
    assert not cacheable(CHAT, {"temperature": False})
    assert not cacheable(CHAT, {"temperature": "0"})
    assert not cacheable("/v1/moderations", {"input": "x"})


def test_the_key_is_the_canonical_body_without_the_model() -> None:
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
    same = {"temperature": 0, "messages": [{"content": "hi", "role": "user"}], "model": "alias"}
    key = request_digest("route", CHAT, body)
    assert len(key) == 32
    assert request_digest("route", CHAT, same) == key  # key order, model name or alias
    assert request_digest("route", "/chat/completions", body) == key
    assert request_digest("other-route", CHAT, body) != key
    assert request_digest("route", "/v1/completions", body) != key
    assert request_digest("route", CHAT, {**body, "max_tokens": 5}) != key
    assert request_digest("route", CHAT, {**body, "temperature": 0.0}) != key


# -- the store --------------------------------------------------------------------------------


def answer(text: str) -> bytes:
    return orjson.dumps({"status_code": 200, "request_id": "req_1", "body": {"text": text}})


@pytest.mark.anyio
async def test_answers_are_found_per_project_until_they_expire(store: SQLStore) -> None:
    cache = CacheStore(store)
    k1, k2, k3 = (bytes([n]) * 32 for n in (1, 2, 3))
    assert await cache.lookup("p", [], now=T0) == {}
    stored = await cache.put("p", "m", [(k1, answer("one")), (k2, answer("two"))], now=T0, ttl=100)
    assert stored == len(answer("one")) + len(answer("two"))
    found = await cache.lookup("p", [k1, k2, k3, k1], now=T0 + 99)
    assert found == {k1: CachedAnswer(answer("one"), T0), k2: CachedAnswer(answer("two"), T0)}
    assert await cache.lookup("other", [k1], now=T0) == {}  # projects share nothing
    assert await cache.lookup("p", [k1], now=T0 + 100) == {}  # expired
    # the same key again: the later answer replaces the first (two engines, one request)
    await cache.put("p", "m", [(k1, answer("uno")), (k1, answer("eins"))], now=T0 + 5, ttl=100)
    assert (await cache.lookup("p", [k1], now=T0 + 6))[k1].response == answer("eins")
    assert await cache.usage() == (2, len(answer("eins")) + len(answer("two")))
    assert await cache.prune(now=T0 + 101, max_bytes=1 << 20) == 1  # k2 expired
    assert await cache.clear(project="p") == 1
    assert await cache.usage() == (0, 0)


@pytest.mark.anyio
async def test_prune_keeps_the_cap_dropping_the_oldest(store: SQLStore) -> None:
    cache = CacheStore(store)
    keys = [bytes([n]) * 32 for n in range(10)]
    size = len(answer("x0"))
    for i, key in enumerate(keys):
        await cache.put("p", "m", [(key, answer(f"x{i}"))], now=T0 + i * 100, ttl=10**6)
    assert await cache.prune(now=T0 + 2000, max_bytes=10 * size) == 0  # at the cap: kept
    dropped = await cache.prune(now=T0 + 2000, max_bytes=5 * size)  # down to 9/10 of it
    assert dropped == 6
    left = await cache.lookup("p", keys, now=T0 + 2001)
    assert sorted(left) == keys[6:]


# -- a store that fails, and the usage of a cached line ----------------------------------------


class FailingStore:
    """A cache store whose database does not answer."""

    def __init__(self) -> None:
        self.puts = 0

    async def lookup(self, project: str, digests: Sequence[str], *, now: float) -> dict[str, Any]:
        raise StoreError("the metadata store is unreachable")

    async def put(self, *args: Any, **kwargs: Any) -> int:
        self.puts += 1
        raise StoreError("the metadata store is unreachable")


@pytest.mark.anyio
async def test_a_store_that_fails_makes_every_request_a_miss(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FailingStore()
    cache = ResultCache(store, 1 << 20, faults=Throttle(logging.getLogger("batchd.engine")))  # type: ignore[arg-type]
    settled: list[JournalEntry] = []
    recall = Recall(cache, "p", MODEL, CHAT, 60.0, settled.extend, lambda result, count: None)
    chunk = [(i, f"c{i}", chat_body(f"q{i}", temperature=0)) for i in range(3)]
    with caplog.at_level(logging.WARNING, "batchd.engine"):
        assert await recall.screen(list(chunk)) == chunk
    assert "result cache: lookups wait" in caplog.text
    assert settled == []
    await recall.close()
    await cache.close()  # storing fails too, and is only logged


def test_a_cached_line_counts_its_input_as_cached_tokens() -> None:
    body = {"usage": {"prompt_tokens": 7, "completion_tokens": 3}}
    stored = {"status_code": 200, "request_id": "req_1", "body": body}
    hit = JournalEntry(0, "a", response=hit_response(stored, 12.7))
    assert hit.response is not None
    assert hit.response["headers"] == {"x-batchd-cache": "hit", "age": "12"}
    assert hit.usage == Usage(7, 7, 3, 0)
    assert JournalEntry(1, "b", response=stored).usage == Usage(7, 0, 3, 0)


@pytest.mark.anyio
async def test_a_reopened_journal_keeps_the_cached_tokens(tmp_path: Path) -> None:
    stored = {"status_code": 200, "request_id": "r", "body": {"usage": {"prompt_tokens": 5}}}
    async with await Journal.open(tmp_path / "j", 2) as journal:
        await journal.append(JournalEntry(0, "a", response=hit_response(stored, 0)))
        await journal.append(JournalEntry(1, "b", response=stored))
    async with await Journal.open(tmp_path / "j", 2) as journal:
        assert journal.usage == Usage(10, 5, 0, 0)


# -- end to end ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("cache")
    route = {"cache": True, "aliases": [ALIAS], "pack_inputs": 4, "max_concurrency": 8}
    keys = [{"key": KEY_A, "project": "a"}, {"key": KEY_B, "project": "b"}]
    with served(root, route, {"latency_ms": 2}, api_keys=keys) as env:
        yield env


def client(env: Served, key: str = KEY_A) -> OpenAI:
    return OpenAI(base_url=env.server.api_url, api_key=key, max_retries=0, timeout=30)


def run_batch(env: Served, lines: list[dict[str, Any]], key: str = KEY_A) -> dict[str, Any]:
    sdk = client(env, key)
    url = lines[0]["url"]
    file_id = sdk.files.create(file=("in.jsonl", to_jsonl(lines)), purpose="batch").id
    batch = sdk.batches.create(input_file_id=file_id, endpoint=url, completion_window="24h")
    return wait_for_batch(sdk, env.server, batch.id)


def by_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {line["custom_id"]: line for line in lines}


def is_hit(line: dict[str, Any]) -> bool:
    return "headers" in line["response"]


def test_a_batch_submitted_again_costs_only_the_changed_lines(env: Served) -> None:
    env.upstream.reset()
    bodies = [chat_body(f"classify item {i}", temperature=0) for i in range(20)]
    bodies += [chat_body(f"write a poem {i}", temperature=0.7) for i in range(4)]  # not cached
    lines = [request_line(f"r{i}", body) for i, body in enumerate(bodies)]
    first = run_batch(env, lines)
    before = by_id(fetch_results(client(env), first).output)
    assert len(before) == 24
    assert not any(map(is_hit, before.values()))
    assert upstream_attempts(env.upstream, bodies) == [1] * 24

    # the same requests spelt another way: the route's alias, the keys in reverse order
    fixed = [
        request_line(line["custom_id"], dict(reversed({**line["body"], "model": ALIAS}.items())))
        for line in lines
    ]
    changed = {3: "classify item 3, fixed", 7: "classify item 7, fixed"}
    for i, text in changed.items():
        fixed[i] = request_line(f"r{i}", chat_body(text, ALIAS, temperature=0))
    second = run_batch(env, fixed)
    after = by_id(fetch_results(client(env), second, [line["custom_id"] for line in fixed]).output)

    hits = {cid for cid, line in after.items() if is_hit(line)}
    assert hits == {f"r{i}" for i in range(20)} - {"r3", "r7"}
    for cid in hits:  # the stored answer, the OpenAI body unchanged
        assert after[cid]["response"]["body"] == before[cid]["response"]["body"]
        assert after[cid]["response"]["request_id"] == before[cid]["response"]["request_id"]
        assert after[cid]["id"] != before[cid]["id"]
        assert int(after[cid]["response"]["headers"]["age"]) >= 0
    # upstream calls: the unchanged lines none again, the fixed ones and the poems one each
    assert upstream_attempts(env.upstream, bodies) == [1] * 20 + [2] * 4
    sent = [chat_body(text, temperature=0) for text in changed.values()]  # as the route name
    assert upstream_attempts(env.upstream, sent) == [1, 1]
    assert env.upstream.stats(digests=False)["total"] == 24 + 2 + 4

    usage = second["usage"]
    prompt = {
        cid: line["response"]["body"]["usage"]["prompt_tokens"] for cid, line in after.items()
    }
    assert usage["input_tokens_details"]["cached_tokens"] == sum(prompt[cid] for cid in hits)
    assert usage["input_tokens"] == sum(prompt.values())

    metrics = httpx.get(env.server.base_url + "/metrics").text
    assert f'batchd_cache_requests_total{{model="{MODEL}",result="hit"}} 18.0' in metrics
    assert f'batchd_cache_requests_total{{model="{MODEL}",result="miss"}} 22.0' in metrics


def test_projects_do_not_share_answers(env: Served) -> None:
    env.upstream.reset()
    bodies = [chat_body(f"project question {i}", temperature=0) for i in range(5)]
    lines = [request_line(f"p{i}", body) for i, body in enumerate(bodies)]
    run_batch(env, lines, KEY_A)
    second = run_batch(env, lines, KEY_B)
    assert not any(map(is_hit, fetch_results(client(env, KEY_B), second).output))
    assert upstream_attempts(env.upstream, bodies) == [2] * 5
    third = run_batch(env, lines, KEY_B)  # project b's own answers now
    assert all(map(is_hit, fetch_results(client(env, KEY_B), third).output))
    assert upstream_attempts(env.upstream, bodies) == [2] * 5


def test_duplicates_within_a_batch_are_sent_once(env: Served) -> None:
    env.upstream.reset()
    bodies = [chat_body(f"duplicate {i % 10}", temperature=0) for i in range(30)]
    failing = chat_body("FAULT:400 this one is refused", temperature=0)
    lines = [request_line(f"d{i}", body) for i, body in enumerate(bodies)]
    lines += [request_line(f"f{i}", failing) for i in range(3)]
    batch = run_batch(env, lines)
    results = fetch_results(client(env), batch, [line["custom_id"] for line in lines])
    assert sum(map(is_hit, results.output)) == 20
    assert upstream_attempts(env.upstream, bodies[:10]) == [1] * 10
    # the first of the failing ones failed: the two waiting for it were sent themselves
    assert upstream_attempts(env.upstream, [failing]) == [3]
    assert sorted(line["custom_id"] for line in results.errors) == ["f0", "f1", "f2"]
    assert {line["response"]["status_code"] for line in results.errors} == {400}


def test_packed_embeddings_come_back_from_the_cache(env: Served) -> None:
    env.upstream.reset()
    bodies = [{"model": MODEL, "input": f"sentence {i}"} for i in range(12)]
    lines = [request_line(f"e{i}", body, url=EMB) for i, body in enumerate(bodies)]
    first = run_batch(env, lines)
    calls = env.upstream.stats(digests=False)["total"]
    assert calls == 3  # packed four a call
    second = run_batch(env, lines)
    assert env.upstream.stats(digests=False)["total"] == calls  # no call at all
    before = by_id(fetch_results(client(env), first).output)
    after = by_id(fetch_results(client(env), second).output)
    assert all(map(is_hit, after.values()))
    assert {cid: line["response"]["body"]["data"] for cid, line in after.items()} == {
        cid: line["response"]["body"]["data"] for cid, line in before.items()
    }
    usage = second["usage"]
    assert usage["input_tokens"] == usage["input_tokens_details"]["cached_tokens"] > 0
    assert usage == {
        **first["usage"],
        "input_tokens_details": {"cached_tokens": usage["input_tokens"]},
    }


@pytest.mark.anyio
async def test_waiting_duplicates_get_the_answer_or_are_sent_themselves(store: SQLStore) -> None:
    cache = ResultCache(CacheStore(store), 1 << 20, faults=Throttle(logging.getLogger()))
    settled: list[JournalEntry] = []
    requeued: list[tuple[int, str, dict[str, Any]]] = []
    tallies: list[tuple[str, int]] = []
    recall = Recall(
        cache, "p", MODEL, EMB, 60.0, settled.extend, lambda r, n: tallies.append((r, n))
    )
    recall.requeue = requeued.extend
    items = [(i, f"c{i}", {"model": MODEL, "input": f"s{i % 2}"}) for i in range(4)]
    send = await recall.screen(list(items))
    assert [index for index, _, _ in send] == [0, 1]  # 2 and 3 wait for them
    group = [ProviderRequest(index, cid, EMB, body) for index, cid, body in send]
    ok = ProviderResult.success(0, 200, {"data": [], "usage": {"prompt_tokens": 2}}, "req_0")
    bad = ProviderResult.failure(
        1, "server_error", "boom", retryable=True, status_code=500, body={}
    )
    recall.remember(group, [ok, bad], [entry_of(group[0], ok), entry_of(group[1], bad)])
    assert [(entry.index, entry.custom_id) for entry in settled] == [(2, "c2")]
    assert settled[0].response == hit_response(entry_of(group[0], ok).response or {}, 0)
    assert [index for index, _, _ in requeued] == [3]
    assert tallies == [("miss", 2), ("hit", 1)]
    await recall.close()
    await cache.close()
    keys = [request_digest(MODEL, EMB, body) for _, _, body in items[:2]]
    found = await CacheStore(store).lookup("p", keys, now=time.time())
    assert list(found) == [keys[0]]  # the failure is not stored
    again = await recall.screen([(5, "c5", items[0][2])])  # a later chunk: from the store
    assert again == []
    assert settled[-1].index == 5


def test_workers_of_a_shared_database_share_the_cache(tmp_path: Path) -> None:
    with (
        UpstreamProcess(tmp_path, latency_ms=2) as upstream,
        shared_mode(tmp_path, upstream, cache=True) as (api, _worker),
    ):
        sdk = OpenAI(base_url=api.api_url, api_key="x", max_retries=0, timeout=30)
        # 1,200 lines in three ranges (range_size 500), each text four times over
        bodies = [chat_body(f"shared {i % 300}", temperature=0) for i in range(1200)]
        lines = [request_line(f"s{i}", body) for i, body in enumerate(bodies)]
        ids = [line["custom_id"] for line in lines]
        first = wait_for_batch(sdk, api, submit_lines(sdk, lines))
        assert len(fetch_results(sdk, first, ids).output) == 1200
        calls = upstream.stats(digests=False)["total"]
        assert 300 <= calls <= 900  # each text once per range at most
        second = wait_for_batch(sdk, api, submit_lines(sdk, lines))
        assert all(map(is_hit, fetch_results(sdk, second, ids).output))
        assert upstream.stats(digests=False)["total"] == calls


def submit_lines(sdk: OpenAI, lines: list[dict[str, Any]]) -> str:
    file_id = sdk.files.create(file=("in.jsonl", to_jsonl(lines)), purpose="batch").id
    return sdk.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h").id
