"""Anthropic's Message Batches API end to end: the official ``anthropic`` SDK against a real
``batchd serve`` whose route (an alias ``claude-haiku-4-5`` of an ``openai`` route on the fake
upstream) translates each request to a chat completion: create, poll ``retrieve`` until ended,
iterate ``results`` (succeeded and errored), ``list`` with Anthropic's pagination both ways,
``cancel`` (canceled results and counts), ``delete``, and the validation errors in Anthropic's
own words and SDK classes. Crash resume is in ``tests/test_message_batches_crash.py``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from anthropic.types.messages import MessageBatch
from openai import OpenAI

from batchd.providers.messages import chat_body
from tests.engine_support import MODEL, Served, served, upstream_attempts
from tests.upstream import answers

KEY = "key-of-the-message-batches-tests-0123"
ALIAS = "claude-haiku-4-5"
MAX_REQUESTS = 50


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("message-batches")
    keys = [{"key": KEY, "project": "a"}, {"key": KEY + "-b", "project": "b"}]
    with served(
        root,
        {"aliases": [ALIAS], "max_concurrency": 4},
        {"latency_ms": 1},
        api_keys=keys,
        message_batch_max_requests=MAX_REQUESTS,
        message_batch_max_bytes=64 * 1024,
        progress_interval_seconds=0.1,
    ) as env:
        yield env


@contextlib.contextmanager
def client(env: Served, key: str = KEY) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=env.server.base_url, api_key=key, max_retries=0) as sdk:
        yield sdk


def openai_sdk(env: Served) -> OpenAI:
    """OpenAI's SDK on the same server, with project a's key."""
    return OpenAI(base_url=env.server.api_url, api_key=KEY, max_retries=0)


def params(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": ALIAS,
        "max_tokens": 32,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def upstream_text(request_params: dict[str, Any]) -> str:
    """What the fake upstream answers the chat request that the params translate to."""
    sent = {**chat_body(request_params), "model": MODEL}
    text: str = answers.chat_completion(sent)["choices"][0]["message"]["content"]
    return text


def wait_ended(sdk: anthropic.Anthropic, batch_id: str, timeout: float = 60.0) -> MessageBatch:
    deadline = time.monotonic() + timeout
    while True:
        batch = sdk.messages.batches.retrieve(batch_id)
        if batch.processing_status == "ended":
            return batch
        assert time.monotonic() < deadline, batch
        time.sleep(0.05)


def test_a_batch_runs_and_its_results_come_back(env: Served) -> None:
    requests = [
        {"custom_id": f"q-{i}", "params": params(f"Name a colour, number {i}.")} for i in range(4)
    ]
    # a parameter batchd cannot carry fails its request alone, with a clear errored result
    thinking = params("Think first.", thinking={"type": "enabled", "budget_tokens": 1024})
    requests.append({"custom_id": "q-thinking", "params": thinking})
    with client(env) as sdk:
        created = sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert created.id.startswith("msgbatch_")
        assert created.type == "message_batch"
        assert created.processing_status == "in_progress"
        counts = created.request_counts
        assert counts.processing + counts.succeeded + counts.errored == 5
        assert created.results_url is None
        assert created.expires_at - created.created_at == timedelta(hours=24)
        ended = wait_ended(sdk, created.id)
        assert ended.request_counts.model_dump() == {
            "processing": 0,
            "succeeded": 4,
            "errored": 1,
            "canceled": 0,
            "expired": 0,
        }
        assert ended.ended_at is not None
        assert ended.ended_at >= ended.created_at
        assert ended.archived_at is None
        assert ended.cancel_initiated_at is None
        assert ended.results_url == (
            f"{env.server.base_url}/v1/messages/batches/{created.id}/results"
        )
        results = {r.custom_id: r.result for r in sdk.messages.batches.results(created.id)}
    assert set(results) == {r["custom_id"] for r in requests}
    for request in requests[:4]:
        result = results[request["custom_id"]]
        assert result.type == "succeeded", result
        message = result.message
        assert message.type == "message"
        assert message.model == MODEL
        assert message.content[0].text == upstream_text(request["params"])  # type: ignore[union-attr]
        assert message.usage.input_tokens > 0
        assert message.usage.output_tokens > 0
    errored = results["q-thinking"]
    assert errored.type == "errored", errored
    assert errored.error.error.type == "invalid_request_error"
    assert "thinking" in errored.error.error.message
    # each request was sent once; the refused one never
    sent = [{**chat_body(r["params"]), "model": MODEL} for r in requests[:4]]
    assert upstream_attempts(env.upstream, sent) == [1, 1, 1, 1]


def test_a_message_batch_is_a_batch_of_the_openai_api_too(env: Served) -> None:
    """One store: the Message Batch is an OpenAI batch of /v1/messages lines with the same id
    (an OpenAI batch is not a Message Batch)."""
    with client(env) as sdk:
        created = sdk.messages.batches.create(
            requests=[{"custom_id": "only", "params": params("Hello.")}]  # type: ignore[list-item]
        )
        wait_ended(sdk, created.id)
        openai_view = openai_sdk(env).batches.retrieve(created.id)
        assert openai_view.endpoint == "/v1/messages"
        assert openai_view.status == "completed"
        assert openai_view.request_counts is not None
        assert openai_view.request_counts.completed == 1
        assert created.id in [b.id for b in openai_sdk(env).batches.list(limit=100)]
        other = openai_sdk(env).batches.list(limit=1).data[0]
        if not other.id.startswith("msgbatch_"):
            with pytest.raises(anthropic.NotFoundError):
                sdk.messages.batches.retrieve(other.id)


def test_list_pages_newest_first_both_ways(env: Served) -> None:
    with client(env, KEY + "-b") as sdk:
        ids = [
            sdk.messages.batches.create(
                requests=[{"custom_id": "x", "params": params(f"List me {i}.")}]  # type: ignore[list-item]
            ).id
            for i in range(5)
        ]
        newest_first = ids[::-1]
        assert [b.id for b in sdk.messages.batches.list(limit=2)] == newest_first  # every page
        first = sdk.messages.batches.list(limit=2)
        assert first.has_more is True
        assert (first.first_id, first.last_id) == (newest_first[0], newest_first[1])
        after = sdk.messages.batches.list(limit=2, after_id=newest_first[1])
        assert [b.id for b in after.data] == newest_first[2:4]
        before = sdk.messages.batches.list(limit=2, before_id=newest_first[3])
        assert [b.id for b in before.data] == newest_first[1:3]
        assert before.has_more is True  # newest_first[0] is newer still
        # auto-pagination with before_id walks towards the newest
        walked = [b.id for b in sdk.messages.batches.list(limit=1, before_id=newest_first[4])]
        assert walked == newest_first[3::-1]
        last = sdk.messages.batches.list(limit=3, after_id=newest_first[1])
        assert last.has_more is False
        with pytest.raises(anthropic.BadRequestError, match="after_id"):
            sdk.messages.batches.list(after_id="msgbatch_nothere")
        for batch_id in ids:
            wait_ended(sdk, batch_id)
    with client(env) as other_project:  # project a sees none of project b's batches
        assert not set(ids) & {b.id for b in other_project.messages.batches.list(limit=1000)}


def test_delete_only_once_ended(env: Served) -> None:
    with client(env) as sdk:
        created = sdk.messages.batches.create(
            requests=[{"custom_id": f"d{i}", "params": params(f"Delete {i}.")} for i in range(3)]  # type: ignore[misc]
        )
        input_file = openai_sdk(env).batches.retrieve(created.id).input_file_id
        ended = wait_ended(sdk, created.id)
        output_file = openai_sdk(env).batches.retrieve(created.id).output_file_id
        assert ended.processing_status == "ended"
        deleted = sdk.messages.batches.delete(created.id)
        assert (deleted.id, deleted.type) == (created.id, "message_batch_deleted")
        with pytest.raises(anthropic.NotFoundError):
            sdk.messages.batches.retrieve(created.id)
        with pytest.raises(anthropic.NotFoundError):
            sdk.messages.batches.delete(created.id)
        assert created.id not in [b.id for b in sdk.messages.batches.list(limit=1000)]
        assert created.id not in [b.id for b in openai_sdk(env).batches.list(limit=100)]
        live_files = {f.id for f in openai_sdk(env).files.list()}
        assert input_file not in live_files
        assert output_file not in live_files


def test_cancel_and_delete_while_running(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A slow batch: delete is refused while it runs; cancel moves it to canceling, then it
    ends with the requests that never ran as canceled results and counts."""
    root = tmp_path_factory.mktemp("message-batches-cancel")
    with (
        served(root, {"aliases": [ALIAS], "max_concurrency": 2}, {"latency_ms": 200}) as env,
        client(env, "-") as sdk,
    ):
        requests = [{"custom_id": f"c{i}", "params": params(f"Slow {i}.")} for i in range(30)]
        created = sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while sdk.messages.batches.retrieve(created.id).request_counts.succeeded < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with pytest.raises(anthropic.BadRequestError, match="cancel it first"):
            sdk.messages.batches.delete(created.id)
        canceling = sdk.messages.batches.cancel(created.id)
        assert canceling.processing_status in ("canceling", "ended")
        assert canceling.cancel_initiated_at is not None
        ended = wait_ended(sdk, created.id)
        counts = ended.request_counts
        assert counts.canceled > 0
        assert counts.succeeded >= 2
        assert counts.processing == counts.errored == counts.expired == 0
        assert counts.succeeded + counts.canceled == 30
        kinds: dict[str, int] = {}
        for line in sdk.messages.batches.results(created.id):
            kinds[line.result.type] = kinds.get(line.result.type, 0) + 1
        assert kinds == {"succeeded": counts.succeeded, "canceled": counts.canceled}
        assert sdk.messages.batches.delete(created.id).type == "message_batch_deleted"


