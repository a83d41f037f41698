"""What the fuzz tests share: the app served in this process, the checks every answer must pass,
and the strategies of more than one module.

The app runs in this process on a temporary data directory, served through schemathesis' ASGI
client: its lifespan and every request run on one event loop, as in a server, and the lifespan
runs once for the whole package (:class:`_OneLifespan`). Its routing table points at the fake
upstream (``tests/upstream``) in its own process, so that the synchronous routes answer.

Every answer must be well formed (:func:`check_response`): never a 5xx; every 4xx the OpenAI
error envelope (exactly ``{"error": {"message", "type", "param", "code"}}``, message and type
non-empty strings, valid against the official ``ErrorResponse`` schema of ``../shared/spec`` where
it is present); an ``x-request-id`` on every answer and ``x-should-retry: false`` on the
deterministic 4xx; 2xx bodies valid against the official schemas. No request may take longer than
:data:`TIMEOUT` (a hang), and nothing may be logged at ERROR or above (a 500's traceback, a
background task that crashed): :class:`Api` collects those, and the ``quiet_api`` fixture fails a
test that leaves any.

Every test is derandomized (the same examples on every run) with a small ``max_examples``;
``FUZZ_SCALE=N`` in the environment multiplies them, for a deeper run by hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import requests
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.python import asgi as schemathesis_asgi
from starlette.types import Receive, Scope, Send

from batchd.api import create_app
from batchd.api.errors import anthropic_error_type
from batchd.config import ModelRoute, Settings
from tests.schema import conforms
from tests.serverproc import DEFAULT_MODELS

MODELS = tuple(route["name"] for route in DEFAULT_MODELS)
CHAT = "/v1/chat/completions"
BASE_URL = f"http://{schemathesis_asgi.HOST}"
TIMEOUT = 30.0  # seconds; a request still unanswered by then is a hang
MAX_BATCH_FILE_BYTES = 64 * 1024  # small limits, so that fuzzed uploads reach the 413s
MAX_UPLOAD_BYTES = 256 * 1024
MAX_REQUEST_BODY_BYTES = 64 * 1024
#: The API keys of the second app: its projects ``alpha`` (tight limits) and ``beta``.
KEYS = {"alpha": "sk-fuzz-alpha-0123456789", "beta": "sk-fuzz-beta-0123456789"}
ERROR_KEYS = {"message", "type", "param", "code"}
_RETRYABLE_4XX = {408, 429}


def fuzz(max_examples: int = 40) -> settings:
    """Hypothesis settings for these tests: few examples, the same ones on every run
    (``FUZZ_SCALE=10 pytest tests/fuzz`` for ten times as many). A test's fixtures are set up
    once for all its examples (the app is shared anyway)."""
    return settings(
        max_examples=max_examples * int(os.environ.get("FUZZ_SCALE", "1")),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.filter_too_much,
            HealthCheck.function_scoped_fixture,
        ],
    )


def app_settings(data_dir: Path, upstream_url: str, **options: Any) -> Settings:
    models = [ModelRoute(**{**route, "base_url": upstream_url}) for route in DEFAULT_MODELS]
    return Settings(
        data_dir=data_dir,
        models=models,
        max_batch_file_bytes=MAX_BATCH_FILE_BYTES,
        max_upload_bytes=MAX_UPLOAD_BYTES,
        max_request_body_bytes=MAX_REQUEST_BODY_BYTES,
        max_requests_per_batch=50,
        cancel_grace_seconds=0.2,
        **options,
    )


# The document does not depend on the settings: build it once, at collection, without starting
# anything (the lifespan is what touches the data directory).
DOCUMENT = create_app(
    app_settings(Path("/nonexistent/batchd-fuzz"), "http://127.0.0.1:9/v1")
).openapi()
SCHEMA = schemathesis.openapi.from_dict(DOCUMENT)
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}

# The official schema of the 2xx body of each route (``None``: not JSON or not batchd's shape).
OK_SCHEMAS: dict[str, str | None] = {
    "GET /health": None,
    "POST /v1/files": "OpenAIFile",
    "GET /v1/files": "ListFilesResponse",
    "GET /v1/files/{file_id}": "OpenAIFile",
    "DELETE /v1/files/{file_id}": "DeleteFileResponse",
    "GET /v1/files/{file_id}/content": None,
    "POST /v1/batches": "Batch",
    "GET /v1/batches": "ListBatchesResponse",
    "GET /v1/batches/{batch_id}": "Batch",
    "POST /v1/batches/{batch_id}/cancel": "Batch",
    "POST /v1/batches/{batch_id}/retry": "Batch",
    "GET /v1/batches/{batch_id}/partial/output": None,  # JSONL: the output file's lines so far
    "GET /v1/batches/{batch_id}/partial/errors": None,
    "POST /v1/chat/completions": None,  # the upstream's answer, relayed
    "POST /v1/completions": None,
    "POST /v1/embeddings": None,
    "POST /v1/responses": None,
    "GET /v1/models": "ListModelsResponse",
    "GET /v1/models/{model}": "Model",
    "POST /v1/messages": None,  # Anthropic's Message, relayed or translated
    # Anthropic's Message Batches: their schemas are batchd's (batchd.protocol.MessageBatch…),
    # checked by schemathesis against the document
    "POST /v1/messages/batches": None,
    "GET /v1/messages/batches": None,
    "GET /v1/messages/batches/{batch_id}": None,
    "POST /v1/messages/batches/{batch_id}/cancel": None,
    "DELETE /v1/messages/batches/{batch_id}": None,
    "GET /v1/messages/batches/{batch_id}/results": None,
}


# -- the answer checks ----------------------------------------------------------------------------


def check_anthropic_error(status: int, headers: dict[str, str], body: dict[str, Any]) -> Any:
    """Anthropic's error envelope: ``{"type": "error", "error": {"type", "message"},
    "request_id"}``, the request id that of the headers."""
    assert set(body) == {"type", "error", "request_id"}, f"not Anthropic's envelope: {body!r}"
    assert body["type"] == "error", body
    assert body["request_id"] == headers["request-id"] == headers["x-request-id"], body
    error = body["error"]
    assert isinstance(error, dict), body
    assert set(error) == {"type", "message"}, error
    assert isinstance(error["message"], str), error
    assert error["message"], error
    assert error["type"] == anthropic_error_type(status), body
    return body


def check_response(
    status: int, headers: dict[str, str], content: bytes, ok_schema: str | None = None
) -> Any:
    """Assert that one answer is well formed (see the module docstring); its JSON body, if any.
    ``headers`` have lower-case names."""
    assert status < 500, f"server error {status}: {content[:500]!r}"
    request_id = headers.get("x-request-id", "")
    assert request_id.startswith("req_"), f"x-request-id is {request_id!r}"
    if status >= 400:
        deterministic = status not in _RETRYABLE_4XX
        assert headers.get("x-should-retry") == ("false" if deterministic else None), headers
        content_type = headers.get("content-type", "")
        assert content_type.startswith("application/json"), f"{status} as {content_type!r}"
        body = orjson.loads(content)
        assert isinstance(body, dict), body
        if "request-id" in headers:  # Anthropic's routes (/v1/messages…), Anthropic's envelope
            return check_anthropic_error(status, headers, body)
        assert set(body) == {"error"}, f"not the OpenAI envelope: {body!r}"
        error = body["error"]
        assert isinstance(error, dict), body
        assert set(error) == ERROR_KEYS, f"the envelope's error lacks or adds keys: {error!r}"
        for key in ("message", "type"):
            assert isinstance(error[key], str), error
            assert error[key], error
        for key in ("param", "code"):
            assert error[key] is None or isinstance(error[key], str), error
        return conforms("ErrorResponse", body)
    if 200 <= status < 300 and ok_schema is not None:
        return conforms(ok_schema, orjson.loads(content))
    return None


def lower(headers: Any) -> dict[str, str]:
    """Header names in lower case; the first value of schemathesis' lists."""
    return {
        name.lower(): value[0] if isinstance(value, list) else value
        for name, value in headers.items()
    }


