"""The inline requests of Anthropic's Message Batches, parsed as the body arrives.

``POST /v1/messages/batches`` takes ``{"requests": [{"custom_id": ..., "params": {...}}, ...]}``:
up to 256 MB and 100,000 requests, each ``params`` a Messages API request. :class:`InlineRequests`
is a push parser of such a body: it is fed the body in chunks (any split, ~1 MiB in practice)
and returns, for each chunk, the JSONL lines of batchd's batch input format of the requests that
the chunk completed::

    {"custom_id": "...", "method": "POST", "url": "/v1/messages", "body": <params>}

Memory stays bounded: one request is built at a time (plus the custom_ids seen, for the
duplicate check, and the lines of the chunk); the body is never held whole, as bytes or as
Python objects.

What is checked here is the shape Anthropic validates for the whole batch, reported in its style
(pydantic's messages, the JSON path first, ``param`` the path): the top level (``requests``
only), each request (``custom_id`` and ``params`` only, a valid and unique ``custom_id``), the
three required params (``model``, ``max_tokens``, ``messages``), no ``stream``, and one model for
the whole batch. Anything deeper in ``params`` (content blocks, unknown params) is validated per
request when it runs, as for a JSONL input file. Every problem is an
:class:`~batchd.errors.InvalidRequest`: the first one in the body, raised by the call whose
chunk holds it (the rest of that chunk is parsed, nothing is made of it; see
:class:`_Structure`). The params come out as ``orjson.loads`` reads them, but for the integers
outside -(2**63-1)..2**63-1 and the numbers beyond a double (refused: yajl reads 64-bit
integers and doubles) and the lone surrogate escapes (refused, as orjson refuses them).

How it is parsed: ijson's C backend (yajl2_c), its three coroutines (bytes to events, events to
paths, paths to objects) chained by hand so that each calls the next one in C: chained by
``ijson.items_coro``, each is called through a bound ``send`` with a tuple for every JSON event.
The prefix of the items coroutine is a :class:`_Structure`, whose ``__eq__`` is what the C code
asks about each event *outside* a request being built: the top level, the ``requests`` list,
the start of each request. That is one Python call a request, and it sees each path of the top
level: the structure (unknown keys, ``requests`` not a list) and the request limit are checked
there at no measurable cost. Measured on a body of 100,000 requests of ~540 bytes (54 MB) in
chunks of 1 MiB, on a 2-vCPU VM: 0.62 s (~88 MB/s), a little less than ``orjson.loads`` of the
whole body plus ``orjson.dumps`` of each line (0.70 s), 1.2x ijson's own ``items`` generator
doing nothing with the requests (0.53 s); a peak of ~18 MiB of memory above the body's bytes
instead of ~256 MiB. The alternatives measured, in time relative to this: ``ijson.items_coro``
2x; a second pipeline (``parse_coro``) for the top level, its events' prefixes checked in
Python, 2.3-2.6x; the requests built in Python from the events of one ``parse_coro``,
1.5-1.9x.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any, Final

import ijson  # type: ignore[import-untyped]
import orjson

from batchd.errors import InvalidRequest
from batchd.protocol import MESSAGES_ENDPOINT

__all__ = ["InlineRequests"]

#: ijson's C backend (yajl); ImportError where its wheel has no C extension.
_YAJL: Any = ijson.get_backend("yajl2_c")

_SHAPE: Final = 'send {"requests": [{"custom_id": ..., "params": {...}}]}.'
_CUSTOM_ID_PATTERN: Final = "^[a-zA-Z0-9_-]{1,64}$"
_custom_id_ok = re.compile(r"[a-zA-Z0-9_-]{1,64}").fullmatch
_dumps = orjson.dumps
_NEWLINE: Final = orjson.OPT_APPEND_NEWLINE
_ITEM: Final = ("custom_id", "params")
#: What yajl raises for a problem of the body (UnicodeDecodeError: a string it passed that is
#: not UTF-8); others are bugs and propagate.
_PARSE_ERRORS: Final = (ijson.JSONError, UnicodeDecodeError)

# yajl reads ``\ud800`` not followed by a low surrogate as "?" (and pairs it with any \u escape
# after it): such a string is refused, as orjson refuses it. _HIGH finds the chunks that hold a
# high surrogate escape at all (a literal prefix: a fast scan); _LONE_HIGH, a high surrogate
# escape (after an even run of backslashes) that no low one follows.
_HIGH = re.compile(rb"\\u[dD][89abAB]")
_LONE_HIGH = re.compile(
    rb"(?<!\\)(?:\\\\)*\\u[dD][89abAB][0-9a-fA-F]{2}(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
)
_LONE_PROBLEM: Final = "a \\u escape of a high surrogate with no low one after it"
_ESCAPE: Final = 6  # len(b"\\ud83d")
_CARRY: Final = 2 * _ESCAPE - 1  # bytes kept for an escape pair split across chunks

# The states of the "requests" value in _Structure.
_ABSENT: Final = 0
_OPEN: Final = 1  # begun: a list (or an object, or a scalar)
_CLOSED: Final = 2  # ended (or, for an object, its first key seen)


def _required(obj: dict[str, Any], at: str, key: str) -> Any:
    """``obj[key]``, or pydantic's "Field required" at ``at.key``."""
    if key not in obj:
        raise _invalid(f"{at}.{key}", "Field required")
    return obj[key]


