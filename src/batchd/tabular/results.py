"""The output and error files of a batch, read into one :class:`Result` per ``custom_id``.

Both files hold lines ``{"id", "custom_id", "response": {"status_code", "request_id", "body"},
"error"}``. A 2xx line becomes an ``ok`` result whose answer is taken from the body by its
``object`` type (a table of extractors: chat completions, completions, embeddings, responses;
any other body is kept whole as JSON text); a non-2xx line keeps its HTTP status and the error
message of its body; a line with ``response: null`` keeps its ``error.code`` and message.

Only what ``batchd join`` writes is kept (the answer text, not the whole body), in a dict keyed by
``custom_id``: memory grows with the results' text (and vectors, for embeddings), not with the
size of the response bodies.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from batchd.tabular.formats import TableError

__all__ = [
    "Result",
    "ResultColumns",
    "Results",
    "parse_object",
    "read_results",
    "result_columns",
]


@dataclass(frozen=True, slots=True)
class Result:
    """What one request of a batch came to."""

    status: str
    """``ok`` for a 2xx response, else the HTTP status (``"400"``) or the error code
    (``"batch_expired"``)."""
    content: str | None = None
    """The answer: the message of a chat completion, the text of a completion, the output text
    of a response; other bodies as JSON text. ``None`` for a failed request."""
    finish_reason: str | None = None
    error: str | None = None
    """The error message of a failed request (or the refusal of a chat model)."""
    embedding: str | None = None
    """The embedding vector of an embeddings request as JSON text (a list of vectors when the
    request had several inputs)."""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(slots=True)
class Results:
    """The results of a batch, by ``custom_id``."""

    by_id: dict[str, Result] = field(default_factory=dict)
    lines: int = 0
    duplicates: int = 0
    """Lines whose ``custom_id`` an earlier line had: a success wins over a failure (the files
    of a batch and of its retries, ``batchd retry``, in any order), else the later line."""


@dataclass(frozen=True, slots=True)
class _Answer:
    content: str | None = None
    finish_reason: str | None = None
    embedding: str | None = None
    error: str | None = None


def read_results(paths: Sequence[Path], *, embeddings: bool = True) -> Results:
    """Read the output and error files ``paths`` of a batch (and of its retries: a request's
    success wins over its failures); ``embeddings=False`` drops the vectors of embeddings
    results (they are most of the memory such results take)."""
    results = Results()
    for path in paths:
        for lineno, line in _lines(path):
            custom_id, result = _parse_line(path, lineno, line, embeddings)
            results.lines += 1
            previous = results.by_id.get(custom_id)
            if previous is not None:
                results.duplicates += 1
                if previous.ok and not result.ok:
                    continue  # a success stays, in whatever order a retry's files come
            results.by_id[custom_id] = result
    return results


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                yield lineno, line


def _parse_line(path: Path, lineno: int, line: bytes, embeddings: bool) -> tuple[str, Result]:
    where = f"line {lineno} of {path}"
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise TableError(f"{where} is not valid JSON: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("custom_id"), str):
        raise TableError(f"{where} has no custom_id: pass the output or error file of a batch")
    response, error = record.get("response"), record.get("error")
    if isinstance(response, dict) and isinstance(response.get("status_code"), int):
        return record["custom_id"], _from_response(response, embeddings)
    if isinstance(error, dict):
        code, message = error.get("code"), error.get("message")
        return record["custom_id"], Result(
            status=str(code or "error"), error=None if message is None else str(message)
        )
    raise TableError(
        f"{where} has neither a response nor an error: pass the output or error file of a "
        "batch, not its input file"
    )


def _from_response(response: dict[str, Any], embeddings: bool) -> Result:
    status_code: int = response["status_code"]
    body = response.get("body")
    body = body if isinstance(body, dict) else {"body": body}
    prompt, completion, total = _usage(body.get("usage"))
    if 200 <= status_code < 300:
        answer = _EXTRACTORS.get(str(body.get("object")), _whole_body)(body)
        status = "ok"
    else:
        answer = _Answer(error=_error_message(body))
        status = str(status_code)
    return Result(
        status=status,
        content=answer.content,
        finish_reason=answer.finish_reason,
        error=answer.error,
        embedding=answer.embedding if embeddings else None,
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=total,
    )


def _error_message(body: dict[str, Any]) -> str:
    error = body.get("error")
    if isinstance(error, dict) and error.get("message") is not None:
        code = error.get("code")
        return f"{code}: {error['message']}" if code else str(error["message"])
    return _json(body)


def _usage(usage: Any) -> tuple[int | None, int | None, int | None]:
    """Prompt, completion and total tokens (``input``/``output`` for the Responses API)."""
    if not isinstance(usage, dict):
        return None, None, None
    counts = (
        usage.get("prompt_tokens", usage.get("input_tokens")),
        usage.get("completion_tokens", usage.get("output_tokens")),
        usage.get("total_tokens"),
    )
    prompt, completion, total = (n if isinstance(n, int) else None for n in counts)
    return prompt, completion, total


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _first_choice(body: dict[str, Any]) -> dict[str, Any]:
    choices = body.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], dict):
        return choices[0]
    return {}


def _chat(body: dict[str, Any]) -> _Answer:
    choice = _first_choice(body)
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content = message.get("content")
    if isinstance(content, list):  # content parts
        content = "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    if content is None and message.get("tool_calls"):
        content = _json(message["tool_calls"])
    refusal = message.get("refusal")
    return _Answer(
        content=None if content is None else str(content),
        finish_reason=choice.get("finish_reason"),
        error=f"refusal: {refusal}" if refusal else None,
    )


def _completion(body: dict[str, Any]) -> _Answer:
    choice = _first_choice(body)
    text = choice.get("text")
    return _Answer(
        content=None if text is None else str(text), finish_reason=choice.get("finish_reason")
    )


def _embeddings(body: dict[str, Any]) -> _Answer:
    data = body.get("data")
    if not isinstance(data, list) or not all(
        isinstance(item, dict) and "embedding" in item for item in data
    ):
        return _whole_body(body)
    vectors = [item["embedding"] for item in data]
    vector = vectors[0] if len(vectors) == 1 else vectors
    # base64 vectors (encoding_format=base64) are kept as the string they are
    return _Answer(embedding=vector if isinstance(vector, str) else _json(vector))


def _responses(body: dict[str, Any]) -> _Answer:
    texts = [
        str(part.get("text", ""))
        for item in body.get("output") or ()
        if isinstance(item, dict) and item.get("type") == "message"
        for part in item.get("content") or ()
        if isinstance(part, dict) and part.get("type") == "output_text"
    ]
    status = body.get("status")
    return _Answer(content="".join(texts), finish_reason=None if status is None else str(status))


def _whole_body(body: dict[str, Any]) -> _Answer:
    return _Answer(content=_json(body))


_EXTRACTORS: dict[str, Callable[[dict[str, Any]], _Answer]] = {
    "chat.completion": _chat,
    "text_completion": _completion,
    "list": _embeddings,
    "response": _responses,
}
"""The answer of a 2xx body, by the body's ``object``."""


