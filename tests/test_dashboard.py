"""The dashboard over HTTP, in process (the app and its engine on the fake upstream): login and
its cookie, CSRF refusals, project isolation, the admin key, downloads, the pages' content, and
that no page or asset names anything outside the server.

The browser tests (a real Chromium against ``batchd serve``) are in
``tests/test_dashboard_browser.py``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from batchd.api import create_app
from batchd.auth import key_digest
from batchd.config import ApiKeySetting, ModelRoute, Settings
from batchd.dashboard.session import COOKIE, csrf_token, key_cookie
from batchd.dashboard.views import model_view
from batchd.providers import build_providers
from batchd.service.monitor import MonitorService, error_code
from batchd.store import ApiKeyRecord
from tests.engine_support import CHAT, MODEL, chat_body, request_line, to_jsonl
from tests.upstream.process import UpstreamProcess

KEY_A = "dashboard-key-of-a-0123456789"
KEY_B = "dashboard-key-of-b-0123456789"
KEY_ADMIN = "dashboard-admin-key-0123456789"
ORIGIN = "http://batchd.test"
STATIC = Path(__file__).resolve().parents[1] / "src" / "batchd" / "dashboard"


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tmp_path_factory.mktemp("dash-upstream"), hang_s=3.0) as up:
        yield up


def settings(data_dir: Path, upstream: UpstreamProcess, **options: Any) -> Settings:
    route = ModelRoute(
        name=MODEL,
        provider="openai",
        base_url=upstream.api_url,
        max_concurrency=2,
        timeout=10.0,
        rpm=6000,
    )
    return Settings(
        data_dir=data_dir,
        models=[route],
        embedded_models=False,
        cancel_grace_seconds=0.2,
        progress_interval_seconds=0.2,
        max_attempts=1,
        **options,
    )


@pytest.fixture(scope="module")
def app(
    tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamProcess
) -> Iterator[TestClient]:
    keys = [
        ApiKeySetting(key=KEY_A, project="a"),
        ApiKeySetting(key=KEY_B, project="b"),
        ApiKeySetting(key=KEY_ADMIN, project="ops", admin=True),
    ]
    data = tmp_path_factory.mktemp("dash") / "data"
    with TestClient(create_app(settings(data, upstream, api_keys=keys)), base_url=ORIGIN) as c:
        yield c


def api(client: TestClient, key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def submit(client: TestClient, key: str, texts: list[str]) -> str:
    lines = [request_line(f"r{i}", chat_body(text)) for i, text in enumerate(texts)]
    return submit_file(client, key, to_jsonl(lines))


def submit_file(client: TestClient, key: str, content: bytes, name: str = "in.jsonl") -> str:
    """Upload ``content`` as a batch file and create a batch on it; the batch id."""
    upload = client.post(
        "/v1/files",
        headers=api(client, key),
        files={"file": (name, content)},
        data={"purpose": "batch"},
    )
    assert upload.status_code == 200, upload.text
    created = client.post(
        "/v1/batches",
        headers=api(client, key),
        json={"input_file_id": upload.json()["id"], "endpoint": CHAT, "completion_window": "24h"},
    )
    assert created.status_code == 200, created.text
    return str(created.json()["id"])


def batch(client: TestClient, key: str, batch_id: str) -> dict[str, Any]:
    response = client.get(f"/v1/batches/{batch_id}", headers=api(client, key))
    assert response.status_code == 200, response.text
    return dict(response.json())


def wait_status(
    client: TestClient, key: str, batch_id: str, statuses: set[str], timeout: float = 30
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        found = batch(client, key, batch_id)
        if found["status"] in statuses:
            return found
        assert time.monotonic() < deadline, f"batch {batch_id} stayed {found['status']}"
        time.sleep(0.05)


def csrf(key: str) -> str:
    return csrf_token(key_cookie(key))


def use(client: TestClient, key: str | None) -> None:
    """Send the session cookie of ``key`` (none for ``None``) with the next requests."""
    client.cookies.clear()
    if key is not None:
        client.cookies.set(COOKIE, key_cookie(key))


def get(client: TestClient, path: str, key: str | None) -> httpx.Response:
    use(client, key)
    return client.get(path, follow_redirects=False)


def post(
    client: TestClient,
    path: str,
    key: str | None,
    form: dict[str, str],
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    use(client, key)
    return client.post(
        path,
        data=form,
        headers=headers,
        follow_redirects=False,
    )


@pytest.fixture(scope="module")
def objects(app: TestClient) -> dict[str, str]:
    """A finished batch of project a with two failing lines, one of b, one of a that fails
    validation."""
    texts = [f"dashboard {i}" for i in range(6)] + ["FAULT:400 one", "FAULT:400 two"]
    a = submit(app, KEY_A, texts)
    b = submit(app, KEY_B, ["b only"])
    invalid_lines = b'{"custom_id": "x", "method": "POST"}\nnot json\n'
    invalid = submit_file(app, KEY_A, invalid_lines, "bad.jsonl")
    done_a = wait_status(app, KEY_A, a, {"completed"})
    done_b = wait_status(app, KEY_B, b, {"completed"})
    wait_status(app, KEY_A, invalid, {"failed"})
    return {
        "a": a,
        "b": b,
        "invalid": invalid,
        "a_output": done_a["output_file_id"],
        "a_errors": done_a["error_file_id"],
        "b_output": done_b["output_file_id"],
    }


# -- login and the session cookie ----------------------------------------------------------------


def test_without_a_session_pages_redirect_to_login_and_json_is_401(app: TestClient) -> None:
    for path in ("/dashboard", "/dashboard/files", "/dashboard/models", "/dashboard/batches/x"):
        response = get(app, path, None)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/dashboard/login"
    response = get(app, "/dashboard/api/batches", None)
    assert response.status_code == 401
    assert "Log in" in response.json()["error"]["message"]
    root = get(app, "/", None)  # the server's root leads a browser to the dashboard
    assert root.status_code == 307
    assert root.headers["location"] == "/dashboard"
    login = get(app, "/dashboard/login", None)
    assert login.status_code == 200
    assert 'name="key"' in login.text
    assert 'type="password"' in login.text


def test_a_wrong_key_is_refused_and_sets_no_cookie(app: TestClient) -> None:
    response = post(app, "/dashboard/login", None, {"key": "not-a-key-of-this-server"})
    assert response.status_code == 401
    assert "This key is not valid" in response.text
    assert "set-cookie" not in response.headers
    assert get(app, "/dashboard", "not-a-key-of-this-server").status_code == 303


def test_login_sets_an_httponly_strict_cookie_on_the_dashboard_path(app: TestClient) -> None:
    response = post(app, "/dashboard/login", None, {"key": KEY_A})
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard"
    cookie = response.headers["set-cookie"]
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert flags[0] == f"{COOKIE}={key_cookie(KEY_A)}".lower()
    assert "httponly" in flags
    assert "samesite=strict" in flags
    assert "path=/dashboard" in flags
    assert "secure" not in flags  # plain http
    page = get(app, "/dashboard", KEY_A)
    assert page.status_code == 200
    assert "project <b>a</b>" in page.text


def test_the_cookie_is_secure_over_https(app: TestClient) -> None:
    response = app.post(
        "https://batchd.test/dashboard/login",
        data={"key": KEY_A},
        headers={"origin": "https://batchd.test"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert "secure" in [part.strip().lower() for part in response.headers["set-cookie"].split(";")]


def test_login_from_another_site_is_refused(app: TestClient) -> None:
    response = post(
        app, "/dashboard/login", None, {"key": KEY_A}, headers={"sec-fetch-site": "cross-site"}
    )
    assert response.status_code == 403
    assert "another site" in response.text
    assert "set-cookie" not in response.headers


def test_logout_needs_the_token_and_clears_the_cookie(app: TestClient) -> None:
    refused = post(app, "/dashboard/logout", KEY_A, {})
    assert refused.status_code == 403
    response = post(app, "/dashboard/logout", KEY_A, {"csrf": csrf(KEY_A)})
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard/login"
    cookie = response.headers["set-cookie"].lower()
    assert cookie.startswith(f'{COOKIE}=""') or cookie.startswith(f"{COOKIE}=;")
    assert "max-age=0" in cookie
    assert "path=/dashboard" in cookie


# -- CSRF -----------------------------------------------------------------------------------------


def test_cancel_without_or_with_a_wrong_token_is_403(
    app: TestClient, objects: dict[str, str]
) -> None:
    path = f"/dashboard/batches/{objects['a']}/cancel"
    for form in ({}, {"csrf": ""}, {"csrf": "0" * 64}, {"csrf": csrf(KEY_B)}):
        response = post(app, path, KEY_A, form)
        assert response.status_code == 403, form
        assert "CSRF token is missing or wrong" in response.text
    # The right token, but the browser says the form came from elsewhere.
    for headers in ({"sec-fetch-site": "cross-site"}, {"origin": "http://evil.test"}):
        response = post(app, path, KEY_A, {"csrf": csrf(KEY_A)}, headers=headers)
        assert response.status_code == 403, headers
        assert "Refused" in response.text


def test_cancel_with_the_token_cancels_through_the_service(app: TestClient) -> None:
    running = submit(app, KEY_A, ["FAULT:hang a", "FAULT:hang b", "FAULT:hang c", "d"])
    wait_status(app, KEY_A, running, {"in_progress"})
    path = f"/dashboard/batches/{running}/cancel"
    response = post(
        app,
        path,
        KEY_A,
        {"csrf": csrf(KEY_A)},
        headers={"origin": ORIGIN, "sec-fetch-site": "same-origin"},
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"] == f"/dashboard/batches/{running}"
    assert batch(app, KEY_A, running)["status"] in ("cancelling", "cancelled")
    wait_status(app, KEY_A, running, {"cancelled"})
    page = get(app, f"/dashboard/batches/{running}", KEY_A)
    assert "batch_cancelled" in page.text  # the error codes of its error file
    # Cancelling it again: the service answers with the batch as it is.
    again = post(app, path, KEY_A, {"csrf": csrf(KEY_A)})
    assert again.status_code == 303


def test_errors_by_code_of_a_running_batch_come_from_its_partial_results(
    app: TestClient,
) -> None:
    running = submit(app, KEY_A, ["FAULT:400 a", "FAULT:400 b", "FAULT:hang c", "FAULT:hang d"])
    deadline = time.monotonic() + 10
    while True:
        data = get(app, f"/dashboard/api/batches/{running}/errors", KEY_A).json()
        if data["codes"]:
            break
        assert time.monotonic() < deadline, data
        time.sleep(0.05)
    assert data["status"] == "in_progress"  # the hung requests hold it running
    assert data["source"] == "partial"
    assert data["codes"] == [{"code": "HTTP 400 injected_fault", "count": 2}]
    page = get(app, f"/dashboard/batches/{running}", KEY_A).text
    assert "durable so far" in page
    assert f'data-live="/dashboard/api/batches/{running}/errors"' in page
    cancel = post(app, f"/dashboard/batches/{running}/cancel", KEY_A, {"csrf": csrf(KEY_A)})
    assert cancel.status_code == 303
    wait_status(app, KEY_A, running, {"cancelled"})
    ended = get(app, f"/dashboard/api/batches/{running}/errors", KEY_A).json()
    assert ended["source"] == "file"
    assert {row["code"]: row["count"] for row in ended["codes"]} == {
        "HTTP 400 injected_fault": 2,
        "batch_cancelled": 2,
    }


def test_cancelling_a_finished_batch_is_a_409_page(
    app: TestClient, objects: dict[str, str]
) -> None:
    response = post(app, f"/dashboard/batches/{objects['a']}/cancel", KEY_A, {"csrf": csrf(KEY_A)})
    assert response.status_code == 409
    assert "Cannot cancel a batch with status &#39;completed&#39;" in response.text


# -- projects -------------------------------------------------------------------------------------


def test_a_bad_query_is_a_400_page(app: TestClient) -> None:
    response = get(app, "/dashboard?after=" + "x" * 100, KEY_A)
    assert response.status_code == 400
    assert "This request is not valid (query.after)" in response.text
    response = get(app, "/dashboard?after=batch_unknown", KEY_A)
    assert response.status_code == 400
    assert "no batch with id" in response.text


def test_another_projects_objects_are_404(app: TestClient, objects: dict[str, str]) -> None:
    listing = get(app, "/dashboard", KEY_A)
    assert objects["a"] in listing.text
    assert objects["b"] not in listing.text
    assert objects["b"] not in get(app, "/dashboard/api/batches", KEY_A).text
    assert objects["b_output"] not in get(app, "/dashboard/files", KEY_A).text
    for path in (
        f"/dashboard/batches/{objects['b']}",
        f"/dashboard/api/batches/{objects['b']}",
        f"/dashboard/files/{objects['b_output']}/content",
    ):
        assert get(app, path, KEY_A).status_code == 404, path
    cancel = post(app, f"/dashboard/batches/{objects['b']}/cancel", KEY_A, {"csrf": csrf(KEY_A)})
    assert cancel.status_code == 404
    assert "No batch found" in cancel.text


def test_an_admin_key_sees_every_project(app: TestClient, objects: dict[str, str]) -> None:
    listing = get(app, "/dashboard", KEY_ADMIN)
    assert objects["a"] in listing.text
    assert objects["b"] in listing.text
    assert "admin · all projects" in listing.text
    assert get(app, f"/dashboard/batches/{objects['b']}", KEY_ADMIN).status_code == 200
    files = get(app, "/dashboard/files", KEY_ADMIN).text
    assert objects["a_output"] in files
    assert objects["b_output"] in files
    content = get(app, f"/dashboard/files/{objects['b_output']}/content", KEY_ADMIN)
    assert content.status_code == 200
    assert content.content.count(b"\n") == 1
    # The API answers the admin key as a key of its own project.
    listed = app.get("/v1/batches", headers=api(app, KEY_ADMIN)).json()["data"]
    assert listed == []


def test_keys_of_the_store_are_admin_only_when_made_so(
    app: TestClient, objects: dict[str, str]
) -> None:
    store = app.app.state.services.store
    for key, admin in (("store-made-key-0123456789", False), ("store-admin-key-012345678", True)):
        record = ApiKeyRecord(
            sha256=key_digest(key), project="a", created_at=int(time.time()), admin=admin
        )
        app.portal.call(store.create_api_key, record)
        app.cookies.clear()
        assert post(app, "/dashboard/login", None, {"key": key}).status_code == 303
        listing = get(app, "/dashboard", key)
        assert ("all projects" in listing.text) is admin
        assert (objects["b"] in listing.text) is admin  # another project's batch
        assert objects["a"] in listing.text


def test_models_without_an_engine_show_limits_only(tmp_path: Path) -> None:
    route = ModelRoute(
        name=MODEL, provider="openai", base_url="http://127.0.0.1:9/v1", max_concurrency=3, tpm=900
    )
    table = build_providers(Settings(data_dir=tmp_path, models=[route], embedded_models=False))
    none: Any = None
    (state,) = MonitorService(none, none, none, table, None).models()
    assert (state.name, state.max_concurrency, state.rpm, state.tpm) == (MODEL, 3, None, 900)
    assert state.in_flight is None
    assert state.share is None


# -- the pages ------------------------------------------------------------------------------------


def test_the_batch_page_shows_its_timeline_errors_and_downloads(
    app: TestClient, objects: dict[str, str]
) -> None:
    page = get(app, f"/dashboard/batches/{objects['a']}", KEY_A).text
    assert re.search(r"<code>HTTP 400 injected_fault</code></td><td class=\"num\">2</td>", page)
    for status in ("validating", "in_progress", "finalizing", "completed"):
        assert f's-{status}">{status}<' in page, status
    assert f"/dashboard/files/{objects['a_output']}/content" in page
    assert f"/dashboard/files/{objects['a_errors']}/content" in page
    assert 'id="cancel"' not in page  # a completed batch
    output = get(app, f"/dashboard/files/{objects['a_output']}/content", KEY_A)
    assert output.status_code == 200
    assert "attachment" in output.headers["content-disposition"]
    from_api = app.get(f"/v1/files/{objects['a_output']}/content", headers=api(app, KEY_A))
    assert output.content == from_api.content
    assert output.content.count(b"\n") == 6


def test_the_batch_page_shows_validation_errors(app: TestClient, objects: dict[str, str]) -> None:
    page = get(app, f"/dashboard/batches/{objects['invalid']}", KEY_A).text
    assert 'id="validation-errors"' in page
    found = batch(app, KEY_A, objects["invalid"])["errors"]["data"]
    for error in found:
        assert error["code"] in page


def test_the_live_json_has_counts_and_rates(app: TestClient, objects: dict[str, str]) -> None:
    data = get(app, f"/dashboard/api/batches/{objects['a']}", KEY_A).json()
    figures = data["batch"]
    assert (figures["completed"], figures["failed"], figures["total"]) == (6, 2, 8)
    assert figures["status"] == "completed"
    assert figures["terminal"] is True
    assert figures["tokens"] > 0
    assert [event["to"] for event in data["events"]][-1] == "completed"
    listing = get(app, "/dashboard/api/batches", KEY_A).json()
    assert objects["a"] in [row["id"] for row in listing["batches"]]
    assert isinstance(listing["now"], float)


def test_a_message_batch_shows_as_any_batch(app: TestClient) -> None:
    """Anthropic's Message Batches live in the same store: the dashboard lists and shows them;
    once deleted through Anthropic's API they are gone from it."""
    headers = {**api(app, KEY_A), "anthropic-version": "2023-06-01"}
    body = {
        "requests": [
            {
                "custom_id": f"m{i}",
                "params": {
                    "model": MODEL,
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"dashboard message {i}"}],
                },
            }
            for i in range(3)
        ]
    }
    created = app.post("/v1/messages/batches", headers=headers, json=body)
    assert created.status_code == 200, created.text
    batch_id = created.json()["id"]
    assert batch_id.startswith("msgbatch_")
    wait_status(app, KEY_A, batch_id, {"completed"})
    figures = get(app, f"/dashboard/api/batches/{batch_id}", KEY_A).json()["batch"]
    assert (figures["completed"], figures["total"]) == (3, 3)
    page = get(app, f"/dashboard/batches/{batch_id}", KEY_A)
    assert page.status_code == 200
    assert "/v1/messages" in page.text
    listing = get(app, "/dashboard/api/batches", KEY_A).json()
    assert batch_id in [row["id"] for row in listing["batches"]]
    assert app.delete(f"/v1/messages/batches/{batch_id}", headers=headers).status_code == 200
    listing = get(app, "/dashboard/api/batches", KEY_A).json()
    assert batch_id not in [row["id"] for row in listing["batches"]]
    assert get(app, f"/dashboard/batches/{batch_id}", KEY_A).status_code == 404


