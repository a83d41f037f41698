"""Azure OpenAI's routes, end to end: the real ``AzureOpenAI`` client (sync and async) against a
real ``batchd serve`` with keys of two projects, through the Azure batch notebook's flow.

Both generations are driven: ``azure_endpoint=`` (``/openai/...?api-version=``, inference on
``/openai/deployments/{deployment}/...``) and the GA ``/openai/v1/`` base URL. A missing or
unknown ``api-version`` is Azure's 400; ``api-key`` and bearer keys both work, each project
seeing only its own files and batches.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai import AsyncAzureOpenAI, AzureOpenAI, OpenAI

from tests.engine_support import chat_body, model_route, request_line, to_jsonl, wait_for_batch
from tests.serverproc import BatchdServer, write_config
from tests.upstream.process import UpstreamProcess

KEY_A = "azure-key-of-project-a-0123"
KEY_B = "azure-key-of-project-b-4567"
VERSION = "2024-10-21"
DEPLOYMENT = "gpt-4o-mini"  # the route's name: Azure's deployment
HELD = "held-deployment"  # a route whose upstream never answers: its batches stay in progress


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, UpstreamProcess]]:
    with (
        UpstreamProcess(tmp_path_factory.mktemp("azure-ok"), latency_ms=2) as ok,
        UpstreamProcess(tmp_path_factory.mktemp("azure-held"), p_hang=1.0) as held,
    ):
        yield {"ok": ok, "held": held}


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, upstreams: dict[str, UpstreamProcess]
) -> Iterator[BatchdServer]:
    root = tmp_path_factory.mktemp("azure")
    models = [
        model_route(upstreams["ok"]),
        {**model_route(upstreams["held"]), "name": HELD, "timeout": 60.0},
    ]
    config = write_config(root / "batchd.toml", models=models, cancel_grace_seconds=0.2)
    with config.open("a") as fh:
        fh.write(f'\n[[api_keys]]\nkey = "{KEY_A}"\nproject = "a"\n')
        fh.write(f'\n[[api_keys]]\nkey = "{KEY_B}"\nproject = "b"\n')
    srv = BatchdServer(root / "data", config).start()
    yield srv
    srv.stop()


_CLIENTS: list[OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    """Close every client a test made (an open one warns when it is collected)."""
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def azure(server: BatchdServer, key: str = KEY_A, **options: Any) -> AzureOpenAI:
    options.setdefault("api_version", VERSION)
    client = AzureOpenAI(
        azure_endpoint=server.base_url, api_key=key, max_retries=0, timeout=30, **options
    )
    _CLIENTS.append(client)
    return client


def plain(base_url: str) -> OpenAI:
    """An ``OpenAI`` client with project a's key, closed after the test."""
    client = OpenAI(base_url=base_url, api_key=KEY_A, max_retries=0, timeout=30)
    _CLIENTS.append(client)
    return client


def azure_lines(n: int, model: str = DEPLOYMENT, url: str = "/chat/completions") -> bytes:
    """The Azure notebook's batch file: ``url`` without ``/v1``, the deployment as the model."""
    return to_jsonl(
        request_line(f"task-{i}", chat_body(f"question {i}", model=model), url=url)
        for i in range(n)
    )


def test_the_azure_notebook_flow(server: BatchdServer) -> None:
    client = azure(server)
    uploaded = client.files.create(file=("batch.jsonl", azure_lines(5)), purpose="batch")
    assert uploaded.status == "processed"
    assert uploaded.status_details is None
    assert client.files.retrieve(uploaded.id).status == "processed"
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/chat/completions", completion_window="24h"
    )
    assert batch.endpoint == "/chat/completions"
    done = wait_for_batch(client, server, batch.id)
    assert done["model"] == DEPLOYMENT  # the deployment, as the lines name it
    assert done["request_counts"] == {"total": 5, "completed": 5, "failed": 0}
    output = client.files.content(done["output_file_id"]).content.splitlines()
    assert [orjson.loads(line)["custom_id"] for line in output] == [f"task-{i}" for i in range(5)]
    # Azure publishes an error file for every batch: empty when nothing failed.
    assert done["error_file_id"] is not None
    assert client.files.content(done["error_file_id"]).content == b""
    assert client.files.retrieve(done["error_file_id"]).purpose == "batch_output"