# --------------------------------------------------------------------------- joined columns

_FENCE = re.compile(r"\A\s*```[\w-]*[ \t]*\n(.*?)\n\s*```\s*\Z", re.DOTALL)


@dataclass(frozen=True, slots=True)
class ResultColumns:
    """The columns ``join`` adds to the table, and their cells for a result."""

    content: str
    fields: tuple[tuple[str, str], ...]  # (JSON key, column)
    parse_error: str | None
    embedding: str | None
    finish_reason: str
    status: str
    error: str
    usage: tuple[str, str, str] | None
    renamed: tuple[tuple[str, str], ...] = ()
    """The JSON fields whose column is not ``prefix + field`` (a name taken): (field, column)."""

    @property
    def names(self) -> list[str]:
        names = [self.content, *(column for _, column in self.fields)]
        names += [name for name in (self.parse_error, self.embedding) if name is not None]
        names += [self.finish_reason, self.status, self.error, *(self.usage or ())]
        return names

    @property
    def types(self) -> dict[str, str]:
        """Parquet types: text, except token counts."""
        types = dict.fromkeys(self.names, "string")
        return types | dict.fromkeys(self.usage or (), "int64")

    def cells(self, result: Result | None) -> dict[str, Any]:
        cells: dict[str, Any] = dict.fromkeys(self.names)
        if result is None:
            return cells
        cells[self.content] = result.content
        cells[self.finish_reason] = result.finish_reason
        cells[self.status] = result.status
        cells[self.error] = result.error
        if self.embedding is not None:
            cells[self.embedding] = result.embedding
        if self.usage is not None:
            counts = (result.prompt_tokens, result.completion_tokens, result.total_tokens)
            cells.update(zip(self.usage, counts, strict=True))
        if self.parse_error is not None and result.ok:
            parsed, cells[self.parse_error] = parse_object(result.content)
            for key, column in self.fields:
                cells[column] = parsed.get(key)
        return cells


