"""End to end: the Files API of a real ``batchd serve`` through the real ``openai`` SDK.

Every JSON response is read raw (``with_raw_response``), checked against the official schema
(``tests/schema.py``) and parsed by the SDK's own models.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types import FileDeleted, FileObject

from tests.schema import check_empty_page, check_response, conforms
from tests.serverproc import BatchdServer, write_config

THIRTY_DAYS = 30 * 24 * 3600
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
# Every byte value, CR/LF pairs, NULs and invalid UTF-8: the content must come back untouched.
BINARY = bytes(range(256)) * 3 + b"\r\n\x00\r\r\n\xff\xfe\x00" + "é😀".encode() + b"\xc3\x28"


def jsonl(n: int, prefix: str = "req") -> bytes:
    return b"".join(
        json.dumps(
            {
                "custom_id": f"{prefix}-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            }
        ).encode()
        + b"\n"
        for i in range(n)
    )


def file_json(raw: Any) -> dict[str, Any]:
    """Schema-check a raw FileObject response and check that the SDK parses it the same way."""
    data: dict[str, Any] = check_response(raw, "OpenAIFile")
    parsed = raw.parse()
    assert isinstance(parsed, FileObject)
    assert parsed.model_dump() == data
    if data["purpose"] != "evals":  # the SDK's purpose Literal lacks the upload purpose "evals"
        assert FileObject.model_validate(data).model_dump() == data
    return data


def assert_api_error(
    exc: openai.APIStatusError, status: int, *, param: str | None, code: str | None
) -> dict[str, Any]:
    """The OpenAI error envelope, as the SDK surfaced it and as the server sent it."""
    assert exc.status_code == status
    assert exc.param == param
    assert exc.code == code
    assert exc.type == "invalid_request_error"
    assert exc.response.headers["x-request-id"].startswith("req_")
    assert exc.response.headers["x-should-retry"] == "false"
    body: dict[str, Any] = conforms("ErrorResponse", exc.response.json())
    assert body["error"]["message"]
    return body


@pytest.fixture
def fresh_server(tmp_path: Path) -> Iterator[BatchdServer]:
    """A server of its own, for tests that need to know every object it holds."""
    srv = BatchdServer(tmp_path / "data", write_config(tmp_path / "batchd.toml")).start()
    yield srv
    srv.stop()


def all_file_ids(client: OpenAI) -> set[str]:
    return {f.id for f in client.files.list()}


# -- upload ------------------------------------------------------------------------------------


def test_upload_forms_sync(client: OpenAI, tmp_path: Path) -> None:
    path = tmp_path / "from-path.jsonl"
    path.write_bytes(jsonl(2))
    cases: list[tuple[Any, str, bytes]] = [
        (b"raw bytes\n", "upload", b"raw bytes\n"),
        (("in.jsonl", jsonl(3)), "in.jsonl", jsonl(3)),
        (("typed.jsonl", b"{}\n", "application/jsonl"), "typed.jsonl", b"{}\n"),
        (path, "from-path.jsonl", jsonl(2)),
    ]
    seen: set[str] = set()
    for upload, filename, content in cases:
        before = int(time.time())
        raw = client.files.with_raw_response.create(file=upload, purpose="batch")
        after = int(time.time())
        data = file_json(raw)
        assert data["id"].startswith("file-")
        assert data["id"] not in seen
        seen.add(data["id"])
        assert data["object"] == "file"
        assert data["filename"] == filename
        assert data["bytes"] == len(content)
        assert data["purpose"] == "batch"
        assert data["status"] == "processed"
        assert data["status_details"] is None
        assert before <= data["created_at"] <= after
        assert client.files.content(data["id"]).content == content
    with path.open("rb") as fh:
        opened = client.files.create(file=fh, purpose="user_data")
    assert opened.filename == "from-path.jsonl"
    assert client.files.content(opened.id).content == jsonl(2)


@pytest.mark.anyio
async def test_upload_forms_async(async_client: AsyncOpenAI, tmp_path: Path) -> None:
    path = tmp_path / "async-path.jsonl"
    path.write_bytes(jsonl(4))
    async with async_client:
        for upload, filename, content in [
            (b"async bytes", "upload", b"async bytes"),
            (("a.jsonl", jsonl(1)), "a.jsonl", jsonl(1)),
            (path, "async-path.jsonl", jsonl(4)),
        ]:
            raw = await async_client.files.with_raw_response.create(file=upload, purpose="batch")
            data = file_json(raw)
            assert (data["filename"], data["bytes"]) == (filename, len(content))
            assert data["expires_at"] == data["created_at"] + THIRTY_DAYS
            got = await async_client.files.content(data["id"])
            assert got.content == content


@pytest.mark.parametrize("purpose", UPLOAD_PURPOSES)
def test_purposes_and_default_expiry(client: OpenAI, purpose: str) -> None:
    raw = client.files.with_raw_response.create(file=("p.jsonl", jsonl(1)), purpose=purpose)  # type: ignore[arg-type]
    data = file_json(raw)
    assert data["purpose"] == purpose
    if purpose == "batch":
        assert data["expires_at"] == data["created_at"] + THIRTY_DAYS
    else:
        assert data["expires_at"] is None
    assert client.files.retrieve(data["id"]).purpose == purpose


@pytest.mark.parametrize(
    ("purpose", "seconds"),
    [("user_data", 3600), ("batch", 7200), ("assistants", THIRTY_DAYS), ("batch", 3600)],
)
def test_expires_after_bracket_form_via_sdk(client: OpenAI, purpose: str, seconds: int) -> None:
    raw = client.files.with_raw_response.create(
        file=("e.jsonl", jsonl(1)),
        purpose=purpose,  # type: ignore[arg-type]
        expires_after={"anchor": "created_at", "seconds": seconds},
    )
    body = raw.http_request.read()
    assert b'name="expires_after[seconds]"' in body  # the SDK's bracket form on the wire
    data = file_json(raw)
    assert data["expires_at"] == data["created_at"] + seconds
    assert client.files.retrieve(data["id"]).expires_at == data["expires_at"]


def test_expires_after_dotted_form_raw_multipart(server: BatchdServer, client: OpenAI) -> None:
    response = httpx2.post(
        f"{server.api_url}/files",
        data={
            "purpose": "batch",
            "expires_after.anchor": "created_at",
            "expires_after.seconds": "5400",
        },
        files={"file": ("dotted.jsonl", jsonl(2), "application/octet-stream")},
    )
    assert response.status_code == 200, response.text
    data = check_response(response, "OpenAIFile")
    assert data["filename"] == "dotted.jsonl"
    assert data["expires_at"] == data["created_at"] + 5400
    assert client.files.retrieve(data["id"]).expires_at == data["expires_at"]

    bad = httpx2.post(
        f"{server.api_url}/files",
        data={"purpose": "batch", "expires_after.anchor": "now", "expires_after.seconds": "5400"},
        files={"file": ("dotted.jsonl", jsonl(1))},
    )
    assert bad.status_code == 400
    error = check_response(bad, "ErrorResponse")["error"]
    assert (error["param"], error["code"]) == ("expires_after.anchor", "invalid_value")


@pytest.mark.parametrize(
    ("purpose", "expires_after", "param", "code"),
    [
        ("not-a-purpose", None, "purpose", "invalid_value"),
        ("batch_output", None, "purpose", "invalid_value"),
        ("batch", {"anchor": "now", "seconds": 3600}, "expires_after.anchor", "invalid_value"),
        (
            "batch",
            {"anchor": "created_at", "seconds": 3599},
            "expires_after.seconds",
            "invalid_value",
        ),
        (
            "batch",
            {"anchor": "created_at", "seconds": THIRTY_DAYS + 1},
            "expires_after.seconds",
            "invalid_value",
        ),
        (
            "batch",
            {"anchor": "created_at", "seconds": "soon"},
            "expires_after.seconds",
            "invalid_type",
        ),
        (
            "batch",
            {"anchor": "created_at", "seconds": "7_200"},
            "expires_after.seconds",
            "invalid_type",
        ),
        ("batch", {"seconds": 3600}, "expires_after.anchor", "missing_required_parameter"),
        ("batch", {"anchor": "created_at"}, "expires_after.seconds", "missing_required_parameter"),
    ],
)
def test_upload_rejects_bad_fields(
    client: OpenAI, purpose: str, expires_after: Any, param: str, code: str
) -> None:
    before = all_file_ids(client)
    extra: dict[str, Any] = {} if expires_after is None else {"expires_after": expires_after}
    with pytest.raises(openai.BadRequestError) as info:
        client.files.create(file=("x.jsonl", jsonl(1)), purpose=purpose, **extra)  # type: ignore[arg-type]
    assert_api_error(info.value, 400, param=param, code=code)
    assert all_file_ids(client) == before  # nothing was stored


def test_upload_missing_parts_raw(server: BatchdServer, client: OpenAI) -> None:
    before = all_file_ids(client)
    url = f"{server.api_url}/files"
    cases = [
        # the file part is missing
        (
            httpx2.post(url, files={"purpose": (None, "batch")}),
            "file",
            "missing_required_parameter",
        ),
        # the purpose is missing
        (
            httpx2.post(url, files={"file": ("x.jsonl", jsonl(1))}),
            "purpose",
            "missing_required_parameter",
        ),
        # not multipart at all
        (httpx2.post(url, json={"purpose": "batch"}), None, "invalid_content_type"),
    ]
    for response, param, code in cases:
        assert response.status_code == 400, response.text
        assert response.headers["x-should-retry"] == "false"
        error = check_response(response, "ErrorResponse")["error"]
        assert (error["param"], error["code"], error["type"]) == (
            param,
            code,
            "invalid_request_error",
        )
    assert all_file_ids(client) == before


def test_size_limits_answer_413_and_the_server_keeps_serving(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "small.toml", max_batch_file_bytes=4096, max_upload_bytes=100_000
    )
    srv = BatchdServer(tmp_path / "data", config).start()
    try:
        with OpenAI(base_url=srv.api_url, api_key="k", max_retries=0) as c:
            at_limit = c.files.create(file=("ok.jsonl", b"a" * 4096), purpose="batch")
            assert at_limit.bytes == 4096
            for size, purpose in [
                (4097, "batch"),  # over the batch limit, caught while streaming
                (150_000, "batch"),
                (200_000, "user_data"),  # over the upload limit, caught by content-length
                (3 * 1024 * 1024, "batch"),
            ]:
                with pytest.raises(openai.APIStatusError) as info:
                    c.files.create(file=("big.jsonl", b"b" * size), purpose=purpose)  # type: ignore[arg-type]
                assert_api_error(info.value, 413, param="file", code="file_too_large")
                assert srv.alive()
                assert health(srv)["status"] == "ok"
            # the batch limit does not apply to other purposes
            other = c.files.create(file=("other.bin", b"c" * 5000), purpose="user_data")
            assert c.files.content(other.id).content == b"c" * 5000
            assert {f.id for f in c.files.list()} == {at_limit.id, other.id}
    finally:
        srv.stop()


@pytest.mark.anyio
async def test_size_limit_413_async(tmp_path: Path) -> None:
    config = write_config(tmp_path / "small.toml", max_batch_file_bytes=1000)
    srv = BatchdServer(tmp_path / "data", config).start()
    try:
        async with AsyncOpenAI(base_url=srv.api_url, api_key="k", max_retries=0) as c:
            with pytest.raises(openai.APIStatusError) as info:
                await c.files.create(file=("big.jsonl", b"x" * 1001), purpose="batch")
            assert_api_error(info.value, 413, param="file", code="file_too_large")
            small = await c.files.create(file=("small.jsonl", b"x" * 1000), purpose="batch")
            assert [f.id async for f in c.files.list()] == [small.id]
    finally:
        srv.stop()


def health(srv: BatchdServer) -> dict[str, Any]:
    response = httpx2.get(f"{srv.base_url}/health")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# -- list --------------------------------------------------------------------------------------


def _upload_mix(c: OpenAI) -> tuple[list[str], list[str]]:
    """Seven files in a known order: (all ids oldest first, batch-purpose ids oldest first)."""
    ids, batch_ids = [], []
    for i in range(7):
        purpose = "user_data" if i in (2, 5) else "batch"
        f = c.files.create(file=(f"f{i}.jsonl", jsonl(1, f"f{i}")), purpose=purpose)  # type: ignore[arg-type]
        ids.append(f.id)
        if purpose == "batch":
            batch_ids.append(f.id)
    return ids, batch_ids


def test_list_files_pagination_sync(fresh_server: BatchdServer) -> None:
    with OpenAI(base_url=fresh_server.api_url, api_key="k", max_retries=0) as c:
        ids, batch_ids = _upload_mix(c)
        newest_first = ids[::-1]

        # default: everything, newest first, one page
        raw = c.files.with_raw_response.list()
        page = check_response(raw, "ListFilesResponse")
        assert [f["id"] for f in page["data"]] == newest_first
        assert (page["first_id"], page["last_id"], page["has_more"]) == (ids[-1], ids[0], False)
        for item in page["data"]:
            assert FileObject.model_validate(item).id == item["id"]

        # auto-pagination with small pages, both orders
        first = c.files.list(limit=3)
        pages = list(first.iter_pages())
        assert [len(p.data) for p in pages] == [3, 3, 1]
        assert [p.has_more for p in pages] == [True, True, False]
        assert [f.id for f in c.files.list(limit=3)] == newest_first
        assert [f.id for f in c.files.list(limit=3, order="asc")] == ids
        assert [f.id for f in c.files.list(limit=2, order="desc")] == newest_first

        # every page is a valid list object with consistent cursors
        raw_page = check_response(c.files.with_raw_response.list(limit=3), "ListFilesResponse")
        assert [f["id"] for f in raw_page["data"]] == newest_first[:3]
        assert raw_page["first_id"] == newest_first[0]
        assert raw_page["last_id"] == newest_first[2]
        assert raw_page["has_more"] is True
        middle = check_response(
            c.files.with_raw_response.list(limit=3, after=newest_first[2]), "ListFilesResponse"
        )
        assert [f["id"] for f in middle["data"]] == newest_first[3:6]
        assert middle["has_more"] is True
        exact = check_response(
            c.files.with_raw_response.list(limit=4, after=newest_first[2]), "ListFilesResponse"
        )
        assert [f["id"] for f in exact["data"]] == newest_first[3:]
        assert exact["has_more"] is False

        # purpose filter
        assert [f.id for f in c.files.list(purpose="batch", limit=2)] == batch_ids[::-1]
        assert [f.id for f in c.files.list(purpose="user_data", limit=1, order="asc")] == [
            ids[2],
            ids[5],
        ]
        assert list(c.files.list(purpose="fine-tune")) == []

        # after the last id: an empty page, null cursors
        for order, last in (("desc", ids[0]), ("asc", ids[-1])):
            check_empty_page(
                c.files.with_raw_response.list(after=last, order=order),  # type: ignore[arg-type]
                "ListFilesResponse",
            )


@pytest.mark.anyio
async def test_list_files_pagination_async(fresh_server: BatchdServer) -> None:
    with OpenAI(base_url=fresh_server.api_url, api_key="k", max_retries=0) as c:
        ids, batch_ids = _upload_mix(c)
    async with AsyncOpenAI(base_url=fresh_server.api_url, api_key="k", max_retries=0) as ac:
        assert [f.id async for f in ac.files.list(limit=2)] == ids[::-1]
        assert [f.id async for f in ac.files.list(limit=3, order="asc")] == ids
        assert [f.id async for f in ac.files.list(limit=1, purpose="batch")] == batch_ids[::-1]
        raw = await ac.files.with_raw_response.list(after=ids[0])
        check_empty_page(raw, "ListFilesResponse")


@pytest.mark.parametrize(
    ("params", "param", "code"),
    [
        ({"limit": 0}, "limit", "integer_below_min_value"),
        ({"limit": -5}, "limit", "integer_below_min_value"),
        ({"limit": 10_001}, "limit", "integer_above_max_value"),
        ({"limit": "many"}, "limit", "invalid_type"),
        ({"limit": "1_0"}, "limit", "invalid_type"),  # int() takes these; HTTP does not
        ({"limit": "\uff11\uff10"}, "limit", "invalid_type"),  # fullwidth "10"
        ({"order": "sideways"}, "order", "invalid_value"),
        ({"after": "file-doesnotexist000000000000"}, "after", "invalid_value"),
    ],
)
def test_list_files_bad_params(
    client: OpenAI, params: dict[str, Any], param: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.files.list(**params)
    assert_api_error(info.value, 400, param=param, code=code)


def test_list_files_limit_bounds_accepted(client: OpenAI) -> None:
    client.files.create(file=("b.jsonl", jsonl(1)), purpose="batch")
    for limit in (1, 10_000):
        page = check_response(client.files.with_raw_response.list(limit=limit), "ListFilesResponse")
        assert 1 <= len(page["data"]) <= limit


# -- retrieve, content, delete -----------------------------------------------------------------


def test_retrieve_and_content_round_trip_sync(client: OpenAI) -> None:
    big = os.urandom(5 * 1024 * 1024 + 123)
    for name, content, purpose in [
        ("binary.bin", BINARY, "user_data"),
        ("big.bin", big, "assistants"),
        ("empty.jsonl", b"", "batch"),
        ("lines.jsonl", jsonl(5), "batch"),
    ]:
        created = file_json(
            client.files.with_raw_response.create(file=(name, content), purpose=purpose)  # type: ignore[arg-type]
        )
        assert created["bytes"] == len(content)
        retrieved = file_json(client.files.with_raw_response.retrieve(created["id"]))
        assert retrieved == created
        raw = client.files.with_raw_response.content(created["id"])
        assert raw.headers["x-request-id"].startswith("req_")
        assert int(raw.headers["content-length"]) == len(content)
        assert raw.content == content
        with client.files.with_streaming_response.content(created["id"]) as streamed:
            assert b"".join(streamed.iter_bytes()) == content


@pytest.mark.anyio
async def test_retrieve_and_content_round_trip_async(async_client: AsyncOpenAI) -> None:
    big = os.urandom(3 * 1024 * 1024 + 7) + BINARY
    async with async_client:
        created = await async_client.files.create(file=("big.bin", big), purpose="user_data")
        retrieved = file_json(await async_client.files.with_raw_response.retrieve(created.id))
        assert retrieved == created.model_dump()
        assert (await async_client.files.content(created.id)).content == big
        async with async_client.files.with_streaming_response.content(created.id) as streamed:
            chunks = [chunk async for chunk in streamed.iter_bytes()]
        assert b"".join(chunks) == big


def _assert_file_gone(exc: openai.APIStatusError, file_id: str) -> None:
    assert isinstance(exc, openai.NotFoundError)
    body = assert_api_error(exc, 404, param="id", code=None)
    assert file_id in body["error"]["message"]


def test_delete_then_404_sync(client: OpenAI) -> None:
    keep = client.files.create(file=("keep.jsonl", jsonl(1)), purpose="batch")
    gone = client.files.create(file=("gone.jsonl", jsonl(1)), purpose="batch")
    raw = client.files.with_raw_response.delete(gone.id)
    data = check_response(raw, "DeleteFileResponse")
    assert data == {"id": gone.id, "object": "file", "deleted": True}
    assert FileDeleted.model_validate(data) == raw.parse()
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as info:
            call(gone.id)
        _assert_file_gone(info.value, gone.id)
    ids = all_file_ids(client)
    assert gone.id not in ids
    assert keep.id in ids
    assert client.files.content(keep.id).content == jsonl(1)
    for unknown in ("file-NeverUploaded000000000000", "not-a-file-id"):
        with pytest.raises(openai.NotFoundError) as info:
            client.files.retrieve(unknown)
        _assert_file_gone(info.value, unknown)


@pytest.mark.anyio
async def test_delete_then_404_async(async_client: AsyncOpenAI) -> None:
    async with async_client:
        gone = await async_client.files.create(file=b"bye", purpose="user_data")
        deleted = await async_client.files.delete(gone.id)
        assert (deleted.id, deleted.deleted, deleted.object) == (gone.id, True, "file")
        for call in (
            async_client.files.retrieve,
            async_client.files.content,
            async_client.files.delete,
        ):
            with pytest.raises(openai.NotFoundError) as info:
                await call(gone.id)
            _assert_file_gone(info.value, gone.id)
        assert gone.id not in [f.id async for f in async_client.files.list()]


def test_content_missing_from_storage_is_a_clear_server_error(
    client: OpenAI, server: BatchdServer
) -> None:
    uploaded = client.files.create(file=("gone.jsonl", b"{}\n"), purpose="user_data")
    (server.data_dir / "files" / "blobs" / uploaded.id).unlink()
    with pytest.raises(openai.InternalServerError) as info:
        client.files.content(uploaded.id)
    assert info.value.code == "file_content_missing"
    assert uploaded.id in info.value.message
    assert client.files.retrieve(uploaded.id).id == uploaded.id  # still serving