def test_chat_on_a_deployment(server: BatchdServer) -> None:
    answer = azure(server).chat.completions.create(
        model=DEPLOYMENT, messages=[{"role": "user", "content": "hello"}]
    )
    assert answer.choices[0].message.content
    # azure_deployment= puts the deployment in the base URL instead.
    pinned = azure(server, azure_deployment=DEPLOYMENT).chat.completions.create(
        model="ignored-by-azure", messages=[{"role": "user", "content": "hello"}]
    )
    assert pinned.choices[0].message.content == answer.choices[0].message.content
    vectors = azure(server).embeddings.create(model=DEPLOYMENT, input=["a", "b"])
    assert len(vectors.data) == 2
    legacy = azure(server).completions.create(model=DEPLOYMENT, prompt="Say hi")
    assert legacy.choices[0].text
    with pytest.raises(openai.NotFoundError) as caught:
        azure(server).chat.completions.create(
            model="no-such-deployment", messages=[{"role": "user", "content": "hello"}]
        )
    assert caught.value.code == "model_not_found"
    assert f"'{DEPLOYMENT}'" in str(caught.value.message)  # the served models are listed


def test_the_async_client_cancels_and_lists_pages(server: BatchdServer) -> None:
    async def flow() -> None:
        async with AsyncAzureOpenAI(
            azure_endpoint=server.base_url, api_key=KEY_A, api_version=VERSION, max_retries=0
        ) as client:
            uploaded = await client.files.create(
                file=("held.jsonl", azure_lines(3, model=HELD)), purpose="batch"
            )
            created = [
                await client.batches.create(
                    input_file_id=uploaded.id,
                    endpoint="/chat/completions",
                    completion_window="24h",
                )
                for _ in range(3)
            ]
            ids = {b.id for b in created}
            for batch in created:  # validated (a batch cancelled while validating has no counts)
                for _ in range(400):
                    if (await client.batches.retrieve(batch.id)).status == "in_progress":
                        break
                    await asyncio.sleep(0.05)
            for batch in created:
                cancelling = await client.batches.cancel(batch.id)
                assert cancelling.status in ("cancelling", "cancelled")
            for batch in created:
                for _ in range(400):
                    state = await client.batches.retrieve(batch.id)
                    if state.status == "cancelled":
                        break
                    await asyncio.sleep(0.05)
                assert state.status == "cancelled"
                assert state.request_counts is not None
                assert state.request_counts.failed == 3
            first = await client.batches.list(limit=2)
            assert len(first.data) == 2
            assert first.has_more
            seen = [b.id async for b in await client.batches.list(limit=2)]
            assert ids <= set(seen)
            assert len(seen) == len(set(seen))

    asyncio.run(flow())


