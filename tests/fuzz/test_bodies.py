"""hypothesis on what the OpenAPI document describes loosely or not at all: the JSON bodies of
``POST /v1/batches`` and of the synchronous routes, raw bodies of any content type (whole or
chunked), hand-built (and broken) multipart uploads sent whole and in pieces, and odd upload
headers."""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchd.protocol import BATCH_ENDPOINTS, UPLOAD_PURPOSES
from batchd.validation import BOM
from tests.fuzz.support import (
    CHAT_LINES,
    JSON_VALUES,
    LATIN1,
    MAX_BATCH_FILE_BYTES,
    MAX_REQUEST_BODY_BYTES,
    MAX_UPLOAD_BYTES,
    MODELS,
    TEXT,
    UPLOAD,
    UPLOAD_TYPE,
    Api,
    checked,
    fuzz,
    mostly,
    pieces,
)

# -- JSON bodies ----------------------------------------------------------------------------------


def _bodies(
    required: dict[str, Any], optional: dict[str, Any], bad: dict[str, Any]
) -> st.SearchStrategy[Any]:
    """Objects with the ``required`` keys, their values all good (``required``/``optional``) or
    mostly good (``bad`` now and then), some with keys left out or unknown keys, any JSON value."""
    valid = st.fixed_dictionaries(required, optional=optional)
    mixed = st.fixed_dictionaries(
        {key: mostly(value, bad.get(key, JSON_VALUES)) for key, value in required.items()},
        optional={key: mostly(value, bad.get(key, JSON_VALUES)) for key, value in optional.items()},
    )
    partial = st.fixed_dictionaries({}, optional={**required, **optional})
    unknown = st.dictionaries(TEXT, JSON_VALUES, max_size=3)
    return st.one_of(valid, valid, mixed, mixed, partial, unknown, JSON_VALUES)


_BATCH_BODIES = _bodies(
    {
        "input_file_id": st.sampled_from(["{batch}", "{batch}", "{binary}", "file-abc123"]),
        "endpoint": st.sampled_from([*BATCH_ENDPOINTS, "/chat/completions", "/embeddings"]),
        "completion_window": st.just("24h"),
    },
    {
        "metadata": st.none()
        | st.dictionaries(st.text(max_size=64), st.text(max_size=512), max_size=16),
        "output_expires_after": st.fixed_dictionaries(
            {"anchor": st.just("created_at"), "seconds": st.integers(3600, 2_592_000)}
        ),
    },
    {
        "input_file_id": st.just("") | JSON_VALUES,
        "endpoint": st.sampled_from(["chat/completions", "/v2/x", "/v1/chat/completions/"])
        | JSON_VALUES,
        "completion_window": st.sampled_from(["48h", "24H", ""]) | JSON_VALUES,
        "metadata": st.dictionaries(
            st.text(max_size=70), st.text(max_size=520) | JSON_VALUES, max_size=18
        )
        | JSON_VALUES,
        "output_expires_after": st.fixed_dictionaries(
            {},
            optional={
                "anchor": mostly(st.just("created_at"), st.just("now") | JSON_VALUES),
                "seconds": mostly(st.integers(3000, 2_600_000), JSON_VALUES),
            },
        )
        | JSON_VALUES,
    },
)
_INFERENCE_BODIES = _bodies(
    {"model": st.sampled_from(MODELS)},
    {
        "messages": st.just([{"role": "user", "content": "hi"}]),
        "prompt": st.just("hi"),
        "input": st.just("hi") | st.lists(st.text(max_size=5), min_size=1, max_size=3),
        "stream": st.booleans(),
        "n": st.just(1),
        "max_tokens": st.integers(1, 8),
    },
    {
        "model": st.sampled_from(["nope", "", "bad-request-x"]) | JSON_VALUES,
        "n": st.integers(-1, 3) | JSON_VALUES,
        "max_tokens": st.integers(-1, 0) | JSON_VALUES,
    },
)
_INFERENCE_ROUTES = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/openai/v1/chat/completions",
    "/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
]


