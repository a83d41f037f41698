"""``Idempotency-Key`` on ``POST /v1/files`` and ``POST /v1/batches``: the store's claims on
SQLite and (with ``BATCHD_TEST_POSTGRES_URL``) PostgreSQL, two stores side by side claiming one
key once; the service's replays and conflicts; and end to end through a real ``batchd serve``
with the ``openai`` SDK: a retried create returns the first answer, another body with the same
key is a 409, a failed call leaves the key free."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import openai
import pytest
from openai import OpenAI

from batchd.errors import Conflict, InvalidRequest
from batchd.service.idempotency import IdempotencyService, digest_of
from batchd.store import SQLStore
from batchd.store.idempotency import PENDING_SECONDS, TTL_SECONDS, IdempotencyStore
from tests.engine_support import chat_body, request_line, to_jsonl

REQUEST = "POST /v1/batches"
T0 = 1_800_000_000.0


# -- the store ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_key_is_claimed_once_answered_and_forgotten(store: SQLStore) -> None:
    keys = IdempotencyStore(store)
    assert await keys.claim("p", "k", REQUEST, "d1", now=T0) is None
    pending = await keys.claim("p", "k", REQUEST, "d2", now=T0 + 1)
    assert pending is not None
    assert (pending.request, pending.digest, pending.status_code) == (REQUEST, "d1", None)
    assert await keys.claim("other-project", "k", REQUEST, "d1", now=T0) is None  # per project
    await keys.complete("p", "k", digest="d1", status_code=200, response='{"id":"batch_1"}')
    await keys.release("p", "k")  # an answered key is not given back
    done = await keys.claim("p", "k", REQUEST, "d1", now=T0 + TTL_SECONDS - 1)
    assert done is not None
    assert (done.status_code, done.response) == (200, '{"id":"batch_1"}')
    # after 24 hours the key is new again, and the purge forgets the expired ones
    assert await keys.claim("p", "k", REQUEST, "d3", now=T0 + TTL_SECONDS) is None
    assert await keys.purge(now=T0 + 3 * TTL_SECONDS) == 2  # p/k and other-project/k


@pytest.mark.anyio
async def test_a_failed_or_abandoned_call_frees_its_key(store: SQLStore) -> None:
    keys = IdempotencyStore(store)
    assert await keys.claim("p", "k", REQUEST, "d", now=T0) is None
    await keys.release("p", "k")
    assert await keys.claim("p", "k", REQUEST, "d", now=T0 + 1) is None
    # a first call whose process died: pending past PENDING_SECONDS is claimed again
    assert await keys.claim("p", "k", REQUEST, "d", now=T0 + PENDING_SECONDS) is not None
    assert await keys.claim("p", "k", REQUEST, "d", now=T0 + 1 + PENDING_SECONDS) is None


@pytest.mark.anyio
async def test_concurrent_claims_of_one_key_from_two_stores(store: SQLStore, db_url: str) -> None:
    """Two processes' stores (two engines on one database): one claim of 20 wins."""
    second = SQLStore(db_url)
    await second.open()
    try:
        stores = [IdempotencyStore(store), IdempotencyStore(second)]
        claims = await asyncio.gather(
            *(stores[i % 2].claim("p", "race", REQUEST, "d", now=T0) for i in range(20))
        )
    finally:
        await second.close()
    assert sum(claim is None for claim in claims) == 1


# -- the service --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_once_replays_refuses_and_lets_a_failure_be_retried(store: SQLStore) -> None:
    service = IdempotencyService(IdempotencyStore(store), clock=lambda: T0)
    calls: list[str] = []
    started, finish = asyncio.Event(), asyncio.Event()

    async def create() -> tuple[int, bytes]:
        calls.append("create")
        started.set()
        await finish.wait()
        return 200, b'{"id":"batch_1"}'

    first = asyncio.create_task(service.once("p", "k", REQUEST, "d", create))
    await started.wait()
    with pytest.raises(Conflict) as in_use:  # while the first call runs
        await service.once("p", "k", REQUEST, "d", create)
    assert in_use.value.code == "idempotency_key_in_use"
    finish.set()
    answer, replayed = await first
    assert (answer.body, replayed) == (b'{"id":"batch_1"}', False)
    again, replayed = await service.once("p", "k", REQUEST, "d", create)
    assert (again, replayed) == (answer, True)
    assert calls == ["create"]
    for request, digest in ((REQUEST, "another body"), ("POST /v1/files", "d")):
        with pytest.raises(Conflict) as reused:
            await service.once("p", "k", request, digest, create)
        assert reused.value.code == "idempotency_key_reused"

    async def fails() -> tuple[int, bytes]:
        raise InvalidRequest("no such file")

    with pytest.raises(InvalidRequest):
        await service.once("p", "k2", REQUEST, "d", fails)
    retried, replayed = await service.once("p", "k2", REQUEST, "d", create)
    assert not replayed
    assert calls == ["create", "create"]
    assert retried.status_code == 200


