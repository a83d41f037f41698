"""A batch as Anthropic's ``MessageBatch`` (``batchd.service.message_batches``): the processing
status of every batch status, request counts that always sum to the requests (live while it
runs; canceled and expired once ended; every request errored for a batch refused whole), RFC
3339 times, and the results kept 29 days: checked against the ``anthropic`` SDK's own model."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from anthropic.types.messages import MessageBatch

from batchd.core.lifecycle import BatchStatus
from batchd.service.message_batches import ARCHIVE_SECONDS, message_batch_object
from tests.records import batch_record

CREATED = 1_764_000_000
BASE = "http://batchd.example:8080/"


def shaped(status: BatchStatus, now: int = CREATED + 60, **fields: Any) -> MessageBatch:
    record = batch_record(
        1,
        id="msgbatch_abc",
        status=status,
        created_at=CREATED,
        expires_at=CREATED + 86_400,
        dialect="anthropic",
        **fields,
    )
    return MessageBatch.model_validate(message_batch_object(record, BASE, now=now))


def counts(batch: MessageBatch) -> tuple[int, int, int, int, int]:
    c = batch.request_counts
    return c.processing, c.succeeded, c.errored, c.canceled, c.expired


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("validating", "in_progress"),
        ("in_progress", "in_progress"),
        ("finalizing", "in_progress"),
        ("cancelling", "canceling"),
        ("completed", "ended"),
        ("failed", "ended"),
        ("expired", "ended"),
        ("cancelled", "ended"),
    ],
)
def test_every_status_has_its_processing_status(status: BatchStatus, expected: str) -> None:
    assert shaped(status, total=4).processing_status == expected


def test_counts_are_live_while_running_and_sum_to_the_total() -> None:
    running = shaped("in_progress", total=10, completed=3, failed=2)
    assert counts(running) == (5, 3, 2, 0, 0)
    assert running.results_url is None
    assert running.ended_at is None
    validating = shaped("validating", total=10)
    assert counts(validating) == (10, 0, 0, 0, 0)


def test_a_cancelled_batch_counts_its_requests_that_never_ran_as_canceled() -> None:
    ended = shaped(
        "cancelled",
        total=10,
        completed=3,
        failed=7,
        unexecuted=5,
        cancelling_at=CREATED + 30,
        cancelled_at=CREATED + 40,
    )
    assert counts(ended) == (0, 3, 2, 5, 0)
    assert ended.cancel_initiated_at == datetime.fromtimestamp(CREATED + 30, UTC)
    assert ended.ended_at == datetime.fromtimestamp(CREATED + 40, UTC)


def test_an_expired_batch_counts_them_as_expired() -> None:
    ended = shaped("expired", total=6, completed=1, failed=5, unexecuted=4, expired_at=CREATED + 9)
    assert counts(ended) == (0, 1, 1, 0, 4)
    assert ended.ended_at == datetime.fromtimestamp(CREATED + 9, UTC)


def test_a_batch_refused_whole_has_every_request_errored() -> None:
    assert counts(shaped("failed", total=7, failed_at=CREATED + 1)) == (0, 0, 7, 0, 0)


def test_times_and_the_results_url_until_archived() -> None:
    ended = shaped("completed", total=2, completed=2, completed_at=CREATED + 5)
    assert ended.created_at == datetime.fromtimestamp(CREATED, UTC)
    assert ended.expires_at == datetime.fromtimestamp(CREATED + 86_400, UTC)
    assert (
        ended.results_url == "http://batchd.example:8080/v1/messages/batches/msgbatch_abc/results"
    )
    assert ended.archived_at is None
    raw = message_batch_object(
        batch_record(1, status="completed", created_at=CREATED), BASE, now=CREATED
    )
    assert raw["created_at"].endswith("Z")  # RFC 3339 in UTC
    archived = shaped("completed", now=CREATED + ARCHIVE_SECONDS, total=2, completed=2)
    assert archived.archived_at == datetime.fromtimestamp(CREATED + ARCHIVE_SECONDS, UTC)
    assert archived.results_url is None
    assert ARCHIVE_SECONDS == 29 * 24 * 3600
