"""End to end: webhooks from a real ``batchd serve`` to a receiver process that verifies every
signature with the reference implementation (``standardwebhooks``).

- every terminal event (completed, failed, cancelled, expired) arrives, signed, with its type
  and OpenAI's payload; a receiver failing its first 3 attempts gets it on the 4th, with the
  same ``webhook-id``, and the attempts are recorded;
- a server killed (``kill -9``) while a receiver holds a delivery open delivers everything after
  its restart, each event once per batch and endpoint once de-duplicated by ``webhook-id``;
- the SSRF guard at send time (loopback, IPv6 loopback, cloud metadata, redirects) and at
  ``batchd webhooks add``; the ``batchd webhooks`` commands.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchd.webhooks.settings import WebhookSetting
from tests.engine_support import (
    CHAT,
    chat_body,
    model_route,
    request_line,
    sdk,
    submit,
    wait_for_batch,
    wait_until,
)
from tests.pg import fresh_database_sync
from tests.serverproc import BatchdServer, api_and_worker, batchd, write_config
from tests.upstream.process import UpstreamProcess
from tests.webhook_receiver import WebhookReceiver

MISSING_FILE = "file-DoesNotExist0000000000000"
SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # 32 bytes
OTHER_SECRET = "whsec_" + "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="
SETTINGS: dict[str, Any] = {
    "webhook_allow_networks": ["127.0.0.1/32"],
    "webhook_retry_schedule": [0.3, 0.3, 0.3, 0.3],
    "webhook_timeout_seconds": 5,
    "webhook_poll_seconds": 0.2,
    "cancel_grace_seconds": 0.5,
}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tmp_path_factory.mktemp("upstream")) as process:
        yield process


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path) as process:
        yield process


def _toml(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value) + '"'


def config(
    root: Path, upstream: UpstreamProcess, hooks: list[dict[str, Any]], **settings: Any
) -> Path:
    """``root/batchd.toml``: one route on the upstream, :data:`SETTINGS` and ``settings``, and
    a ``[[webhooks]]`` table per entry of ``hooks``."""
    root.mkdir(parents=True, exist_ok=True)
    path = write_config(
        root / "batchd.toml", models=[model_route(upstream)], **{**SETTINGS, **settings}
    )
    tables = [
        "\n[[webhooks]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in hook.items())
        for hook in hooks
    ]
    path.write_text(path.read_text() + "".join(tables))
    return path


def deliveries(data_dir: Path) -> list[dict[str, Any]]:
    """The delivery rows of a server's store (read beside it, as the CLI does)."""
    with sqlite3.connect(data_dir / "batchd.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM webhook_deliveries ORDER BY seq")]


def lines(prefix: str, n: int, text: str = "") -> list[dict[str, Any]]:
    return [request_line(f"{prefix}-{i}", chat_body(f"{prefix} {i} {text}")) for i in range(n)]


def received(receiver: WebhookReceiver, name: str, count: int, timeout: float = 30) -> list[Any]:
    return list(
        wait_until(
            lambda: (r := receiver.received(name)) and len(r) >= count and r,
            timeout,
            f"receiver {name!r}: fewer than {count} webhooks: {receiver.received(name)}",
        )
    )


