"""Per-project limits and the request body limit, on a real ``batchd serve``: the exact status
codes, error codes and ``Retry-After`` headers.

Each test uses its own project (its own key), so their limits and usage do not mix.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.engine_support import chat_body, request_line, to_jsonl, wait_for_batch
from tests.serverproc import BatchdServer
from tests.upstream.process import UpstreamProcess

MODEL = "gpt-4o-mini"
PROJECTS: dict[str, str] = {
    # project: its limits, as an inline TOML table
    "upload": "{ max_upload_bytes = 1000 }",
    "stored": "{ max_stored_bytes = 3000 }",
    "hourly": "{ max_batches_per_hour = 2 }",
    "burst": "{ max_batches_per_hour = 3 }",
    "active": "{ max_active_batches = 1 }",
    "tokens": '{ max_enqueued_tokens = { "gpt-4o-mini" = 400 } }',
    "defaults": "",  # [project_limits] only
}


def key_of(project: str) -> str:
    return f"key-for-project-{project}-0000"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tmp_path_factory.mktemp("upstream"), latency_ms=400) as up:
        yield up


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamProcess
) -> Iterator[BatchdServer]:
    root = tmp_path_factory.mktemp("limits")
    lines = [
        "max_request_body_bytes = 4096",
        "max_batch_file_bytes = 100000",
        "[project_limits]",
        "max_active_batches = 5",
    ]
    for project, limits in PROJECTS.items():
        lines += ["[[api_keys]]", f'key = "{key_of(project)}"', f'project = "{project}"']
        if limits:
            lines.append(f"limits = {limits}")
    lines += [
        "[[models]]",
        f'name = "{MODEL}"',
        'provider = "openai"',
        f'base_url = "{upstream.api_url}"',
        "max_concurrency = 1",
        "timeout = 10.0",
    ]
    config = root / "batchd.toml"
    config.write_text("\n".join(lines) + "\n")
    srv = BatchdServer(root / "data", config).start()
    yield srv
    srv.stop()


def sdk(server: BatchdServer, project: str) -> OpenAI:
    return OpenAI(base_url=server.api_url, api_key=key_of(project), max_retries=0, timeout=30)


def batch_file(n: int, words: int = 3) -> bytes:
    text = " ".join(["word"] * words)
    return to_jsonl(request_line(f"r{i}", chat_body(f"{text} {i}")) for i in range(n))


def create(client: OpenAI, content: bytes) -> Any:
    upload = client.files.create(file=("in.jsonl", content), purpose="batch")
    return client.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


def error_of(caught: pytest.ExceptionInfo[openai.APIStatusError]) -> dict[str, Any]:
    body = caught.value.body
    assert isinstance(body, dict)
    assert set(body) == {"message", "type", "param", "code"}
    return body


def test_upload_size_per_project(server: BatchdServer) -> None:
    client = sdk(server, "upload")
    assert client.files.create(file=("small.jsonl", b"x" * 900), purpose="user_data").bytes == 900
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("big.jsonl", b"x" * 2000), purpose="user_data")
    assert caught.value.status_code == 413
    error = error_of(caught)
    assert (error["code"], error["param"]) == ("file_too_large", "file")
    # another project is not bound by it
    assert sdk(server, "stored").files.create(file=("b.txt", b"y" * 2000), purpose="user_data")


def test_stored_bytes_per_project(server: BatchdServer) -> None:
    client = sdk(server, "stored")
    for f in client.files.list():  # (the upload test stored a file here)
        client.files.delete(f.id)
    first = client.files.create(file=("a.txt", b"a" * 2000), purpose="user_data")
    with pytest.raises(openai.BadRequestError) as caught:
        client.files.create(file=("b.txt", b"b" * 1500), purpose="user_data")
    error = error_of(caught)
    assert (error["code"], error["param"]) == ("storage_quota_exceeded", "file")
    assert "3,000" in error["message"]
    assert "2,000" in error["message"]
    assert client.files.create(file=("c.txt", b"c" * 900), purpose="user_data")
    client.files.delete(first.id)  # room again
    assert client.files.create(file=("d.txt", b"d" * 1500), purpose="user_data")


def test_batches_per_hour(server: BatchdServer) -> None:
    client = sdk(server, "hourly")
    for _ in range(2):
        create(client, batch_file(1))
    with pytest.raises(openai.RateLimitError) as caught:
        create(client, batch_file(1))
    error = error_of(caught)
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    retry_after = int(caught.value.response.headers["retry-after"])
    assert 3500 <= retry_after <= 3600
    assert "x-should-retry" not in caught.value.response.headers


def test_batches_created_at_once_stay_within_the_limit(server: BatchdServer) -> None:
    """Twelve creations at the same moment: three pass, nine get the 429 (the check and the
    creation are one step, not a check that all twelve pass before any is stored)."""
    client = sdk(server, "burst")
    upload = client.files.create(file=("in.jsonl", batch_file(1)), purpose="batch")

    def attempt(_: int) -> str:
        try:
            client.batches.create(
                input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
            )
        except openai.RateLimitError:
            return "429"
        return "created"

    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = sorted(pool.map(attempt, range(12)))
    assert outcomes == ["429"] * 9 + ["created"] * 3
    assert len(client.batches.list().data) == 3


def test_active_batches(server: BatchdServer) -> None:
    client = sdk(server, "active")
    running = create(client, batch_file(4))  # 4 x 400 ms at concurrency 1
    with pytest.raises(openai.RateLimitError) as caught:
        create(client, batch_file(1))
    error = error_of(caught)
    assert error["code"] == "rate_limit_exceeded"
    assert "at most 1 batches" in error["message"]
    assert caught.value.response.headers["retry-after"] == "60"
    wait_for_batch(client, server, running.id, {"completed"}, timeout=60)
    create(client, batch_file(1))  # room again


def test_enqueued_tokens_per_model(server: BatchdServer) -> None:
    client = sdk(server, "tokens")
    first = create(client, batch_file(4, words=20))  # about 4 x 55 estimated tokens
    wait_for_batch(client, server, first.id, {"in_progress"}, timeout=30)
    second = create(client, batch_file(4, words=20))  # together over 400
    failed = wait_for_batch(client, server, second.id, {"failed"}, timeout=30)
    [error] = failed["errors"]["data"]
    assert error["code"] == "token_limit_exceeded"
    assert "Enqueued token limit reached for gpt-4o-mini in project 'tokens'" in error["message"]
    assert "Limit: 400 enqueued tokens" in error["message"]
    assert failed["request_counts"]["total"] == 0
    wait_for_batch(client, server, first.id, {"completed"}, timeout=60)
    third = create(client, batch_file(4, words=20))  # the quota is released
    wait_for_batch(client, server, third.id, {"in_progress", "finalizing", "completed"}, 30)


def test_project_limits_apply_to_every_project(server: BatchdServer) -> None:
    """``[project_limits]`` bounds a project with no limits of its own (5 active batches)."""
    client = sdk(server, "defaults")
    for _ in range(5):
        create(client, batch_file(2))
    with pytest.raises(openai.RateLimitError):
        create(client, batch_file(1))


def post(server: BatchdServer, path: str, content: Any, **headers: str) -> httpx.Response:
    return httpx.post(
        server.api_url + path,
        content=content,
        headers={"Authorization": f"Bearer {key_of('defaults')}", **headers},
        timeout=30,
    )


def test_request_bodies_over_the_limit_are_413(server: BatchdServer) -> None:
    big = b'{"model": "gpt-4o-mini", "messages": [], "pad": "' + b"x" * 5000 + b'"}'
    for path in ("/chat/completions", "/embeddings", "/batches"):
        response = post(server, path, big, **{"content-type": "application/json"})
        assert response.status_code == 413, response.text
        assert response.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        yield big[:3000]
        time.sleep(0.05)
        yield big[3000:]

    response = post(server, "/chat/completions", chunks(), **{"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    # uploads may be as large as the largest file (max_batch_file_bytes here)
    client = sdk(server, "defaults")
    assert client.files.create(file=("in.jsonl", batch_file(60)), purpose="batch").bytes > 4096
    with pytest.raises(openai.APIStatusError) as caught:
        client.files.create(file=("in.jsonl", b"x" * 200_000), purpose="batch")
    assert caught.value.status_code == 413


def test_limits_config_errors(tmp_path: Path) -> None:
    from batchd.config import Settings
    from batchd.errors import ConfigError

    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[api_keys]]\nkey = "k-0000000001"\nproject = "p"\nlimits = { max_active_batches = 1 }\n'
        '[[api_keys]]\nkey = "k-0000000002"\nproject = "p"\nlimits = { max_active_batches = 2 }\n'
    )
    with pytest.raises(ConfigError, match="the keys of project 'p' set different limits"):
        Settings.load(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text("[project_limits]\nmax_batches_per_day = 3\n")
    with pytest.raises(ConfigError, match="max_batches_per_day"):
        Settings.load(typo)
