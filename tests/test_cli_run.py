"""``batchd run``: the command in subprocesses against the fake upstream (its own process).

A run completes with one output line per request; a bad file exits 1 with its errors' line
numbers and sends nothing; ``kill -9`` at random points and a restart with the same arguments
finish with exactly one line per ``custom_id`` and re-send at most what was in flight; Ctrl-C
exits 130 and the same command continues; the live progress bar is recorded through a pty.
"""

from __future__ import annotations

import json
import os
import pty
import random
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine_support import chat_body, model_route, request_line, upstream_attempts
from tests.serverproc import write_config
from tests.upstream import answers
from tests.upstream.process import UpstreamProcess

BATCHD = [sys.executable, "-m", "batchd"]
CONCURRENCY = 4


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[UpstreamProcess]:
    with UpstreamProcess(tmp_path_factory.mktemp("upstream"), latency_ms=40) as up:
        yield up


def config_for(
    tmp_path: Path, upstream: UpstreamProcess, settings: dict[str, Any] | None = None, **route: Any
) -> Path:
    route.setdefault("max_concurrency", CONCURRENCY)
    route.setdefault("timeout", 10.0)
    return write_config(
        tmp_path / "batchd.toml",
        models=[model_route(upstream, **route)],
        progress_interval_seconds=0.1,
        **(settings or {}),
    )


def write_input(path: Path, bodies: dict[str, dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(request_line(c, b)) + "\n" for c, b in bodies.items()))
    return path


def run_args(tmp_path: Path, config: Path, *extra: str) -> list[str]:
    return [
        *BATCHD,
        "run",
        str(tmp_path / "in.jsonl"),
        "-o",
        str(tmp_path / "out.jsonl"),
        "--config",
        str(config),
        "--progress-interval",
        "0.2",
        *extra,
    ]


def batchd_run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def read_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def one_failing(tmp_path: Path, upstream: UpstreamProcess, ok: int) -> tuple[dict[str, Any], Path]:
    """An input of ``ok`` answered requests and one refused (``bad-1``), and its config."""
    bodies = {f"ok-{i:03d}": chat_body(f"run probe {i}") for i in range(ok)}
    bodies["bad-1"] = chat_body("FAULT:400 refused")
    write_input(tmp_path / "in.jsonl", bodies)
    return bodies, config_for(tmp_path, upstream)


def test_a_run_writes_output_and_error_files(tmp_path: Path, upstream: UpstreamProcess) -> None:
    bodies, config = one_failing(tmp_path, upstream, 40)
    done = batchd_run(run_args(tmp_path, config))

    assert done.returncode == 0, done.stderr
    output = read_lines(tmp_path / "out.jsonl")
    assert [line["custom_id"] for line in output] == [c for c in bodies if c.startswith("ok-")]
    for line in output:
        assert line["response"]["status_code"] == 200
        assert line["response"]["body"] == answers.chat_completion(bodies[line["custom_id"]])
        assert line["error"] is None
    [error] = read_lines(tmp_path / "out.errors.jsonl")
    assert error["custom_id"] == "bad-1"
    assert error["response"]["status_code"] == 400
    # progress lines (stderr is not a terminal), then the summary with the files
    assert "in.jsonl validating: " in done.stderr  # (it may end before in_progress is seen)
    assert "in.jsonl completed: 41/41 done, 1 failed" in done.stderr
    assert "40 succeeded, 1 failed" in done.stderr
    assert str(tmp_path / "out.errors.jsonl") in done.stderr
    assert not (tmp_path / ".out.jsonl.batchd").exists()  # the state is removed at the end