def parse_object(content: str | None) -> tuple[dict[str, Any], str | None]:
    """The JSON object of an answer (a ```json fence around it is tolerated), or why not."""
    if content is None:
        return {}, "no content to parse"
    fenced = _FENCE.match(content)
    try:
        value = orjson.loads(fenced.group(1) if fenced else content)
    except orjson.JSONDecodeError as exc:
        return {}, f"not JSON: {exc}"
    if not isinstance(value, dict):
        return {}, f"a JSON {type(value).__name__}, not an object"
    return value, None


def _json_keys(spec: str | None, results: Results) -> list[str]:
    """The JSON fields to add: those of ``spec`` (``a,b`` or ``*``: all those seen)."""
    if spec is None:
        return []
    keys = [key.strip() for key in spec.split(",") if key.strip()]
    if keys != ["*"]:
        if not keys or "*" in keys:
            raise TableError("--json-fields takes field names, e.g. categories,summary, or '*'")
        return list(dict.fromkeys(keys))
    seen: dict[str, None] = {}
    for result in results.by_id.values():
        if result.ok:
            seen.update(dict.fromkeys(parse_object(result.content)[0]))
    return list(seen)


def result_columns(
    table_columns: Sequence[str],
    results: Results,
    *,
    json_fields: str | None,
    content_column: str,
    prefix: str,
    usage: bool,
) -> ResultColumns:
    """The columns ``join`` adds to a table of ``table_columns``.

    The columns batchd adds (content, finish_reason, status, error, ...) keep their names, each
    after ``prefix``; a JSON field is the column ``prefix + field`` too, unless that name is
    taken (by the table, by a column batchd adds, by another field), and then
    ``prefix + "json_" + field`` (with ``_2``, ``_3``, ... until free): listed in
    :attr:`ResultColumns.renamed`. What cannot be renamed so is a :class:`TableError` whose
    hint works: an added column that the table has (a ``--prefix`` it is checked for), or a
    ``--content-column`` that names another added column.
    """
    keys = _json_keys(json_fields, results)
    with_embeddings = any(result.embedding is not None for result in results.by_id.values())
    added = _added_columns(
        prefix,
        content_column=content_column,
        parse_error=json_fields is not None,
        embedding=with_embeddings,
        usage=usage,
    )
    names = added.names
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise TableError(
            f"--content-column {content_column!r} is the name of another column that batchd "
            f"adds ({', '.join(map(repr, repeated))}): choose another, e.g. "
            "--content-column answer"
        )
    taken = [name for name in names if name in table_columns]
    if taken:
        bases = [name.removeprefix(prefix) for name in names]
        raise TableError(
            f"the table already has the column{'s' if len(taken) > 1 else ''} "
            f"{', '.join(map(repr, taken))} that batchd adds: name the added columns apart "
            f"with --prefix, e.g. --prefix {_free_prefix(table_columns, bases)}"
        )
    fields, renamed = _field_columns(keys, prefix, reserved={*table_columns, *names})
    return dataclasses.replace(added, fields=fields, renamed=renamed)


def _added_columns(
    prefix: str, *, content_column: str, parse_error: bool, embedding: bool, usage: bool
) -> ResultColumns:
    """The columns batchd adds, without the JSON fields."""
    return ResultColumns(
        content=prefix + content_column,
        fields=(),
        parse_error=prefix + "parse_error" if parse_error else None,
        embedding=prefix + "embedding" if embedding else None,
        finish_reason=prefix + "finish_reason",
        status=prefix + "status",
        error=prefix + "error",
        usage=(
            (prefix + "prompt_tokens", prefix + "completion_tokens", prefix + "total_tokens")
            if usage
            else None
        ),
    )


def _free_prefix(table_columns: Sequence[str], bases: Sequence[str]) -> str:
    """A ``--prefix`` that puts none of the columns ``bases`` on a column of the table."""
    for number in itertools.count(1):
        candidate = "result_" if number == 1 else f"result{number}_"
        if not any(candidate + base in table_columns for base in bases):
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def _field_columns(
    keys: Sequence[str], prefix: str, *, reserved: set[str]
) -> tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]:
    """The column of each JSON field ``keys``, and those not named ``prefix + key``."""
    plain = [prefix + key for key in keys]  # keys are unique: so are these
    clashes = {name for name in plain if name in reserved}
    used = reserved | set(plain)
    fields: list[tuple[str, str]] = []
    renamed: list[tuple[str, str]] = []
    for key, name in zip(keys, plain, strict=True):
        if name in clashes:
            base = f"{prefix}json_{key}"
            name = next(
                candidate
                for candidate in (base if n == 1 else f"{base}_{n}" for n in itertools.count(1))
                if candidate not in used
            )
            used.add(name)
            renamed.append((key, name))
        fields.append((key, name))
    return tuple(fields), tuple(renamed)
