"""Replicas of an ``openai`` route (``base_urls``): the least-outstanding-requests choice, the
circuit breaker, 429s that pause one replica, failover that does not spend a request's attempts;
in process with a fake clock, against real fake-upstream processes, and end to end through
``batchd serve``."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchd.config import ModelRoute, Settings
from batchd.errors import ConfigError
from batchd.providers.base import ProviderRequest, ProviderStream
from batchd.providers.openai_http import OpenAIProvider
from batchd.providers.replicas import Breaker, Replica, ReplicaSet
from tests import engine_support as support
from tests.serverproc import BatchdServer, batchd, free_port, write_config
from tests.upstream.process import UpstreamProcess

pytestmark = pytest.mark.anyio


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _set(*limits: int, weights: tuple[float, ...] = (), clock: Clock | None = None) -> ReplicaSet:
    replicas = [
        Replica(f"r{i}", limit, weights[i] if weights else 1.0) for i, limit in enumerate(limits)
    ]
    return ReplicaSet(
        "m", replicas, Breaker(failure_threshold=2, eject_seconds=5), clock or Clock()
    )


def test_requests_go_to_the_least_loaded_replica_relative_to_its_limit_and_weight() -> None:
    replicas = _set(4, 2)
    picked = [replicas.pick() for _ in range(6)]
    # in flight / limit, ties to the first: 0/4 0/2, 1/4 0/2, 1/4 1/2, 2/4 1/2, 3/4 1/2, 3/4 2/2
    assert [r.name for r in picked if r is not None] == ["r0", "r1", "r0", "r0", "r1", "r0"]
    assert replicas.pick() is None  # every slot taken
    replicas.release(picked[1], "ok")  # r1 frees a slot: it is the least loaded again
    assert getattr(replicas.pick(), "name", None) == "r1"
    weighted = _set(4, 4, weights=(1.0, 3.0))
    names = [getattr(weighted.pick(), "name", None) for _ in range(4)]
    assert names.count("r1") == 3  # three times the weight, three times the load


def test_the_breaker_ejects_probes_and_readmits() -> None:
    clock = Clock()
    replicas = _set(8, 8, clock=clock)
    r0 = replicas.replicas[0]
    for _ in range(2):
        replicas.release(replicas.pick([replicas.replicas[1]]) or r0, "failed")
    assert r0.state == "open"
    assert all(replicas.pick() is replicas.replicas[1] for _ in range(4))  # r0 is skipped
    clock.now += 5.1
    probe = replicas.pick([replicas.replicas[1]])
    assert probe is r0
    assert r0.state == "half_open"
    assert replicas.pick([replicas.replicas[1]]) is None  # one probe at a time
    replicas.release(r0, "failed")  # the probe failed: ejected again, for twice as long
    assert r0.state == "open"
    assert r0.open_until == pytest.approx(clock.now + 10)
    clock.now += 10.1
    probe = replicas.pick([replicas.replicas[1]])
    assert probe is r0
    replicas.release(r0, "ok")
    assert (r0.state, r0.failures, r0.ejections) == ("closed", 0, 0)


def test_a_429_pauses_only_its_replica_and_a_route_never_stops_by_itself() -> None:
    clock = Clock()
    replicas = _set(8, 8, clock=clock)
    r0, r1 = replicas.replicas
    replicas.release(replicas.pick() or r0, "rate_limited", retry_after=2.0)
    assert r0.paused_until == pytest.approx(102.0)
    assert all(replicas.pick() is r1 for _ in range(3))
    for _ in range(2):
        replicas.release(r1, "failed")
    assert r1.state == "open"
    # both out: requests still go to the one that comes back first (r0, in 2 s)
    assert replicas.pick() is r0


def _provider(upstreams: list[UpstreamProcess], **options: Any) -> OpenAIProvider:
    route = ModelRoute(
        name="gpt-4o-mini",
        provider="openai",
        base_urls=[u.api_url for u in upstreams],
        timeout=5.0,
        **options,
    )
    return OpenAIProvider.from_route(route, {})


def _requests(count: int) -> list[ProviderRequest]:
    return [
        ProviderRequest(i, f"r{i}", "/v1/chat/completions", support.chat_body(f"q{i}"))
        for i in range(count)
    ]


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[list[UpstreamProcess]]:
    procs = []
    try:
        for latency in (20, 50, 200):
            (tmp_path / str(latency)).mkdir()
            procs.append(UpstreamProcess(tmp_path / str(latency), latency_ms=latency).start())
        yield procs
    finally:
        for proc in procs:
            proc.stop()


async def _run(provider: OpenAIProvider, requests: list[ProviderRequest], slots: int) -> list[Any]:
    gate = asyncio.Semaphore(slots)  # what the engine's max_concurrency does

    async def one(request: ProviderRequest) -> Any:
        async with gate:
            [result] = await provider.execute([request])
            return result

    return await asyncio.gather(*(one(r) for r in requests))


async def test_the_split_follows_the_replicas_speed(upstreams: list[UpstreamProcess]) -> None:
    async with _provider(upstreams, max_concurrency=8) as provider:
        # every replica limited to 8, 24 in flight over the route
        results = await _run(provider, _requests(900), 24)
        states = provider.replica_states()
    assert all(r.ok for r in results)
    sent = [int(str(state["sent"])) for state in states]
    print(f"\nrequests per replica (20, 50, 200 ms): {sent}")
    assert sum(sent) == 900
    assert sent[0] > sent[1] > sent[2]  # the fast one gets the most
    assert sent[0] > 3 * sent[2]


async def test_a_failing_replica_is_ejected_and_its_requests_answered_elsewhere(
    tmp_path: Path,
) -> None:
    (tmp_path / "ok").mkdir()
    (tmp_path / "bad").mkdir()
    with (
        UpstreamProcess(tmp_path / "ok", latency_ms=5) as good,
        UpstreamProcess(tmp_path / "bad", fail_first_n=1_000_000, fail_first_kind="500") as bad,
    ):
        async with _provider([bad, good], failure_threshold=3, eject_seconds=30) as provider:
            results = await _run(provider, _requests(200), 16)
            states = provider.replica_states()
        bad_total = bad.stats(digests=False)["total"]
    # one attempt each: the replica's 500s did not spend the request's attempt
    assert all(r.ok for r in results), [r.error_message for r in results if not r.ok][:3]
    assert states[0]["state"] == "open"
    assert int(str(states[0]["sent"])) <= 3 + 16  # ejected after 3 failures in a row
    assert bad_total == states[0]["sent"]


def test_a_replica_killed_mid_batch_then_restarted(tmp_path: Path) -> None:
    """End to end: two replicas behind one route of ``batchd serve``; one is killed while a
    batch runs (its requests move to the other, nothing fails), started again on its port, and
    readmitted (the log, ``/health``)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = UpstreamProcess(tmp_path / "a", latency_ms=50).start()
    b = UpstreamProcess(tmp_path / "b", latency_ms=50).start()
    port = int(b.api_url.split(":")[2].split("/")[0])
    route = {
        **support.model_route(a, max_concurrency=None, timeout=5.0),
        "base_urls": [a.api_url, b.api_url],
        "eject_seconds": 1.0,
        "failure_threshold": 3,
    }
    del route["base_url"]
    route = {k: v for k, v in route.items() if v is not None}
    server = support.start_server(tmp_path / "srv", a, route, max_attempts=1)
    revived: UpstreamProcess | None = None
    try:
        with support.sdk(server) as client:
            lines = [support.request_line(f"r{i}", support.chat_body(f"q{i}")) for i in range(3000)]
            batch_id = support.submit(client, lines)
            time.sleep(1.0)
            b.kill()
            support.wait_until(
                lambda: "ejected" in server.log(), 20, "the killed replica to be ejected"
            )
            health = _health(server.base_url)
            assert [r["state"] for r in health["replicas"]["gpt-4o-mini"]][1] in (
                "open",
                "half_open",
            )
            revived = UpstreamProcess(tmp_path / "b", port=port, latency_ms=50).start()
            state = support.wait_for_batch(client, server, batch_id, timeout=120)
            results = support.fetch_results(client, state, [line["custom_id"] for line in lines])
            assert state["error_file_id"] is None
            assert len(results.output) == 3000
            lines2 = [support.request_line(f"s{i}", support.chat_body(f"s{i}")) for i in range(600)]
            second = support.submit(client, lines2)
            support.wait_for_batch(client, server, second, timeout=60)
            assert "readmitted" in server.log(), server.log()[-3000:]
            states = _health(server.base_url)["replicas"]["gpt-4o-mini"]
            assert states[1]["state"] == "closed"
            listed = batchd("models", "--base-url", server.api_url)
            assert listed.returncode == 0, listed.stderr
            rows = [row.split() for row in listed.stdout.splitlines() if "gpt-4o-mini" in row]
            assert [row[2] for row in rows] == ["closed", "closed"], listed.stdout
    finally:
        server.stop()
        a.stop()
        if revived is not None:
            revived.stop()


def _health(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{base_url}/health", timeout=5) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


async def test_a_stream_moves_to_another_replica_before_its_first_byte(tmp_path: Path) -> None:
    (tmp_path / "ok").mkdir()
    with UpstreamProcess(tmp_path / "ok", latency_ms=5) as good:
        route = ModelRoute(
            name="gpt-4o-mini",
            provider="openai",
            base_urls=["http://127.0.0.1:9/v1", good.api_url],  # nothing listens on port 9
        )
        async with OpenAIProvider.from_route(route, {}) as provider:
            for i in range(4):  # the dead one is tried first while its load is the lowest
                stream = await provider.stream("/v1/chat/completions", support.chat_body(f"s{i}"))
                assert isinstance(stream, ProviderStream), stream
                try:
                    body = b"".join([chunk async for chunk in stream.chunks()])
                finally:
                    await stream.aclose()
                assert json.loads(body)["choices"], body
            states = provider.replica_states()
    assert [s["in_flight"] for s in states] == [0, 0]  # every slot given back
    assert int(str(states[0]["sent"])) >= 1
    assert int(str(states[1]["sent"])) == 4


def test_a_route_that_keeps_failing_falls_back_to_another(tmp_path: Path) -> None:
    """The only server of ``primary`` answers 500 forever; ``fallback = ["backup"]``: every line
    is answered by ``backup`` (its name in the answers), after ``primary``'s attempts ran out."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "ok").mkdir()
    with (
        UpstreamProcess(tmp_path / "bad", fail_first_n=1_000_000, fail_first_kind="500") as bad,
        UpstreamProcess(tmp_path / "ok", latency_ms=5) as good,
    ):
        primary = {
            **support.model_route(bad, max_concurrency=8),
            "fallback": ["backup-alias"],
        }
        backup = {
            "name": "backup",
            "aliases": ["backup-alias"],
            "provider": "openai",
            "base_url": good.api_url,
            "max_concurrency": 8,
        }
        root = tmp_path / "srv"
        root.mkdir()
        config = write_config(
            root / "batchd.toml",
            models=[primary, backup],
            max_attempts=2,
            retry_base_seconds=0.01,
            retry_cap_seconds=0.02,
        )
        server = BatchdServer(root / "data", config).start()
        try:
            with support.sdk(server) as client:
                lines = [
                    support.request_line(f"r{i}", support.chat_body(f"q{i}")) for i in range(40)
                ]
                batch_id = support.submit(client, lines)
                state = support.wait_for_batch(client, server, batch_id, timeout=60)
                results = support.fetch_results(client, state, [ln["custom_id"] for ln in lines])
            assert state["error_file_id"] is None
            assert {line["response"]["body"]["model"] for line in results.output} == {"backup"}
            assert bad.stats(digests=False)["total"] == 40 * 2  # both attempts on primary first
            with support.sdk(server) as client:  # the synchronous route falls back too
                answer = client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
                )
            assert answer.model == "backup"
            assert bad.stats(digests=False)["total"] == 40 * 2 + 1
        finally:
            server.stop()


def test_a_fallback_must_name_another_route(tmp_path: Path) -> None:
    route = {"name": "a", "provider": "openai", "base_url": "http://x/v1"}
    with pytest.raises(ConfigError, match="fallback 'nope' names no route; name another route"):
        Settings.load(data_dir=tmp_path, models=[{**route, "fallback": ["nope"]}])
    with pytest.raises(ConfigError, match="fallback 'a' is the route itself"):
        Settings.load(data_dir=tmp_path, models=[{**route, "fallback": ["a"]}])


def test_prefix_affinity_prefers_one_replica_per_prefix_within_a_bounded_load() -> None:
    replicas = _set(8, 8, 8)
    key = 12345
    first = replicas.pick(affinity=key)
    assert first is not None
    chosen = [replicas.pick(affinity=key) for _ in range(2)]
    assert all(r is first for r in chosen)  # 3/8 in flight there, 0 elsewhere: within 0.25+
    assert replicas.pick(affinity=key) is not first  # 3/8 > 0 + 0.25: the load bound wins


async def test_requests_sharing_a_long_prefix_go_to_the_same_replica(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with (
        UpstreamProcess(tmp_path / "a", latency_ms=5) as a,
        UpstreamProcess(tmp_path / "b", latency_ms=5) as b,
    ):
        async with _provider([a, b], prefix_affinity=True, max_concurrency=16) as provider:
            landed = []
            # The replicas' ports are random, so is each prefix's replica: with 16 prefixes,
            # all on one replica (the last assertion failing) is a 2 in 65,536 chance.
            for prefix in range(16):
                system = f"You are assistant number {prefix}. " * 60  # 2,000 characters
                before = [int(str(s["sent"])) for s in provider.replica_states()]
                requests = [
                    ProviderRequest(
                        i,
                        f"r{i}",
                        "/v1/chat/completions",
                        {
                            "model": "gpt-4o-mini",
                            "messages": [
                                {"role": "system", "content": system},
                                {"role": "user", "content": f"question {i}"},
                            ],
                        },
                    )
                    for i in range(20)
                ]
                results = await _run(provider, requests, 2)
                assert all(r.ok for r in results)
                after = [int(str(s["sent"])) for s in provider.replica_states()]
                landed.append([x - y for x, y in zip(after, before, strict=True)])
        async with _provider([a, b], max_concurrency=16) as plain:  # off by default
            await _run(plain, _requests(40), 2)
            spread = [int(str(s["sent"])) for s in plain.replica_states()]
    assert all(sorted(counts) == [0, 20] for counts in landed), landed  # one replica per prefix
    assert {counts.index(20) for counts in landed} == {0, 1}  # and both replicas are used
    assert min(spread) >= 10, spread


def test_a_llama_cpp_server_and_a_fake_upstream_serve_one_route(tmp_path: Path) -> None:
    """A real OpenAI-compatible server (``llama_cpp.server`` on the embedded SmolLM2 GGUF) and
    the fake upstream as two replicas of one route: a batch is answered by both."""
    try:
        import llama_cpp.server.app  # noqa: F401 - its extra: sse-starlette, starlette-context

        from batchd.embedded_models import installed_models
    except ImportError as exc:
        pytest.skip(f"llama_cpp.server is not installed ({exc}): pip install 'batchd[dev,local]'")
    gguf = next(
        (
            m.route()["model_path"]
            for m in installed_models()
            if m.route()["provider"] == "llamacpp"
        ),
        None,
    )
    if gguf is None:
        pytest.skip("the embedded chat model is not installed: pip install 'batchd[local]'")
    port = free_port()
    log = open(tmp_path / "llama-server.log", "wb")  # noqa: SIM115 - owned by the process
    llama = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model_alias",
            "gpt-4o-mini",
            "--n_threads",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    (tmp_path / "fake").mkdir()
    fake = UpstreamProcess(tmp_path / "fake", latency_ms=20).start()
    server = None
    try:
        support.wait_until(
            lambda: _answers(f"http://127.0.0.1:{port}/v1/models"), 60, "llama_cpp.server to start"
        )
        route = {
            "name": "gpt-4o-mini",
            "provider": "openai",
            "base_urls": [
                {"url": f"http://127.0.0.1:{port}/v1", "max_concurrency": 1},
                {"url": fake.api_url, "max_concurrency": 2},
            ],
            "timeout": 60.0,
        }
        server = support.start_server(tmp_path / "srv", fake, route)
        with support.sdk(server, timeout=120) as client:
            lines = [
                support.request_line(
                    f"r{i}", support.chat_body(f"Say hi to number {i}.", max_tokens=8)
                )
                for i in range(12)
            ]
            batch_id = support.submit(client, lines)
            state = support.wait_for_batch(client, server, batch_id, timeout=120)
            results = support.fetch_results(client, state, [ln["custom_id"] for ln in lines])
        assert state["error_file_id"] is None
        sent = [s["sent"] for s in _health(server.base_url)["replicas"]["gpt-4o-mini"]]
        assert all(n >= 1 for n in sent), sent  # both replicas answered
        assert len(results.output) == 12
    finally:
        if server is not None:
            server.stop()
        fake.stop()
        llama.terminate()
        llama.wait(30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_ejections_are_told_and_heard_between_engines() -> None:
    clock = Clock()
    here, there = _set(8, 8, clock=clock), _set(8, 8, clock=clock)
    told: list[tuple[str, float | None]] = []
    here.on_change = lambda replica, seconds: told.append((replica.name, seconds))
    r0 = here.replicas[0]
    for _ in range(2):
        here.release(here.pick([here.replicas[1]]) or r0, "failed")
    assert told == [("r0", 5.0)]
    there.eject_for("r0", 5.0)  # what the other engine's heartbeat does with it
    assert there.replicas[0].state == "open"
    assert all(there.pick() is there.replicas[1] for _ in range(3))
    clock.now += 5.1
    probe = here.pick([here.replicas[1]])
    assert probe is r0
    here.release(r0, "ok")
    assert told[-1] == ("r0", None)  # readmitted: the others hear it too
