"""The client commands (``submit``, ``wait``, ``status``, ``download``, ``cancel``, ``ls``) as a
user runs them: each in its own process, against a real ``batchd serve`` running batches on the
fake upstream, with output and exit statuses checked.

One upstream and one server for the module; the batch of ``finished`` (submitted and waited for
once) serves the read-only tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import typer
from openai import OpenAI
from typer.testing import CliRunner

from batchd.cli import app
from tests.engine_support import (
    MODEL,
    batch_state,
    chat_body,
    model_route,
    request_line,
    serving,
    submit,
    to_jsonl,
    wait_for_batch,
)
from tests.schema import conforms
from tests.serverproc import BatchdServer, free_port
from tests.upstream.process import UpstreamProcess

CLI = [sys.executable, "-m", "batchd"]
BATCH_ID = re.compile(r"^batch_\w+$")
REQUESTS = 12
FAILING = "r-003"  # its body asks the fake upstream for a 400: one line of the error file


@dataclass
class Env:
    upstream: UpstreamProcess
    server: BatchdServer
    client: OpenAI


@dataclass
class Finished:
    """A batch submitted and waited for through the command line."""

    batch_id: str
    submit: subprocess.CompletedProcess[str]
    wait: subprocess.CompletedProcess[str]


def cli_together(
    *commands: Sequence[str], base_url: str | None = None, env: dict[str, str] | None = None
) -> list[subprocess.CompletedProcess[str]]:
    """Run ``batchd <command>`` for each of ``commands`` (with ``--base-url`` when given), each
    in a fresh process, all at once (a process takes seconds to import the SDK); their results."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("BATCHD_", "OPENAI_", "COLUMNS"))
    }
    full_env.update(env or {})
    url = ["--base-url", base_url] if base_url else []
    procs = [
        subprocess.Popen(
            [*CLI, *command, *url],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=full_env,
        )
        for command in commands
    ]
    results = []
    for proc, command in zip(procs, commands, strict=True):
        with proc:
            stdout, stderr = proc.communicate(timeout=120)
        results.append(subprocess.CompletedProcess(command, proc.returncode, stdout, stderr))
    return results