def _invalid(path: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{path}: {problem}", param=path)


class _Structure:
    """The prefix of the items coroutine: ``path == self`` is its test of the path of each event
    outside a request being built, and a check of the body's structure.

    A valid body gives these paths: ``""`` (the object starts), ``""`` (the key ``requests``),
    ``"requests"`` (the list starts), ``"requests.item"`` for each request (True: it is built
    and sent to the sink; its own events are not seen here), ``"requests"`` (the list ends),
    ``""`` (the object ends). Any other path, or a known one out of this order, is a problem
    of the body: the first path of any other top-level key is the key itself.

    Nothing may raise in here, nor in the sink: yajl2_c's parse coroutine drops the error of
    the items coroutine it calls (the parse goes on, an exception set: a SystemError later; ijson
    3.6 and before). The first problem is kept in :attr:`problem` instead, for
    :class:`InlineRequests` to raise once the chunk is parsed; from then on the requests are
    built but dropped by the sink.
    """

    __slots__ = ("_after", "_requests", "_top", "limit", "problem", "started")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.started = 0  # the requests begun
        self.problem: Exception | None = None
        self._top = 0  # top-level events before "requests"
        self._requests = _ABSENT
        self._after = 0  # top-level events after "requests"

    def __eq__(self, path: object) -> bool:
        if self.problem is None:
            try:
                return self._follow(path)
            except InvalidRequest as exc:
                self.problem = exc.with_traceback(None)  # (its frames hold the parser)
        return path == "requests.item"

    def _follow(self, path: object) -> bool:
        if path == "requests.item" and self._requests == _OPEN:
            self.started += 1
            if self.started > self.limit:
                raise _invalid(
                    "requests",
                    f"List should have at most {self.limit} items after validation, not "
                    f"{self.limit + 1} or more (batchd's limit of requests in a batch, "
                    "configurable with the setting message_batch_max_requests).",
                )
            return True
        if path == "requests":
            if self._requests == _ABSENT:
                self._requests = _OPEN
            elif self._requests == _OPEN:
                self._requests = _CLOSED  # its end, or the first key of an object
            else:
                raise _invalid("requests", 'the key is given twice; send one "requests" list.')
            return False
        if path == "":
            if self._requests == _ABSENT:
                self._top += 1  # the start, then a key (or the end of {} or [])
                if self._top <= 2:
                    return False
            elif self._requests == _OPEN:
                raise _invalid("requests", "Input should be a valid list")  # a scalar
            else:
                self._after += 1  # the end (or a key)
                if self._after == 1:
                    return False
            # The value of an empty key (its path is "" too).
            raise _invalid('""', "Extra inputs are not permitted")
        if self._requests == _ABSENT and self._top == 1:
            # "item": the body is a list, not an object.
            raise _invalid("requests", "Field required")
        if self._requests == _CLOSED and self._after == 0:
            raise _invalid("requests", "Input should be a valid list")  # an object
        raise _invalid(str(path), "Extra inputs are not permitted")

    @property
    def seen(self) -> bool:
        """Whether the body held a ``requests`` key."""
        return self._requests != _ABSENT


class _Requests:
    """The sink of the parser: each request, built, checked and written as a line.

    It holds nothing that holds the parser: the C coroutines are not seen by the garbage
    collector, so a cycle through them would never be freed.
    """

    def __init__(self, structure: _Structure, url: str) -> None:
        self.count = 0
        self.model: str | None = None
        self.lines: list[bytes] = []
        self._structure = structure
        self._url = url
        self._ids: set[str] = set()

    def send(self, item: object) -> None:
        """One request (it must not raise: see :class:`_Structure`)."""
        if self._structure.problem is not None:
            return
        try:
            if type(item) is dict and len(item) == 2:
                custom_id = item.get("custom_id")
                params = item.get("params")
                if (
                    type(custom_id) is str
                    and type(params) is dict
                    and _custom_id_ok(custom_id) is not None
                    and custom_id not in self._ids
                ):
                    model = params.get("model")
                    max_tokens = params.get("max_tokens")
                    messages = params.get("messages")
                    stream = params.get("stream")
                    if (
                        model is not None
                        and model == self.model
                        and type(max_tokens) is int
                        and max_tokens >= 1
                        and type(messages) is list
                        and messages
                        and (stream is None or stream is False)
                    ):
                        self.lines.append(self._line(custom_id, params))
                        self._ids.add(custom_id)
                        self.count += 1
                        return
            custom_id, params = self._check(item)  # raises, but for the first request
            self.lines.append(self._line(custom_id, params))
            if self.model is None:
                self.model = params["model"]
            self._ids.add(custom_id)
            self.count += 1
        except Exception as exc:
            self._structure.problem = exc.with_traceback(None)  # (its frames hold the parser)

    def _line(self, custom_id: str, params: dict[str, Any]) -> bytes:
        line = {"custom_id": custom_id, "method": "POST", "url": self._url, "body": params}
        try:
            return _dumps(line, option=_NEWLINE)
        except orjson.JSONEncodeError as exc:  # nested deeper than orjson writes (254 levels)
            at = f"requests.{self.count}.params"
            raise _invalid(at, f"cannot be written as JSON: {exc}.") from None

    def _check(self, item: object) -> tuple[str, dict[str, Any]]:
        """Request number :attr:`count` in full: its first problem raised, else its parts."""
        at = f"requests.{self.count}"
        if type(item) is not dict:
            raise _invalid(at, "Input should be a valid dictionary")
        custom_id = _required(item, at, "custom_id")
        if type(custom_id) is not str or _custom_id_ok(custom_id) is None:
            raise _invalid(f"{at}.custom_id", f"String should match pattern '{_CUSTOM_ID_PATTERN}'")
        if custom_id in self._ids:
            raise _invalid(
                f"{at}.custom_id",
                f"Duplicate custom_id {custom_id!r}: each request of a batch needs a unique "
                "custom_id.",
            )
        params = _required(item, at, "params")
        if type(params) is not dict:
            raise _invalid(f"{at}.params", "Input should be a valid dictionary")
        self._check_params(f"{at}.params", params)
        for key in item:
            if key not in _ITEM:
                raise _invalid(f"{at}.{key}", "Extra inputs are not permitted")
        return custom_id, params

    def _check_params(self, at: str, params: dict[str, Any]) -> None:
        model = _required(params, at, "model")
        if type(model) is not str:
            raise _invalid(f"{at}.model", "Input should be a valid string")
        if not model:
            raise _invalid(f"{at}.model", "String should have at least 1 character")
        if self.model is not None and model != self.model:
            raise _invalid(
                f"{at}.model",
                f"{model!r} differs from {self.model!r} of requests.0: batchd runs each batch "
                "on one model; send one batch per model.",
            )
        max_tokens = _required(params, at, "max_tokens")
        if type(max_tokens) is not int:
            raise _invalid(f"{at}.max_tokens", "Input should be a valid integer")
        if max_tokens < 1:
            raise _invalid(f"{at}.max_tokens", "Input should be greater than or equal to 1")
        messages = _required(params, at, "messages")
        if type(messages) is not list:
            raise _invalid(f"{at}.messages", "Input should be a valid list")
        if not messages:
            raise _invalid(
                f"{at}.messages", "List should have at least 1 item after validation, not 0"
            )
        stream = params.get("stream")
        if stream is True:
            raise _invalid(
                f"{at}.stream", 'streaming is not supported in a batch; leave "stream" out.'
            )
        if stream is not None and stream is not False:
            raise _invalid(f"{at}.stream", "Input should be a valid boolean")


class InlineRequests:
    """A push parser of the body of ``POST /v1/messages/batches`` into batch input lines.

    Feed it the body in chunks, then call :meth:`finish`; what each returns is the JSONL of
    the requests completed so far (to be written in order). Any problem raises
    :class:`~batchd.errors.InvalidRequest` (Anthropic's 400 ``invalid_request_error``), and
    so does any call after it. Blocking CPU work: run it in a worker thread.
    """

    def __init__(self, *, max_requests: int, url: str = MESSAGES_ENDPOINT) -> None:
        self._structure = _Structure(max_requests)
        self._requests = _Requests(self._structure, url)
        # Each coroutine is given an object whose ``send`` is the next C coroutine itself (the
        # backend's wrappers pass ``target.send`` on), so each calls the next one directly.
        items = _YAJL.items_basecoro(self._requests, self._structure)
        parse = _YAJL.parse_basecoro(SimpleNamespace(send=items))
        self._parser: Any = _YAJL.basic_parse_basecoro(SimpleNamespace(send=parse), use_float=True)
        self._carry = b""  # the end of the body so far, for escapes split across chunks
        self._blank = True  # whitespace so far
        self._bracket = False  # a "[" before the first request: for requests [] versus {}
        self._error: InvalidRequest | None = None

    @property
    def count(self) -> int:
        """The requests accepted so far."""
        return self._requests.count

    @property
    def model(self) -> str | None:
        """The model of the first request (every request must name it)."""
        return self._requests.model

    def feed(self, chunk: bytes) -> bytes:
        """Parse ``chunk``; return the JSONL lines (b"" possible) of the requests completed by
        it."""
        self._usable()
        if not chunk:
            return b""  # (an empty send would end the parse)
        if self._blank and chunk.strip():
            self._blank = False
        if not self._structure.started and b"[" in chunk:
            self._bracket = True
        lone = self._lone_surrogate(chunk)
        if lone is None:
            self._send(chunk)
        else:
            if lone > 0:
                self._send(chunk[:lone])  # what comes before it, checked first
            raise self._failed(self._not_json(_LONE_PROBLEM))
        return self._take()

    def finish(self) -> bytes:
        """End of body: the last lines; raise if the JSON is incomplete or there were no
        requests."""
        self._usable()
        if _LONE_HIGH.search(self._carry) is not None:
            raise self._failed(self._not_json(_LONE_PROBLEM))
        self._send(None)
        self._parser = None
        if not self._structure.seen:
            raise self._failed(_invalid("requests", "Field required"))
        if not self._requests.count:
            if not self._bracket:  # {}
                raise self._failed(_invalid("requests", "Input should be a valid list"))
            raise self._failed(
                _invalid("requests", "List should have at least 1 item after validation, not 0")
            )
        return self._take()

    def _send(self, data: bytes | None) -> None:
        """Parse ``data`` (None: the end of the body); raise the first problem found."""
        try:
            if data is None:
                self._parser.close()
            else:
                self._parser.send(data)
        except _PARSE_ERRORS as exc:  # yajl stopped: after the problem seen before, if any
            raise self._failed(self._structure.problem or exc) from None
        if self._structure.problem is not None:
            raise self._failed(self._structure.problem)

    def _take(self) -> bytes:
        lines = self._requests.lines
        out = b"".join(lines)
        lines.clear()
        return out

    def _usable(self) -> None:
        if self._error is not None:
            raise self._error
        if self._parser is None:
            raise RuntimeError("InlineRequests: the body was already finished")

    def _lone_surrogate(self, chunk: bytes) -> int | None:
        """The offset in ``chunk`` of a high surrogate escape no low one follows (<= 0: in the
        carry, from the chunk before); None if there is none, as far as the body has come."""
        carry = self._carry
        body = carry + chunk if carry else chunk
        found = None
        if _HIGH.search(body) is not None:
            for match in _LONE_HIGH.finditer(body):
                if match.end() + _ESCAPE <= len(body):  # (else decided with the next chunk)
                    found = match.end() - _ESCAPE - len(carry)
                    break
        # The carry: the last bytes, from after a byte that is not a backslash (the run of
        # backslashes before them kept as its parity), so that an escape in them reads right.
        cut = len(body) - _CARRY
        if cut <= 0:
            self._carry = body
        else:
            run = 0
            if body[cut - 1] == 0x5C:
                run = cut - len(body[:cut].rstrip(b"\\"))
            self._carry = b"\\" * (run & 1) + body[cut:]
        return found

    def _failed(self, exc: Exception) -> InvalidRequest:
        """``exc`` as the error of this body (kept: every later call raises it). An exception
        that is not a problem of the body is raised as it is."""
        self._parser = None  # (its tracebacks will hold this object)
        if isinstance(exc, InvalidRequest):
            error = exc
        elif isinstance(exc, UnicodeDecodeError):
            # yajl lets through UTF-8 of a surrogate, and makes it of a lone \udc00 escape.
            error = self._not_json("a string is not valid UTF-8 (a lone surrogate?)")
        elif isinstance(exc, ijson.JSONError):
            error = self._not_json(_yajl_problem(exc))
        else:
            raise exc
        self._error = error
        return error

    def _not_json(self, problem: str) -> InvalidRequest:
        at = None
        if self._structure.started > self._requests.count:
            at = f"requests.{self._requests.count}"  # the request being built
        where = f" in {at}" if at else ""
        if "overflow" in problem:  # valid JSON, but not a number batchd reads
            return InvalidRequest(
                f"{at or 'The request body'}: a number is out of range ({problem}): an integer "
                "must be between -(2**63-1) and 2**63-1, any other number within the range "
                "of a double.",
                param=at,
            )
        if problem == "parse error: premature EOF":
            problem = "the body is empty" if self._blank else "the body ends before the JSON does"
        return InvalidRequest(f"The request body is not valid JSON: {problem}{where}; {_SHAPE}")


def _yajl_problem(exc: Exception) -> str:
    """The first line of yajl's message (the others show the text around the error)."""
    message = exc.args[0] if exc.args else ""
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    lines = str(message).strip().splitlines()
    return lines[0].rstrip(".") if lines else "invalid JSON"
