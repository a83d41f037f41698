"""The fake upstream: an aiohttp application speaking the OpenAI chat/completions/embeddings API
and ``/v1/responses`` (not streamed); image parts are checked by :mod:`tests.upstream.vision`.
It speaks Anthropic's ``POST /v1/messages`` too (streamed or not; :mod:`tests.upstream.messages`).

Answers are pure functions of the request body (:mod:`tests.upstream.answers`); faults are
decided per (seed, body digest, attempt) (:mod:`tests.upstream.faults`). Every ``/v1`` request
is counted, by path, by outcome and by body digest.

Test-only routes: ``GET|POST /_control`` (read / change the :class:`FaultConfig`), ``GET /_stats``
(``?digests=0`` leaves the per-digest table out), ``POST /_reset`` (``{"config": true}`` also
restores the start-up configuration), ``GET /_log?since=N`` (one entry per request),
``GET /_health``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import socket
import struct
import sys
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.upstream import answers, vision
from tests.upstream import messages as messages_api
from tests.upstream.faults import Decision, FaultConfig, decide

__all__ = ["Upstream", "build_app", "serve"]

JSON = "application/json"
MAX_BODY = 64 * 1024 * 1024
MODELS: tuple[str, ...] = (
    "gpt-4o-mini",
    "gpt-4o",
    "gpt-4.1-mini",
    "gpt-3.5-turbo-instruct",
    "text-embedding-3-small",
    "text-embedding-3-large",
    "text-embedding-ada-002",
)
_RESPONSE_FORMATS = ("text", "json_object", "json_schema")
Respond = Callable[[], Awaitable[web.StreamResponse]]
"""Produces the answer (or the fault) once the latency has passed."""
_MAX_DIMENSIONS = 8192


#: A request the fake rejects with a 400 (one class with the vision checks').
BadRequest = vision.InvalidRequest


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _error_body(
    path: str,
    status: int,
    message: str,
    type_: str,
    param: str | None = None,
    code: str | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """The error body of an answer on ``path``: Anthropic's envelope on ``/v1/messages``
    (``type_``, ``param`` and ``code`` unused), OpenAI's elsewhere (``request_id`` unused)."""
    if path == messages_api.PATH:
        return messages_api.error_body(status, message, request_id)
    return error_body(message, type_, param, code)


#: What each POST endpoint answers (a valid body).
_ANSWERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "chat": answers.chat_completion,
    "completions": answers.completion,
    "embeddings": answers.embeddings,
    "responses": answers.response,
    "messages": answers.anthropic_message,
}


def _json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload), status=status, content_type=JSON, headers=headers
    )


def _reply(response: web.StreamResponse) -> Respond:
    async def send() -> web.StreamResponse:
        return response

    return send


