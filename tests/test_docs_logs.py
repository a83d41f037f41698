"""``/docs`` and ``/redoc`` work offline (every asset served by batchd, none from a CDN); the
access log (a line per request, a client's 404 included, on by default only off loopback);
``--log-format json`` (one JSON object per line, the access fields as keys), and never a key."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from batchd.api import create_app
from batchd.api.access import access_log_enabled
from batchd.config import Settings
from batchd.logs import JsonFormatter, formatter
from tests.engine_support import model_route
from tests.serverproc import BatchdServer, batchd, write_config
from tests.upstream.process import UpstreamProcess

MODEL = {"name": "gpt-4o-mini", "provider": "openai", "base_url": "http://127.0.0.1:9/v1"}
KEY = "sk-test-very-secret-key"
_URL = re.compile(r"""(?:src|href|url|spec-url)\s*[=:]\s*["']([^"']+)["']""")


def _settings(tmp_path: Path, **values: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", embedded_models=False, models=[MODEL], **values)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_nothing_from_elsewhere(tmp_path: Path, page: str) -> None:
    with TestClient(create_app(_settings(tmp_path))) as client:
        answer = client.get(page)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/html")
        html = answer.text
        urls = _URL.findall(html)
        assert len(urls) >= 3, html  # the script, the icon, the document (and the CSS)
        for url in urls:
            assert url.startswith("/"), url
            assert not url.startswith("//"), url
        assert not re.search(r"https?://", html), "an absolute URL in the page"
        types = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "json"}
        for url in urls:
            got = client.get(url)
            assert got.status_code == 200, url
            wanted = next(kind for suffix, kind in types.items() if url.endswith(suffix))
            assert wanted in got.headers["content-type"], (url, got.headers["content-type"])
            assert len(got.content) > 1000, url
        assert any(url.endswith(".js") for url in urls)


def test_the_access_log_is_on_by_default_only_off_loopback() -> None:
    def enabled(**values: Any) -> bool:
        return access_log_enabled(Settings(embedded_models=False, **values))

    assert not enabled()  # 127.0.0.1
    assert not enabled(host="localhost")
    assert not enabled(host="::1")
    assert enabled(host="0.0.0.0")
    assert enabled(host="192.168.1.20")
    assert enabled(host="gpu-box.internal")
    assert enabled(host="127.0.0.1", access_log=True)
    assert not enabled(host="0.0.0.0", access_log=False)


def _access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "batchd.access"]


def test_a_loopback_server_logs_no_access_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with TestClient(create_app(_settings(tmp_path))) as client:
        assert client.get("/v1/batches/batch_nope").status_code == 404
    assert _access_records(caplog) == []


def test_an_access_line_for_a_client_404_in_text(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with TestClient(create_app(_settings(tmp_path, access_log=True))) as client:
        answer = client.get("/v1/batches/batch_nope?after=x")
    assert answer.status_code == 404
    [record] = _access_records(caplog)
    line = formatter("text").format(record)
    request_id = answer.headers["x-request-id"]
    assert '"GET /v1/batches/batch_nope" 404 ' in line
    assert f"request_id={request_id} project=default" in line
    assert re.search(r" 404 \d+\.\dms ", line), line
    assert "after=x" not in line


def test_json_lines_and_no_key_in_the_log_of_a_real_server(tmp_path: Path) -> None:
    """``batchd serve --host 0.0.0.0 --log-format json``: the access log is on (not loopback);
    every line of the log is a JSON object; the access fields are keys; a 404 of a client, a
    401 and a 413 are logged with their project (none for the 401); no key in the log."""
    config = write_config(
        tmp_path / "batchd.toml",
        models=[MODEL],
        api_keys=[{"key": KEY, "project": "alpha"}],
        max_request_body_bytes=1024,
    )
    server = BatchdServer(
        tmp_path / "data", config, args=("--host", "0.0.0.0", "--log-format", "json")
    ).start()
    try:
        with httpx.Client(base_url=server.api_url, timeout=10) as client:
            auth = {"Authorization": f"Bearer {KEY}"}
            missing = client.get("/batches/batch_nope", headers=auth)
            assert missing.status_code == 404
            wrong = client.get("/batches", headers={"Authorization": "Bearer sk-wrong-key-123"})
            assert wrong.status_code == 401
            big = client.post("/batches", headers=auth, content=b"x" * 4096)
            assert big.status_code == 413
            partial = client.get("/batches/batch_nope/partial/output", headers=auth)
            assert partial.status_code == 404
    finally:
        server.stop()
    log = server.log()
    entries = [orjson.loads(line) for line in log.splitlines() if line.strip()]
    for entry in entries:
        assert {"timestamp", "level", "logger", "message"} <= set(entry), entry
    access = {e["request_id"]: e for e in entries if e["logger"] == "batchd.access"}
    seen = access[missing.headers["x-request-id"]]
    assert seen["method"] == "GET"
    assert seen["path"] == "/v1/batches/batch_nope"
    assert (seen["status"], seen["project"]) == (404, "alpha")
    assert isinstance(seen["latency_ms"], float)
    assert seen["client"].startswith("127.0.0.1:")
    assert (
        access[wrong.headers["x-request-id"]]["status"],
        access[wrong.headers["x-request-id"]]["project"],
    ) == (401, None)
    assert access[big.headers["x-request-id"]]["status"] == 413
    assert access[partial.headers["x-request-id"]]["status"] == 404
    assert any("ready" in e["message"] for e in entries)  # batchd's own lines: JSON too
    for secret in (KEY, "sk-wrong-key-123", "Bearer", "uthorization"):
        assert secret not in log


def test_the_json_formatter_keeps_exceptions_and_extra_fields() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord(
            "batchd.x", logging.ERROR, __file__, 1, "failed %s", ("a",), None
        )
        record.exc_info = sys.exc_info()
    record.fields = {"batch": "batch_1", "level": "not this one"}  # type: ignore[attr-defined]
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["message"] == "failed a"
    assert entry["level"] == "ERROR"
    assert entry["batch"] == "batch_1"
    assert "ValueError: boom" in entry["exception"]
    assert entry["timestamp"].endswith("+00:00")


def test_batchd_run_logs_json_to_its_state_directory(tmp_path: Path) -> None:
    """``batchd run --log-format json``: the run's log (STATE_DIR/batchd.log) is JSON lines."""
    with UpstreamProcess(tmp_path) as upstream:
        config = write_config(tmp_path / "batchd.toml", models=[model_route(upstream)])
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        line = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": body}
        (tmp_path / "in.jsonl").write_bytes(orjson.dumps(line) + b"\n")
        state = tmp_path / "state"
        done = batchd(
            "run", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "out.jsonl"),
            "--config", str(config), "--state-dir", str(state), "--keep-state",
            "--log-format", "json",
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    entries = [orjson.loads(x) for x in (state / "batchd.log").read_text().splitlines()]
    assert any(e["logger"].startswith("batchd") for e in entries), entries
    for entry in entries:
        assert {"timestamp", "level", "logger", "message"} <= set(entry), entry