def _post(env: Served, body: bytes | dict[str, Any]) -> httpx.Response:
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(
        env.server.base_url + "/v1/messages/batches",
        content=content,
        headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"},
    )


def test_validation_errors_in_anthropic_s_words(env: Served) -> None:
    ok = params("fine")
    no_max_tokens = {k: v for k, v in ok.items() if k != "max_tokens"}
    files_before = {f.id for f in openai_sdk(env).files.list()}
    batches_before = {b.id for b in openai_sdk(env).batches.list(limit=100)}
    with client(env) as sdk:
        create = sdk.messages.batches.create
        with pytest.raises(anthropic.BadRequestError, match=r"requests\.1\.custom_id: Duplicate"):
            create(requests=[{"custom_id": "a", "params": ok}, {"custom_id": "a", "params": ok}])  # type: ignore[list-item]
        with pytest.raises(
            anthropic.BadRequestError, match=r"requests\.1\.params\.max_tokens: Field required"
        ):
            create(
                requests=[
                    {"custom_id": "a", "params": ok},  # type: ignore[list-item]
                    {"custom_id": "b", "params": no_max_tokens},  # type: ignore[list-item]
                ]
            )
        too_many = [{"custom_id": f"n{i}", "params": ok} for i in range(MAX_REQUESTS + 1)]
        with pytest.raises(anthropic.BadRequestError, match=f"at most {MAX_REQUESTS} items"):
            create(requests=too_many)  # type: ignore[arg-type]
        with pytest.raises(anthropic.BadRequestError, match="should match pattern"):
            create(requests=[{"custom_id": "has space", "params": ok}])  # type: ignore[list-item]
        with pytest.raises(anthropic.BadRequestError, match="at least 1 item"):
            create(requests=[])
        with pytest.raises(anthropic.NotFoundError, match="claude-nowhere"):
            create(requests=[{"custom_id": "a", "params": {**ok, "model": "claude-nowhere"}}])  # type: ignore[list-item]
        with pytest.raises(anthropic.BadRequestError, match="one batch per model"):
            create(
                requests=[
                    {"custom_id": "a", "params": ok},  # type: ignore[list-item]
                    {"custom_id": "b", "params": {**ok, "model": MODEL}},  # type: ignore[list-item]
                ]
            )
        big = [{"custom_id": f"b{i}", "params": params("x" * 2000)} for i in range(40)]
        with pytest.raises(anthropic.APIStatusError) as too_large:
            create(requests=big)  # type: ignore[arg-type]
        assert too_large.value.status_code == 413
        assert too_large.value.body["error"]["type"] == "request_too_large"  # type: ignore[index]
    # the bodies the SDK would not send
    bad_json = _post(env, b'{"requests": [{"custom_id": "a", "params": {')
    assert bad_json.status_code == 400, bad_json.text
    assert bad_json.json()["error"]["type"] == "invalid_request_error"
    assert "not valid JSON" in bad_json.json()["error"]["message"]
    extra = _post(env, {"requests": [{"custom_id": "a", "params": ok}], "extra": 1})
    assert extra.status_code == 400
    assert "extra: Extra inputs are not permitted" in extra.json()["error"]["message"]
    # nothing of the refused batches was kept: no batch, no input file
    assert {f.id for f in openai_sdk(env).files.list()} == files_before
    assert {b.id for b in openai_sdk(env).batches.list(limit=100)} == batches_before