def test_the_ga_v1_base_url(server: BatchdServer) -> None:
    client = plain(f"{server.base_url}/openai/v1/")
    uploaded = client.files.create(file=("v1.jsonl", azure_lines(2)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for_batch(client, server, batch.id)
    assert done["request_counts"]["completed"] == 2
    assert client.files.content(done["error_file_id"]).content == b""
    assert [m.id for m in client.models.list()][:2] == [DEPLOYMENT, HELD]
    chat = client.chat.completions.create(
        model=DEPLOYMENT, messages=[{"role": "user", "content": "hi"}]
    )
    assert chat.choices[0].message.content


def azure_error(response: httpx.Response) -> str:
    """Azure's error shape: ``{"error": {"code", "message"}}``; the message."""
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"}
    assert error["code"] == "BadRequest"
    return str(error["message"])


@pytest.mark.parametrize(
    "path", ["/openai/files", "/openai/batches", "/openai/models", "/openai/batches/batch_x"]
)
def test_a_missing_or_unknown_api_version_is_azures_400(server: BatchdServer, path: str) -> None:
    headers = {"api-key": KEY_A}
    url = f"{server.base_url}{path}"
    missing = azure_error(httpx.get(url, headers=headers))
    assert "api-version" in missing
    assert VERSION in missing
    unknown = azure_error(httpx.get(url, headers=headers, params={"api-version": "1999-01-01"}))
    assert "'1999-01-01'" in unknown
    assert VERSION in unknown
    assert httpx.get(url, headers=headers, params={"api-version": VERSION}).status_code != 400


def test_the_sdk_with_an_unknown_api_version(server: BatchdServer) -> None:
    with pytest.raises(openai.BadRequestError, match="API version not supported"):
        azure(server, api_version="2023-01-01-nonsense").files.list()
    deployment = f"{server.base_url}/openai/deployments/{DEPLOYMENT}/chat/completions"
    body = {"messages": [{"role": "user", "content": "hi"}]}
    response = httpx.post(deployment, headers={"api-key": KEY_A}, json=body)
    assert "api-version" in azure_error(response)


def test_api_key_and_bearer_with_two_projects(server: BatchdServer) -> None:
    mine = azure(server).files.create(file=("a.jsonl", azure_lines(1)), purpose="batch")
    other = azure(server, key=KEY_B)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(mine.id)
    assert mine.id not in {f.id for f in other.files.list()}
    params = {"api-version": VERSION}
    url = f"{server.base_url}/openai/files/{mine.id}"
    bearer = httpx.get(url, params=params, headers={"Authorization": f"Bearer {KEY_A}"})
    assert bearer.status_code == 200
    assert bearer.json()["id"] == mine.id
    assert httpx.get(url, params=params, headers={"api-key": KEY_B}).status_code == 404
    nobody = httpx.get(url, params=params)
    assert nobody.status_code == 401
    assert nobody.json()["error"]["code"] == "invalid_api_key"


def test_a_file_that_fails_validation_is_error_on_azure(server: BatchdServer) -> None:
    good = request_line("ok", chat_body("fine"), url="/chat/completions")
    wrong_url = request_line("bad", chat_body("wrong url"), url="/embeddings")
    data = to_jsonl([good, wrong_url])
    client = azure(server)
    uploaded = client.files.create(file=("mixed.jsonl", data), purpose="batch")
    assert uploaded.status == "error"
    assert uploaded.status_details is not None
    assert "line 2" in uploaded.status_details
    # OpenAI's answers keep "processed" for the same file.
    openai_client = plain(server.api_url)
    assert openai_client.files.retrieve(uploaded.id).status == "processed"
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/chat/completions", completion_window="24h"
    )
    failed = wait_for_batch(client, server, batch.id, statuses=("failed",))
    codes = [(e["line"], e["code"]) for e in failed["errors"]["data"]]
    assert codes == [(2, "url_mismatch")]  # Azure's name for it
    assert [
        (e.line, e.code)
        for e in openai_client.batches.retrieve(batch.id).errors.data  # type: ignore[union-attr]
    ] == [(2, "invalid_url")]


def test_the_api_versions_are_configurable(tmp_path: Path, upstreams: Any) -> None:
    config = write_config(tmp_path / "batchd.toml", models=[model_route(upstreams["ok"])])
    config.write_text('azure_api_versions = ["2099-01-01"]\n' + config.read_text())
    srv = BatchdServer(tmp_path / "data", config).start()
    try:
        ok = httpx.get(f"{srv.base_url}/openai/models", params={"api-version": "2099-01-01"})
        assert ok.status_code == 200
        assert [m["id"] for m in ok.json()["data"]] == [DEPLOYMENT]
        refused = httpx.get(f"{srv.base_url}/openai/models", params={"api-version": VERSION})
        assert "2099-01-01" in azure_error(refused)
    finally:
        srv.stop()


def test_digest_of_key_is_not_echoed(server: BatchdServer) -> None:
    """A wrong key on an Azure route: 401 in OpenAI's envelope, the key masked."""
    wrong = "wrong-azure-key-000000000"
    response = httpx.get(
        f"{server.base_url}/openai/files",
        params={"api-version": VERSION},
        headers={"api-key": wrong},
    )
    assert response.status_code == 401
    assert wrong not in response.text
    assert hashlib.sha256(wrong.encode()).hexdigest() not in response.text