def test_terminal_events_arrive_signed_and_a_failing_receiver_gets_them(
    tmp_path: Path, upstream: UpstreamProcess, receiver: WebhookReceiver
) -> None:
    receiver.configure("all", secret=SECRET)
    receiver.configure("flaky", secret=OTHER_SECRET, fail_first=3)
    hooks = [
        {"url": receiver.hook("all"), "secret": SECRET},
        {"url": receiver.hook("flaky"), "secret": OTHER_SECRET, "events": ["batch.completed"]},
    ]
    path = config(tmp_path, upstream, hooks, completion_window_seconds=4)
    server = BatchdServer(tmp_path / "data", path).start()
    try:
        with sdk(server) as client:
            ids = {
                "completed": submit(client, lines("ok", 3)),
                "expired": submit(client, lines("slow", 2, "FAULT:hang")),
                "cancelled": submit(client, lines("stop", 2, "FAULT:hang")),
                "failed": client.batches.create(
                    input_file_id=MISSING_FILE, endpoint=CHAT, completion_window="24h"
                ).id,
            }
            client.batches.cancel(ids["cancelled"])
            for status, batch_id in ids.items():
                wait_for_batch(client, server, batch_id, {status}, timeout=30)

        got = received(receiver, "all", 4)
        assert len(got) == 4, got
        by_batch = {r["body"]["data"]["id"]: r for r in got}
        assert set(by_batch) == set(ids.values())
        for status, batch_id in ids.items():
            record = by_batch[batch_id]
            assert record["verified"], record
            assert record["status"] == 200
            body = record["body"]
            assert body["object"] == "event"
            assert body["type"] == f"batch.{status}"
            assert body["id"].startswith("evt_")
            assert isinstance(body["created_at"], int)
            assert set(body) == {"object", "id", "type", "created_at", "data"}
            assert record["webhook_id"].startswith("msg_")
            assert record["content_type"] == "application/json"
            assert record["user_agent"].startswith("batchd/")
            assert abs(int(record["timestamp"]) - time.time()) < 60

        flaky = received(receiver, "flaky", 4)
        assert [r["status"] for r in flaky] == [500, 500, 500, 200]
        assert {r["webhook_id"] for r in flaky} == {flaky[0]["webhook_id"]}
        assert all(r["verified"] for r in flaky)
        assert flaky[0]["body"]["data"]["id"] == ids["completed"]
        gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(flaky)]
        assert all(gap >= 0.25 for gap in gaps), gaps  # the retry schedule's 0.3 s

        def recorded() -> list[dict[str, Any]]:
            rows = deliveries(server.data_dir)
            return rows if {r["status"] for r in rows} == {"delivered"} else []

        rows = wait_until(recorded, 10, "deliveries not all recorded delivered")
        assert len(rows) == 5
        [flaky_row] = [r for r in rows if r["attempts"] > 1]
        assert flaky_row["id"] == flaky[0]["webhook_id"]
        assert (flaky_row["attempts"], flaky_row["last_status"]) == (4, 200)
        assert flaky_row["delivered_at"] is not None
        assert flaky_row["last_error"] is None
        assert SECRET not in server.log()
        assert OTHER_SECRET not in server.log()
        assert '"object":"event"' not in server.log()  # bodies are never logged
    finally:
        server.stop()


def test_a_server_killed_mid_delivery_delivers_each_event_once_after_restart(
    tmp_path: Path, upstream: UpstreamProcess, receiver: WebhookReceiver
) -> None:
    receiver.configure("held", secret=SECRET, hold_first=60)
    receiver.configure("plain", secret=OTHER_SECRET)
    hooks = [
        {"url": receiver.hook("held"), "secret": SECRET},
        {"url": receiver.hook("plain"), "secret": OTHER_SECRET},
    ]
    path = config(tmp_path, upstream, hooks, webhook_timeout_seconds=30)
    server = BatchdServer(tmp_path / "data", path).start()
    try:
        with sdk(server) as client:
            batch_ids = {submit(client, lines(f"k{i}", 2)) for i in range(3)}
            for batch_id in batch_ids:
                wait_for_batch(client, server, batch_id, {"completed"}, timeout=30)
        # The receiver holds its first request open (the others are answered): kill -9 now.
        held = received(receiver, "held", 1)[0]
        server.kill()
        restarted = BatchdServer(tmp_path / "data", path).start()
        try:
            for name in ("held", "plain"):
                wait_until(
                    lambda name=name: (
                        len(
                            {r["webhook_id"] for r in receiver.received(name) if r["status"] == 200}
                        )
                        == 3
                    ),
                    30,
                    f"{name}: not every event delivered after the restart",
                    restarted,
                )
        finally:
            restarted.stop()
    finally:
        server.stop()

    for name in ("held", "plain"):
        got = receiver.received(name)
        assert all(r["verified"] for r in got)
        unique: dict[str, dict[str, Any]] = {}
        for record in got:  # de-duplicated by webhook-id, as a receiver does
            unique.setdefault(record["webhook_id"], record)
        events = sorted(r["body"]["data"]["id"] for r in unique.values())
        assert events == sorted(batch_ids), (name, got)  # each batch's event once
        assert {r["body"]["type"] for r in unique.values()} == {"batch.completed"}
    again = [r for r in receiver.received("held") if r["webhook_id"] == held["webhook_id"]]
    assert len(again) == 2  # sent again after the restart, with the same webhook-id
    assert [r["body"] for r in again] == [held["body"]] * 2


