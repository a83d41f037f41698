"""``batchd serve`` binds its port first: a port in use (or an address that is not this
machine's) is said at once, with exit status 2, before the database is created or migrated and
before any model loads; a server that starts listens on the sockets it bound."""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from pathlib import Path

from tests.serverproc import BatchdServer, batchd, write_config


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return batchd("serve", *args)


def test_a_port_in_use_is_said_before_migrations_run(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = write_config(tmp_path / "batchd.toml")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = serve("--port", str(port), "--data-dir", str(data), "--config", str(config))
    assert out.returncode == 2, out.stderr
    assert (
        f"batchd: port {port} on 127.0.0.1 is already in use (another batchd, or another "
        "program): stop it, or choose another port with --port or BATCHD_PORT"
    ) in out.stderr
    assert "Traceback" not in out.stderr
    # nothing was done in the data directory: no database (no migration ran), not even a lock
    assert not (data / "batchd.sqlite3").exists()
    assert not data.exists() or not any(data.iterdir()), sorted(data.iterdir())


def test_an_address_of_another_machine_is_said_at_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    out = serve("--host", "192.0.2.1", "--port", "8080", "--data-dir", str(data), "--insecure")
    assert out.returncode == 2, out.stderr
    assert "cannot listen on 192.0.2.1: it is not an address of this machine" in out.stderr
    assert "--host" in out.stderr
    assert not (data / "batchd.sqlite3").exists()


def test_the_server_listens_on_the_socket_it_bound(tmp_path: Path) -> None:
    server = BatchdServer(tmp_path / "data", write_config(tmp_path / "batchd.toml")).start()
    try:
        with urllib.request.urlopen(f"{server.base_url}/health", timeout=5) as answer:
            assert answer.status == 200
        # a second server on the same port is refused at once, its data directory untouched
        other = tmp_path / "other"
        out = serve("--port", str(server.port), "--data-dir", str(other))
        assert out.returncode == 2, out.stderr
        assert f"port {server.port} on 127.0.0.1 is already in use" in out.stderr
        assert not (other / "batchd.sqlite3").exists()
    finally:
        server.stop()
    assert f"listening on http://127.0.0.1:{server.port}" in server.log()