def checked(response: requests.Response, ok_schema: str | None = None) -> Any:
    """:func:`check_response` on an answer of the in-process client."""
    return check_response(
        response.status_code, lower(response.headers), response.content, ok_schema
    )


# -- the app --------------------------------------------------------------------------------------


@dataclass
class Api:
    """The app in this process, its lifespan running, and what it logged at ERROR or above."""

    client: requests.Session
    errors: list[logging.LogRecord] = field(default_factory=list)

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", TIMEOUT)
        kwargs.setdefault("allow_redirects", False)
        return self.client.request(method, path, **kwargs)

    def send(
        self, method: str, path: str, body: bytes | None, headers: dict[str, str]
    ) -> requests.Response:
        """A request with exactly these header values (``requests`` would replace
        Content-Length and refuse values with leading spaces)."""
        prepared = requests.Request(method, BASE_URL + path, data=body).prepare()
        prepared.headers.update(headers)
        return self.client.send(prepared, timeout=TIMEOUT, allow_redirects=False)

    def upload(
        self,
        content: bytes,
        purpose: str,
        filename: str = "in.jsonl",
        headers: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        response = self.request(
            "POST",
            "/v1/files",
            files={"file": (filename, content)},
            data={"purpose": purpose},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = checked(response, "OpenAIFile")
        return body

    def assert_quiet(self) -> None:
        """Nothing logged at ERROR or above since the last call (a 500, a background crash)."""
        logged, self.errors[:] = list(self.errors), []
        assert not logged, "logged errors:\n" + "\n".join(
            logging.Formatter().format(record) for record in logged
        )


class CollectErrors(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.ERROR)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        self.into.append(record)


class _OneLifespan:
    """``app``, its lifespan run once for as long as the tests need it, whatever lifespan
    messages come: schemathesis' pytest plugin ends every ASGI lifespan after each test, and
    batchd's services would otherwise stop and start again (a restart of the server) between
    tests. A request to :data:`STOP_PATH` ends the lifespan (then answers 204)."""

    STOP_PATH = "/__fuzz__/stop-lifespan"

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()  # (bound to the loop that first waits on it)
        self._stop = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await self._start()
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        elif scope["type"] == "http" and scope["path"] == self.STOP_PATH:
            await self._finish()
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        else:
            await self.app(scope, receive, send)

    async def _start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
            started = asyncio.ensure_future(self._started.wait())
            await asyncio.wait({started, self._task}, return_when=asyncio.FIRST_COMPLETED)
            started.cancel()
            if self._task.done():
                self._task.result()  # the startup failed: raise its error

    async def _run(self) -> None:
        async with self.app.router.lifespan_context(self.app):
            self._started.set()
            await self._stop.wait()

    async def _finish(self) -> None:
        if self._task is not None:
            self._stop.set()
            await self._task


@contextlib.contextmanager
def serving(app: FastAPI, errors: list[logging.LogRecord]) -> Iterator[Api]:
    """The app served in this process, through schemathesis' ASGI client: the app's lifespan and
    every request run on schemathesis' event-loop thread (one loop for the services and the
    requests, as in a server)."""
    wrapper = _OneLifespan(app)
    with schemathesis_asgi.get_client(wrapper) as client:
        served = Api(client, errors)
        try:
            yield served
        finally:
            client.post(_OneLifespan.STOP_PATH, timeout=TIMEOUT)
            schemathesis_asgi.shutdown_lifespans()
        served.assert_quiet()  # nothing went wrong while the services stopped


# -- what more than one module sends --------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
LATIN1 = st.characters(codec="latin-1", exclude_characters="\r\n")  # what a header can hold
JSON_VALUES = st.recursive(  # encoded with json.dumps: lone surrogates become "\udXXX" escapes
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)


def mostly(good: st.SearchStrategy[Any], other: st.SearchStrategy[Any] = JSON_VALUES) -> Any:
    """``good`` three times in four, else ``other``."""
    return st.one_of(good, good, good, other)


def chat_line(custom_id: str = "a", **body: Any) -> dict[str, Any]:
    """A valid request of a chat batch."""
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": CHAT,
        "body": {"model": MODELS[0], "messages": [{"role": "user", "content": "hi"}], **body},
    }


CHAT_LINES = b"".join(orjson.dumps(chat_line(f"c{i}")) + b"\n" for i in range(3))
#: A small, well-formed upload, its boundary ``b``.
UPLOAD = (
    b'--b\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nuser_data\r\n'
    b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nabc\r\n--b--\r\n'
)
UPLOAD_TYPE = "multipart/form-data; boundary=b"


def pieces(body: bytes, cuts: list[int]) -> Iterator[bytes]:
    """``body`` cut at ``cuts``: sent so, a chunked request without a Content-Length."""
    at = 0
    for cut in sorted(cuts):
        if cut > at:
            yield body[at:cut]
            at = cut
    yield body[at:]


_ID_CHARS = st.characters(codec="utf-8")


def mutated_ids(real: str) -> st.SearchStrategy[str]:
    """``real`` itself, or ids near it, or anything."""
    n = len(real)
    return st.one_of(
        st.just(real),
        st.just(real),
        st.tuples(st.integers(0, n - 1), _ID_CHARS).map(
            lambda t: real[: t[0]] + t[1] + real[t[0] + 1 :]
        ),
        st.integers(0, n - 1).map(lambda i: real[:i]),
        st.text(_ID_CHARS, min_size=1, max_size=4).map(lambda s: real + s),
        st.sampled_from([real.upper(), real.lower(), real.swapcase(), " " + real, real + "\n"]),
        st.text(_ID_CHARS, max_size=20),
    )


def path_to(prefix: str, object_id: str, suffix: str = "") -> str:
    """The path of an object, its id percent-encoded whatever it holds."""
    return f"{prefix}/{quote(object_id, safe='')}{suffix}"


def routable(object_id: str) -> bool:
    """Whether :func:`path_to` reaches a route with ``object_id`` as its path parameter (an
    empty id, a slash or a dot segment leave it)."""
    return bool(object_id) and "/" not in object_id and object_id not in (".", "..")