def _format_seconds(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else f"{seconds:g}"


@dataclass
class DigestRecord:
    attempts: int = 0
    outcomes: list[str] = field(default_factory=list)


class Upstream:
    """The state of one fake upstream: configuration, counters, request log."""

    def __init__(self, config: FaultConfig) -> None:
        config.validate()
        self.initial = config
        self.config = config
        self.closing = False
        self.sleepers: set[asyncio.Future[bool]] = set()
        self.in_flight = 0
        self.reset()

    def reset(self, config: bool = False) -> None:
        if config:
            self.config = self.initial
        self.total = 0
        self.by_outcome: Counter[str] = Counter()
        self.by_path: Counter[str] = Counter()
        self.max_in_flight = self.in_flight
        self.disconnected = 0
        self.internal_errors = 0
        self.digests: dict[str, DigestRecord] = {}
        self.log: list[dict[str, Any]] = []

    async def sleep(self, seconds: float) -> bool:
        """Sleep; True when cut short because the server is shutting down."""
        if self.closing:
            return True
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiter, False)
        self.sleepers.add(waiter)
        try:
            return await waiter
        finally:
            timer.cancel()
            self.sleepers.discard(waiter)

    def close(self) -> None:
        """Wake every sleeping request (latency, hangs): their connections are then reset."""
        self.closing = True
        for waiter in list(self.sleepers):
            _resolve(waiter, True)

    def stats(self, digests: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "total": self.total,
            "by_outcome": dict(self.by_outcome),
            "by_path": dict(self.by_path),
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "disconnected": self.disconnected,
            "internal_errors": self.internal_errors,
            "unique_bodies": len(self.digests),
        }
        if digests:
            out["digests"] = {
                digest: {"attempts": rec.attempts, "outcomes": rec.outcomes}
                for digest, rec in self.digests.items()
            }
        return out

    # -- /v1 --------------------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        entry: dict[str, Any] | None = None
        try:
            raw = await request.read()
            config = self.config
            self.total += 1
            self.by_path[request.path] += 1
            entry = {
                "seq": len(self.log) + 1,
                "method": request.method,
                "path": request.path,
                "digest": None,
                "attempt": None,
                "model": None,
                "outcome": None,
                "reason": None,
                "state": "in_flight",
                "received_at": time.time(),
                "finished_at": None,
            }
            self.log.append(entry)
            if config.capacity and self.in_flight > config.capacity:
                outcome, reason, latency_s = "429", "over_capacity", 0.0
                message = "The server is over capacity (hidden capacity)."
                body = _error_body(request.path, 429, message, "requests")
                respond = _reply(_json_response(body, 429, {}))
            else:
                outcome, reason, latency_s, respond = self._decide(request, raw, config, entry)
            entry["outcome"] = outcome
            entry["reason"] = reason
            self.by_outcome[outcome] += 1
            if entry["digest"] is not None:
                self.digests[entry["digest"]].outcomes.append(outcome)
            if latency_s > 0 and await self.sleep(latency_s):
                _abort(request)  # shutting down: drop the connection
                entry["state"] = "reset"
                return web.Response(status=204)
            response = await respond()
            entry["state"] = "reset" if outcome in ("reset", "hang") else "done"
            return response
        except asyncio.CancelledError:
            # The client went away (handler cancellation) or the server is shutting down.
            self.disconnected += 1
            if entry is not None:
                entry["state"] = "disconnected"
            raise
        except Exception:
            # A bug in the fake must not pass for an injected 500: count it and say so.
            self.internal_errors += 1
            traceback.print_exc()
            if entry is not None:
                entry["state"] = "internal_error"
            body = error_body("bug in the fake upstream", "fake_upstream_internal_error")
            return _json_response(body, 500, {"x-upstream-internal-error": "1"})
        finally:
            self.in_flight -= 1
            if entry is not None:
                entry["finished_at"] = time.time()

    def _decide(
        self, request: web.Request, raw: bytes, config: FaultConfig, entry: dict[str, Any]
    ) -> tuple[str, str, float, Respond]:
        """Classify a request: (outcome, reason, latency, coroutine function producing it)."""
        path = request.path
        latency_s = config.latency_ms / 1000.0

        def reply(response: web.StreamResponse) -> Respond:
            async def send() -> web.StreamResponse:
                return response

            return send

        if config.api_key is not None:
            sent = request.headers.get("Authorization", "")
            accepted = {f"Bearer {config.api_key}"}
            if path == messages_api.PATH:  # Anthropic's x-api-key, or a bearer token (its SDK's)
                sent = request.headers.get("x-api-key") or sent
                accepted.add(config.api_key)
            if sent not in accepted:
                body = _error_body(  # echoing the key, as a careless upstream might
                    path,
                    401,
                    f"Incorrect API key provided: {sent.removeprefix('Bearer ')}.",
                    "invalid_request_error",
                    code="invalid_api_key",
                )
                return "401", "auth", latency_s, reply(_json_response(body, 401))

        if request.method == "GET":
            if path == "/v1/models":
                return "ok", "none", 0.0, reply(_json_response(self._models()))
            model_id = path.removeprefix("/v1/models/")
            if path.startswith("/v1/models/") and model_id:
                return "ok", "none", 0.0, reply(_json_response(self._model(model_id)))

        endpoint = {
            "/v1/chat/completions": "chat",
            "/v1/completions": "completions",
            "/v1/embeddings": "embeddings",
            "/v1/responses": "responses",
            messages_api.PATH: "messages",
        }.get(path)
        if endpoint is None or request.method != "POST":
            body = error_body(
                f"Invalid URL ({request.method} {path})",
                "invalid_request_error",
                code="unknown_url",
            )
            return "404", "route", latency_s, reply(_json_response(body, 404))

        try:
            parsed: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            digest = answers.body_digest(parsed)
        else:
            digest = hashlib.sha256(raw).hexdigest()
        record = self.digests.setdefault(digest, DigestRecord())
        record.attempts += 1
        attempt = record.attempts
        entry.update(digest=digest, attempt=attempt)
        headers = {
            "x-upstream-digest": digest,
            "x-upstream-attempt": str(attempt),
            "x-request-id": f"req_{digest[:16]}_{attempt}",
        }
        if path == messages_api.PATH:
            headers["request-id"] = headers["x-request-id"]

        def fail(
            status: int, message: str, type_: str, param: str | None, code: str | None
        ) -> Respond:
            body = _error_body(path, status, message, type_, param, code, headers["x-request-id"])
            return reply(_json_response(body, status, headers))

        if not isinstance(parsed, dict):
            message = (
                "We could not parse the JSON body of your request. The body must be a JSON object."
            )
            return (
                "400",
                "invalid_json",
                latency_s,
                fail(400, message, "invalid_request_error", None, None),
            )
        entry["model"] = parsed.get("model")
        try:
            self._validate(endpoint, parsed)
        except BadRequest as exc:
            return (
                "400",
                "validation",
                latency_s,
                fail(400, exc.message, "invalid_request_error", exc.param, exc.code),
            )

        # Markers are sought only in bodies that contain one somewhere (the common case is fast).
        texts = answers.request_texts(parsed) if b"FAULT:" in raw else ()
        decision = decide(config, digest, attempt, texts)
        return self._act(request, endpoint, parsed, config, decision, headers, fail, reply)

    def _act(
        self,
        request: web.Request,
        endpoint: str,
        body: dict[str, Any],
        config: FaultConfig,
        decision: Decision,
        headers: dict[str, str],
        fail: Callable[[int, str, str, str | None, str | None], Respond],
        reply: Callable[[web.StreamResponse], Respond],
    ) -> tuple[str, str, float, Respond]:
        latency_s = decision.latency_s
        fault = decision.fault
        reason = decision.reason
        if fault == "400":
            message = "Injected bad request (FAULT:400)."
            return (
                "400",
                reason,
                latency_s,
                fail(400, message, "invalid_request_error", None, "injected_fault"),
            )
        if fault == "500":
            message = "The server had an error while processing your request (injected)."
            return "500", reason, latency_s, fail(500, message, "server_error", None, None)
        if fault == "429":
            headers = {
                **headers,
                "retry-after": _format_seconds(config.retry_after),
                "retry-after-ms": str(int(config.retry_after * 1000)),
            }
            body = _error_body(
                request.path,
                429,
                "Rate limit reached (injected). Please try again later.",
                "requests",
                None,
                "rate_limit_exceeded",
                headers["x-request-id"],
            )
            return "429", reason, latency_s, reply(_json_response(body, 429, headers))

        async def reset() -> web.StreamResponse:
            _abort(request)
            # Never sent: aiohttp drops a response whose connection is gone.
            return web.Response(status=204)

        if fault == "hang":

            async def hang() -> web.StreamResponse:
                await self.sleep(config.hang_s)
                return await reset()

            return "hang", reason, latency_s, hang

        if fault == "reset":
            return "reset", reason, latency_s, reset

        stream = body.get("stream") is True and endpoint in ("chat", "completions", "messages")
        payload = _ANSWERS[endpoint](body)
        outcome = "malformed" if fault == "malformed" else "ok"
        if stream:

            async def send_stream() -> web.StreamResponse:
                if endpoint == "messages":
                    return await messages_api.stream(request, payload, headers, outcome)
                return await _stream(request, endpoint, body, payload, headers, outcome)

            return outcome, reason, latency_s, send_stream
        if fault == "malformed":
            data = orjson.dumps(payload)
            truncated = data[: max(1, len(data) // 2)]
            return (
                outcome,
                reason,
                latency_s,
                reply(web.Response(body=truncated, content_type=JSON, headers=headers)),
            )
        return outcome, reason, latency_s, reply(_json_response(payload, 200, headers))

    @staticmethod
    def _validate(endpoint: str, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is None or model == "":
            raise BadRequest("you must provide a model parameter", "model", None)
        if not isinstance(model, str):
            raise BadRequest("model must be a string", "model", "invalid_type")
        if model.startswith("bad-request-"):
            raise BadRequest(
                f"The model `{model}` is rejected by this upstream (deterministic 400).",
                "model",
                "invalid_model",
            )
        if "stream" in body and not isinstance(body["stream"], bool | None):
            raise BadRequest("stream must be a boolean", "stream", "invalid_type")
        n = body.get("n")
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128):
            raise BadRequest("n must be an integer between 1 and 128", "n", "invalid_value")
        if endpoint == "chat":
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise BadRequest("messages must be a non-empty array", "messages", "invalid_value")
            for i, message in enumerate(messages):
                if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                    raise BadRequest(
                        f"messages[{i}] must be an object with a role",
                        f"messages[{i}]",
                        "invalid_value",
                    )
                vision.check_chat_content(message.get("content"), f"messages[{i}].content")
            fmt = body.get("response_format")
            if fmt is not None:
                kind = fmt.get("type") if isinstance(fmt, dict) else None
                if kind not in _RESPONSE_FORMATS:
                    raise BadRequest(
                        "response_format.type must be one of text, json_object, json_schema",
                        "response_format",
                        "invalid_value",
                    )
                if kind == "json_schema" and not isinstance(fmt.get("json_schema"), dict):
                    raise BadRequest(
                        "response_format.json_schema must be an object",
                        "response_format.json_schema",
                        "invalid_value",
                    )
        elif endpoint == "responses":
            vision.check_responses_body(body)
        elif endpoint == "messages":
            messages_api.validate(body)
        elif endpoint == "completions":
            prompt = body.get("prompt")
            if not isinstance(prompt, str | list) or prompt == []:
                raise BadRequest(
                    "prompt must be a string or a non-empty array", "prompt", "invalid_value"
                )
        else:
            _validate_embedding_input(body.get("input"))
            dims = body.get("dimensions")
            if dims is not None and (
                not isinstance(dims, int)
                or isinstance(dims, bool)
                or not 1 <= dims <= _MAX_DIMENSIONS
            ):
                raise BadRequest(
                    f"dimensions must be an integer between 1 and {_MAX_DIMENSIONS}",
                    "dimensions",
                    "invalid_value",
                )
            if body.get("encoding_format", "float") not in ("float", "base64"):
                raise BadRequest(
                    "encoding_format must be 'float' or 'base64'",
                    "encoding_format",
                    "invalid_value",
                )

    @staticmethod
    def _models() -> dict[str, Any]:
        return {"object": "list", "data": [Upstream._model(name) for name in MODELS]}

    @staticmethod
    def _model(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": answers.CREATED, "owned_by": "upstream"}

    # -- test-only routes ---------------------------------------------------------------------

    async def get_control(self, request: web.Request) -> web.Response:
        return _json_response(self.config.to_dict())

    async def post_control(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read())
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of settings")
            self.config = self.config.updated(changes)
        except (ValueError, TypeError) as exc:
            return _json_response(error_body(str(exc), "invalid_request_error"), 400)
        return _json_response(self.config.to_dict())

    async def get_stats(self, request: web.Request) -> web.Response:
        digests = request.query.get("digests", "1") not in ("0", "false", "no")
        return _json_response(self.stats(digests=digests))

    async def post_reset(self, request: web.Request) -> web.Response:
        raw = await request.read()
        options = orjson.loads(raw) if raw.strip() else {}
        self.reset(config=bool(isinstance(options, dict) and options.get("config")))
        return _json_response({"config": self.config.to_dict()})

    async def get_log(self, request: web.Request) -> web.Response:
        since = int(request.query.get("since", "0"))
        return _json_response({"data": self.log[since:]})

    async def get_health(self, request: web.Request) -> web.Response:
        return _json_response({"status": "ok"})


def _resolve(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


def _abort(request: web.Request) -> None:
    """Reset the TCP connection: SO_LINGER 0 then abort, so the peer gets an RST, not a FIN."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _chunks(endpoint: str, body: dict[str, Any], payload: dict[str, Any]) -> list[dict[str, Any]]:
    """The streamed form of a chat completion or completion ``payload``."""
    include_usage = isinstance(body.get("stream_options"), dict) and bool(
        body["stream_options"].get("include_usage")
    )
    base: dict[str, Any] = {"id": payload["id"], "created": payload["created"]}
    base["model"] = payload["model"]
    base["system_fingerprint"] = payload["system_fingerprint"]
    chunks: list[dict[str, Any]] = []
    if endpoint == "chat":
        base["object"] = "chat.completion.chunk"
        for choice in payload["choices"]:
            i = choice["index"]
            deltas: list[dict[str, Any]] = [{"role": "assistant", "content": "", "refusal": None}]
            deltas += [
                {"content": piece}
                for piece in answers.split_stream_pieces(choice["message"]["content"])
            ]
            chunks += [
                {
                    **base,
                    "choices": [
                        {"index": i, "delta": delta, "logprobs": None, "finish_reason": None}
                    ],
                }
                for delta in deltas
            ]
            chunks.append(
                {
                    **base,
                    "choices": [
                        {"index": i, "delta": {}, "logprobs": None, "finish_reason": "stop"}
                    ],
                }
            )
    else:
        base["object"] = "text_completion"
        for choice in payload["choices"]:
            i = choice["index"]
            pieces = answers.split_stream_pieces(choice["text"])
            for j, piece in enumerate(pieces):
                last = j == len(pieces) - 1
                chunks.append(
                    {
                        **base,
                        "choices": [
                            {
                                "text": piece,
                                "index": i,
                                "logprobs": None,
                                "finish_reason": "stop" if last else None,
                            }
                        ],
                    }
                )
    if include_usage:
        chunks = [{**chunk, "usage": None} for chunk in chunks]
        chunks.append({**base, "choices": [], "usage": payload["usage"]})
    return chunks


async def _stream(
    request: web.Request,
    endpoint: str,
    body: dict[str, Any],
    payload: dict[str, Any],
    headers: dict[str, str],
    outcome: str,
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**headers, "Cache-Control": "no-cache"})
    response.content_type = "text/event-stream"
    await response.prepare(request)
    chunks = _chunks(endpoint, body, payload)
    if outcome == "malformed":
        await response.write(_sse(chunks[0]))
        await response.write(b'data: {"id": "truncated\n\n')
    else:
        for chunk in chunks:
            await response.write(_sse(chunk))
        await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


def _validate_embedding_input(value: Any) -> None:
    def bad(message: str) -> BadRequest:
        return BadRequest(message, "input", "invalid_value")

    if isinstance(value, str):
        if not value:
            raise bad("input must not be empty")
        return
    if not isinstance(value, list) or not value:
        raise bad("input must be a string or a non-empty array")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return
    for item in value:
        if isinstance(item, str):
            if not item:
                raise bad("input must not contain empty strings")
        elif not (
            isinstance(item, list)
            and item
            and all(isinstance(v, int) and not isinstance(v, bool) for v in item)
        ):
            raise bad("input items must be strings or arrays of token ids")


def build_app(state: Upstream) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app.router.add_get("/_control", state.get_control)
    app.router.add_post("/_control", state.post_control)
    app.router.add_get("/_stats", state.get_stats)
    app.router.add_post("/_reset", state.post_reset)
    app.router.add_get("/_log", state.get_log)
    app.router.add_get("/_health", state.get_health)
    app.router.add_route("*", "/v1/{tail:.*}", state.handle)
    return app


def _listen_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while True:  # a parent's death has no event to wait for: poll
        await asyncio.sleep(0.5)
        if os.getppid() != parent:
            break
    print("upstream: parent process gone, stopping", file=sys.stderr, flush=True)
    stop.set()


async def serve(
    config: FaultConfig, host: str = "127.0.0.1", port: int = 0, *, exit_with_parent: bool = False
) -> None:
    """Serve until SIGTERM/SIGINT; print ``LISTENING <url>`` once the socket accepts.

    ``exit_with_parent``: also stop when the parent process dies (a killed test runner).
    """
    parent = os.getppid()
    state = Upstream(config)
    runner = web.AppRunner(
        build_app(state), access_log=None, handler_cancellation=True, shutdown_timeout=1.0
    )
    await runner.setup()
    sock = _listen_socket(host, port)
    site = web.SockSite(runner, sock, backlog=4096)
    await site.start()
    actual_port = sock.getsockname()[1]
    url_host = f"[{host}]" if ":" in host else host
    print(f"LISTENING http://{url_host}:{actual_port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    watchdog = asyncio.create_task(_watch_parent(parent, stop)) if exit_with_parent else None
    await stop.wait()
    if watchdog is not None:
        watchdog.cancel()
    state.close()  # sleeping and hung requests end now (their connections are reset)
    await runner.cleanup()
    print("upstream: stopped", file=sys.stderr, flush=True)