def test_the_files_are_linked_out_of_a_removed_state_and_copied_out_of_a_kept_one(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    """Without ``--keep-state`` the stored files (removed next) are hard-linked into place, not
    copied; with it, the output is a copy of its own, so an edit cannot reach the state."""
    bodies, config = one_failing(tmp_path, upstream, 10)
    linked = batchd_run(run_args(tmp_path, config))
    assert linked.returncode == 0, linked.stderr
    # the state's blobs are gone, so the names they had are the outputs' only ones
    assert (tmp_path / "out.jsonl").stat().st_nlink == 1
    assert len(read_lines(tmp_path / "out.jsonl")) == 10
    assert len(read_lines(tmp_path / "out.errors.jsonl")) == 1

    kept = batchd_run(run_args(tmp_path, config, "--keep-state"))
    assert kept.returncode == 0, kept.stderr
    state = tmp_path / ".out.jsonl.batchd"
    blobs = {path.stat().st_ino for path in state.rglob("*") if path.is_file()}
    for out in (tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"):
        assert out.stat().st_nlink == 1
        assert out.stat().st_ino not in blobs
    output = read_lines(tmp_path / "out.jsonl")
    assert [line["custom_id"] for line in output] == [c for c in bodies if c.startswith("ok-")]


def test_link_file_links_or_says_it_cannot(tmp_path: Path) -> None:
    from batchd.localrun import _link_file

    source = tmp_path / "blob"
    source.write_bytes(b'{"a": 1}\n')
    target = tmp_path / "out" / "x.jsonl"
    target.parent.mkdir()
    target.write_bytes(b"stale")
    assert _link_file(source, target) is True
    assert target.stat().st_ino == source.stat().st_ino
    assert target.read_bytes() == b'{"a": 1}\n'
    assert [p.name for p in target.parent.iterdir()] == ["x.jsonl"]  # no temporary file left
    assert _link_file(tmp_path / "missing", tmp_path / "y.jsonl") is False
    assert not (tmp_path / "y.jsonl").exists()


def test_a_file_that_fails_validation_exits_1_with_line_numbers(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    good = request_line("a", chat_body("never sent, validation fails first"))
    lines = [json.dumps(good), "{not json", json.dumps({**good, "custom_id": "a"})]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    config = config_for(tmp_path, upstream)

    done = batchd_run(run_args(tmp_path, config))

    assert done.returncode == 1, done.stderr
    assert "failed validation" in done.stderr
    assert re.search(r"line 2: .*\(invalid_json_line\)", done.stderr), done.stderr
    assert re.search(r"line 3: .*duplicate", done.stderr, re.IGNORECASE), done.stderr
    assert upstream_attempts(upstream, [good["body"]]) == [0]
    assert not (tmp_path / "out.jsonl").exists()
    # nothing to resume: a fixed file runs at once in the same place
    (tmp_path / "in.jsonl").write_text(json.dumps(good) + "\n")
    again = batchd_run(run_args(tmp_path, config))
    assert again.returncode == 0, again.stderr
    assert [line["custom_id"] for line in read_lines(tmp_path / "out.jsonl")] == ["a"]


def test_kill_9_at_random_points_then_the_same_command_finishes(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    rng = random.Random(11)
    bodies = {f"kill-{i:04d}": chat_body(f"kill probe {i}") for i in range(400)}
    write_input(tmp_path / "in.jsonl", bodies)
    config = config_for(tmp_path, upstream)
    args = run_args(tmp_path, config)
    kills = 0
    for _ in range(3):
        with subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) as proc:
            time.sleep(rng.uniform(1.0, 2.5))  # the process starts in about a second
            if proc.poll() is not None:
                break
            proc.kill()
        kills += 1
    assert kills >= 2, "the run ended before it could be killed: make it longer"

    done = batchd_run(args)

    assert done.returncode == 0, done.stderr
    assert "batchd: resuming" in done.stderr
    output = read_lines(tmp_path / "out.jsonl")
    assert [line["custom_id"] for line in output] == list(bodies)
    for line in output:
        assert line["response"]["body"] == answers.chat_completion(bodies[line["custom_id"]])
    assert not (tmp_path / "out.errors.jsonl").exists()
    upstream.wait_idle()
    attempts = upstream_attempts(upstream, bodies.values())
    assert min(attempts) == 1
    resent = sum(n - 1 for n in attempts)
    # per kill: at most the requests in flight and those answered but not yet durable
    assert resent <= kills * 2 * CONCURRENCY, (resent, kills)


def test_ctrl_c_keeps_the_results_and_the_same_command_continues(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    bodies = {f"int-{i:04d}": chat_body(f"interrupt probe {i}") for i in range(200)}
    write_input(tmp_path / "in.jsonl", bodies)
    config = config_for(tmp_path, upstream)
    args = run_args(tmp_path, config)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    for line in proc.stderr:  # wait for requests to finish, then interrupt
        if re.search(r"in_progress: [1-9]\d*/200", line):
            break
    proc.send_signal(signal.SIGINT)
    _, rest = proc.communicate(timeout=30)

    assert proc.returncode == 130, rest
    assert "interrupted" in rest
    assert "Run the same command again to continue" in rest
    assert (tmp_path / ".out.jsonl.batchd").is_dir()

    done = batchd_run(args)
    assert done.returncode == 0, done.stderr
    assert [line["custom_id"] for line in read_lines(tmp_path / "out.jsonl")] == list(bodies)


def test_another_input_in_the_same_state_directory_is_refused(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    bodies = {f"s-{i}": chat_body(f"state probe {i}") for i in range(100)}
    write_input(tmp_path / "in.jsonl", bodies)
    config = config_for(tmp_path, upstream, max_concurrency=1)
    state = tmp_path / "state"
    args = run_args(tmp_path, config, "--state-dir", str(state))
    with subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "in_progress" in line:
                break
        proc.kill()
    write_input(tmp_path / "in.jsonl", {"other": chat_body("another file")})

    done = batchd_run(args)

    assert done.returncode == 2
    assert "holds the run of in.jsonl, whose contents differ" in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_errors_exit_2_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_text(json.dumps(request_line("a", chat_body("x"))) + "\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("max_attempts = 'many'\n")
    done = batchd_run(run_args(tmp_path, bad))
    assert done.returncode == 2
    assert "batchd: invalid configuration" in done.stderr
    assert "max_attempts" in done.stderr
    assert "Traceback" not in done.stderr


def test_the_progress_bar_renders_and_updates_on_a_terminal(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    """A recording of the live display through a pty: the bar is redrawn in place (cursor
    control sequences) and moves from 0 to every request done."""
    bodies = {f"tty-{i:03d}": chat_body(f"terminal probe {i}") for i in range(120)}
    write_input(tmp_path / "in.jsonl", bodies)
    config = config_for(tmp_path, upstream)
    leader, follower = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        run_args(tmp_path, config), stdin=follower, stdout=follower, stderr=follower, env=env
    )
    os.close(follower)
    recording = bytearray()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the process closed the terminal
                break
            if not chunk:
                break
            recording += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(30) == 0, recording.decode(errors="replace")

    text = recording.decode(errors="replace")
    assert "\x1b[" in text  # drawn with escape sequences, not printed line by line
    counts = [int(n) for n in re.findall(r"(\d+)/120 done", text)]
    assert counts[-1] == 120, text
    assert len(set(counts)) >= 3, f"the bar did not move: {counts}"
    assert counts == sorted(counts)
    assert re.search(r"\d+(\.\d+)? req/s", text)
    assert "completed: 120 succeeded, 0 failed" in text


def test_help_explains_every_option() -> None:
    done = subprocess.run(
        [*BATCHD, "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    for option in (
        "--output",
        "--errors",
        "--config",
        "--state-dir",
        "--endpoint",
        "--keep-state",
        "--progress-interval",
        "--log-level",
    ):
        assert option in done.stdout
    assert "batchd run batch.jsonl -o results.jsonl" in " ".join(done.stdout.split())


def test_a_run_lifts_the_per_batch_limits_unless_configured(tmp_path: Path) -> None:
    from batchd.cli.run import RUN_LIMITS, run_settings

    plain = tmp_path / "plain.toml"
    plain.write_text("max_attempts = 3\n")
    settings = run_settings(plain, tmp_path / "state", "info")
    assert settings.max_requests_per_batch == RUN_LIMITS["max_requests_per_batch"] > 50_000
    assert settings.max_file_bytes("batch") == RUN_LIMITS["max_batch_file_bytes"]
    assert settings.max_attempts == 3
    assert settings.data_dir == tmp_path / "state"

    strict = tmp_path / "strict.toml"
    strict.write_text("max_requests_per_batch = 2\n")
    assert run_settings(strict, tmp_path / "state", "info").max_requests_per_batch == 2


def test_a_configured_request_limit_fails_validation(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    write_input(tmp_path / "in.jsonl", {f"l-{i}": chat_body(f"limit {i}") for i in range(3)})
    config = config_for(tmp_path, upstream, {"max_requests_per_batch": 2})
    done = batchd_run(run_args(tmp_path, config))
    assert done.returncode == 1
    assert "too_many_tasks" in done.stderr


def test_with_cache_a_run_again_sends_only_the_changed_lines(
    tmp_path: Path, upstream: UpstreamProcess
) -> None:
    """``--cache`` keeps the answers in the user's cache directory (``XDG_CACHE_HOME`` here), so
    a second run of a fixed file sends only the fixed line; without it, everything goes again."""
    bodies = {f"q{i}": chat_body(f"question {i} of a cached run", temperature=0) for i in range(6)}
    write_input(tmp_path / "in.jsonl", bodies)
    config = config_for(tmp_path, upstream)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache-home")}

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        args = run_args(tmp_path, config, *extra)
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stderr
        return done

    first = run("--cache")
    assert "cache: 0 of 6 cacheable requests answered from earlier answers" in first.stderr
    assert (tmp_path / "cache-home" / "batchd" / "results.sqlite3").is_file()
    original = bodies["q2"]
    bodies["q2"] = chat_body("question 2 of a cached run, fixed", temperature=0)
    write_input(tmp_path / "in.jsonl", bodies)
    second = run("--cache")
    assert "cache: 5 of 6 cacheable requests" in second.stderr
    output = read_lines(tmp_path / "out.jsonl")
    assert ["headers" in line["response"] for line in output] == [True] * 2 + [False] + [True] * 3
    for line in output:
        assert line["response"]["body"] == answers.chat_completion(bodies[line["custom_id"]])
    assert upstream_attempts(upstream, [*bodies.values(), original]) == [1] * 7
    third = run()  # no cache: every line is sent
    assert "cache:" not in third.stderr
    assert upstream_attempts(upstream, bodies.values()) == [2] * 6
