"""The dashboard in a real headless Chromium (Debian's ``/usr/bin/chromium``, driven by
Playwright; no browser is downloaded) against a real ``batchd serve`` with API keys and the fake
upstream, slowed so that a batch runs for a few seconds.

In order: log in with a key; watch a running batch advance (the completed count the page shows
rises over successive polls) and the model's in-flight count; open the errors of a batch with
failing lines (the counts by code, the error file downloaded); cancel another batch from its page
(it ends ``cancelled`` per the API); log out. The browser may reach nothing but the server (any
other request fails the test), and the page logs no error (a Content-Security-Policy violation
would be one). Screenshots are kept in ``test-artifacts/dashboard/``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from openai import OpenAI

from tests.engine_support import (
    chat_body,
    model_route,
    request_line,
    submit,
    wait_for_batch,
    wait_until,
)
from tests.serverproc import BatchdServer, write_config
from tests.upstream.process import UpstreamProcess

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium): apt-get install chromium",
)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is a dev dependency")

KEY = "browser-key-of-project-a-0123456789"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard"
SLOW = 400  # requests of a batch that runs for ~8 s (4 at a time, 80 ms each)
TIMEOUT_MS = 20_000
NO_VALUE = "\u2013"  # what the page shows for a figure it does not have


@dataclass
class Env:
    server: BatchdServer
    client: OpenAI
    page: Any
    """The Playwright page (one browser tab for the whole module)."""
    outside: list[str] = field(default_factory=list)
    """Requests the browser tried to send anywhere but the server."""
    errors: list[str] = field(default_factory=list)
    """Console errors and uncaught exceptions of the pages."""

    def url(self, path: str) -> str:
        return self.server.base_url + path

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def batch(self, batch_id: str) -> dict[str, Any]:
        return self.client.batches.retrieve(batch_id).model_dump()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("dashboard-browser")
    with UpstreamProcess(root, latency_ms=80) as upstream:
        config = write_config(
            root / "batchd.toml",
            models=[model_route(upstream, max_concurrency=4, timeout=10.0)],
            progress_interval_seconds=0.2,
            cancel_grace_seconds=0.2,
            max_attempts=1,
            api_keys=[{"key": KEY, "project": "a"}],
        )
        server = BatchdServer(root / "data", config).start()
        client = OpenAI(base_url=server.api_url, api_key=KEY, max_retries=0, timeout=30)
        try:
            with sync_api.sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
                context = browser.new_context(
                    viewport={"width": 1360, "height": 900}, accept_downloads=True
                )
                page = context.new_page()
                page.set_default_timeout(TIMEOUT_MS)
                found = Env(server, client, page)

                def guard(route: Any) -> None:
                    if route.request.url.startswith(server.base_url + "/"):
                        route.continue_()
                    else:
                        found.outside.append(route.request.url)
                        route.abort()

                context.route("**/*", guard)
                page.on(
                    "console",
                    lambda msg: found.errors.append(msg.text) if msg.type == "error" else None,
                )
                page.on("pageerror", lambda exc: found.errors.append(str(exc)))
                yield found
                context.close()
                browser.close()
        finally:
            server.stop()
    assert not found.outside, f"the dashboard reached outside the server: {found.outside}"


@pytest.fixture
def clean(env: Env) -> Iterator[Env]:
    """Fails a test whose pages logged an error or tried to reach another server."""
    env.errors.clear()
    yield env
    assert not env.outside, env.outside
    assert not env.errors, env.errors


def lines(prefix: str, count: int, failing: int = 0) -> list[dict[str, Any]]:
    return [
        request_line(
            f"{prefix}-{i}", chat_body(f"{prefix} {i}" + (" FAULT:400" if i < failing else ""))
        )
        for i in range(count)
    ]


def shown(page: Any, name: str) -> str:
    return str(page.locator(f'section.live [data-field="{name}"]').inner_text())


def test_login_with_a_key(clean: Env) -> None:
    page = clean.page
    page.goto(clean.url("/dashboard"))
    assert page.url == clean.url("/dashboard/login")  # redirected
    page.fill("#key", "not-the-key-0123456789")
    page.click("button[type=submit]")
    assert "This key is not valid" in page.inner_text("[role=alert]")
    assert clean.errors == [
        "Failed to load resource: the server responded with a status of 401 (Unauthorized)"
    ]
    clean.errors.clear()
    page.fill("#key", KEY)
    clean.shot("01-login")
    page.click("button[type=submit]")
    page.wait_for_url(clean.url("/dashboard"))
    assert "project a" in page.inner_text("header .who")
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "batchd_dashboard"]
    assert cookie["httpOnly"]
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/dashboard"


def test_watch_a_running_batch_advance(clean: Env) -> None:
    page = clean.page
    batch_id = submit(clean.client, lines("watch", SLOW))
    wait_until(
        lambda: clean.batch(batch_id)["status"] == "in_progress", 20, "not running", clean.server
    )
    page.goto(clean.url("/dashboard"))
    row = page.locator(f'tr[data-batch-id="{batch_id}"]')
    row.locator('[data-field="status"]', has_text="in_progress").wait_for()
    page.click(f"text={batch_id}")
    page.wait_for_url(clean.url(f"/dashboard/batches/{batch_id}"))
    # The count the page shows, read at each poll: it rises while the batch runs.
    seen = [int(shown(page, "completed"))]
    deadline = time.monotonic() + 15
    while len(seen) < 4 and time.monotonic() < deadline:
        page.wait_for_function(
            "n => Number(document.querySelector("
            "'section.live [data-field=completed]').textContent) > n",
            arg=seen[-1],
        )
        seen.append(int(shown(page, "completed")))
        if len(seen) == 3:
            assert shown(page, "rps") not in ("", NO_VALUE), "no requests/s while running"
            assert shown(page, "eta") not in ("", NO_VALUE), "no ETA while running"
            clean.shot("02-batch-running")
    assert len(seen) >= 4, f"the completed count did not rise at every poll: {seen}"
    assert seen[-1] < SLOW, seen
    # The models page shows the requests in flight of this engine.
    page.goto(clean.url("/dashboard/models"))
    in_flight = page.locator('tr[data-model="gpt-4o-mini"] [data-field="in_flight"]')
    page.wait_for_function(
        "() => Number(document.querySelector("
        "'tr[data-model=\"gpt-4o-mini\"] [data-field=in_flight]').textContent) > 0"
    )
    assert 0 < int(in_flight.inner_text()) <= 4
    clean.shot("03-models")
    # Back on the batch: the page follows it to its end (it reloads when the status changes).
    page.goto(clean.url(f"/dashboard/batches/{batch_id}"))
    page.locator("#status", has_text="completed").wait_for(timeout=30_000)
    assert shown(page, "completed") == str(SLOW)
    assert page.locator("#output-link").is_visible()
    page.goto(clean.url("/dashboard"))
    clean.shot("04-batches")


def test_open_the_errors_of_a_batch(clean: Env) -> None:
    page = clean.page
    batch_id = submit(clean.client, lines("errs", 12, failing=3))
    wait_for_batch(clean.client, clean.server, batch_id, {"completed"}, timeout=30)
    page.goto(clean.url("/dashboard"))
    page.click(f"text={batch_id}")
    table = page.locator("#errors-by-code table")
    row = table.locator("tr", has_text="HTTP 400 injected_fault")
    assert row.locator("td.num").inner_text() == "3"
    assert shown(page, "failed") == "3"
    assert shown(page, "completed") == "9"
    clean.shot("05-batch-errors")
    with page.expect_download() as download:
        page.click("#errors-link")
    content = Path(download.value.path()).read_bytes()
    assert content.count(b"\n") == 3
    assert b"injected_fault" in content


def test_cancel_another_batch(clean: Env) -> None:
    page = clean.page
    batch_id = submit(clean.client, lines("cancel", SLOW))
    wait_until(
        lambda: clean.batch(batch_id)["status"] == "in_progress", 20, "not running", clean.server
    )
    page.goto(clean.url(f"/dashboard/batches/{batch_id}"))
    page.click("#cancel")
    page.locator("#status", has_text="cancelled").wait_for()
    assert clean.batch(batch_id)["status"] == "cancelled"
    assert page.locator("#cancel").count() == 0
    page.locator("#errors-by-code", has_text="batch_cancelled").wait_for()
    clean.shot("06-batch-cancelled")


def test_log_out(clean: Env) -> None:
    page = clean.page
    page.goto(clean.url("/dashboard/files"))
    assert page.locator("table.files tbody tr").count() >= 4
    clean.shot("07-files")
    page.click("#logout")
    page.wait_for_url(clean.url("/dashboard/login"))
    assert not [c for c in page.context.cookies() if c["name"] == "batchd_dashboard"]
    page.goto(clean.url("/dashboard"))
    assert page.url == clean.url("/dashboard/login")