def cli(
    *args: str, base_url: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``batchd *args`` (with ``--base-url`` when given) in a fresh process."""
    return cli_together(args, base_url=base_url, env=env)[0]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("cli-client")
    with UpstreamProcess(root) as upstream:
        route = model_route(upstream, max_concurrency=4, timeout=3.0)
        with serving(
            root / "batchd",
            upstream,
            route,
            cancel_grace_seconds=0.5,
            progress_interval_seconds=0.1,
        ) as (server, client):
            yield Env(upstream, server, client)


@pytest.fixture(scope="module")
def finished(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Finished:
    path = tmp_path_factory.mktemp("finished") / "requests.jsonl"
    lines = [
        request_line(f"r-{i:03d}", chat_body(f"question {i}" + (" FAULT:400" if i == 3 else "")))
        for i in range(REQUESTS)
    ]
    path.write_bytes(to_jsonl(lines))
    submitted = cli("submit", str(path), "--metadata", "job=cli-test", base_url=env.server.api_url)
    assert submitted.returncode == 0, submitted.stderr
    batch_id = submitted.stdout.strip()
    waited = cli("wait", batch_id, "--interval", "0.2", base_url=env.server.api_url)
    return Finished(batch_id, submitted, waited)


# -- submit, wait, status, download, ls --------------------------------------------------------


def test_submit_prints_only_the_batch_id(finished: Finished) -> None:
    assert finished.submit.stdout == finished.batch_id + "\n"
    assert BATCH_ID.match(finished.batch_id), finished.submit.stdout
    assert "uploaded" in finished.submit.stderr
    assert "/v1/chat/completions" in finished.submit.stderr  # the first line's url


def test_wait_exits_0_with_plain_progress_lines(finished: Finished) -> None:
    assert finished.wait.returncode == 0, finished.wait.stderr
    assert finished.wait.stdout == ""
    last = f"{finished.batch_id} completed: {REQUESTS}/{REQUESTS} done, 1 failed"
    assert any(line.startswith(last) for line in finished.wait.stderr.splitlines())
    assert "\x1b[" not in finished.wait.stderr  # not a terminal: no live bar
    assert f"batchd download {finished.batch_id}" in finished.wait.stderr


def test_download_writes_the_output_and_error_files(
    env: Env, finished: Finished, tmp_path: Path
) -> None:
    out_dir = tmp_path / "results"
    result = cli("download", finished.batch_id, "-o", str(out_dir), base_url=env.server.api_url)
    assert result.returncode == 0, result.stderr
    output = out_dir / f"{finished.batch_id}_output.jsonl"
    errors = out_dir / f"{finished.batch_id}_errors.jsonl"
    assert result.stdout.splitlines() == [str(output), str(errors)]
    assert sorted(p.name for p in out_dir.iterdir()) == sorted([output.name, errors.name])

    output_lines = [json.loads(line) for line in output.read_text().splitlines()]
    error_lines = [json.loads(line) for line in errors.read_text().splitlines()]
    expected = [f"r-{i:03d}" for i in range(REQUESTS) if f"r-{i:03d}" != FAILING]
    assert [line["custom_id"] for line in output_lines] == expected
    assert all(line["response"]["status_code"] == 200 for line in output_lines)
    assert [line["custom_id"] for line in error_lines] == [FAILING]
    assert error_lines[0]["response"]["status_code"] == 400


def test_status_text_and_json(env: Env, finished: Finished) -> None:
    state = batch_state(env.client, finished.batch_id)
    text, as_json = cli_together(
        ["status", finished.batch_id],
        ["status", finished.batch_id, "--json"],
        base_url=env.server.api_url,
    )
    assert text.returncode == 0, text.stderr
    fields = dict(
        re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in text.stdout.splitlines()
    )
    assert fields["id"] == finished.batch_id
    assert fields["status"] == "completed"
    assert fields["requests"] == f"{REQUESTS} total, {REQUESTS - 1} completed, 1 failed"
    assert fields["input file"] == state["input_file_id"]
    assert fields["output file"] == state["output_file_id"]
    assert fields["error file"] == state["error_file_id"]
    assert fields["metadata"] == "job=cli-test"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", fields["completed"])

    assert as_json.returncode == 0, as_json.stderr
    data = conforms("Batch", json.loads(as_json.stdout))
    assert data == state
    assert data["metadata"] == {"job": "cli-test"}


def test_ls_shows_the_batch(env: Env, finished: Finished) -> None:
    table, lines = cli_together(
        ["ls"], ["ls", "--json", "--limit", "100"], base_url=env.server.api_url
    )
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split() == ["id", "status", "endpoint", "created", "done/total", "failed"]
    row = next(row.split() for row in rows if finished.batch_id in row)
    assert row[1:3] == ["completed", "/v1/chat/completions"]
    assert row[-2:] == [f"{REQUESTS}/{REQUESTS}", "1"]

    assert lines.returncode == 0, lines.stderr
    batches = [json.loads(line) for line in lines.stdout.splitlines()]
    assert finished.batch_id in [batch["id"] for batch in batches]


# -- cancel and failures -----------------------------------------------------------------------


def test_wait_timeout_ctrl_c_and_cancel_on_a_running_batch(env: Env, tmp_path: Path) -> None:
    """A batch whose requests hang: download refuses it, wait gives up at --timeout and at
    Ctrl-C (both leave it running), cancel ends it and wait then reports it cancelled."""
    hanging = [request_line(f"slow-{i}", chat_body(f"slow {i} FAULT:hang")) for i in range(8)]
    batch_id = submit(env.client, hanging)
    wait_for_batch(env.client, env.server, batch_id, {"in_progress"}, timeout=30)

    refused, timed_out = cli_together(
        ["download", batch_id, "-o", str(tmp_path / "out")],
        ["wait", batch_id, "--interval", "0.2", "--timeout", "0.5"],
        base_url=env.server.api_url,
    )
    assert refused.returncode == 1
    assert f"batch is still in_progress; run `batchd wait {batch_id}` first" in refused.stderr
    assert not (tmp_path / "out").exists()
    assert timed_out.returncode == 1
    assert f"batch {batch_id} is still in_progress after 0.5s; it keeps running" in (
        timed_out.stderr
    )

    with subprocess.Popen(
        [*CLI, "wait", batch_id, "--interval", "0.2", "--base-url", env.server.api_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as waiting:
        assert waiting.stderr is not None
        first = waiting.stderr.readline()  # the progress line: it is polling
        assert first.startswith(f"{batch_id} in_progress: 0/8 done"), first
        waiting.send_signal(signal.SIGINT)
        _, rest = waiting.communicate(timeout=30)
    assert waiting.returncode == 130
    assert f"stopped waiting; batch {batch_id} keeps running" in rest
    assert "Traceback" not in rest
    assert env.client.batches.retrieve(batch_id).status == "in_progress"

    cancelled = cli("cancel", batch_id, base_url=env.server.api_url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.split() in ([batch_id, "cancelling"], [batch_id, "cancelled"])

    waited = cli("wait", batch_id, "--interval", "0.2", base_url=env.server.api_url)
    assert waited.returncode == 1
    assert f"batch {batch_id} cancelled with 8 of 8 requests done" in waited.stderr


def test_a_bad_line_is_reported_with_its_line_number(env: Env, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = to_jsonl([request_line("ok-1", chat_body("fine")), request_line("ok-3", chat_body("x"))])
    first, third = good.splitlines(keepends=True)
    path.write_bytes(first + b"{this is not json\n" + third)
    result = cli("submit", str(path), "--wait", "--interval", "0.2", base_url=env.server.api_url)
    assert result.returncode == 1
    batch_id = result.stdout.strip()
    assert BATCH_ID.match(batch_id), result.stdout
    assert f"batch {batch_id} failed:" in result.stderr
    assert "line 2: invalid_json_line" in result.stderr
    assert "Traceback" not in result.stderr

    status = cli("status", batch_id, base_url=env.server.api_url)
    assert status.returncode == 0, status.stderr
    assert re.search(r"^status +failed$", status.stdout, re.MULTILINE), status.stdout
    assert re.search(
        r"^errors \(\d+\):\n  line 2: invalid_json_line: ", status.stdout, re.MULTILINE
    )


def test_unreachable_server_is_reported_with_exit_status_2() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = cli("status", "batch_123", base_url=url)
    assert result.returncode == 2
    assert f"cannot reach {url}: is `batchd serve` running?" in result.stderr
    assert "OPENAI_BASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_refused_api_key_is_reported_with_exit_status_2(tmp_path: Path) -> None:
    """An OpenAI-compatible server that wants another key (here the fake upstream, which
    answers 401 to any path without its key)."""
    with UpstreamProcess(tmp_path, api_key="the-right-key") as guarded:
        result = cli("ls", "--api-key", "a-wrong-key", base_url=guarded.api_url)
    assert result.returncode == 2
    refused = f"{guarded.api_url} refused the API key (Incorrect API key provided: a-wrong-key.)"
    assert refused in result.stderr
    assert "OPENAI_API_KEY" in result.stderr
    assert "Traceback" not in result.stderr


def test_openai_base_url_from_the_environment(env: Env, tmp_path: Path) -> None:
    """No --base-url: OPENAI_BASE_URL is used; the endpoint comes from the first line's url."""
    path = tmp_path / "embed.jsonl"
    lines = [
        request_line(f"e-{i}", {"model": MODEL, "input": f"text {i}"}, url="/v1/embeddings")
        for i in range(3)
    ]
    path.write_bytes(to_jsonl(lines))
    result = cli(
        "submit", str(path), env={"OPENAI_BASE_URL": env.server.api_url, "OPENAI_API_KEY": "sk-x"}
    )
    assert result.returncode == 0, result.stderr
    batch_id = result.stdout.strip()
    assert BATCH_ID.match(batch_id), result.stdout
    batch = wait_for_batch(env.client, env.server, batch_id, timeout=30)
    assert batch["endpoint"] == "/v1/embeddings"


def test_malformed_metadata_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(to_jsonl([request_line("m-1", chat_body("hello"))]))
    result = cli("submit", str(path), "--metadata", "no-equals-sign")
    assert result.returncode == 2
    assert "--metadata takes key=value" in result.stderr
    assert "'no-equals-sign'" in result.stderr


# -- help --------------------------------------------------------------------------------------

SHARED_OPTIONS = ("--base-url", "--api-key", "OPENAI_BASE_URL", "OPENAI_API_KEY")


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (
            "submit",
            ("--endpoint", "--completion-window", "--metadata", "-m", "--wait", "--interval"),
        ),
        ("status", ("--json",)),
        ("wait", ("--interval", "--timeout")),
        ("download", ("--output-dir", "-o")),
        ("cancel", ()),
        ("ls", ("--limit", "--json")),
    ],
)
def test_help_explains_every_option_with_an_example(command: str, options: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [command, "--help"], prog_name="batchd", terminal_width=200)
    assert result.exit_code == 0, result.output
    for option in (*options, *SHARED_OPTIONS):
        assert option in result.output, f"{command} --help does not mention {option}"
    assert f"batchd {command} " in result.output.split("Options")[0]  # an example

    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    for param in click_command.params:
        if param.name != "help":
            assert "e.g." in (param.help or ""), f"{command}: {param.name} has no example"
