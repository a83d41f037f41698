"""The bytes of the output and error files, pinned: the safety net of any rewrite of the result
path (issue 18: splicing upstream bytes, embeddings encoded from numpy, other journal groups,
copies at finalization).

Two batches run through the real engine in process (``BatchManager`` → dispatch → journal →
``write_results``) on a real SQLite store, real blobs and a real journal:

* ``/v1/chat/completions`` through the real ``OpenAIProvider`` against an in-process aiohttp
  upstream that answers fixed *bytes* per request (compact, pretty-printed, raw UTF-8 and
  ``\\u`` escapes, surrogate pairs, ``\\/``, odd numbers, duplicate keys, with and without
  ``x-request-id``), 4xx/5xx with a JSON body, with a body that is not JSON or has no
  ``error``, a 2xx that is not JSON and a timeout (no body);
* ``/v1/embeddings`` through the real ``SentenceTransformersProvider`` whose model is a stub
  (:class:`StubModel`: seeded numpy float32 vectors with awkward values planted: subnormals,
  ``-0.0``, ``1e-8``, ``3.4e38``, magnitudes where the notation changes, nine-digit values), so
  the provider's own float and base64 encoding is what is pinned; plus its 400 results.

The two files of each batch are compared byte for byte with ``tests/data/result_bytes/`` after
only the random ids are replaced (:func:`normalise`): the ``batch_req_…`` id that starts each
line and a ``"request_id":"req_…"`` that batchd drew because the upstream sent none. Key order,
spacing, float digits, unicode escaping, line ends and input order are all pinned.

:func:`test_float32_text_is_the_shortest_round_trip` pins the float formatting on its own:
every float32 comes back from its text exactly, with the fewest significant digits (numpy's
shortest repr of the float32), in today's notation (orjson's float64 notation of that decimal:
positional for 1e-5 <= |x| < 1e16, else ``1e-6``/``1.5e+16``). That is not what orjson writes
for a numpy float32 array (``0.000001`` for 1e-6, ``1.5e+15`` for 1.5e15, ``-1.3459196e+13``):
today's text comes from the float64 nearest the shortest float32 decimal, so an encoder that
writes numpy straight to JSON must reproduce this notation (both tests here fail otherwise).

Regenerate the golden files only when a change of format is intended::

    BATCHD_REGEN_GOLDEN=1 .venv/bin/pytest tests/test_result_bytes.py

(the test then writes them and skips); review the ``git diff`` of ``tests/data/result_bytes/``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import orjson
import pytest
from aiohttp import web
from numpy.typing import NDArray

from batchd.config import Settings
from batchd.engine import BatchManager
from batchd.engine.journal import JournalEntry
from batchd.providers.base import Provider, ProviderRequest
from batchd.providers.openai_http import OpenAIOptions, OpenAIProvider
from batchd.providers.sentence_transformers import (
    SentenceTransformersOptions,
    SentenceTransformersProvider,
    _Instance,
)
from batchd.storage import LocalStorage
from batchd.store import BatchRecord, SQLStore
from tests.test_manager import submit, upload, wait_status

pytestmark = pytest.mark.anyio

GOLDEN = Path(__file__).parent / "data" / "result_bytes"
REGEN = os.environ.get("BATCHD_REGEN_GOLDEN") == "1"
CHAT_MODEL = "gpt-fixed"
EMBED_MODEL = "embed-fixed"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
DIM = 384
VOCAB = 30522
SEED = 20261205
TERMINAL = {"completed", "failed", "expired", "cancelled"}

# -- the float32 values that are hard to write ---------------------------------------------------


def _nine_digit_values(count: int) -> list[float]:
    """float32 values whose shortest decimal has 9 significant digits (the most there is)."""
    rng = np.random.default_rng(SEED)
    found: list[float] = []
    while len(found) < count:
        x = np.float32(rng.uniform(-2.0, 2.0))
        digits = np.format_float_scientific(x, unique=True).split("e")[0].lstrip("-")
        if len(digits.replace(".", "").rstrip("0")) == 9:
            found.append(float(x))
    return found


AWKWARD = np.array(
    [
        0.0,
        -0.0,
        1e-45,  # the smallest subnormal
        -1e-45,
        1e-40,
        1.1754942e-38,  # the largest subnormal
        1.1754944e-38,  # the smallest normal
        1e-8,
        -1e-8,
        1e-7,
        1e-6,
        5e-6,
        1e-5,
        1.2345678e-5,
        1e-4,
        0.1,
        1 / 3,
        2 / 3,
        1.0000001,
        -1.0,
        1.0,
        100.0,
        123456.79,
        16777216.0,
        16777217.0,  # rounds to 16777216 as float32
        1e15,
        1.5e15,
        9.999999e15,
        1e16,
        2.5e16,
        3.4e38,
        -3.4e38,
        3.4028235e38,  # the largest float32
        *_nine_digit_values(8),
    ],
    dtype=np.float32,
)


def _random_finite_float32(rng: np.random.Generator, count: int) -> NDArray[np.float32]:
    """float32 values from random bit patterns (every exponent), NaN and infinities left out."""
    bits = rng.integers(0, 2**32, size=count * 2, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    return np.ascontiguousarray(values[np.isfinite(values)][:count])


# -- the embeddings provider with a stub model ---------------------------------------------------


class StubModel:
    """What ``SentenceTransformersProvider`` uses of its loaded model (``_Model``), without torch:
    each input's vector drawn from a generator seeded by the input, with 8 awkward values planted;
    the input ``"every awkward value"`` starts with all of :data:`AWKWARD` and ``"random bits"``
    is float32 values of random bit patterns. Tokens: the words (or ids) plus 2."""

    np = np
    dimension = DIM
    max_length = 256
    vocab_size = VOCAB
    normalized = False

    def tokenize(self, inputs: Sequence[str | list[int]]) -> Sequence[str | list[int]]:
        return inputs

    def encode(self, inputs: Sequence[str | list[int]]) -> tuple[NDArray[np.float32], list[int]]:
        out = np.empty((len(inputs), DIM), dtype=np.float32)
        counts = []
        for row, item in enumerate(inputs):
            key = item.encode() if isinstance(item, str) else orjson.dumps(item)
            rng = np.random.default_rng([SEED, zlib.crc32(key)])
            vector = (rng.standard_normal(DIM) * 0.05).astype(np.float32)
            if item == "every awkward value":
                vector[: len(AWKWARD)] = AWKWARD
            elif item == "random bits":
                vector = _random_finite_float32(rng, DIM)
            else:
                vector[rng.choice(DIM, 8, replace=False)] = rng.choice(AWKWARD, 8)
            out[row] = vector
            counts.append((len(item.split()) if isinstance(item, str) else len(item)) + 2)
        return out, counts


class StubbedSentenceTransformers(SentenceTransformersProvider):
    """The real provider (parsing, 400 results, ``dimensions``, float and base64 encoding, the
    body) with :class:`StubModel` in each instance instead of a loaded model."""

    async def start(self) -> None:
        for number in range(self.options.instances):
            instance = _Instance(f"{self.model}#{number}", self.options, Path("stub"))
            instance._model = cast(Any, StubModel())
            self._instances.append(instance)


def embeddings_provider() -> StubbedSentenceTransformers:
    options = SentenceTransformersOptions(
        model_path="stub", group_size=16, instances=2, truncate_dimensions=True
    )
    return StubbedSentenceTransformers(EMBED_MODEL, options)


# -- the chat upstream: fixed bytes per request --------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    request_id: str | None = None
    content_type: str = "application/json"
    hang: bool = False  # never answers: the route's timeout ends the request


_COMPACT = (
    b'{"id":"chatcmpl-AbC123","object":"chat.completion","created":1733356800,'
    b'"model":"gpt-fixed-2024-08-06","choices":[{"index":0,"message":{"role":"assistant",'
    b'"content":"Hello! How can I help you today?","refusal":null},"logprobs":null,'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":9,'
    b'"total_tokens":21,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,'
    b'"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},'
    b'"service_tier":"default","system_fingerprint":"fp_50cad350e4"}'
)
_PRETTY_UNICODE = r"""{
  "id": "chatcmpl-uni",
  "object": "chat.completion",
  "created": 1733356801,
  "model": "gpt-fixed",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Caf\u00e9 \u2014 na\u00efve \ud83d\ude00 | raw: café — 中文 😀 Ω | \"quoted\" back\\slash \/slash\nnew\tline\r \u0000 \u001f \u007f \u2028 \u2029 \ufeff <script>&amp;</script>"
      },
      "finish_reason": "stop"
    }
  ],
  "usage": {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35}
}
""".encode()  # noqa: E501
_NESTED = (
    b'{"id":"chatcmpl-tools","object":"chat.completion","created":1733356802,'
    b'"model":"gpt-fixed","choices":[{"index":0,"message":{"role":"assistant","content":null,'
    b'"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather",'
    b'"arguments":"{\\"city\\": \\"Z\\u00fcrich\\", \\"days\\": [1, 2]}"}}]},'
    b'"logprobs":{"content":[{"token":"a","logprob":-0.0,"bytes":[97],"top_logprobs":[]},'
    b'{"token":"\\u00e9","logprob":-1.2345678901234567e-7,"bytes":[195,169],'
    b'"top_logprobs":[{"token":"e","logprob":-2.5E+1,"bytes":[101]}]}]},'
    b'"finish_reason":"tool_calls"}],'
    b'"numbers":[0.1e1,1.50,1E2,2.5e+10,5e-324,1.7976931348623157e308,1.0000000000000002,'
    b"9007199254740993,-9223372036854775808,18446744073709551615,true,false,null],"
    b'"empty":{"object":{},"array":[],"string":""},"dup":1,"dup":2,'
    b'"deep":{"a":{"b":{"c":{"d":[[{"e":"f"}]]}}}},'
    b'"usage":{"prompt_tokens":40,"completion_tokens":12,"total_tokens":52,'
    b'"prompt_tokens_details":{"cached_tokens":32},'
    b'"completion_tokens_details":{"reasoning_tokens":4}}}'
)
_REASONING = (
    b'{ "id" : "chatcmpl-r" , "object" : "chat.completion" , "created" : 1733356803 ,\r\n'
    b'\t"model" : "o-fixed" , "choices" : [ { "index" : 0 , "message" : { "role" : "assistant" ,'
    b' "content" : "42" } , "finish_reason" : "length" } ] ,\r\n'
    b'\t"usage" : { "input_tokens" : 3 , "output_tokens" : 100 ,'
    b' "output_tokens_details" : { "reasoning_tokens" : 96 } } }'
)
_BAD_REQUEST = b"""{
  "error": {
    "message": "Invalid 'messages[0].content': string too long. Expected a string with maximum length 1048576, but got a string with length 1048577 instead.",
    "type": "invalid_request_error",
    "param": "messages[0].content",
    "code": "string_above_max_length"
  }
}"""  # noqa: E501
_NOT_FOUND = (
    b'{"error":{"message":"The model `gpt-gone` does not exist or you do not have access to it.",'
    b'"type":"invalid_request_error","param":null,"code":"model_not_found"}}'
)
_SERVER_ERROR = (
    b'{"error":{"message":"The server had an error while processing your request. Sorry about '
    b'that! \\u26a0","type":"server_error","param":null,"code":null}}'
)

ANSWERS: dict[str, Answer] = {
    "compact": Answer(200, _COMPACT, "upstream-id-0001"),
    "pretty unicode": Answer(200, _PRETTY_UNICODE, "upstream-id-0002"),
    "nested": Answer(200, _NESTED, "upstream-id-0003"),
    "no request id": Answer(200, _COMPACT),
    "reasoning": Answer(201, _REASONING, "upstream-id-0004"),
    "bad request": Answer(400, _BAD_REQUEST, "upstream-id-0005"),
    "not found": Answer(404, _NOT_FOUND),
    "unprocessable text": Answer(
        422, b"Unprocessable Entity: <html>\xc3\xa9</html>\n", None, "text/html"
    ),
    "error without error key": Answer(409, b'{"detail": "conflict", "n": 1.0}', "upstream-id-0006"),
    "server error": Answer(500, _SERVER_ERROR, "upstream-id-0007"),
    "unavailable text": Answer(503, b"", None, "text/plain"),
    "ok but not json": Answer(200, b"<html>oops</html>", "upstream-id-0008", "text/html"),
    "timeout": Answer(200, b"{}", hang=True),
}


@pytest.fixture
async def upstream() -> AsyncIterator[str]:
    """An upstream on a free local port answering :data:`ANSWERS` by the first message's
    content (``"<case>#<n>"``); its ``/v1`` URL."""
    release = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        case, _, number = body["messages"][0]["content"].partition("#")
        answer = ANSWERS[case]
        if answer.hang:
            await asyncio.wait_for(release.wait(), 30)
        await asyncio.sleep(int(number) % 7 / 1000)  # results reach the journal out of order
        headers = {"Content-Type": answer.content_type}
        if answer.request_id is not None:
            headers["x-request-id"] = answer.request_id
        return web.Response(status=answer.status, body=answer.body, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        release.set()
        await runner.cleanup()


# -- the inputs ----------------------------------------------------------------------------------


def _custom_id(prefix: str, i: int) -> str:
    special = ["çé-😀-中", 'quote"and\\back', "sp ace", "ünï/cödé"]
    return f"{special[i % len(special)]}-{i}" if i % 5 == 0 else f"{prefix}-{i:04d}"


def chat_input() -> bytes:
    cases = list(ANSWERS)
    lines = []
    for i in range(180):
        case = cases[i % len(cases)]
        body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": f"{case}#{i}"}]}
        record = {"custom_id": _custom_id("chat", i), "method": "POST", "url": CHAT, "body": body}
        line = orjson.dumps(record)
        lines.append(line + (b"\r\n" if i % 17 == 3 else b"\n"))
        if i == 50:
            lines.append(b"\n")  # a blank line: not a request
    return b"".join(lines)


def _embedding_body(i: int) -> dict[str, Any]:
    kinds: list[dict[str, Any]] = [
        {"input": f"sentence number {i}: the quick brown fox"},
        {"input": [f"first of {i}", f"second of {i}", "every awkward value"]},
        {"input": "random bits", "encoding_format": "float"},
        {"input": f"base64 {i}", "encoding_format": "base64"},
        {"input": [f"b64 a {i}", "every awkward value"], "encoding_format": "base64"},
        {"input": [101, 2023 + i, 102]},
        {"input": [[1, 2, 3], [4, 5 + i]], "user": "u-1"},
        {"input": f"short {i}", "dimensions": 64},
        {"input": f"native {i}", "dimensions": DIM},
        {"input": f"unknown key {i}", "foo": 1},
        {"input": ""},
        {"input": f"bad format {i}", "encoding_format": "bits"},
        {"input": f"too many dimensions {i}", "dimensions": 999},
        {"input": [1, VOCAB + i]},
        {"input": f"every awkward value {i}"},
    ]
    return {"model": EMBED_MODEL, **kinds[i % len(kinds)]}


def embeddings_input() -> bytes:
    lines = []
    for i in range(90):
        record = {
            "custom_id": _custom_id("emb", i),
            "method": "POST",
            "url": EMBEDDINGS,
            "body": _embedding_body(i),
        }
        lines.append(orjson.dumps(record) + b"\n")
    return b"".join(lines)


# -- running a batch -----------------------------------------------------------------------------


async def run_batch(
    store: SQLStore, storage: LocalStorage, manager: BatchManager, endpoint: str, data: bytes
) -> tuple[BatchRecord, bytes, bytes]:
    file = await upload(store, storage, data)
    batch = BatchRecord(
        id=f"batch_{os.urandom(16).hex()}",
        endpoint=endpoint,
        input_file_id=file.id,
        completion_window="24h",
        status="validating",
        created_at=int(time.time()),
    )
    await submit(store, manager, batch)
    done = await wait_status(store, batch.id, TERMINAL)
    assert done.status == "completed", done
    return (
        done,
        await content(storage, done.output_file_id),
        await content(storage, done.error_file_id),
    )


async def content(storage: LocalStorage, file_id: str | None) -> bytes:
    if file_id is None:
        return b""
    return b"".join([chunk async for chunk in storage.read_chunks(file_id)])


_LINE_ID = re.compile(rb'^\{"id":"batch_req_[0-9a-f]{32}",', re.MULTILINE)
_DRAWN_REQUEST_ID = re.compile(rb'"request_id":"req_[0-9a-f]{32}"')


def normalise(data: bytes) -> bytes:
    """``data`` with only batchd's random ids replaced: each line's ``batch_req_`` id (checked
    unique first) and a ``req_`` request id that batchd drew for an answer without one."""
    ids = _LINE_ID.findall(data)
    assert len(ids) == data.count(b"\n"), "a line does not start with its batch_req_ id"
    assert len(set(ids)) == len(ids), "a batch_req_ id appears twice"
    data = _LINE_ID.sub(b'{"id":"batch_req_<id>",', data)
    return _DRAWN_REQUEST_ID.sub(b'"request_id":"req_<drawn>"', data)


def check_golden(name: str, data: bytes) -> None:
    path = GOLDEN / name
    if REGEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return
    assert path.exists(), f"{path} is missing: BATCHD_REGEN_GOLDEN=1 writes it"
    golden = path.read_bytes()
    if data == golden:
        return
    ours, theirs = data.split(b"\n"), golden.split(b"\n")
    line = next(
        (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
        min(len(ours), len(theirs)),
    )
    a = ours[line] if line < len(ours) else b"<no line>"
    b = theirs[line] if line < len(theirs) else b"<no line>"
    at = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    window = slice(max(0, at - 80), at + 80)
    raise AssertionError(
        f"{name} differs from its golden file ({len(data)} vs {len(golden)} bytes, "
        f"{len(ours) - 1} vs {len(theirs) - 1} lines); first at line {line + 1}, byte {at}:\n"
        f"  now:    {a[window]!r}\n  golden: {b[window]!r}\n"
        "If this change of format is intended: BATCHD_REGEN_GOLDEN=1 (see the module docstring)."
    )


async def test_output_and_error_files_are_byte_for_byte_todays(
    tmp_path: Path, upstream: str
) -> None:
    settings = Settings.load(
        data_dir=tmp_path,
        models=[
            {"name": CHAT_MODEL, "provider": "openai", "base_url": upstream},
            {"name": EMBED_MODEL, "provider": "sentence-transformers", "model_path": "stub"},
        ],
        max_attempts=1,
        progress_interval_seconds=0.02,
    )
    store = SQLStore(settings.resolved_database_url)
    await store.open()
    storage = LocalStorage(tmp_path / "files")
    await storage.open()
    chat = OpenAIProvider(
        CHAT_MODEL,
        OpenAIOptions(base_url=upstream, timeout=1.0, max_concurrency=16, failure_threshold=10_000),
    )
    embeddings = embeddings_provider()
    providers: dict[str, Provider] = {CHAT_MODEL: chat, EMBED_MODEL: embeddings}
    for provider in providers.values():
        await provider.start()
    manager = BatchManager(store, storage, settings, providers)
    await manager.start()
    try:
        chat_batch, chat_out, chat_err = await run_batch(
            store, storage, manager, CHAT, chat_input()
        )
        embed_batch, embed_out, embed_err = await run_batch(
            store, storage, manager, EMBEDDINGS, embeddings_input()
        )
    finally:
        await manager.stop()
        for provider in providers.values():
            await provider.close()
        await store.close()

    assert (chat_batch.total, chat_batch.completed, chat_batch.failed) == (180, 70, 110)
    assert (embed_batch.total, embed_batch.completed, embed_batch.failed) == (90, 60, 30)
    files = {
        "chat_output.jsonl": chat_out,
        "chat_errors.jsonl": chat_err,
        "embeddings_output.jsonl": embed_out,
        "embeddings_errors.jsonl": embed_err,
    }
    for name, data in files.items():
        check_golden(name, normalise(data))
    if REGEN:
        pytest.skip(f"BATCHD_REGEN_GOLDEN=1: wrote {', '.join(files)} in {GOLDEN}")


# -- the float formatting on its own -------------------------------------------------------------


_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def expected_text(x: np.float32) -> str:
    """Today's text of a float32: numpy's shortest digits of the float32, written as orjson
    writes a float64 (positional for 1e-5 <= |x| < 1e16 with at least one decimal, else
    ``d[.ddd]e+n`` / ``d[.ddd]e-n``)."""
    sign = "-" if np.signbit(x) else ""
    if x == 0:
        return sign + "0.0"
    mantissa, exponent_text = np.format_float_scientific(abs(x), unique=True).split("e")
    digits = mantissa.replace(".", "").rstrip("0") or "0"
    exponent = int(exponent_text)
    if -5 <= exponent < 16:
        if exponent < 0:
            return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
        whole = digits[: exponent + 1].ljust(exponent + 1, "0")
        return f"{sign}{whole}.{digits[exponent + 1 :] or '0'}"
    head = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{sign}{head}e{'+' if exponent > 0 else '-'}{abs(exponent)}"


async def test_float32_text_is_the_shortest_round_trip() -> None:
    rng = np.random.default_rng(SEED + 1)
    values = np.concatenate(
        [
            AWKWARD,
            _random_finite_float32(rng, 40_000),  # every exponent
            (rng.standard_normal(20_000) * 0.05).astype(np.float32),  # what embeddings hold
        ]
    )
    rows = len(values) // DIM
    values = values[: rows * DIM]

    class Planted(StubModel):
        def encode(
            self, inputs: Sequence[str | list[int]]
        ) -> tuple[NDArray[np.float32], list[int]]:
            return values.reshape(rows, DIM)[: len(inputs)], [1] * len(inputs)

    provider = embeddings_provider()
    await provider.start()
    try:
        for instance in provider._instances:
            instance._model = cast(Any, Planted())
        body = {"model": EMBED_MODEL, "input": [f"row {i}" for i in range(rows)]}
        [result] = await provider.execute([ProviderRequest(0, "c", EMBEDDINGS, body)])
        body64 = {**body, "encoding_format": "base64"}
        [result64] = await provider.execute([ProviderRequest(1, "c", EMBEDDINGS, body64)])
    finally:
        await provider.close()
    assert result.ok
    assert result64.ok
    line = JournalEntry.from_response(0, "c", 200, "r", result.body).output_line()
    texts: list[bytes] = []
    for match in re.finditer(rb'"embedding":\[([^\]]*)\]', line):
        numbers = match.group(1).split(b",")
        assert all(_NUMBER.fullmatch(n) for n in numbers)
        texts.extend(numbers)
    assert len(texts) == len(values)
    parsed = np.array([float(t) for t in texts], dtype=np.float64).astype(np.float32)
    # the same float32, bit for bit (-0.0 included)
    assert np.array_equal(parsed.view(np.uint32), values.view(np.uint32))
    wrong = [
        (float(x), t.decode())
        for x, t in zip(values, texts, strict=True)
        if t.decode() != expected_text(x)
    ]
    assert not wrong, f"{len(wrong)} values not in today's shortest form, e.g. {wrong[:5]}"
    # base64: the little-endian float32 bytes of each row
    body64_out = result64.body
    assert isinstance(body64_out, dict)
    decoded = [
        np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
        for item in body64_out["data"]
    ]
    assert np.array_equal(
        np.concatenate(decoded).view(np.uint32), values.astype("<f4").view(np.uint32)
    )
