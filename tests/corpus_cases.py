"""The malformed-input corpus: committed cases in ``tests/corpus/`` plus generated large ones.

A committed case is ``<name>.jsonl`` (the exact input bytes) and ``<name>.expected.json``::

    {"description": "...",
     "endpoint": "/v1/embeddings",      # optional, default /v1/chat/completions
     "purpose": "user_data",            # optional upload purpose, default batch
     "delete_input": true,              # optional: delete the file before creating the batch
     "errors": [{"code", "message", "param", "line"}, ...]}   # the exact errors.data
    or  "ok": {"total": N, "model": "..."}                     # must validate

``{input_file_id}`` in an expected message stands for the id of the uploaded file.

Cases that are too big (or too awkward) to commit are built here at test time, each with its exact
expected errors. They assume the limits of the session server in ``conftest.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchd.config import ModelNames, Settings

__all__ = [
    "CATALOGUE",
    "CHAT",
    "CORPUS_DIR",
    "EMBEDDINGS",
    "ERROR_KEYS",
    "MAX_ERRORS",
    "MAX_REQUESTS",
    "MAX_REQUEST_BYTES",
    "CorpusCase",
    "all_cases",
    "committed_cases",
    "generated_cases",
]

CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
CHAT = "/v1/chat/completions"
EMBEDDINGS = "/v1/embeddings"
MODEL = "gpt-4o-mini"
FILE_ID = "{input_file_id}"

# The session server's limits: max_requests_per_batch comes from conftest.py, the rest are defaults.
MAX_REQUESTS = 50
MAX_REQUEST_BYTES: int = Settings.model_fields["max_request_bytes"].default
MAX_ERRORS: int = Settings.model_fields["max_validation_errors"].default

ERROR_KEYS = {"code", "message", "param", "line"}
# The BatchError codes of the spec's catalogue that validation may report (plus batchd's summary
# entry when the list is capped).
CATALOGUE = {
    "invalid_json_line",
    "missing_required_parameter",
    "invalid_url",
    "streaming_unsupported",
    "model_not_found",
    "invalid_request",
    "duplicate_custom_id",
    "model_mismatch",
    "too_many_tasks",
    "empty_file",
    "too_many_errors",
}
_CASE_KEYS = {"description", "endpoint", "purpose", "delete_input", "errors", "ok"}
_MB = 1024 * 1024


@dataclass(frozen=True)
class CorpusCase:
    """One input file and what validating it must produce."""

    name: str
    build: Callable[
        [Path], Path
    ]  # returns the input file, writing it under the directory if needed
    errors: list[dict[str, Any]] | None = None
    ok: dict[str, Any] | None = None
    endpoint: str = CHAT
    purpose: str = "batch"
    delete_input: bool = False

    def expected_errors(self, input_file_id: str) -> list[dict[str, Any]]:
        assert self.errors is not None
        return [{**e, "message": e["message"].replace(FILE_ID, input_file_id)} for e in self.errors]


def _load(expected_path: Path) -> CorpusCase:
    name = expected_path.name.removesuffix(".expected.json")
    spec = json.loads(expected_path.read_text(encoding="utf-8"))
    unknown = set(spec) - _CASE_KEYS
    if unknown or ("errors" in spec) == ("ok" in spec):
        raise ValueError(
            f"{expected_path}: bad keys {sorted(spec)} (need exactly one of errors/ok)"
        )
    errors = spec.get("errors")
    if errors is not None and (not errors or any(set(e) != ERROR_KEYS for e in errors)):
        raise ValueError(f"{expected_path}: each error needs exactly the keys {sorted(ERROR_KEYS)}")
    if "ok" in spec and set(spec["ok"]) != {"total", "model"}:
        raise ValueError(f"{expected_path}: 'ok' needs exactly 'total' and 'model'")
    source = expected_path.with_name(f"{name}.jsonl")
    if not source.is_file():
        raise ValueError(f"{expected_path}: no input file {source.name}")
    return CorpusCase(
        name=name,
        build=lambda _directory: source,
        errors=errors,
        ok=spec.get("ok"),
        endpoint=spec.get("endpoint", CHAT),
        purpose=spec.get("purpose", "batch"),
        delete_input=spec.get("delete_input", False),
    )


def committed_cases() -> list[CorpusCase]:
    return [_load(path) for path in sorted(CORPUS_DIR.glob("*.expected.json"))]


# -- generated cases ----------------------------------------------------------------------------


def _request(custom_id: str, content: str = "Say hi.", *, model: str = MODEL) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": content}]}
    line = {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}
    return json.dumps(line).encode()


def _error(
    code: str, message: str, param: str | None = None, line: int | None = None
) -> dict[str, Any]:
    return {"code": code, "message": message, "param": param, "line": line}


def _bad_json(line: int) -> dict[str, Any]:
    return _error("invalid_json_line", "This line is not parseable as valid JSON.", None, line)


def _too_many_tasks(count: int) -> dict[str, Any]:
    return _error(
        "too_many_tasks",
        f"The input file has {count} requests; a batch may have at most {MAX_REQUESTS}. "
        "Split it into several batches.",
    )


#: The names the session server serves (tests.serverproc.DEFAULT_MODELS), listed in messages.
_SERVED = ModelNames.of(["gpt-4o-mini", "text-embedding-3-small"])


def _not_found(shown: str, line: int) -> dict[str, Any]:
    return _error(
        "model_not_found",
        f"The provided model '{shown}' is not supported by the Batch API of this server. "
        + _SERVED.hint(shown),
        "body.model",
        line,
    )


def _padded_request(custom_id: str, size: int, *, close: bool = True) -> Iterable[bytes]:
    """A chat request line of exactly ``size`` bytes plus its newline, in 1 MiB chunks."""
    head = (
        b'{"custom_id": "' + custom_id.encode() + b'", "method": "POST", "url": "' + CHAT.encode()
    )
    head += b'", "body": {"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", '
    head += b'"content": "'
    tail = b'"}]}}' if close else b'"}]}'  # without close, the outer object is never closed
    padding = size - len(head) - len(tail)
    assert padding > 0
    yield head
    for start in range(0, padding, _MB):
        yield b"a" * min(_MB, padding - start)
    yield tail + b"\n"


Chunks = Callable[[], Iterable[bytes]]


def _file(*parts: Chunks) -> Callable[[Path], Path]:
    """A builder writing the chunks of ``parts`` to ``input.jsonl`` in the given directory."""

    def build(directory: Path) -> Path:
        path = directory / "input.jsonl"
        with path.open("wb") as fh:
            for part in parts:
                for chunk in part():
                    fh.write(chunk)
        return path

    return build


def _lines(*lines: bytes) -> Chunks:
    return lambda: (line + b"\n" for line in lines)


def _nested(depth: int, inner: bytes = b"1", *, kind: str = "array") -> bytes:
    if kind == "array":
        return b"[" * depth + inner + b"]" * depth
    return b'{"a": ' * depth + inner + b"}" * depth


def generated_cases() -> list[CorpusCase]:
    ten_mb = 10 * _MB
    long_name = "m" * _MB
    valid = _request("tail")
    deep_cid = b'{"custom_id": ' + _nested(300) + b', "method": "POST", "url": "' + CHAT.encode()
    deep_cid += b'", "body": {"model": "gpt-4o-mini", "messages": [{"role": "user"}]}}'
    deep_method = b'{"custom_id": "r2", "method": ' + _nested(300, b"0", kind="object")
    deep_method += b', "url": "' + CHAT.encode() + b'", "body": {"model": "gpt-4o-mini", '
    deep_method += b'"messages": [{"role": "user"}]}}'
    deep_model = b'{"custom_id": "r3", "method": "POST", "url": "' + CHAT.encode() + b'", '
    deep_model += b'"body": {"model": ' + _nested(300) + b', "messages": [{"role": "user"}]}}'
    deep_ok = b'{"custom_id": "r4", "method": "POST", "url": "' + CHAT.encode() + b'", '
    deep_ok += b'"body": {"model": "gpt-4o-mini", "messages": ' + _nested(1000) + b"}}"
    too_deep_body = deep_ok.replace(_nested(1000), _nested(2000))
    invalid_method = "Invalid method {...}: only 'POST' is supported."
    return [
        CorpusCase(
            "gen_10mb_single_line_invalid_json",
            _file(lambda: _padded_request("huge", ten_mb, close=False), _lines(valid)),
            errors=[_bad_json(1)],
        ),
        CorpusCase(
            "gen_10mb_single_line_ok",
            _file(lambda: _padded_request("huge", ten_mb), _lines(valid)),
            ok={"total": 2, "model": MODEL},
        ),
        CorpusCase(
            "gen_line_over_max_request_bytes",
            _file(lambda: _padded_request("too-long", MAX_REQUEST_BYTES + 1), _lines(valid)),
            errors=[
                _error(
                    "invalid_request",
                    f"This line is {MAX_REQUEST_BYTES + 1} bytes long; a request may be at most "
                    f"{MAX_REQUEST_BYTES} bytes.",
                    None,
                    1,
                )
            ],
        ),
        CorpusCase(
            "gen_1mb_model_name_and_custom_id",
            _file(
                _lines(
                    _request(long_name, model=long_name),
                    _request(long_name),
                )
            ),
            errors=[
                _not_found("m" * 97 + "...", 1),
                _error(
                    "duplicate_custom_id",
                    f"The custom_id '{'m' * 97}...' is a duplicate of the custom_id of an earlier "
                    "request; every request in a batch needs its own.",
                    "custom_id",
                    2,
                ),
            ],
        ),
        CorpusCase(
            "gen_deep_nesting_beyond_parser_limit",
            _file(_lines(b"[" * 100_000, too_deep_body, _nested(1100, kind="object"), valid)),
            errors=[_bad_json(1), _bad_json(2), _bad_json(3)],
        ),
        CorpusCase(
            "gen_deep_nesting_in_fields",
            _file(_lines(deep_cid, deep_method, deep_model, deep_ok)),
            errors=[
                _error(
                    "invalid_request",
                    "'custom_id' must be a non-empty string, got [...].",
                    "custom_id",
                    1,
                ),
                _error("invalid_request", invalid_method, "method", 2),
                _error(
                    "invalid_request",
                    "Model parameter must be a string, got [...].",
                    "body.model",
                    3,
                ),
            ],
        ),
        CorpusCase(
            "gen_too_many_tasks",
            _file(_lines(*(_request(f"r{i}") for i in range(MAX_REQUESTS + 1)))),
            errors=[_too_many_tasks(MAX_REQUESTS + 1)],
        ),
        CorpusCase(
            "gen_max_tasks_with_blank_lines_ok",
            _file(_lines(*(b"%s\n" % _request(f"r{i}") for i in range(MAX_REQUESTS)))),
            ok={"total": MAX_REQUESTS, "model": MODEL},
        ),
        CorpusCase(
            "gen_too_many_tasks_counts_invalid_lines",
            _file(
                _lines(
                    b"{not json",
                    *(_request(f"r{i}") for i in range(MAX_REQUESTS - 1)),
                    b"[",
                )
            ),
            errors=[_bad_json(1), _bad_json(MAX_REQUESTS + 1), _too_many_tasks(MAX_REQUESTS + 1)],
        ),
        CorpusCase(
            "gen_too_many_errors",
            _file(_lines(*[b"x"] * (MAX_ERRORS + 1))),
            errors=[
                *(_bad_json(n) for n in range(1, MAX_ERRORS + 1)),
                # MAX_ERRORS + 1 bad lines; file-level errors are listed past the cap
                _too_many_tasks(MAX_ERRORS + 1),
                _error(
                    "too_many_errors",
                    f"{MAX_ERRORS + 2} errors in total; only the first {MAX_ERRORS + 1} are "
                    "listed.",
                ),
            ],
        ),
    ]


def all_cases() -> list[CorpusCase]:
    cases = committed_cases() + generated_cases()
    names = [case.name for case in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases
