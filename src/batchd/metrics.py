"""Prometheus metrics of one batchd process: counted cheaply where things happen, rendered when
scraped.

The engine's hot path never touches a prometheus-client object (their locks cost a few
microseconds per call): it adds to plain attributes and dicts of a :class:`Metrics` (event-loop
code only, so no locks), pre-resolved per batch and per upstream, and :class:`Histogram` is a
bucket array. A collector turns them into metric families at scrape time, with the gauges read
then: requests in flight and waiting (from the live dispatches), batches by status (a count
query the ``/metrics`` route awaits before rendering). Each :class:`Metrics` has its own
:class:`~prometheus_client.CollectorRegistry`, so building several apps in one Python process
(as the tests do) never meets prometheus-client's "Duplicated timeseries".

Metrics are per process: Prometheus' ``instance`` label tells the processes apart (sum over
them, except ``batchd_batches``, which every process reads from the same store).

Access (:func:`metrics_access`): with ``metrics_token`` set, a scrape needs ``Authorization:
Bearer <metrics_token>``; without it, ``/metrics`` is open only on a loopback address.
"""

from __future__ import annotations

import asyncio
import bisect
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector

from batchd.core.lifecycle import STATUSES
from batchd.logs import is_loopback

if TYPE_CHECKING:
    from pydantic import SecretStr

    from batchd.providers.base import ProviderResult

__all__ = [
    "CONTENT_TYPE",
    "Histogram",
    "LiveWork",
    "Metrics",
    "RequestStats",
    "metrics_access",
    "outcome_of",
    "serve_metrics",
]

log = logging.getLogger("batchd.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

UPSTREAM_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
VALIDATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0)

UNROUTED = "unrouted"
"""The ``model`` label of a batch whose model no route serves any more."""

#: Final outcomes of a request besides ``succeeded`` and the HTTP error classes.
_NO_ANSWER = frozenset({"request_timeout", "connection_error", "invalid_upstream_response"})


class Histogram:
    """Observations counted in fixed buckets (event-loop code only)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def since(self, started: float, _done: object = None) -> None:
        """Observe the seconds since ``started`` (``time.perf_counter``); a done callback."""
        self.observe(time.perf_counter() - started)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative buckets as prometheus-client takes them, ``+Inf`` last."""
        out: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            out.append((repr(float(bound)), total))
        out.append(("+Inf", total + self.counts[-1]))
        return out


class RequestStats:
    """The final results of the requests of one model and project, and their tokens."""

    __slots__ = ("failed", "input_tokens", "output_tokens", "succeeded")

    def __init__(self) -> None:
        self.succeeded = 0
        self.failed: dict[str, int] = {}
        """By outcome (:func:`outcome_of`)."""
        self.input_tokens = 0
        self.output_tokens = 0

    def add_failed(self, outcome: str, count: int = 1) -> None:
        self.failed[outcome] = self.failed.get(outcome, 0) + count


class _UpstreamStats:
    __slots__ = ("latency", "statuses")

    def __init__(self) -> None:
        self.statuses: dict[int | None, int] = {}
        self.latency = Histogram(UPSTREAM_BUCKETS)


class LiveWork(Protocol):
    """A dispatch running now, as the gauges read it at scrape time."""

    @property
    def route(self) -> str: ...

    @property
    def sending(self) -> int:
        """Requests being sent (retries and their waits included)."""
        ...

    @property
    def waiting(self) -> int:
        """Requests not yet taken for sending."""
        ...


def outcome_of(result: ProviderResult) -> str:
    """The ``outcome`` label of a failed final result: ``http_429``, ``http_4xx`` or
    ``http_5xx`` for an HTTP error answer, else the error code of no answer
    (``request_timeout``, ``connection_error``, ``invalid_upstream_response``) or ``error``."""
    status = result.status_code
    if status is not None and not 200 <= status < 300:
        if status == 429:
            return "http_429"
        return "http_5xx" if status >= 500 else "http_4xx"
    code = result.error_code
    return code if code in _NO_ANSWER else "error"


class Metrics:
    """What one process counts (see the module docstring); :meth:`render` is the scrape."""

    def __init__(self, *, process: bool = True) -> None:
        self.requests: dict[tuple[str, str], RequestStats] = {}
        """By (route, project)."""
        self.retries: dict[tuple[str, str], int] = {}
        """By (route, reason)."""
        self.cache: dict[tuple[str, str], int] = {}
        """Cacheable requests of routes with ``cache = true``, by (route, ``hit`` or ``miss``)."""
        self.upstreams: dict[tuple[str, str], _UpstreamStats] = {}
        """By (route, upstream host:port)."""
        self.commits: dict[str, Histogram] = {}
        """By sink: ``journal`` (one process) or ``database`` (shared mode's result rows)."""
        self.validated: dict[str, int] = {}
        self.validation: dict[str, Histogram] = {}
        """By source: ``upload`` (while the file streams in) or ``batch`` (a stored file)."""
        self.live: set[LiveWork] = set()
        self.routes: tuple[str, ...] = ()
        """The routes served, so that their gauges show 0 rather than nothing."""
        self._batch_counts: Mapping[str, int] | None = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        if process:
            ProcessCollector(registry=self.registry)

    # -- counting ------------------------------------------------------------------------------

    def requests_for(self, route: str, project: str) -> RequestStats:
        stats = self.requests.get((route, project))
        if stats is None:
            stats = self.requests[route, project] = RequestStats()
        return stats

    def retried(self, route: str, reason: str) -> None:
        key = (route, reason)
        self.retries[key] = self.retries.get(key, 0) + 1

    def cache_tally(self, route: str) -> Callable[[str, int], None]:
        r"""What a dispatch of ``route`` tells its cache ``hit``\ s and ``miss``\ es to."""

        def tally(result: str, count: int) -> None:
            key = (route, result)
            self.cache[key] = self.cache.get(key, 0) + count

        return tally

    def commit_histogram(self, sink: str) -> Histogram:
        histogram = self.commits.get(sink)
        if histogram is None:
            histogram = self.commits[sink] = Histogram(COMMIT_BUCKETS)
        return histogram

    def validated_file(self, source: str, requests: int, seconds: float) -> None:
        """A file was validated: ``requests`` accepted in ``seconds`` of validation."""
        self.validated[source] = self.validated.get(source, 0) + requests
        histogram = self.validation.get(source)
        if histogram is None:
            histogram = self.validation[source] = Histogram(VALIDATION_BUCKETS)
        histogram.observe(seconds)

    def upstream_observer(self, route: str) -> Callable[[str, int | None, float], None]:
        """What a route's replicas report each answered (or unanswered) attempt to:
        ``(replica host:port, HTTP status or None, seconds)``."""
        cache: dict[str, _UpstreamStats] = {}

        def observe(upstream: str, status: int | None, seconds: float) -> None:
            stats = cache.get(upstream)
            if stats is None:
                stats = cache[upstream] = self.upstreams.setdefault(
                    (route, upstream), _UpstreamStats()
                )
            stats.statuses[status] = stats.statuses.get(status, 0) + 1
            stats.latency.observe(seconds)

        return observe

    def watch(self, providers: Mapping[str, Any]) -> None:
        """Count the upstream attempts of every route with replicas (the ``openai`` provider)
        and show every route's gauges."""
        self.routes = tuple(sorted(providers))
        for route, provider in providers.items():
            replicas = getattr(provider, "replica_set", None)
            if replicas is not None and hasattr(replicas, "observer"):
                replicas.observer = self.upstream_observer(route)

    # -- the scrape ----------------------------------------------------------------------------

    def render(self, batch_counts: Mapping[str, int] | None = None) -> bytes:
        """The text exposition of every metric, with ``batch_counts`` (batches by status,
        read from the store) as ``batchd_batches``."""
        self._batch_counts = batch_counts
        return generate_latest(self.registry)

    async def scrape(self, counts: Callable[[], Awaitable[Mapping[str, int]]] | None) -> bytes:
        """:meth:`render` after awaiting ``counts`` (the store's batches by status); a store
        that does not answer leaves ``batchd_batches`` out of this scrape."""
        batch_counts: Mapping[str, int] | None = None
        if counts is not None:
            try:
                batch_counts = await asyncio.wait_for(counts(), timeout=5.0)
            except Exception as exc:  # the rest of the metrics still answer
                log.warning("metrics: batches by status left out: %s", exc)
        return self.render(batch_counts)


def _counter(
    name: str, text: str, labels: tuple[str, str], counts: Mapping[tuple[str, str], int]
) -> CounterMetricFamily:
    """A counter family with a sample per label pair of ``counts``."""
    family = CounterMetricFamily(name, text, labels=labels)
    for pair, count in sorted(counts.items()):
        family.add_metric(pair, count)
    return family


class _Collector:
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.m
        yield from self._requests(m)
        yield _counter(
            "batchd_request_retries",
            "Requests sent again by the engine after a failed attempt and a backoff, by the "
            "failed attempt's outcome",
            ("model", "reason"),
            m.retries,
        )
        yield _counter(
            "batchd_cache_requests",
            "Cacheable requests of routes with cache = true, by whether the result cache "
            "answered them (hit: no upstream call) or not (miss)",
            ("model", "result"),
            m.cache,
        )
        yield from self._upstreams(m)
        yield from self._gauges(m)
        commits = HistogramMetricFamily(
            "batchd_result_commit_seconds",
            "Seconds from a final result handed to its sink until it is durable (the journal's "
            "group commit: write and fdatasync; in shared mode the result rows' transaction); "
            "one request group in 8 is timed",
            labels=("sink",),
        )
        for sink, histogram in sorted(m.commits.items()):
            commits.add_metric((sink,), histogram.buckets(), histogram.sum)
        yield commits
        lines = CounterMetricFamily(
            "batchd_validated_requests",
            "Requests of input files validated (upload: while the file streams in; batch: a "
            "stored file validated for its batch)",
            labels=("source",),
        )
        seconds = HistogramMetricFamily(
            "batchd_validation_seconds",
            "Seconds spent validating one input file",
            labels=("source",),
        )
        for source in sorted(set(m.validated) | set(m.validation)):
            lines.add_metric((source,), m.validated.get(source, 0))
            if source in m.validation:
                histogram = m.validation[source]
                seconds.add_metric((source,), histogram.buckets(), histogram.sum)
        yield lines
        yield seconds
        batches = GaugeMetricFamily(
            "batchd_batches",
            "Batches by status, read from the store at scrape time (the same in every process "
            "of a shared database: take the max over instances, not the sum)",
            labels=("status",),
        )
        counts = m._batch_counts
        if counts is not None:
            for status in (*STATUSES, *sorted(set(counts) - set(STATUSES))):
                batches.add_metric((status,), counts.get(status, 0))
        yield batches

    @staticmethod
    def _requests(m: Metrics) -> Iterable[Metric]:
        requests = CounterMetricFamily(
            "batchd_requests",
            "Requests of batches with a final result, by route and outcome: succeeded, "
            "http_4xx, http_429, http_5xx, request_timeout, connection_error, "
            "invalid_upstream_response, error, batch_cancelled, batch_expired, model_not_found",
            labels=("model", "outcome"),
        )
        tokens = CounterMetricFamily(
            "batchd_tokens",
            "Tokens of the successful requests' usage, by route, project and direction "
            "(input, output)",
            labels=("model", "project", "direction"),
        )
        outcomes: dict[tuple[str, str], int] = {}
        for (route, project), stats in sorted(m.requests.items()):
            key = (route, "succeeded")
            outcomes[key] = outcomes.get(key, 0) + stats.succeeded
            for outcome, count in stats.failed.items():
                key = (route, outcome)
                outcomes[key] = outcomes.get(key, 0) + count
            tokens.add_metric((route, project, "input"), stats.input_tokens)
            tokens.add_metric((route, project, "output"), stats.output_tokens)
        for labels, count in sorted(outcomes.items()):
            requests.add_metric(labels, count)
        yield requests
        yield tokens

    @staticmethod
    def _upstreams(m: Metrics) -> Iterable[Metric]:
        labels = ("model", "upstream")
        sent = CounterMetricFamily(
            "batchd_upstream_requests",
            "HTTP requests sent to each upstream server (every attempt, failovers and retries "
            "included; streams not), by the answer's status code (none: no answer)",
            labels=(*labels, "code"),
        )
        limited = CounterMetricFamily(
            "batchd_upstream_rate_limited",
            "Answers 429 (rate limited) from each upstream server",
            labels=labels,
        )
        latency = HistogramMetricFamily(
            "batchd_upstream_request_seconds",
            "Seconds from sending a request to an upstream server until its whole answer (or "
            "its failure)",
            labels=labels,
        )
        for (route, upstream), stats in sorted(m.upstreams.items()):
            for status, count in sorted(stats.statuses.items(), key=lambda s: s[0] or 0):
                code = "none" if status is None else str(status)
                sent.add_metric((route, upstream, code), count)
            limited.add_metric((route, upstream), stats.statuses.get(429, 0))
            latency.add_metric((route, upstream), stats.latency.buckets(), stats.latency.sum)
        yield sent
        yield limited
        yield latency

    @staticmethod
    def _gauges(m: Metrics) -> Iterable[Metric]:
        in_flight = dict.fromkeys(m.routes, 0)
        waiting = dict.fromkeys(m.routes, 0)
        for work in list(m.live):
            route = work.route
            in_flight[route] = in_flight.get(route, 0) + work.sending
            waiting[route] = waiting.get(route, 0) + work.waiting
        sending = GaugeMetricFamily(
            "batchd_requests_in_flight",
            "Requests of batches being sent by this process now (retry waits included)",
            labels=("model",),
        )
        queued = GaugeMetricFamily(
            "batchd_requests_waiting",
            "Requests of the batches (shared mode: the ranges) this process runs that are not "
            "sent yet (the queue depth)",
            labels=("model",),
        )
        for route in sorted(in_flight):
            sending.add_metric((route,), in_flight[route])
            queued.add_metric((route,), waiting[route])
        yield sending
        yield queued


# -- access ------------------------------------------------------------------------------------


def metrics_access(
    token: SecretStr | None, host: str, authorization: str | None
) -> tuple[int, str, str] | None:
    """``None`` when a scrape may read the metrics; else ``(status, code, message)`` of the
    refusal. The API keys do not open ``/metrics``: only ``metrics_token`` does."""
    if token is not None:
        expected = f"Bearer {token.get_secret_value()}".encode()
        given = (authorization or "").strip().encode()
        if hmac.compare_digest(given, expected):
            return None
        return (
            401,
            "invalid_metrics_token",
            "The metrics need the metrics token: send the header 'Authorization: Bearer "
            "<metrics_token>' (the value of metrics_token, BATCHD_METRICS_TOKEN; API keys do "
            "not open /metrics).",
        )
    if is_loopback(host):
        return None
    return (
        403,
        "metrics_token_required",
        f"The metrics are closed on a server that listens on {host} without a metrics token: "
        "set metrics_token (BATCHD_METRICS_TOKEN) and scrape with 'Authorization: Bearer "
        "<metrics_token>', or listen on 127.0.0.1.",
    )


# -- the worker's metrics server ---------------------------------------------------------------

_MAX_HEAD = 16 * 1024
_TEXT = "text/plain; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
}


async def serve_metrics(
    metrics: Metrics,
    counts: Callable[[], Awaitable[Mapping[str, int]]] | None,
    *,
    host: str,
    port: int,
    token: SecretStr | None,
) -> asyncio.Server:
    """A minimal HTTP/1.1 server of ``GET /metrics`` on the running event loop (``batchd worker
    --metrics-port``): the same text and access rules as the API's ``/metrics``. Close the
    returned server to stop it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = "GET"
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10.0)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _version = lines[0].split(" ", 2)
            authorization = None
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "authorization":
                    authorization = value.strip()
            status, body, kind = await answer(method, target, authorization)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
            status, body, kind = 400, b"bad request: GET /metrics\n", _TEXT
        except ConnectionError:
            writer.close()
            return
        try:
            writer.write(
                f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            )
            if method != "HEAD":
                writer.write(body)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def answer(method: str, target: str, authorization: str | None) -> tuple[int, bytes, str]:
        if target.split("?", 1)[0] != "/metrics":
            return 404, b"not found: scrape /metrics\n", _TEXT
        if method not in ("GET", "HEAD"):
            return 405, b"only GET /metrics\n", _TEXT
        refused = metrics_access(token, host, authorization)
        if refused is not None:
            status, _code, message = refused
            return status, message.encode() + b"\n", _TEXT
        return 200, await metrics.scrape(counts), CONTENT_TYPE

    return await asyncio.start_server(handle, host, port, limit=_MAX_HEAD)