def _encode(value: Any, known: dict[str, Any]) -> bytes:
    """JSON with every non-ASCII character escaped (lone surrogates included), the placeholders
    ``{batch}`` and ``{binary}`` of ``input_file_id`` replaced by the ids of files that exist."""
    if isinstance(value, dict) and value.get("input_file_id") in ("{batch}", "{binary}"):
        value = {**value, "input_file_id": known[value["input_file_id"][1:-1] + "_file"]["id"]}
    return json.dumps(value).encode()


@pytest.mark.parametrize("route", ["/v1/batches", *_INFERENCE_ROUTES])
def test_json_bodies(quiet_api: Api, known: dict[str, Any], route: str) -> None:
    strategy, schema = (
        (_BATCH_BODIES, "Batch") if route == "/v1/batches" else (_INFERENCE_BODIES, None)
    )

    @fuzz()
    @given(value=strategy)
    def run(value: Any) -> None:
        data = _encode(value, known)
        headers = {"content-type": "application/json"}
        checked(quiet_api.request("POST", route, data=data, headers=headers), schema)

    run()


# -- raw bodies -----------------------------------------------------------------------------------

_CONTENT_TYPES = st.sampled_from(
    [
        None,
        "application/json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=",
        "multipart/form-data; boundary=x",
        'multipart/form-data; boundary="a b"',
        "application/json; charset=latin-1",
        "*/*",
        "",
    ]
)
_POST_ROUTES = [
    "/v1/files",
    "/v1/batches",
    "/v1/batches/batch_0123/cancel",
    "/v1/batches/batch_0123/retry",
    "/v1/messages",
    "/v1/messages/batches",
    *_INFERENCE_ROUTES,
]
_BIG = b'{"model": "' + b"m" * MAX_REQUEST_BODY_BYTES + b'"}'  # over the body limit


@pytest.mark.parametrize("route", _POST_ROUTES)
@fuzz()
@given(
    body=st.binary(max_size=300)
    | st.sampled_from([b"", b"{}", b"[]", b"null", b"{", b"\xff", BOM + b"{}", b"[" * 2000, _BIG]),
    content_type=_CONTENT_TYPES,
    cuts=st.none() | st.lists(st.integers(0, len(_BIG)), min_size=1, max_size=3),
)
def test_raw_bodies(
    quiet_api: Api, route: str, body: bytes, content_type: str | None, cuts: list[int] | None
) -> None:
    """Sent whole (with its Content-Length), or in pieces (chunked, without one)."""
    headers = {} if content_type is None else {"content-type": content_type}
    data = body if cuts is None else pieces(body, cuts)
    checked(quiet_api.request("POST", route, data=data, headers=headers))


# -- Anthropic's Message Batches -----------------------------------------------------------------

_PARAMS = _bodies(
    {
        "model": st.sampled_from(MODELS),
        "max_tokens": st.integers(1, 8),
        "messages": st.just([{"role": "user", "content": "hi"}]),
    },
    {"system": st.text(max_size=10), "temperature": st.floats(0, 1), "stream": st.just(False)},
    {
        "model": st.sampled_from(["nope", ""]) | JSON_VALUES,
        "max_tokens": st.integers(-1, 0) | JSON_VALUES,
        "messages": st.just([]) | JSON_VALUES,
    },
)
_MESSAGE_BATCHES = _bodies(
    {
        "requests": st.lists(
            _bodies(
                {
                    "custom_id": st.sampled_from(["a", "b", "c-1", "d_2"]),
                    "params": _PARAMS,
                },
                {},
                {"custom_id": st.sampled_from(["", "a b", "x" * 65, "é"]) | JSON_VALUES},
            ),
            max_size=4,
        )
    },
    {},
    {},
)


@fuzz()
@given(value=_MESSAGE_BATCHES, cuts=st.none() | st.lists(st.integers(0, 400), max_size=3))
def test_message_batch_bodies(quiet_api: Api, value: Any, cuts: list[int] | None) -> None:
    """Any JSON body to ``POST /v1/messages/batches`` (whole or in pieces): a batch or a 4xx in
    Anthropic's envelope, never a 5xx."""
    body = json.dumps(value).encode()
    data = body if cuts is None else pieces(body, cuts)
    headers = {"content-type": "application/json", "anthropic-version": "2023-06-01"}
    checked(quiet_api.request("POST", "/v1/messages/batches", data=data, headers=headers))


# -- multipart uploads ----------------------------------------------------------------------------

