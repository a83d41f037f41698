"""Hostile input against a real ``batchd serve``: request smuggling, hostile filenames, ids that
try to reach outside the storage, and the headers file contents are served with."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from openai import OpenAI

from tests.serverproc import BatchdServer, write_config


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchdServer]:
    root = tmp_path_factory.mktemp("hardening")
    srv = BatchdServer(root / "data", write_config(root / "batchd.toml", models=[])).start()
    yield srv
    srv.stop()


def raw_exchange(server: BatchdServer, request: bytes) -> bytes:
    """Send ``request`` as is on a fresh connection; everything the server answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        conn.sendall(request)
        received = b""
        try:
            while chunk := conn.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return received


@pytest.mark.parametrize(
    "request_bytes",
    [
        # CL.TE: a body the front end would end at 4 bytes, hiding a second request
        b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/files HTTP/1.1\r\nHost: x\r\n\r\n",
        # two different lengths
        b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\n"
        b"abcd",
        # an unknown transfer coding
        b"POST /v1/batches HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
        # a folded header line (obs-fold)
        b"GET /v1/files HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    ],
    ids=["cl-te", "two-lengths", "unknown-coding", "obs-fold"],
)
def test_ambiguous_framing_is_a_400_and_never_a_second_request(
    server: BatchdServer, request_bytes: bytes
) -> None:
    answer = raw_exchange(server, request_bytes)
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, answer


def test_no_server_header(server: BatchdServer) -> None:
    response = httpx.get(server.base_url + "/health", timeout=10)
    assert "server" not in response.headers


def upload_raw(server: BatchdServer, filename: bytes) -> httpx.Response:
    """An upload whose filename bytes go out exactly as given (clients escape them)."""
    boundary = b"hardening-boundary"
    body = (
        b"--" + boundary + b'\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n'
        b"user_data\r\n--" + boundary + b"\r\n"
        b'Content-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: application/octet-stream\r\n\r\n{}\n\r\n--" + boundary + b"--\r\n"
    )
    return httpx.post(
        server.api_url + "/files",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=" + boundary.decode()},
        timeout=10,
    )


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (b"../../etc/passwd", "passwd"),
        (b"..\\..\\windows\\system.ini", "system.ini"),
        (b"in\x00\x01\x1f\x7f.jsonl", "in.jsonl"),
        (b"evil\x0bX-Injected: 1\x0c.jsonl", "evilX-Injected: 1.jsonl"),
        (b"..", "upload"),
        (b"/", "upload"),
        (b"a" * 400 + b".jsonl", "a" * 255),
        ("caf\u00e9 \u2028.jsonl".encode(), "caf\u00e9 .jsonl"),
        ("\u202egnp.exe\u200b".encode(), "gnp.exe"),  # a bidi override, a zero-width space
    ],
)
def test_filenames_are_sanitised(server: BatchdServer, sent: bytes, kept: str) -> None:
    uploaded = upload_raw(server, sent)
    assert uploaded.status_code == 200, uploaded.text
    file_id = uploaded.json()["id"]
    assert uploaded.json()["filename"] == kept
    client = OpenAI(base_url=server.api_url, api_key="-", max_retries=0)
    assert client.files.retrieve(file_id).filename == kept
    content = httpx.get(f"{server.api_url}/files/{file_id}/content", timeout=10)
    disposition = content.headers["content-disposition"]
    assert disposition.startswith("attachment; filename=")
    assert all(32 <= ord(c) < 127 for c in disposition)  # plain ASCII, no CR/LF
    assert disposition.count('"') == 2
    assert content.headers["x-content-type-options"] == "nosniff"
    assert content.headers["cache-control"] == "no-store"
    assert content.headers["content-type"] == "application/octet-stream"
    assert "x-injected" not in content.headers


@pytest.mark.parametrize(
    "path",
    [
        "/files/..%2F..%2Fbatchd.sqlite3/content",
        "/files/file-..%2F..%2Fbatchd.sqlite3/content",
        "/files/file-abc%00def",
        "/files/%2e%2e",
        "/batches/batch_..%2F..%2Fx",
        "/batches/batch_%00/cancel",
    ],
)
def test_ids_that_try_to_leave_the_storage_are_404(server: BatchdServer, path: str) -> None:
    method = "POST" if path.endswith("/cancel") else "GET"
    response = httpx.request(method, server.api_url + path, timeout=10)
    assert response.status_code == 404, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert str(server.data_dir) not in response.text  # no internal path in any answer