def test_shared_mode_sends_each_event_from_one_process(
    tmp_path: Path, upstream: UpstreamProcess, receiver: WebhookReceiver
) -> None:
    """``serve --no-engine`` and a ``worker`` on one PostgreSQL database both run a deliverer:
    every event is fanned out once and sent by one of them, once."""
    receiver.configure("shared", secret=SECRET)
    with fresh_database_sync() as url:
        hooks = [{"url": receiver.hook("shared"), "secret": SECRET}]
        path = config(tmp_path, upstream, hooks, database_url=url)
        with api_and_worker(tmp_path / "data", path) as (api, worker):  # the same blobs
            with sdk(api) as client:
                batch_ids = {submit(client, lines(f"s{i}", 2)) for i in range(6)}
                for batch_id in batch_ids:
                    wait_for_batch(client, api, batch_id, {"completed"}, timeout=60)
            got = received(receiver, "shared", len(batch_ids))
            time.sleep(1.0)  # a second sender would have sent by now
            got = receiver.received("shared")
            assert sorted(r["body"]["data"]["id"] for r in got) == sorted(batch_ids)
            assert all(r["verified"] and r["status"] == 200 for r in got)
            sent = [log.count(" delivered (endpoint") for log in (api.log(), worker.log())]
            assert sum(sent) == len(batch_ids), sent


def test_the_guard_refuses_at_send_time(
    tmp_path: Path, upstream: UpstreamProcess, receiver: WebhookReceiver
) -> None:
    port = receiver.url.rsplit(":", 1)[1]
    receiver.configure("redir", secret=SECRET, redirect=receiver.hook("target"))
    receiver.configure("target", secret=SECRET)
    receiver.configure("ok", secret=SECRET)
    targets = {
        "metadata": "http://169.254.169.254/latest/meta-data/",
        "v6-loopback": f"http://[::1]:{port}/hook/v6",
        "loopback": f"http://127.0.0.2:{port}/hook/lo",
        "private": "http://10.255.255.1/hook",
        "redirect": receiver.hook("redir"),
        "ok": receiver.hook("ok"),
    }
    hooks = [{"url": url, "secret": SECRET} for url in targets.values()]
    path = config(tmp_path, upstream, hooks, webhook_retry_schedule=[0.2])
    server = BatchdServer(tmp_path / "data", path).start()
    try:
        with sdk(server) as client:
            batch_id = submit(client, lines("g", 1))
            wait_for_batch(client, server, batch_id, {"completed"}, timeout=30)
        received(receiver, "ok", 1)

        def settled() -> list[dict[str, Any]]:
            rows = deliveries(server.data_dir)
            done = len(rows) == len(targets) and all(r["status"] != "pending" for r in rows)
            return rows if done else []

        rows = wait_until(settled, 15, "deliveries still pending", server)
    finally:
        server.stop()
    by_endpoint = {row["endpoint_id"]: row for row in rows}
    by_url = {
        url: by_endpoint[WebhookSetting(url=url, secret=SECRET).id] for url in targets.values()
    }
    errors = {name: by_url[url]["last_error"] for name, url in targets.items()}
    assert by_url[targets["ok"]]["status"] == "delivered"
    assert errors["metadata"].startswith("refused: 169.254.169.254 is a link-local")
    assert errors["v6-loopback"].startswith("refused: ::1 is a loopback address")
    assert errors["loopback"].startswith("refused: 127.0.0.2 is a loopback address")
    assert errors["private"].startswith("refused: 10.255.255.1 is a private address")
    assert "a redirect: batchd does not follow redirects" in errors["redirect"]
    for name in ("metadata", "v6-loopback", "loopback", "private", "redirect"):
        row = by_url[targets[name]]
        assert (row["status"], row["attempts"]) == ("failed", 2), (name, row)
    assert by_url[targets["redirect"]]["last_status"] == 307
    assert receiver.received("target") == []  # the redirect was not followed
    assert len(receiver.received("redir")) == 2
    assert {r["name"] for r in receiver.received()} == {"redir", "ok"}