_FIELD_NAMES = [
    "file",
    "purpose",
    "expires_after[anchor]",
    "expires_after[seconds]",
    "expires_after.anchor",
    "expires_after.seconds",
    "other",
    "",
]
_BOUNDARY_CHARS = string.ascii_letters + string.digits + "'()+_,-./:=?"


@dataclass(frozen=True)
class Multipart:
    body: bytes
    content_type: str
    well_formed: bool  # CRLF, closed, untruncated, a boundary that appears in no content
    file_content: bytes | None  # the content of the one "file" part, when there is one


def _part(draw: st.DrawFn, name: str, well_formed: bool) -> tuple[list[bytes], bytes]:
    """The header lines and the content of one part named ``name`` (with odd header lines too
    unless ``well_formed``)."""
    if name == "file":
        filename = draw(
            mostly(
                st.sampled_from(["in.jsonl", "a/../b.jsonl", "..", "C:\\x\\y.jsonl", " ", "é.txt"]),
                st.none() | TEXT,
            )
        )
        content = draw(
            st.sampled_from(
                [
                    b"",
                    b'{"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {}}\n',
                    CHAT_LINES,
                    CHAT_LINES + b"\r\n\xef\xbb\xbf{\n",
                    b"x" * (MAX_BATCH_FILE_BYTES + 1),
                    b"y" * (MAX_UPLOAD_BYTES + 1),
                ]
            )
            | st.binary(max_size=64)
        )
    else:
        filename = draw(st.none() | st.none() | st.just("f.txt"))
        values = {
            "purpose": st.sampled_from(UPLOAD_PURPOSES),
            "expires_after[anchor]": st.just("created_at"),
            "expires_after.anchor": st.just("created_at"),
            "expires_after[seconds]": st.sampled_from(["3600", "86400", " 7200 "]),
            "expires_after.seconds": st.sampled_from(["3600", "86400"]),
        }
        good = values.get(name, st.text(max_size=5))
        other = st.sampled_from(["created_at", "3599", "1e9", "-1", "batch_output", "", "3_600"])
        content = draw(mostly(mostly(good, other).map(str.encode), st.binary(max_size=16)))
    disposition = f'form-data; name="{name}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    headers = [b"Content-Disposition: " + disposition.encode()]
    odd = [
        b"Content-Type: application/octet-stream",
        b"Content-Type: text/plain; charset=utf-8",
        b"X-Odd: a\rb",
        b"no-colon-here",
        b": empty-name",
    ]
    headers += draw(st.lists(st.sampled_from(odd[:2] if well_formed else odd), max_size=2))
    return headers, content


_BREAKAGES = ("drop", "add", "lf", "open", "cut", "header", "type", "boundary", "part-headers")


@st.composite
def multiparts(draw: st.DrawFn) -> Multipart:
    """A multipart upload: a ``purpose`` and a ``file`` part (in either order), maybe
    ``expires_after`` fields, values mostly good; half of them then broken in one to three ways
    (a part dropped or added, LF line ends, no closing boundary, a cut, a wrong header, odd
    header lines in the parts)."""
    broken: set[str] = set()
    if draw(st.booleans()):
        broken.update(draw(st.lists(st.sampled_from(_BREAKAGES), min_size=1, max_size=3)))
    names = ["purpose", "file"]
    if draw(st.booleans()):
        names.reverse()
    if draw(st.booleans()):
        names.insert(draw(st.integers(0, 2)), draw(st.sampled_from(_FIELD_NAMES[2:6])))
    if "drop" in broken:
        names.remove(draw(st.sampled_from(names)))
    if "add" in broken:
        extra = st.sampled_from(_FIELD_NAMES) | TEXT
        names.insert(draw(st.integers(0, len(names))), draw(extra))
    boundary = "b0undary-3f9a"
    if "boundary" in broken:
        boundary = draw(st.text(_BOUNDARY_CHARS, min_size=1, max_size=75))
    newline = b"\n" if "lf" in broken else b"\r\n"
    delimiter = b"--" + boundary.encode()
    parts: list[tuple[str, bytes]] = []
    chunks: list[bytes] = []
    for name in names:
        headers, content = _part(draw, name, "part-headers" not in broken)
        chunks.append(delimiter + newline + newline.join(headers) + newline + newline)
        chunks.append(content + newline)
        parts.append((name, content))
    if "open" not in broken:
        chunks.append(delimiter + b"--" + newline)
    body = b"".join(chunks)
    if "cut" in broken:
        body = body[: draw(st.integers(0, len(body)))]
    header_boundary = draw(st.sampled_from([boundary, f'"{boundary}"']))
    if "header" in broken:
        header_boundary = draw(st.text(LATIN1, max_size=5))
    content_type = f"multipart/form-data; boundary={header_boundary}"
    if "type" in broken:
        content_type = draw(
            st.sampled_from(["multipart/form-data", "multipart/mixed; boundary=x", "text/plain"])
        )
    files = [content for name, content in parts if name == "file"]
    well_formed = (
        not broken & {"lf", "open", "cut", "header", "type", "part-headers"}
        and all(delimiter not in content for _, content in parts)
        and len(files) == 1
    )
    return Multipart(body, content_type, well_formed, files[0] if len(files) == 1 else None)


