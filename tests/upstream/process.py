"""Run the fake upstream (``python -m tests.upstream``) as a subprocess, for tests."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.serverproc import stop_process

__all__ = ["UpstreamProcess"]

REPO_ROOT = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"^LISTENING (http://\S+)$", re.MULTILINE)
# Loopback only: never route the control calls through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class UpstreamProcess:
    """The fake upstream in its own process.

    ``config`` keyword arguments are :class:`~tests.upstream.faults.FaultConfig` fields, passed as
    start-up flags (``latency_ms=50`` → ``--latency-ms 50``); ``control()`` changes them later.
    ``start()`` returns once the process printed its ``LISTENING`` line.
    """

    def __init__(
        self,
        log_dir: Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        uvloop: bool = False,
        **config: Any,
    ) -> None:
        self._own_log_dir = log_dir is None
        self.log_dir = Path(log_dir) if log_dir is not None else Path(tempfile.mkdtemp("-upstream"))
        self.host = host
        self.requested_port = port
        self.uvloop = uvloop
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.log_dir / f"upstream-{os.getpid()}-{id(self):x}.log"
        self._base_url: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "tests.upstream", "--host", self.host]
        cmd += ["--port", str(self.requested_port), "--exit-with-parent"]
        if self.uvloop:
            cmd.append("--uvloop")
        for key, value in self.config.items():
            flag = "--" + key.replace("_", "-")
            if isinstance(value, bool):
                cmd.append(flag if value else "--no-" + key.replace("_", "-"))
            elif value is not None:
                cmd += [flag, str(value)]
        return cmd

    def start(self, timeout: float = 20.0) -> UpstreamProcess:
        if self.proc is not None:
            raise RuntimeError("already started")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=REPO_ROOT,
                env=env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.output())
            if match:
                self._base_url = match.group(1)
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"upstream exited with {self.proc.returncode}:\n{self.output()}")
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"upstream did not print LISTENING in {timeout}s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
        """Signal the process and wait for it; the exit status (SIGKILL after ``timeout``)."""
        if stop_process(self.proc, sig, timeout) is None:
            return None
        assert self.proc is not None
        if self._own_log_dir and self.proc.returncode == 0:
            shutil.rmtree(self.log_dir, ignore_errors=True)  # a temporary log nobody asked for
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        """Everything the process wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> UpstreamProcess:
        return self if self.proc is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses -----------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        if self._base_url is None:
            raise RuntimeError("upstream not started")
        return self._base_url

    @property
    def api_url(self) -> str:
        """``<base_url>/v1``: the ``base_url`` for an OpenAI client or a batchd model route."""
        return f"{self.base_url}/v1"

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    # -- control API -----------------------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        """A JSON request to the test-only API; the decoded answer (``HTTPError`` on >= 400)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with _OPENER.open(request, timeout=timeout) as response:
            return json.loads(response.read())

    def stats(self, digests: bool = True) -> dict[str, Any]:
        """``GET /_stats``: total, by_outcome, by_path, in_flight, max_in_flight, disconnected,
        unique_bodies and (unless ``digests=False``) ``digests: {sha256: {attempts, outcomes}}``.
        """
        return dict(self.call("GET", "/_stats" + ("" if digests else "?digests=0")))

    def control(self, **changes: Any) -> dict[str, Any]:
        """``POST /_control``: change fault settings; the whole new configuration."""
        return dict(self.call("POST", "/_control", changes))

    def current_config(self) -> dict[str, Any]:
        return dict(self.call("GET", "/_control"))

    def reset(self, config: bool = True) -> None:
        """``POST /_reset``: clear counters and attempt numbers (and restore start-up settings)."""
        self.call("POST", "/_reset", {"config": config})

    def requests_log(self, since: int = 0) -> list[dict[str, Any]]:
        """``GET /_log``: one entry per request received (after the first ``since``)."""
        return list(self.call("GET", f"/_log?since={since}")["data"])

    def attempts(self, digest: str) -> int:
        """How many times the body with this digest was received."""
        record = self.stats()["digests"].get(digest)
        return 0 if record is None else int(record["attempts"])

    def wait_idle(self, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until no request is in flight; the stats at that point."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats(digests=False)
            if stats["in_flight"] == 0:
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"upstream still has {stats['in_flight']} requests in flight")
            time.sleep(0.02)
