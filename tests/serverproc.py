"""Run the real ``batchd serve`` as a subprocess on a free port, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_MODELS",
    "BatchdServer",
    "BatchdWorker",
    "api_and_worker",
    "batchd",
    "clean_env",
    "free_port",
    "models_at",
    "stop_process",
    "write_config",
]

DEFAULT_MODELS: list[dict[str, Any]] = [
    {"name": "gpt-4o-mini", "provider": "openai", "base_url": "http://127.0.0.1:9/v1"},
    {"name": "text-embedding-3-small", "provider": "openai", "base_url": "http://127.0.0.1:9/v1"},
]


def models_at(api_url: str) -> list[dict[str, Any]]:
    """The default test routing table pointed at the upstream at ``api_url``."""
    return [{**model, "base_url": api_url} for model in DEFAULT_MODELS]


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> int | None:
    """Signal ``proc`` and wait for it (SIGKILL after ``timeout``); its exit status."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any ``BATCHD_*`` setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    env.update(extra or {})
    return env


def batchd(
    *args: str,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``batchd ARGS`` to its end in a subprocess (no ``BATCHD_*`` but ``env``)."""
    return subprocess.run(
        [sys.executable, "-m", "batchd", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env(env),
        cwd=cwd,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config(
    path: Path, *, models: list[dict[str, Any]] | None = None, **settings: Any
) -> Path:
    """Write a batchd TOML config with top-level settings and a ``[[models]]`` table."""
    lines = [f"{key} = {_toml_value(value)}" for key, value in settings.items()]
    for model in DEFAULT_MODELS if models is None else models:
        lines.append("\n[[models]]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in model.items())
    path.write_text("\n".join(lines) + "\n")
    return path


class _Process:
    """A batchd process of a test: its log, and how to stop it."""

    proc: subprocess.Popen[bytes] | None
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        return stop_process(self.proc, sig, timeout)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


class BatchdServer(_Process):
    """``batchd serve`` in a subprocess; ``start()`` waits until ``/health`` answers 200."""

    def __init__(
        self,
        data_dir: Path,
        config: Path | None = None,
        *,
        env: dict[str, str] | None = None,
        port: int | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self.port = port or free_port()
        self.env = env or {}
        self.args = args
        """More options of ``batchd serve``, e.g. ``("--no-engine",)``."""
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"batchd-{self.port}.log"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "batchd", "serve", "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir)]
        if self.config is not None:
            cmd += ["--config", str(self.config)]
        return [*cmd, *self.args]

    def start(self, timeout: float = 30.0) -> BatchdServer:
        self.proc = _launch(self.command(), self.log_path, self.env)
        _wait_ready(self, self._healthy, timeout, "batchd")
        return self

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base_url}/health", timeout=1) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False


def _launch(cmd: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with its output appended to ``log_path`` and no ``BATCHD_*`` but ``env``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=clean_env(env))


def _wait_ready(process: _Process, ready: Callable[[], bool], timeout: float, what: str) -> None:
    """Until ``ready()``; a :class:`RuntimeError` with the log when the process exits first or
    ``timeout`` seconds pass (then it is stopped)."""
    proc = process.proc
    assert proc is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{process.log()}")
        if ready():
            return
        time.sleep(0.05)
    process.stop()
    raise RuntimeError(f"{what} did not become ready in {timeout}s:\n{process.log()}")


class BatchdWorker(_Process):
    """``batchd worker`` in a subprocess; ``start()`` waits for its "ready" log line."""

    def __init__(
        self,
        data_dir: Path,
        config: Path,
        *,
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.config = config
        self.env = env or {}
        self.args = args
        """More options of ``batchd worker``, e.g. ``("--metrics-port", "9464")``."""
        self.proc: subprocess.Popen[bytes] | None = None
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = data_dir.parent / f"worker-{free_port()}.log"

    def start(self, timeout: float = 30.0) -> BatchdWorker:
        cmd = [sys.executable, "-m", "batchd", "worker", "--config", str(self.config)]
        cmd += ["--data-dir", str(self.data_dir), *self.args]
        self.proc = _launch(cmd, self.log_path, self.env)
        _wait_ready(self, lambda: " ready" in self.log(), timeout, "batchd worker")
        return self


@contextlib.contextmanager
def api_and_worker(
    data_dir: Path, config: Path, *, worker_args: tuple[str, ...] = ()
) -> Iterator[tuple[BatchdServer, BatchdWorker]]:
    """An API process without an engine (``batchd serve --no-engine``) and one ``batchd worker``
    (``worker_args``) on ``config`` (a shared database) and the same ``data_dir``, started; both
    stopped on the way out."""
    api = BatchdServer(data_dir, config, args=("--no-engine",))
    worker = BatchdWorker(data_dir, config, args=worker_args)
    try:
        api.start()
        worker.start()
        yield api, worker
    finally:
        worker.stop()
        api.stop()