@fuzz()
@given(upload=multiparts(), cuts=st.lists(st.integers(0, 600), min_size=1, max_size=8))
def test_multipart_uploads(quiet_api: Api, upload: Multipart, cuts: list[int]) -> None:
    """One upload sent whole, then again in pieces (chunked: no Content-Length): the same answer,
    and a well-formed upload stored byte for byte."""
    headers = {"content-type": upload.content_type}
    whole = quiet_api.request("POST", "/v1/files", data=upload.body, headers=headers)
    created = checked(whole, "OpenAIFile")
    in_pieces = pieces(upload.body, cuts)
    again_response = quiet_api.request("POST", "/v1/files", data=in_pieces, headers=headers)
    again = checked(again_response, "OpenAIFile")
    assert again_response.status_code == whole.status_code, (whole.text, again_response.text)
    if whole.status_code != 200:  # the same error (python-multipart's message has an offset)
        assert {**again["error"], "message": ""} == {**created["error"], "message": ""}
        return
    stored = [quiet_api.request("GET", f"/v1/files/{b['id']}/content") for b in (created, again)]
    assert [r.status_code for r in stored] == [200, 200]
    assert stored[0].content == stored[1].content
    assert created["bytes"] == again["bytes"] == len(stored[0].content)
    if upload.well_formed:
        assert stored[0].content == upload.file_content


@pytest.mark.parametrize(
    "content",
    [b"the whole content\r\n", b"the first half of the con"],
    ids=["without-closing-boundary", "cut-in-the-content"],
)
def test_multipart_cut_short_is_rejected(quiet_api: Api, content: bytes) -> None:
    """An upload cut short (a client or proxy that gave up) is not stored as a file."""
    head = UPLOAD[: UPLOAD.index(b"abc")]
    before = quiet_api.request("GET", "/v1/files").json()["data"]
    response = quiet_api.send("POST", "/v1/files", head + content, {"content-type": UPLOAD_TYPE})
    error = checked(response)
    assert response.status_code == 400, f"stored a cut-short upload: {response.text}"
    assert "closing boundary" in error["error"]["message"]
    assert quiet_api.request("GET", "/v1/files").json()["data"] == before


# -- upload headers -------------------------------------------------------------------------------


@fuzz()
@given(
    content_length=st.text(LATIN1, max_size=12) | st.integers(0, 10**30).map(str),
    content_type=st.text(LATIN1, max_size=40).map(lambda s: "multipart/form-data; " + s)
    | st.just(UPLOAD_TYPE),
)
def test_upload_headers(quiet_api: Api, content_length: str, content_type: str) -> None:
    headers = {"content-length": content_length, "content-type": content_type}
    checked(quiet_api.send("POST", "/v1/files", UPLOAD, headers), "OpenAIFile")


@pytest.mark.parametrize("value", ["²", "¹²", "³"])
def test_upload_content_length_of_superscript_digits(quiet_api: Api, value: str) -> None:
    """Digits that str.isdigit() accepts and int() does not: a clean answer, never a 500."""
    headers = {"content-length": value, "content-type": UPLOAD_TYPE}
    checked(quiet_api.send("POST", "/v1/files", UPLOAD, headers), "OpenAIFile")
