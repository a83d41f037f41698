"""A webhook receiver for the tests, in its own process (``python -m tests.webhook_receiver``).

Every ``POST /hook/<name>`` is verified with the reference implementation of Standard Webhooks
(``standardwebhooks.Webhook(secret).verify(body, headers)``, the secret of ``<name>``) and
recorded at arrival: its ``webhook-id``, timestamp, body, headers, whether it verified, and what
it was answered. Per name (``POST /_control``): ``fail_first`` (answer 500 to the first N
requests), ``hold_first`` (hold the first request open that many seconds before answering),
``redirect`` (answer 307 to that URL). ``GET /_received`` returns the records.

:class:`WebhookReceiver` runs it for a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
_LISTENING = re.compile(r"^LISTENING (http://\S+)$", re.MULTILINE)
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

__all__ = ["WebhookReceiver"]


def _app() -> Any:
    from aiohttp import web
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    config: dict[str, dict[str, Any]] = {}
    counts: dict[str, int] = {}
    received: list[dict[str, Any]] = []

    async def hook(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        conf = config.get(name, {})
        body = await request.read()
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            Webhook(conf["secret"]).verify(body, headers)
            verified = True
        except (KeyError, WebhookVerificationError):
            verified = False
        counts[name] = n = counts.get(name, 0) + 1
        if not verified:
            status = 400
        elif conf.get("redirect"):
            status = 307
        elif n <= int(conf.get("fail_first", 0)):
            status = 500
        else:
            status = 200
        record = {
            "name": name,
            "n": n,
            "webhook_id": headers.get("webhook-id"),
            "timestamp": headers.get("webhook-timestamp"),
            "user_agent": headers.get("user-agent"),
            "content_type": headers.get("content-type"),
            "body": json.loads(body) if verified else None,
            "verified": verified,
            "status": status,
            "at": time.time(),
        }
        received.append(record)
        if n == 1 and conf.get("hold_first"):
            await asyncio.sleep(float(conf["hold_first"]))
        if status == 307:
            raise web.HTTPTemporaryRedirect(conf["redirect"])
        return web.Response(status=status, text="ok" if status == 200 else "no")

    async def control(request: web.Request) -> web.Response:
        for name, values in (await request.json()).items():
            config.setdefault(name, {}).update(values)
            counts.pop(name, None)
        return web.json_response(config)

    async def listing(_request: web.Request) -> web.Response:
        return web.json_response(received)

    app = web.Application()
    app.router.add_post("/hook/{name}", hook)
    app.router.add_post("/_control", control)
    app.router.add_get("/_received", listing)
    return app


async def _serve(host: str, port: int) -> None:
    from aiohttp import web

    runner = web.AppRunner(_app())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    assert server is not None
    sockname = server.sockets[0].getsockname()  # type: ignore[attr-defined]
    print(f"LISTENING http://{host}:{sockname[1]}", flush=True)
    while True:
        if os.getppid() == 1:  # the test that started it is gone
            return
        await asyncio.sleep(0.5)


class WebhookReceiver:
    """The receiver in its own process, for a test."""

    def __init__(self, log_dir: Path, host: str = "127.0.0.1") -> None:
        self.host = host
        self.log_path = log_dir / f"receiver-{id(self):x}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self, timeout: float = 20.0) -> WebhookReceiver:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        cmd = [sys.executable, "-m", "tests.webhook_receiver", "--host", self.host]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = _LISTENING.search(self.log_path.read_text())
            if found:
                self.url = found.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"the webhook receiver did not start:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.stop()

    def hook(self, name: str) -> str:
        return f"{self.url}/hook/{name}"

    def configure(self, name: str, **values: Any) -> None:
        data = json.dumps({name: values}).encode()
        request = urllib.request.Request(
            f"{self.url}/_control", data, {"content-type": "application/json"}
        )
        with _OPENER.open(request, timeout=5) as resp:
            resp.read()

    def received(self, name: str | None = None) -> list[dict[str, Any]]:
        with _OPENER.open(f"{self.url}/_received", timeout=5) as resp:
            records: list[dict[str, Any]] = json.loads(resp.read())
        return [r for r in records if name is None or r["name"] == name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(_serve(args.host, args.port))


if __name__ == "__main__":
    main()