def test_the_webhooks_commands(
    tmp_path: Path, upstream: UpstreamProcess, receiver: WebhookReceiver
) -> None:
    data = tmp_path / "data"
    plain = ["--data-dir", str(data)]
    for url, words in [
        (receiver.hook("cli"), "refused: 127.0.0.1 is a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local (cloud metadata"),
        ("http://[::1]/h", "refused: ::1 is a loopback address"),
        ("ftp://example.com/h", "is not an http:// or https:// URL"),
    ]:
        done = batchd("webhooks", "add", "--project", "default", url, *plain)
        assert done.returncode == 2, done.stderr
        assert words in done.stderr, done.stderr
        assert "webhook_allow_networks" in done.stderr or "ftp" in url
    done = batchd("webhooks", "add", "--project", "bad name!", receiver.hook("x"), *plain)
    assert "not a valid project name" in done.stderr

    path = config(tmp_path, upstream, [{"url": receiver.hook("cfg"), "secret": OTHER_SECRET}])
    opts = [*plain, "--config", str(path)]
    done = batchd("webhooks", "add", "--project", "default", receiver.hook("cli"), *opts)
    assert done.returncode == 0, done.stderr
    endpoint_id, secret = done.stdout.split()
    assert endpoint_id.startswith("whep_")
    assert secret.startswith("whsec_")
    assert "shown only this once" in done.stderr
    receiver.configure("cli", secret=secret)
    receiver.configure("cfg", secret=OTHER_SECRET)

    listed = batchd("webhooks", "list", *opts)
    assert listed.returncode == 0, listed.stderr
    assert endpoint_id in listed.stdout
    assert receiver.hook("cli") in listed.stdout
    assert "whcfg_" in listed.stdout
    assert "config" in listed.stdout
    assert secret not in listed.stdout
    assert OTHER_SECRET not in listed.stdout

    server = BatchdServer(data, path).start()
    try:
        with sdk(server) as client:
            batch_id = submit(client, lines("cli", 1))
            wait_for_batch(client, server, batch_id, {"completed"}, timeout=30)
        [first] = received(receiver, "cli", 1)
        assert first["verified"]
        assert first["body"]["data"]["id"] == batch_id
        received(receiver, "cfg", 1)

        def shown() -> str:
            out = batchd("webhooks", "deliveries", "--batch", batch_id, *opts).stdout
            rows = out.splitlines()[1:]
            return out if sum(" delivered " in row for row in rows) == 2 else ""

        table = wait_until(shown, 10, "the deliveries are not shown delivered")
        assert first["webhook_id"] in table
        assert "HTTP 200" in table

        done = batchd("webhooks", "replay", first["webhook_id"], *opts)
        assert done.returncode == 0, done.stderr
        assert "1 delivery to send again" in done.stderr
        second = received(receiver, "cli", 2)[1]
        assert second["webhook_id"] == first["webhook_id"]
        assert second["verified"]
        assert second["body"] == first["body"]

        done = batchd("webhooks", "replay", "--batch", batch_id, *opts)
        assert "2 deliveries to send again" in done.stderr, done.stderr
        received(receiver, "cli", 3)
        received(receiver, "cfg", 2)

        for args, words in [
            (["replay", "msg_nope"], "no delivery 'msg_nope'"),
            (["replay"], "give a delivery id"),
            (["replay", "--batch", "batch_nope"], "batch batch_nope has no deliveries"),
            (["remove", "whcfg_x"], "no webhook endpoint 'whcfg_x'"),
        ]:
            done = batchd("webhooks", *args, *opts)
            assert done.returncode == 2, (args, done.stderr)
            assert words in done.stderr, (args, done.stderr)
        config_id = next(w for w in listed.stdout.split() if w.startswith("whcfg_"))
        done = batchd("webhooks", "remove", config_id, *opts)
        assert "remove it there" in done.stderr
        done = batchd("webhooks", "remove", endpoint_id, *opts)
        assert done.returncode == 0, done.stderr
        assert endpoint_id not in batchd("webhooks", "list", *opts).stdout
        done = batchd("webhooks", "remove", endpoint_id, *opts)
        assert done.returncode == 2
        assert "no webhook endpoint" in done.stderr
    finally:
        server.stop()
