"""The batch cookbooks' workloads, run unchanged against ``batchd serve`` with no configuration
(the embedded models, under the cookbooks' model names): the OpenAI cookbook's movie
categorisation with ``model: "gpt-4o-mini"`` in JSON mode, embeddings under
``text-embedding-3-small``, and the Responses API; image parts are a clear 400 line each.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest
from openai import OpenAI

from batchd.config import Settings
from batchd.embedded_models import CHAT_MODEL, EMBEDDING_MODEL
from tests.cookbook import cookbook_task
from tests.engine_support import to_jsonl, wait_for_batch
from tests.serverproc import BatchdServer

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imdb_top_1000.csv"
MOVIES = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchdServer]:
    if not Settings.load(embedded_models=True).models:
        pytest.skip("the local extra (embedded models) is not installed")
    srv = BatchdServer(tmp_path_factory.mktemp("cookbook") / "data").start(timeout=60)
    yield srv
    srv.stop()


@pytest.fixture
def client(server: BatchdServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.api_url, api_key="-", max_retries=0, timeout=120) as c:
        yield c


def test_the_movie_cookbook_runs_unchanged(server: BatchdServer, client: OpenAI) -> None:
    if not DATA.is_file():
        pytest.skip(f"the IMDb data set is absent: {DATA} not found (../shared/data)")
    with DATA.open(newline="", encoding="utf-8") as fh:
        rows = [row for _, row in zip(range(MOVIES), csv.DictReader(fh), strict=False)]
    tasks = [cookbook_task(i, row["Overview"]) for i, row in enumerate(rows)]
    batch_file = client.files.create(
        file=("batch_tasks_movies.jsonl", to_jsonl(tasks)), purpose="batch"
    )
    batch_job = client.batches.create(
        input_file_id=batch_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for_batch(client, server, batch_job.id, timeout=600, poll=0.5)
    assert done["model"] == "gpt-4o-mini"
    assert done["request_counts"] == {"total": MOVIES, "completed": MOVIES, "failed": 0}
    results = [
        json.loads(x) for x in client.files.content(done["output_file_id"]).text.splitlines()
    ]
    assert [r["custom_id"] for r in results] == [t["custom_id"] for t in tasks]
    for result in results:
        body = result["response"]["body"]
        assert body["model"] == CHAT_MODEL  # the model that answered, not the alias
        choice = body["choices"][0]
        if choice["finish_reason"] == "stop":
            assert isinstance(json.loads(choice["message"]["content"]), dict)


def test_embeddings_under_the_cookbook_name(client: OpenAI) -> None:
    answer = client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert answer.model == EMBEDDING_MODEL
    assert [len(d.embedding) for d in answer.data] == [384, 384]
    listed = {m.id for m in client.models.list()}
    assert {"gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "text-embedding-3-large"} <= listed


def test_image_parts_are_a_400_line_each(server: BatchdServer, client: OpenAI) -> None:
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    tasks = [
        {
            "custom_id": f"img-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-4o",
                "max_tokens": 8,
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Caption"}, image]}
                ],
            },
        }
        for i in range(2)
    ]
    uploaded = client.files.create(file=("img.jsonl", to_jsonl(tasks)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for_batch(client, server, batch.id, timeout=120)
    assert done["request_counts"]["failed"] == 2
    assert done["output_file_id"] is None
    for line in client.files.content(done["error_file_id"]).text.splitlines():
        response = json.loads(line)["response"]
        assert response["status_code"] == 400
        assert "image" in response["body"]["error"]["message"]


def test_responses_on_the_embedded_model(server: BatchdServer, client: OpenAI) -> None:
    answer = client.responses.create(model="gpt-4o-mini", input="Say hello.", max_output_tokens=16)
    assert answer.model == CHAT_MODEL
    assert answer.output_text
    shaped = client.responses.create(
        model="gpt-4o-mini",
        input="A JSON object with a key 'greeting'.",
        text={"format": {"type": "json_object"}},
        max_output_tokens=40,
    )
    if shaped.status == "completed":
        assert isinstance(json.loads(shaped.output_text), dict)
    tasks = [
        {
            "custom_id": f"r{i}",
            "method": "POST",
            "url": "/v1/responses",
            "body": {
                "model": "gpt-4o-mini",
                "input": f"Count to {i + 2}.",
                "max_output_tokens": 12,
            },
        }
        for i in range(2)
    ]
    uploaded = client.files.create(file=("resp.jsonl", to_jsonl(tasks)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
    )
    done = wait_for_batch(client, server, batch.id, timeout=120)
    lines = [json.loads(x) for x in client.files.content(done["output_file_id"]).text.splitlines()]
    assert [x["response"]["body"]["object"] for x in lines] == ["response", "response"]


def test_anthropic_s_sdk_on_the_embedded_model(server: BatchdServer) -> None:
    """``client.messages.create`` under an Anthropic model name, translated to the embedded chat
    model (which answers whole: a streamed request is a clear 400)."""
    with anthropic.Anthropic(base_url=server.base_url, api_key="-", max_retries=0) as sdk:
        message = sdk.messages.create(
            model="claude-haiku-4-5",
            max_tokens=16,
            system="You answer in one short sentence.",
            messages=[{"role": "user", "content": "Say hello."}],
        )
        assert message.model == CHAT_MODEL
        assert message.content[0].type == "text"
        assert message.content[0].text.strip()
        assert message.stop_reason in ("end_turn", "max_tokens")
        assert 0 < message.usage.output_tokens <= 16
        with pytest.raises(anthropic.BadRequestError, match="cannot stream"):
            sdk.messages.create(
                model="claude-haiku-4-5",
                max_tokens=16,
                messages=[{"role": "user", "content": "Say hello."}],
                stream=True,
            )


def test_a_message_batch_on_the_embedded_model(server: BatchdServer) -> None:
    """``client.messages.batches`` under an Anthropic model name, run on the embedded chat
    model: create, poll until ended, read the results."""
    with anthropic.Anthropic(base_url=server.base_url, api_key="-", max_retries=0) as sdk:
        requests = [
            {
                "custom_id": f"hello-{i}",
                "params": {
                    "model": "claude-haiku-4-5",
                    "max_tokens": 12,
                    "messages": [{"role": "user", "content": f"Say hello to {name}."}],
                },
            }
            for i, name in enumerate(["Ada", "Grace"])
        ]
        batch = sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        deadline = time.monotonic() + 120
        while batch.processing_status != "ended":
            assert time.monotonic() < deadline, batch
            time.sleep(0.2)
            batch = sdk.messages.batches.retrieve(batch.id)
        assert batch.request_counts.succeeded == 2, batch.request_counts
        results = {line.custom_id: line.result for line in sdk.messages.batches.results(batch.id)}
    assert set(results) == {"hello-0", "hello-1"}
    for result in results.values():
        assert result.type == "succeeded"
        assert result.message.model == CHAT_MODEL
        assert result.message.content[0].text.strip()  # type: ignore[union-attr]
        assert 0 < result.message.usage.output_tokens <= 12
