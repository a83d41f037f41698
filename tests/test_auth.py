"""API keys and projects, end to end: a real ``batchd serve`` with keys of two projects.

Every route is tried with the other project's key and must answer as if the object did not
exist (404, never 403, never listed); a missing or wrong key is a 401 ``invalid_api_key`` in the
OpenAI envelope; keys made with ``batchd keys create`` while the server runs work, and stop
working once revoked; a non-loopback address without keys is refused unless ``--insecure``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.engine_support import chat_body, model_route, request_line, to_jsonl, wait_for_batch
from tests.serverproc import BatchdServer, free_port, write_config
from tests.upstream.process import UpstreamProcess

KEY_A = "key-of-project-a-0123456789"
KEY_B = "key-of-project-b-9876543210"  # configured by its SHA-256 only
BATCHD = [sys.executable, "-m", "batchd"]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tmp_path_factory.mktemp("upstream"), latency_ms=5) as up:
        yield up


def keyed_config(path: Path, upstream: UpstreamProcess) -> Path:
    config = write_config(path, models=[model_route(upstream)])
    digest = hashlib.sha256(KEY_B.encode()).hexdigest()
    with config.open("a") as fh:
        fh.write(f'\n[[api_keys]]\nkey = "{KEY_A}"\nproject = "a"\n')
        fh.write(f'\n[[api_keys]]\nkey_sha256 = "{digest}"\nproject = "b"\nname = "b-key"\n')
    return config


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, upstream: UpstreamProcess
) -> Iterator[BatchdServer]:
    root = tmp_path_factory.mktemp("auth")
    srv = BatchdServer(root / "data", keyed_config(root / "batchd.toml", upstream)).start()
    yield srv
    srv.stop()


def client(server: BatchdServer, key: str) -> OpenAI:
    return OpenAI(base_url=server.api_url, api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def project_a(server: BatchdServer) -> dict[str, Any]:
    """Project a's objects: an input file, a completed batch and its output file."""
    a = client(server, KEY_A)
    lines = [request_line(f"r{i}", chat_body(f"auth probe {i}")) for i in range(3)]
    upload = a.files.create(file=("in.jsonl", to_jsonl(lines)), purpose="batch")
    batch = a.batches.create(
        input_file_id=upload.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    done = wait_for_batch(a, server, batch.id, {"completed"}, timeout=60)
    return {"file": upload.id, "batch": batch.id, "output": done["output_file_id"]}


def assert_envelope(response: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["code"] == code
    return dict(error)


# -- 401 ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "route",
    [
        ("GET", "/v1/files"),
        ("POST", "/v1/files"),
        ("GET", "/v1/batches"),
        ("POST", "/v1/batches"),
        ("GET", "/v1/batches/batch_0123"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
    ],
)
def test_every_route_needs_a_key(server: BatchdServer, route: tuple[str, str]) -> None:
    method, path = route
    missing = httpx.request(method, server.base_url + path, timeout=10)
    error = assert_envelope(missing, 401, "invalid_api_key")
    assert "Authorization: Bearer" in error["message"]
    wrong = httpx.request(
        method,
        server.base_url + path,
        headers={"Authorization": "Bearer not-a-key-of-this-server"},
        timeout=10,
    )
    error = assert_envelope(wrong, 401, "invalid_api_key")
    assert "not-a-key-of-this-server" not in error["message"]  # never echoed whole


def test_the_sdk_raises_authentication_error(server: BatchdServer) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(server, "wrong-key-0000000000").batches.list()
    assert caught.value.code == "invalid_api_key"


def test_bearer_and_azure_api_key_headers_are_both_accepted(server: BatchdServer) -> None:
    for headers in ({"Authorization": f"Bearer {KEY_A}"}, {"api-key": KEY_A}):
        response = httpx.get(server.api_url + "/batches", headers=headers, timeout=10)
        assert response.status_code == 200, response.text
    # a key given only by its SHA-256 in the config works too
    response = httpx.get(server.api_url + "/files", headers={"api-key": KEY_B}, timeout=10)
    assert response.status_code == 200


def test_health_needs_no_key(server: BatchdServer) -> None:
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200


# -- isolation ----------------------------------------------------------------------------------


def test_another_projects_objects_are_404_on_every_route(
    server: BatchdServer, project_a: dict[str, Any]
) -> None:
    headers = {"Authorization": f"Bearer {KEY_B}"}
    api = server.api_url
    for file_id in (project_a["file"], project_a["output"]):
        for method, path in (
            ("GET", f"/files/{file_id}"),
            ("GET", f"/files/{file_id}/content"),
            ("DELETE", f"/files/{file_id}"),
        ):
            response = httpx.request(method, api + path, headers=headers, timeout=10)
            error = assert_envelope(response, 404, None)
            assert error["message"] == f"No such File object: {file_id}"
    for method, path in (
        ("GET", f"/batches/{project_a['batch']}"),
        ("POST", f"/batches/{project_a['batch']}/cancel"),
    ):
        assert_envelope(httpx.request(method, api + path, headers=headers, timeout=10), 404, None)
    # a cursor naming another project's object is as unknown as a made-up one
    for path, object_id in (("/files", project_a["file"]), ("/batches", project_a["batch"])):
        response = httpx.get(api + path, params={"after": object_id}, headers=headers, timeout=10)
        assert_envelope(response, 400, "invalid_value")

    # and project a still has all of them, untouched
    a = client(server, KEY_A)
    assert a.files.retrieve(project_a["file"]).id == project_a["file"]
    assert a.files.content(project_a["output"]).text.count("\n") == 3
    assert a.batches.retrieve(project_a["batch"]).status == "completed"


def test_lists_show_only_the_callers_project(
    server: BatchdServer, project_a: dict[str, Any]
) -> None:
    b = client(server, KEY_B)
    own = b.files.create(file=("mine.jsonl", b"{}\n"), purpose="user_data")
    files = [f.id for f in b.files.list()]
    batches = [x.id for x in b.batches.list()]
    assert own.id in files
    assert project_a["file"] not in files
    assert project_a["output"] not in files
    assert project_a["batch"] not in batches
    a = client(server, KEY_A)
    assert own.id not in [f.id for f in a.files.list()]
    assert project_a["batch"] in [x.id for x in a.batches.list()]


def test_a_batch_on_another_projects_file_fails_as_if_it_did_not_exist(
    server: BatchdServer, project_a: dict[str, Any]
) -> None:
    b = client(server, KEY_B)
    batch = b.batches.create(
        input_file_id=project_a["file"], endpoint="/v1/chat/completions", completion_window="24h"
    )
    failed = wait_for_batch(b, server, batch.id, {"failed"}, timeout=30)
    [error] = failed["errors"]["data"]
    assert error["code"] == "invalid_request"
    assert error["param"] == "file_id"
    assert project_a["file"] in error["message"]
    assert "Cannot find file" in error["message"]
    assert failed["request_counts"]["total"] == 0


# -- keys made with the command line ------------------------------------------------------------


def keys(server: BatchdServer, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*BATCHD, "keys", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")},
    )
    assert done.returncode == 0, done.stderr
    return done


def status_with(server: BatchdServer, key: str, until: int, timeout: float = 15) -> int:
    """GET /v1/batches with ``key`` until it answers ``until`` (the server caches lookups)."""
    deadline = time.monotonic() + timeout
    while True:
        code = httpx.get(server.api_url + "/batches", headers={"api-key": key}, timeout=10)
        if code.status_code == until or time.monotonic() > deadline:
            return code.status_code
        time.sleep(0.25)


def test_keys_created_and_revoked_while_the_server_runs(
    server: BatchdServer, project_a: dict[str, Any]
) -> None:
    created = keys(server, "create", "--project", "c", "--name", "c-key")
    key = created.stdout.strip()
    assert key.startswith("bd-")
    assert len(key) > 40
    assert "shown only this once" in created.stderr

    assert status_with(server, key, 200) == 200
    c = client(server, key)
    assert project_a["batch"] not in [x.id for x in c.batches.list()]

    admin = keys(server, "create", "--project", "c", "--name", "c-admin", "--admin")
    assert "admin" in admin.stderr
    admin_key = admin.stdout.strip()
    assert status_with(server, admin_key, 200) == 200  # the API: a key of project c
    assert project_a["batch"] not in [x.id for x in client(server, admin_key).batches.list()]
    with httpx.Client(base_url=server.base_url) as browser:  # the dashboard: every project
        browser.post(
            "/dashboard/login", data={"key": admin_key}, headers={"origin": server.base_url}
        )
        assert project_a["batch"] in browser.get("/dashboard").text
        browser.cookies.clear()
        browser.post("/dashboard/login", data={"key": key}, headers={"origin": server.base_url})
        page = browser.get("/dashboard")
        assert page.status_code == 200
        assert project_a["batch"] not in page.text

    listed = keys(server, "list").stdout
    digest = hashlib.sha256(key.encode()).hexdigest()
    assert digest[:12] in listed
    assert "c-key" in listed
    assert key not in listed  # only digests are stored and shown
    rows = {line.split()[2]: line for line in listed.splitlines()[1:]}
    assert " yes " in rows["c-admin"]
    assert " yes " not in rows["c-key"]

    keys(server, "revoke", digest[:12])
    assert status_with(server, key, 401) == 401


# -- exposure -----------------------------------------------------------------------------------


def serve_on_all_interfaces(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHD_")}
    return subprocess.Popen(
        [
            *BATCHD,
            "serve",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "data"),
            "--config",
            str(tmp_path / "batchd.toml"),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def test_a_public_address_without_keys_is_refused(tmp_path: Path) -> None:
    write_config(tmp_path / "batchd.toml", models=[])
    proc = serve_on_all_interfaces(tmp_path)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert "refusing to serve on 0.0.0.0 with no API keys" in output
    assert "--insecure" in output


def wait_for_health(proc: subprocess.Popen[str], port_of: list[str]) -> None:
    deadline = time.monotonic() + 30
    port = port_of[port_of.index("--port") + 1]
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("the server did not start")


@pytest.mark.parametrize("how", ["--insecure", "a stored key"])
def test_a_public_address_starts_with_insecure_or_a_key(tmp_path: Path, how: str) -> None:
    write_config(tmp_path / "batchd.toml", models=[])
    extra: tuple[str, ...] = ()
    if how == "--insecure":
        extra = ("--insecure",)
    else:
        subprocess.run(
            [*BATCHD, "keys", "create", "--project", "p", "--data-dir", str(tmp_path / "data")],
            check=True,
            capture_output=True,
            timeout=60,
        )
    proc = serve_on_all_interfaces(tmp_path, *extra)
    try:
        args = proc.args
        assert isinstance(args, list)
        wait_for_health(proc, [str(a) for a in args])
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_config_keys_are_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[api_keys]]\nproject = "a"\n')
    done = subprocess.run(
        [*BATCHD, "serve", "--config", str(bad), "--data-dir", str(tmp_path / "d")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "exactly one of key and key_sha256" in done.stderr