def test_results_before_the_end_limits_and_unknown_ids(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Results before the end are a 400; the project's limits apply to Message Batches (one
    active batch here: a second is Anthropic's 429, and leaves no file); unknown ids are
    404s."""
    root = tmp_path_factory.mktemp("message-batches-early")
    limited = "key-of-a-limited-project-0123"
    keys = [{"key": limited, "project": "lim", "limits": {"max_active_batches": 1}}]
    with (
        served(
            root, {"aliases": [ALIAS], "max_concurrency": 1}, {"latency_ms": 300}, api_keys=keys
        ) as env,
        client(env, limited) as sdk,
    ):
        requests = [{"custom_id": f"e{i}", "params": params(f"Early {i}.")} for i in range(4)]
        created = sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        early = httpx.get(
            f"{env.server.base_url}/v1/messages/batches/{created.id}/results",
            headers={"x-api-key": limited, "anthropic-version": "2023-06-01"},
        )
        assert early.status_code == 400, early.text
        assert "processing_status is 'ended'" in early.json()["error"]["message"]
        files = OpenAI(base_url=env.server.api_url, api_key=limited, max_retries=0).files
        files_before = {f.id for f in files.list()}
        with pytest.raises(anthropic.RateLimitError, match="Too many active batches") as refused:
            sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert refused.value.body["error"]["type"] == "rate_limit_error"  # type: ignore[index]
        assert {f.id for f in files.list()} == files_before
        with pytest.raises(anthropic.NotFoundError):
            sdk.messages.batches.retrieve("msgbatch_nothere")
        with pytest.raises(anthropic.NotFoundError):
            sdk.messages.batches.cancel("batch_nothere")
        sdk.messages.batches.cancel(created.id)
        assert wait_ended(sdk, created.id).processing_status == "ended"


def test_a_batch_past_its_window_ends_with_expired_results(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """``expires_at`` is the completion window (here 3 s): the requests not run by then are
    expired results and counts."""
    root = tmp_path_factory.mktemp("message-batches-expire")
    with (
        served(
            root,
            {"aliases": [ALIAS], "max_concurrency": 1},
            {"latency_ms": 400},
            completion_window_seconds=3,
        ) as env,
        client(env, "-") as sdk,
    ):
        requests = [{"custom_id": f"x{i}", "params": params(f"Late {i}.")} for i in range(20)]
        created = sdk.messages.batches.create(requests=requests)  # type: ignore[arg-type]
        assert created.expires_at - created.created_at == timedelta(seconds=3)
        ended = wait_ended(sdk, created.id, timeout=30)
        counts = ended.request_counts
        assert counts.expired > 0
        assert counts.succeeded + counts.expired == 20
        assert counts.canceled == counts.errored == counts.processing == 0
        kinds: dict[str, int] = {}
        for line in sdk.messages.batches.results(created.id):
            kinds[line.result.type] = kinds.get(line.result.type, 0) + 1
        assert kinds == {"succeeded": counts.succeeded, "expired": counts.expired}


def test_an_idempotency_key_makes_a_retried_create_one_batch(env: Served) -> None:
    """With ``Idempotency-Key`` (a batchd extension, as on ``POST /v1/batches``) the create sent
    again gets the first answer, not a second batch; other requests under the key are a 409."""
    requests = [{"custom_id": f"i{i}", "params": params(f"Once {i}.")} for i in range(3)]
    key = {"Idempotency-Key": "create-once-0001"}
    files_before = {f.id for f in openai_sdk(env).files.list()}
    with client(env) as sdk:
        create = sdk.messages.batches.with_raw_response.create
        first = create(requests=requests, extra_headers=key)  # type: ignore[arg-type]
        again = create(requests=requests, extra_headers=key)  # type: ignore[arg-type]
        assert again.parse().id == first.parse().id
        assert again.headers["idempotent-replayed"] == "true"
        assert "idempotent-replayed" not in first.headers
        with pytest.raises(anthropic.ConflictError, match="another request"):
            create(requests=requests[:2], extra_headers=key)  # type: ignore[arg-type]
        listed = [b.id for b in sdk.messages.batches.list(limit=1000)]
        assert listed.count(first.parse().id) == 1
        wait_ended(sdk, first.parse().id)
    # one input file (and one output file): the replays' were not kept
    new_files = [f for f in openai_sdk(env).files.list() if f.id not in files_before]
    assert sorted(f.purpose for f in new_files) == ["batch", "batch_output"]
