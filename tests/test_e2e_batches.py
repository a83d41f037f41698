"""End to end: the Batches API of a real ``batchd serve`` through the real ``openai`` SDK, and the
HTTP surface around it (unknown routes, bad JSON, ``/health``).

The session server's upstream holds every request (``held_upstream`` in conftest), so a valid
batch goes ``validating`` → ``in_progress`` and stays there until it is cancelled; execution itself
is tested in ``test_e2e_execution.py`` and the other engine tests.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types import Batch, FileObject

from tests.conftest import wait_for_status
from tests.schema import check_empty_page, check_response, conforms, require_spec, schema_properties
from tests.serverproc import BatchdServer, write_config

DAY = 24 * 3600
THIRTY_DAYS = 30 * DAY
CHAT = "/v1/chat/completions"
MISSING_FILE = "file-DoesNotExist0000000000000"


def test_official_schema_is_available() -> None:
    """Schema conformance runs only where ``../shared/spec`` is present; say so when it is not."""
    document = require_spec()
    assert "Batch" in document["components"]["schemas"]


def jsonl(n: int, prefix: str = "req", model: str = "gpt-4o-mini", url: str = CHAT) -> bytes:
    lines = []
    for i in range(n):
        body: dict[str, Any] = {"model": model}
        if url == CHAT:
            body["messages"] = [{"role": "user", "content": f"question {i}"}]
        else:
            body["input"] = f"text {i}"
        lines.append({"custom_id": f"{prefix}-{i}", "method": "POST", "url": url, "body": body})
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def batch_json(raw: Any) -> dict[str, Any]:
    """Schema-check a raw Batch response; the SDK must parse it to the same object."""
    data: dict[str, Any] = check_response(raw, "Batch")
    assert len(data) == 22
    parsed = raw.parse()
    assert isinstance(parsed, Batch)
    assert parsed.model_dump() == data
    assert Batch.model_validate(data).model_dump() == data
    return data


def assert_api_error(
    exc: openai.APIStatusError, status: int, *, param: str | None, code: str | None
) -> dict[str, Any]:
    assert exc.status_code == status
    assert (exc.param, exc.code, exc.type) == (param, code, "invalid_request_error")
    assert exc.response.headers["x-request-id"].startswith("req_")
    assert exc.response.headers["x-should-retry"] == "false"
    body: dict[str, Any] = conforms("ErrorResponse", exc.response.json())
    assert body["error"]["message"]
    return body


def upload(client: OpenAI, n: int = 3, prefix: str = "req", **kwargs: Any) -> str:
    return client.files.create(file=("in.jsonl", jsonl(n, prefix, **kwargs)), purpose="batch").id


async def wait_for_status_async(
    client: AsyncOpenAI, batch_id: str, statuses: set[str]
) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while True:
        data = batch_json(await client.batches.with_raw_response.retrieve(batch_id))
        if data["status"] in statuses:
            return data
        assert time.monotonic() < deadline, f"batch {batch_id} still {data['status']}"
        await asyncio.sleep(0.05)


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[BatchdServer]:
    """A server of its own, for tests that need to know every batch it holds."""
    srv = BatchdServer(tmp_path / "data", write_config(tmp_path / "batchd.toml")).start()
    yield srv
    srv.stop()


# -- the schema helper itself ------------------------------------------------------------------


def test_schema_helper_lists_22_batch_keys_and_rejects_bad_objects(client: OpenAI) -> None:
    batch_keys = schema_properties("Batch")
    assert len(batch_keys) == 22
    file_keys = schema_properties("OpenAIFile")
    assert {"id", "object", "bytes", "status", "status_details", "expires_at"} <= set(file_keys)

    file_id = upload(client, 1)
    good = json.loads(
        client.batches.with_raw_response.create(
            input_file_id=file_id, endpoint=CHAT, completion_window="24h"
        ).text
    )
    conforms("Batch", good)
    file_good = client.files.retrieve(file_id).model_dump()
    conforms("OpenAIFile", file_good)

    def broken(obj: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
        out = copy.deepcopy(obj)
        target = out
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return out

    for name, obj, path, value in [
        ("Batch", good, ["usage"], KeyError),  # a key dropped
        ("Batch", good, ["cancelled_at"], KeyError),
        ("Batch", good, ["id"], None),  # a required key null
        ("Batch", good, ["status"], "Validating"),  # not in the enum
        ("Batch", good, ["created_at"], "yesterday"),
        ("Batch", good, ["request_counts"], None),
        ("Batch", good, ["request_counts", "failed"], KeyError),
        ("Batch", good, ["metadata"], {"k": 1}),
        ("OpenAIFile", file_good, ["status_details"], KeyError),
        ("OpenAIFile", file_good, ["bytes"], "12"),
        ("OpenAIFile", file_good, ["purpose"], "homework"),
    ]:
        with pytest.raises(AssertionError):
            conforms(name, broken(obj, path, value))


# -- create and retrieve -----------------------------------------------------------------------


def test_create_then_in_progress_sync(client: OpenAI) -> None:
    file_id = upload(client, 3)
    before = int(time.time())
    raw = client.batches.with_raw_response.create(
        input_file_id=file_id,
        endpoint=CHAT,
        completion_window="24h",
        metadata={"job": "nightly", "owner": "tests"},
    )
    after = int(time.time())
    created = batch_json(raw)
    assert set(created) == set(schema_properties("Batch"))
    assert created["id"].startswith("batch_")
    assert created["object"] == "batch"
    assert created["status"] == "validating"
    assert before <= created["created_at"] <= after
    assert created["expires_at"] == created["created_at"] + DAY
    assert (created["input_file_id"], created["endpoint"], created["completion_window"]) == (
        file_id,
        CHAT,
        "24h",
    )
    assert created["metadata"] == {"job": "nightly", "owner": "tests"}
    assert created["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    for key in (
        "model",
        "errors",
        "output_file_id",
        "error_file_id",
        "in_progress_at",
        "finalizing_at",
        "completed_at",
        "failed_at",
        "expired_at",
        "cancelling_at",
        "cancelled_at",
        "usage",
    ):
        assert created[key] is None, key

    deadline = time.monotonic() + 30
    while True:
        current = batch_json(client.batches.with_raw_response.retrieve(created["id"]))
        assert current["status"] in ("validating", "in_progress")
        if current["status"] == "in_progress":
            break
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert current["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert current["model"] == "gpt-4o-mini"
    assert created["created_at"] <= current["in_progress_at"] <= int(time.time())
    unchanged = ("id", "created_at", "expires_at", "metadata", "input_file_id", "endpoint")
    assert {k: current[k] for k in unchanged} == {k: created[k] for k in unchanged}
    for key in ("errors", "failed_at", "cancelling_at", "cancelled_at", "output_file_id"):
        assert current[key] is None


@pytest.mark.anyio
async def test_create_then_in_progress_async(client: OpenAI, async_client: AsyncOpenAI) -> None:
    file_id = upload(client, 4, url="/v1/embeddings", model="text-embedding-3-small")
    async with async_client:
        raw = await async_client.batches.with_raw_response.create(
            input_file_id=file_id, endpoint="/v1/embeddings", completion_window="24h"
        )
        created = batch_json(raw)
        assert created["status"] == "validating"
        assert created["expires_at"] == created["created_at"] + DAY
        assert created["metadata"] is None
        current = await wait_for_status_async(async_client, created["id"], {"in_progress"})
        assert current["request_counts"] == {"total": 4, "completed": 0, "failed": 0}
        assert current["model"] == "text-embedding-3-small"
        assert current["endpoint"] == "/v1/embeddings"


def test_create_with_missing_input_file_fails_validation(client: OpenAI) -> None:
    created = batch_json(
        client.batches.with_raw_response.create(
            input_file_id=MISSING_FILE, endpoint=CHAT, completion_window="24h"
        )
    )
    assert created["status"] == "validating"  # file problems are asynchronous
    wait_for_status(client, created["id"], {"failed"})
    failed = batch_json(client.batches.with_raw_response.retrieve(created["id"]))
    assert failed["failed_at"] is not None
    assert failed["in_progress_at"] is None
    assert failed["request_counts"] == {"total": 0, "completed": 0, "failed": 0}
    assert failed["errors"]["object"] == "list"
    [error] = failed["errors"]["data"]
    assert (error["code"], error["param"], error["line"]) == ("invalid_request", "file_id", None)
    assert MISSING_FILE in error["message"]


def test_create_with_a_non_batch_file_fails_validation(client: OpenAI) -> None:
    file_id = client.files.create(file=("x.jsonl", jsonl(1)), purpose="user_data").id
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    failed = wait_for_status(client, batch.id, {"failed"})
    assert failed.errors is not None
    assert [(e.code, e.param) for e in failed.errors.data or []] == [("invalid_request", "file_id")]


# -- synchronous 400s --------------------------------------------------------------------------


def _many(n: int) -> dict[str, str]:
    return {f"k{i}": "v" for i in range(n)}


BAD_CREATES: list[tuple[str, dict[str, Any], str, str]] = [
    ("endpoint", {"endpoint": "/v1/invalid/endpoint"}, "endpoint", "invalid_value"),
    ("endpoint-empty", {"endpoint": ""}, "endpoint", "invalid_value"),
    ("window-1h", {"completion_window": "1h"}, "completion_window", "invalid_value"),
    ("window-empty", {"completion_window": ""}, "completion_window", "invalid_value"),
    ("window-48h", {"completion_window": "48h"}, "completion_window", "invalid_value"),
    ("metadata-17", {"metadata": _many(17)}, "metadata", "object_above_max_size"),
    ("metadata-key", {"metadata": {"k" * 65: "v"}}, "metadata", "string_above_max_length"),
    (
        "metadata-value",
        {"metadata": {"note": "v" * 513}},
        "metadata.note",
        "string_above_max_length",
    ),
    ("metadata-array", {"metadata": {"tags": ["a", "b"]}}, "metadata.tags", "invalid_type"),
    ("metadata-int", {"metadata": {"n": 1}}, "metadata.n", "invalid_type"),
    ("metadata-type", {"metadata": ["k", "v"]}, "metadata", "invalid_type"),
    ("unknown", {"extra_body": {"priority": "high"}}, "priority", "unknown_parameter"),
    ("no-input", {"input_file_id": openai.omit}, "input_file_id", "missing_required_parameter"),
    ("input-type", {"input_file_id": 42}, "input_file_id", "invalid_type"),
    ("no-endpoint", {"endpoint": openai.omit}, "endpoint", "missing_required_parameter"),
    (
        "out-seconds",
        {"output_expires_after": {"anchor": "created_at", "seconds": 60}},
        "output_expires_after.seconds",
        "invalid_value",
    ),
    (
        "out-anchor",
        {"output_expires_after": {"anchor": "completed_at", "seconds": 3600}},
        "output_expires_after.anchor",
        "invalid_value",
    ),
]


@pytest.mark.parametrize(
    ("overrides", "param", "code"),
    [case[1:] for case in BAD_CREATES],
    ids=[case[0] for case in BAD_CREATES],
)
def test_create_rejects_bad_requests(
    client: OpenAI, overrides: dict[str, Any], param: str, code: str
) -> None:
    before = [b.id for b in client.batches.list(limit=1).data]
    kwargs: dict[str, Any] = {
        "input_file_id": MISSING_FILE,
        "endpoint": CHAT,
        "completion_window": "24h",
        **overrides,
    }
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.create(**kwargs)
    body = assert_api_error(info.value, 400, param=param, code=code)
    if param != "endpoint":  # OpenAI's endpoint message quotes the value, not the name
        assert param in body["error"]["message"]
    assert [b.id for b in client.batches.list(limit=1).data] == before  # no batch was created


@pytest.mark.anyio
async def test_create_rejects_bad_requests_async(async_client: AsyncOpenAI) -> None:
    async with async_client:
        for overrides, param, code in [
            ({"completion_window": "1h"}, "completion_window", "invalid_value"),
            ({"metadata": {"tags": ["x"]}}, "metadata.tags", "invalid_type"),
        ]:
            with pytest.raises(openai.BadRequestError) as info:
                await async_client.batches.create(
                    **{
                        "input_file_id": MISSING_FILE,
                        "endpoint": CHAT,
                        "completion_window": "24h",
                        **overrides,
                    }
                )
            assert_api_error(info.value, 400, param=param, code=code)


def test_create_accepts_metadata_at_the_limits(client: OpenAI) -> None:
    metadata = {f"{i:02d}".ljust(64, "k"): (str(i) * 512)[:512] for i in range(16)}
    metadata[next(iter(metadata))] = "é" * 512
    created = batch_json(
        client.batches.with_raw_response.create(
            input_file_id=MISSING_FILE,
            endpoint=CHAT,
            completion_window="24h",
            metadata=metadata,
            output_expires_after={"anchor": "created_at", "seconds": 3600},
        )
    )
    assert created["metadata"] == metadata
    assert client.batches.retrieve(created["id"]).metadata == metadata


# -- list --------------------------------------------------------------------------------------


def _create_batches(c: OpenAI, n: int) -> list[str]:
    file_id = upload(c, 2)
    return [
        c.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h").id
        for _ in range(n)
    ]


def test_list_batches_newest_first_sync(fresh_server: BatchdServer) -> None:
    with OpenAI(base_url=fresh_server.api_url, api_key="k", max_retries=0) as c:
        empty_server = check_response(c.batches.with_raw_response.list(), "ListBatchesResponse")
        assert (empty_server["data"], empty_server["has_more"]) == ([], False)
        ids = _create_batches(c, 7)
        newest_first = ids[::-1]

        page = check_response(c.batches.with_raw_response.list(), "ListBatchesResponse")
        assert [b["id"] for b in page["data"]] == newest_first
        assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[-1], ids[0], False)
        for item in page["data"]:
            assert Batch.model_validate(item).id == item["id"]

        pages = list(c.batches.list(limit=3).iter_pages())
        assert [[b.id for b in p.data] for p in pages] == [
            newest_first[0:3],
            newest_first[3:6],
            newest_first[6:],
        ]
        assert [p.has_more for p in pages] == [True, True, False]
        assert [b.id for b in c.batches.list(limit=2)] == newest_first

        first = check_response(c.batches.with_raw_response.list(limit=3), "ListBatchesResponse")
        assert (first["first_id"], first["last_id"], first["has_more"]) == (
            newest_first[0],
            newest_first[2],
            True,
        )
        middle = check_response(
            c.batches.with_raw_response.list(limit=3, after=newest_first[2]),
            "ListBatchesResponse",
        )
        assert [b["id"] for b in middle["data"]] == newest_first[3:6]
        assert (middle["first_id"], middle["last_id"], middle["has_more"]) == (
            newest_first[3],
            newest_first[5],
            True,
        )
        tail = check_response(
            c.batches.with_raw_response.list(limit=1, after=newest_first[5]),
            "ListBatchesResponse",
        )
        assert [b["id"] for b in tail["data"]] == [ids[0]]
        assert tail["has_more"] is False

        check_empty_page(c.batches.with_raw_response.list(after=ids[0]), "ListBatchesResponse")


@pytest.mark.anyio
async def test_list_batches_newest_first_async(fresh_server: BatchdServer) -> None:
    with OpenAI(base_url=fresh_server.api_url, api_key="k", max_retries=0) as c:
        ids = _create_batches(c, 5)
    async with AsyncOpenAI(base_url=fresh_server.api_url, api_key="k", max_retries=0) as ac:
        assert [b.id async for b in ac.batches.list(limit=2)] == ids[::-1]
        page = await ac.batches.list(limit=4)
        assert page.has_more is True
        assert [b.id for b in page.data] == ids[:0:-1]
        raw = await ac.batches.with_raw_response.list(after=ids[0], limit=100)
        check_empty_page(raw, "ListBatchesResponse")


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"limit": 0}, "limit", "integer_below_min_value"),
        ({"limit": 101}, "limit", "integer_above_max_value"),
        ({"after": "batch_0123456789abcdef0123456789abcdef"}, "after", "invalid_value"),
    ],
)
def test_list_batches_bad_params(
    client: OpenAI, params: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.batches.list(**params)
    assert_api_error(info.value, 400, param=param, code=code)


def test_list_batches_limit_bounds_accepted(client: OpenAI) -> None:
    _create_batches(client, 2)
    assert len(client.batches.list(limit=1).data) == 1
    page = check_response(client.batches.with_raw_response.list(limit=100), "ListBatchesResponse")
    assert 2 <= len(page["data"]) <= 100


# -- cancel ------------------------------------------------------------------------------------


def _check_cancelled(client: OpenAI, cancelled: dict[str, Any], custom_ids: list[str]) -> None:
    """A cancelled in_progress batch: every request reported as batch_cancelled."""
    n = len(custom_ids)
    assert cancelled["status"] == "cancelled"
    assert cancelled["cancelling_at"] <= cancelled["cancelled_at"]
    assert cancelled["in_progress_at"] is not None
    assert cancelled["output_file_id"] is None
    counts = cancelled["request_counts"]
    assert counts == {"total": n, "completed": 0, "failed": n}
    assert counts["completed"] + counts["failed"] == counts["total"]

    error_file_id = cancelled["error_file_id"]
    assert error_file_id is not None
    meta = check_response(client.files.with_raw_response.retrieve(error_file_id), "OpenAIFile")
    assert FileObject.model_validate(meta).id == error_file_id
    assert meta["purpose"] == "batch_output"
    assert meta["expires_at"] == meta["created_at"] + THIRTY_DAYS
    content = client.files.content(error_file_id).content
    assert meta["bytes"] == len(content)
    assert content.endswith(b"\n")
    lines = [json.loads(line) for line in content.splitlines()]
    assert [line["custom_id"] for line in lines] == custom_ids
    assert len({line["id"] for line in lines}) == n
    for line in lines:
        assert set(line) == {"id", "custom_id", "response", "error"}
        assert line["id"].startswith("batch_req_")
        assert line["response"] is None
        assert set(line["error"]) == {"code", "message"}
        assert line["error"]["code"] == "batch_cancelled"
        assert isinstance(line["error"]["message"], str)
        assert line["error"]["message"]


def test_cancel_in_progress_sync(client: OpenAI) -> None:
    file_id = upload(client, 5, prefix="cancel")
    batch = client.batches.create(input_file_id=file_id, endpoint=CHAT, completion_window="24h")
    wait_for_status(client, batch.id, {"in_progress"})

    before = int(time.time())
    cancelling = batch_json(client.batches.with_raw_response.cancel(batch.id))
    assert cancelling["status"] == "cancelling"
    assert before <= cancelling["cancelling_at"] <= int(time.time())
    assert cancelling["cancelled_at"] is None
    assert cancelling["request_counts"]["total"] == 5

    wait_for_status(client, batch.id, {"cancelled"})
    cancelled = batch_json(client.batches.with_raw_response.retrieve(batch.id))
    assert cancelled["cancelling_at"] == cancelling["cancelling_at"]
    _check_cancelled(client, cancelled, [f"cancel-{i}" for i in range(5)])

    # cancelling a cancelled batch is allowed and changes nothing
    again = batch_json(client.batches.with_raw_response.cancel(batch.id))
    assert again == cancelled


@pytest.mark.anyio
async def test_cancel_in_progress_async(client: OpenAI, async_client: AsyncOpenAI) -> None:
    file_id = upload(client, 2, prefix="acancel")
    async with async_client:
        batch = await async_client.batches.create(
            input_file_id=file_id, endpoint=CHAT, completion_window="24h"
        )
        await wait_for_status_async(async_client, batch.id, {"in_progress"})
        cancelling = batch_json(await async_client.batches.with_raw_response.cancel(batch.id))
        assert cancelling["status"] == "cancelling"
        cancelled = await wait_for_status_async(async_client, batch.id, {"cancelled"})
        _check_cancelled(client, cancelled, ["acancel-0", "acancel-1"])
        again = await async_client.batches.cancel(batch.id)
        assert again.status == "cancelled"


def _counting_client(server: BatchdServer, requests: list[str]) -> OpenAI:
    def count(request: httpx2.Request) -> None:
        requests.append(f"{request.method} {request.url.path}")

    return OpenAI(
        base_url=server.api_url,
        api_key="k",
        max_retries=2,
        http_client=openai.DefaultHttpxClient(event_hooks={"request": [count]}),
    )


def _assert_conflict(exc: openai.APIStatusError, elapsed: float) -> None:
    assert isinstance(exc, openai.ConflictError)
    body = assert_api_error(exc, 409, param=None, code=None)
    assert body["error"]["message"] == "Cannot cancel a batch with status 'failed'."
    assert exc.response.request.headers["x-stainless-retry-count"] == "0"
    # two SDK retries would wait at least 0.375 s + 0.75 s before the error is raised
    assert elapsed < 1.0


def test_cancel_failed_batch_conflicts_without_retries(
    server: BatchdServer, client: OpenAI
) -> None:
    batch = client.batches.create(
        input_file_id=MISSING_FILE, endpoint=CHAT, completion_window="24h"
    )
    wait_for_status(client, batch.id, {"failed"})
    requests: list[str] = []
    with _counting_client(server, requests) as retrying:
        started = time.monotonic()
        with pytest.raises(openai.ConflictError) as info:
            retrying.batches.cancel(batch.id)
        _assert_conflict(info.value, time.monotonic() - started)
    assert requests == [f"POST /v1/batches/{batch.id}/cancel"]
    assert client.batches.retrieve(batch.id).status == "failed"


@pytest.mark.anyio
async def test_cancel_failed_batch_conflicts_without_retries_async(
    server: BatchdServer, client: OpenAI
) -> None:
    batch = client.batches.create(
        input_file_id=MISSING_FILE, endpoint=CHAT, completion_window="24h"
    )
    wait_for_status(client, batch.id, {"failed"})
    requests: list[str] = []

    async def count(request: httpx2.Request) -> None:
        requests.append(request.url.path)

    async with AsyncOpenAI(
        base_url=server.api_url,
        api_key="k",
        max_retries=2,
        http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [count]}),
    ) as retrying:
        started = time.monotonic()
        with pytest.raises(openai.ConflictError) as info:
            await retrying.batches.cancel(batch.id)
        _assert_conflict(info.value, time.monotonic() - started)
    assert requests == [f"/v1/batches/{batch.id}/cancel"]


@pytest.mark.parametrize("batch_id", ["batch_0123456789abcdef0123456789abcdef", "nope"])
def test_unknown_batch_is_404(client: OpenAI, batch_id: str) -> None:
    for call in (client.batches.retrieve, client.batches.cancel):
        with pytest.raises(openai.NotFoundError) as info:
            call(batch_id)
        body = assert_api_error(info.value, 404, param=None, code=None)
        assert "No batch found" in body["error"]["message"]
        assert batch_id in body["error"]["message"]


@pytest.mark.anyio
async def test_unknown_batch_is_404_async(async_client: AsyncOpenAI) -> None:
    async with async_client:
        with pytest.raises(openai.NotFoundError) as info:
            await async_client.batches.cancel("batch_ffffffffffffffffffffffffffffffff")
        assert_api_error(info.value, 404, param=None, code=None)


# -- raw HTTP ----------------------------------------------------------------------------------


def test_every_response_has_a_request_id(client: OpenAI) -> None:
    file_id = upload(client, 1)
    responses = [
        client.files.with_raw_response.retrieve(file_id),
        client.files.with_raw_response.content(file_id),
        client.files.with_raw_response.list(limit=1),
        client.batches.with_raw_response.create(
            input_file_id=file_id, endpoint=CHAT, completion_window="24h"
        ),
        client.batches.with_raw_response.list(limit=1),
    ]
    ids = [r.headers["x-request-id"] for r in responses]
    assert all(i.startswith("req_") for i in ids)
    assert len(set(ids)) == len(ids)
    assert [r.request_id for r in responses] == ids


def test_raw_http_errors_and_health(server: BatchdServer) -> None:
    with httpx2.Client(base_url=server.base_url) as http:
        for method, path in [("GET", "/v1/nope"), ("POST", "/v1/files/x/y/z"), ("GET", "/nope")]:
            response = http.request(method, path)
            assert response.status_code == 404
            assert response.headers["x-should-retry"] == "false"
            error = check_response(response, "ErrorResponse")["error"]
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "invalid_request_error"
            assert path in error["message"]

        root = http.get("/")  # a browser at the server's root is led to the dashboard
        assert root.status_code == 307
        assert root.headers["location"] == "/dashboard"

        # there is no DELETE /v1/batches/{id}
        response = http.delete("/v1/batches/batch_0123456789abcdef0123456789abcdef")
        assert response.status_code == 405
        check_response(response, "ErrorResponse")

        for body, code in [
            (b"{not json", "invalid_json"),
            (b'{"input_file_id": "file-x",', "invalid_json"),
            (b'["input_file_id"]', "invalid_type"),
            (b'"text"', "invalid_type"),
        ]:
            response = http.post(
                "/v1/batches", content=body, headers={"content-type": "application/json"}
            )
            assert response.status_code == 400, response.text
            assert response.headers["x-should-retry"] == "false"
            error = check_response(response, "ErrorResponse")["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", code)

        health = http.get("/health")
        assert health.status_code == 200
        assert health.headers["x-request-id"].startswith("req_")
        assert health.json()["status"] == "ok"