@pytest.mark.parametrize("key", ["", "x" * 256, "caf\u00e9", "tab\there"])
def test_unusable_keys_are_400s(key: str) -> None:
    with pytest.raises(InvalidRequest, match="printable ASCII") as error:
        IdempotencyService.check_key(key)
    assert error.value.code == "invalid_idempotency_key"


def test_the_digest_of_parts_does_not_depend_on_where_they_split() -> None:
    assert digest_of([b"ab", b"c"]) != digest_of([b"a", b"bc"])
    assert digest_of([b"ab", b"c"]) == digest_of([b"ab", b"c"])


# -- end to end ---------------------------------------------------------------------------------


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def _upload(client: OpenAI, content: bytes, headers: dict[str, str]) -> Any:
    return client.files.with_raw_response.create(
        file=("in.jsonl", content), purpose="batch", extra_headers=headers
    )


def test_a_retried_upload_returns_the_first_file(client: OpenAI) -> None:
    content = to_jsonl([request_line("a", chat_body("hello"))])
    headers = _key()
    first = _upload(client, content, headers)
    again = _upload(client, content, headers)
    assert first.headers.get("idempotent-replayed") is None
    assert again.headers["idempotent-replayed"] == "true"
    assert again.parse().id == first.parse().id
    assert again.parse().model_dump() == first.parse().model_dump()
    other = to_jsonl([request_line("b", chat_body("another"))])
    with pytest.raises(openai.ConflictError) as reused:
        _upload(client, other, headers)
    assert reused.value.code == "idempotency_key_reused"
    with pytest.raises(openai.BadRequestError) as bad:
        _upload(client, content, {"Idempotency-Key": "x" * 300})
    assert bad.value.code == "invalid_idempotency_key"
    # a failed upload keeps nothing: the same key then works
    headers = _key()
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("in.jsonl", content), purpose="nonsense", extra_headers=headers)  # type: ignore[arg-type]
    assert _upload(client, content, headers).headers.get("idempotent-replayed") is None


def test_a_retried_batch_create_returns_the_first_batch(client: OpenAI) -> None:
    content = to_jsonl([request_line("a", chat_body("hello"))])
    file_id = client.files.create(file=("in.jsonl", content), purpose="batch").id
    before = {batch.id for batch in client.batches.list(limit=100)}
    headers = _key()
    body: dict[str, Any] = {
        "input_file_id": file_id,
        "endpoint": "/v1/chat/completions",
        "completion_window": "24h",
        "metadata": {"a": "1", "b": "2"},
    }

    def create(**overrides: Any) -> Any:
        return client.batches.with_raw_response.create(
            **{**body, **overrides}, extra_headers=headers
        )

    first = create()
    # the same body, its keys in another order: the same request
    again = create(metadata={"b": "2", "a": "1"})
    assert again.headers["idempotent-replayed"] == "true"
    assert again.parse().id == first.parse().id
    created = {batch.id for batch in client.batches.list(limit=100)} - before
    assert created == {first.parse().id}  # one batch, not two
    with pytest.raises(openai.ConflictError) as reused:
        create(metadata={"a": "other"})
    assert reused.value.code == "idempotency_key_reused"
    client.batches.cancel(first.parse().id)
    # a create that fails (checked inside the service) leaves the key free for the corrected call
    headers = _key()
    with pytest.raises(openai.BadRequestError):
        create(completion_window="48h")
    retried = create()
    assert retried.headers.get("idempotent-replayed") is None
    assert retried.parse().id != first.parse().id
    client.batches.cancel(retried.parse().id)