def test_the_models_page_shows_limits_and_in_flight(
    app: TestClient, upstream: UpstreamProcess
) -> None:
    page = get(app, "/dashboard/models", KEY_A).text
    assert upstream.api_url not in page  # the upstream is for admins
    assert upstream.api_url in get(app, "/dashboard/models", KEY_ADMIN).text
    assert f"<b>{MODEL}</b>" in page
    assert ">6000<" in page
    data = get(app, "/dashboard/api/models", KEY_A).json()
    (model,) = data["models"]
    assert data["engine"] is True
    assert model["name"] == MODEL
    assert model["max_concurrency"] == 2
    assert model["rpm"] == 6000
    assert model["in_flight"] == 0


def test_upstreams_are_shown_without_credentials() -> None:
    route = ModelRoute(name=MODEL, provider="openai", base_url="http://user:secret@10.0.0.1:8/v1")
    table = build_providers(Settings(models=[route], embedded_models=False))
    none: Any = None
    (state,) = MonitorService(none, none, none, table, None).models()
    assert model_view(state, upstream=True)["upstream"] == "http://10.0.0.1:8/v1"
    assert model_view(state, upstream=False)["upstream"] is None


def test_error_codes_of_lines() -> None:
    assert error_code({"error": {"code": "request_timeout"}, "response": None}) == "request_timeout"
    line = {
        "error": None,
        "response": {"status_code": 400, "body": {"error": {"code": "injected_fault"}}},
    }
    assert error_code(line) == "HTTP 400 injected_fault"
    assert error_code({"error": None, "response": {"status_code": 502, "body": "x"}}) == "HTTP 502"


# -- no login without keys ------------------------------------------------------------------------


def test_without_keys_no_login_and_a_csrf_session_cookie(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    with TestClient(create_app(settings(tmp_path / "data", upstream)), base_url=ORIGIN) as c:
        assert c.get("/dashboard/login", follow_redirects=False).headers["location"] == "/dashboard"
        first = c.get("/dashboard")
        assert first.status_code == 200
        assert "Log out" not in first.text
        cookie = first.cookies[COOKIE]
        assert cookie.startswith("a.")
        running = submit(c, "unused", ["FAULT:hang x", "FAULT:hang y", "FAULT:hang z"])
        wait_status(c, "unused", running, {"in_progress"})
        path = f"/dashboard/batches/{running}/cancel"
        assert c.post(path, data={"csrf": "x"}, follow_redirects=False).status_code == 403
        token = csrf_token(cookie)
        page = c.get(f"/dashboard/batches/{running}").text
        assert f'value="{token}"' in page
        done = c.post(path, data={"csrf": token}, follow_redirects=False)
        assert done.status_code == 303
        wait_status(c, "unused", running, {"cancelled"})


# -- nothing from elsewhere ------------------------------------------------------------------------

_URL = re.compile(r"""(?:https?:)?//[a-z0-9.-]+""", re.IGNORECASE)
_ATTRIBUTE_URL = re.compile(r"""(?:src|href|action)\s*=\s*["']?\s*(?:https?:)?//""", re.IGNORECASE)


def test_no_page_or_asset_names_an_external_url(app: TestClient, objects: dict[str, str]) -> None:
    pages = [
        get(app, "/dashboard/login", None),
        get(app, "/dashboard", KEY_A),
        get(app, f"/dashboard/batches/{objects['a']}", KEY_A),
        get(app, f"/dashboard/batches/{objects['invalid']}", KEY_A),
        get(app, "/dashboard/files", KEY_A),
        get(app, "/dashboard/models", KEY_A),
        get(app, "/dashboard/batches/batch_missing", KEY_A),
    ]
    assets: set[str] = set()
    for page in pages:
        assert page.headers["content-type"].startswith("text/html")
        assert not _ATTRIBUTE_URL.search(page.text), page.url
        assert "default-src 'self'" in page.headers["content-security-policy"]
        assets.update(re.findall(r'(?:src|href)="(/dashboard/static/[^"?]+)', page.text))
    assert {a.rsplit("/", 1)[1] for a in assets} == {
        "dashboard.css",
        "dashboard.js",
        "favicon.svg",
    }
    for asset in sorted(assets):
        response = get(app, asset, None)  # assets need no login
        assert response.status_code == 200, asset
        text = response.text.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not _URL.search(text), f"{asset} names {_URL.search(text)}"
    # Every file shipped with the dashboard, whether a page links it or not.
    for path in sorted((STATIC / "static").iterdir()) + sorted((STATIC / "templates").iterdir()):
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert not re.search(r"https?://", text), path
