"""Request templates and row ids for ``batchd prepare`` and ``batchd join``.

:class:`Template` fills ``{column}`` placeholders inside the string values of a parsed JSON
value, so the result is always valid JSON whatever the cells hold (the JSON encoder escapes
quotes, backslashes and newlines); ``{{`` and ``}}`` are literal braces. Every placeholder is
replaced by the cell as text (:func:`~batchd.tabular.formats.cell_text`), also for JSONL and
Parquet cells that are numbers or lists: the structure of the template never depends on the data.

:class:`RowIds` computes the ``custom_id`` of a row, the same way for both commands, so the
results of a batch find their rows again. :class:`RequestTemplate` makes the batch line of a row.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from batchd.protocol import BATCH_ENDPOINTS
from batchd.tabular.formats import Table, TableError, cell_text
from batchd.validation import normalize_url

__all__ = ["DEFAULT_URL", "RequestTemplate", "RowIds", "Template", "check_columns"]


@dataclass(frozen=True, slots=True)
class _Field:
    name: str


@dataclass(frozen=True, slots=True)
class _Text:
    """A string of the template with placeholders: literal pieces and fields."""

    parts: tuple[str | _Field, ...]


_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


def _compile_text(text: str, where: str) -> str | _Text:
    parts: list[str | _Field] = []
    literal: list[str] = []
    end = 0
    for match in _TOKEN.finditer(text):
        literal.append(text[end : match.start()])
        end = match.end()
        token = match.group()
        if token in ("{{", "}}"):
            literal.append(token[0])
        elif match.group(1):
            parts.append("".join(literal))
            literal = []
            parts.append(_Field(match.group(1)))
        else:
            raise TableError(
                f"the template has an unmatched {token!r} or an empty {{}} at {where}: write "
                "{{ and }} for literal braces, {column} for a cell"
            )
    literal.append(text[end:])
    parts.append("".join(literal))
    if len(parts) == 1 and isinstance(parts[0], str):  # no placeholder
        return parts[0]
    return _Text(tuple(part for part in parts if part != ""))


def _compile(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return _compile_text(value, where)
    if isinstance(value, dict):
        return {key: _compile(item, f"{where}.{key}") for key, item in value.items()}
    if isinstance(value, list):
        return [_compile(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return value


def _fill(node: Any, row: Mapping[str, Any]) -> Any:
    if isinstance(node, _Text):
        return "".join(
            part if isinstance(part, str) else cell_text(row.get(part.name)) for part in node.parts
        )
    if isinstance(node, dict):
        return {key: _fill(item, row) for key, item in node.items()}
    if isinstance(node, list):
        return [_fill(item, row) for item in node]
    return node


def _fields(node: Any) -> Iterator[str]:
    if isinstance(node, _Text):
        yield from (part.name for part in node.parts if isinstance(part, _Field))
    elif isinstance(node, dict):
        for item in node.values():
            yield from _fields(item)
    elif isinstance(node, list):
        for item in node:
            yield from _fields(item)


class Template:
    """A JSON value whose string values may hold ``{column}`` placeholders.

    Placeholders are filled in the parsed value (in string values, not in object keys), with
    the cell as text (:func:`cell_text`): the structure of the template never changes, and the
    JSON encoder escapes quotes, backslashes and newlines of the cells. ``{{`` and ``}}`` are
    literal braces.
    """

    def __init__(self, value: Any, where: str = "the template") -> None:
        self._node = _compile(value, where)
        self.columns: tuple[str, ...] = tuple(dict.fromkeys(_fields(self._node)))
        """The columns the placeholders name, in order of appearance."""

    def fill(self, row: Mapping[str, Any]) -> Any:
        """The template with the cells of ``row`` in place of its placeholders."""
        return _fill(self._node, row)


def check_columns(needed: Sequence[str], table: Table, what: str, hint: str = "") -> None:
    """Raise a :class:`TableError` naming the columns of ``needed`` that ``table`` lacks."""
    missing = [name for name in needed if name not in table.columns]
    if missing:
        available = ", ".join(table.columns) or "(none)"
        if len(table.columns) == 1 and table.format in ("csv", "tsv"):
            available += " (one column: is the delimiter right? --delimiter)"
        names = ", ".join(repr(name) for name in missing)
        raise TableError(
            f"{what} names the column{'s' if len(missing) > 1 else ''} {names}, which "
            f"{table.path} does not have; its columns are: {available}{hint}"
        )


# --------------------------------------------------------------------------- row ids


class RowIds:
    """The ``custom_id`` of a table row: ``prefix`` + the cell of ``column``, or + ``template``
    filled from the row, or + the row's 1-based number (prefix ``row-`` by default)."""

    def __init__(
        self, *, column: str | None = None, template: str | None = None, prefix: str | None = None
    ) -> None:
        if column is not None and template is not None:
            raise TableError("the custom_id comes from --id-column or --id-template, not both")
        self.column = column
        self._template = None
        if template is not None:
            compiled = Template(template, "the custom_id template")
            if not compiled.columns:
                raise TableError(
                    f"the custom_id template {template!r} names no column, so every row would "
                    "get the same id: use {column} placeholders, e.g. '{title} ({year})'"
                )
            self._template = compiled
        default_prefix = "row-" if column is None and template is None else ""
        self.prefix = default_prefix if prefix is None else prefix

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the id is made of."""
        if self.column is not None:
            return (self.column,)
        return self._template.columns if self._template is not None else ()

    def custom_id(self, row: Mapping[str, Any], number: int) -> str | None:
        """The id of ``row``, the ``number``-th of its table; ``None`` when its cells are empty."""
        if self.column is not None:
            base = cell_text(row.get(self.column))
        elif self._template is not None:
            base = self._template.fill(row)
        else:
            return f"{self.prefix}{number}"
        return self.prefix + base if base.strip() else None


# --------------------------------------------------------------------------- batch lines

DEFAULT_URL = "/v1/chat/completions"
_LINE_KEYS = ("custom_id", "method", "url", "body")


class RequestTemplate:
    """The template of a batch line: a request body, or a whole line ``{"custom_id", "method",
    "url", "body"}`` (told apart by its ``body`` key) whose ``custom_id`` may use placeholders.

    ``url`` is the endpoint (``/v1/chat/completions`` by default; it must agree with a line
    template's), ``model`` sets ``body.model``; the id options build :attr:`ids` (a line
    template's ``custom_id`` counts as ``id_template``). Mistakes that would fail every line of
    the batch (no model, ``stream: true``, a body the endpoint cannot take) are errors here,
    before any row is read.
    """

    def __init__(
        self,
        template: Any,
        *,
        url: str | None = None,
        model: str | None = None,
        id_column: str | None = None,
        id_template: str | None = None,
        id_prefix: str | None = None,
    ) -> None:
        if not isinstance(template, dict):
            raise TableError("the template must be a JSON object: a request body or a batch line")
        self.warnings: list[str] = []
        body = template
        if "body" in template:
            body, url, id_template = self._line_parts(template, url, id_column, id_template)
        if not isinstance(body, dict):
            raise TableError("the template's body must be a JSON object")
        self.url = normalize_url(url or DEFAULT_URL)
        self.ids = RowIds(column=id_column, template=id_template, prefix=id_prefix)
        if model is not None:  # first, or where the template has it
            body = {"model": model} | body | {"model": model}
        self._check_body(body)
        self.body = Template(body, "body")

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of the body's placeholders."""
        return self.body.columns

    def line(self, row: Mapping[str, Any], custom_id: str) -> bytes:
        """The batch line of ``row``, JSON with its newline."""
        line = {
            "custom_id": custom_id,
            "method": "POST",
            "url": self.url,
            "body": self.body.fill(row),
        }
        return orjson.dumps(line) + b"\n"

    @staticmethod
    def _line_parts(
        line: dict[str, Any], url: str | None, id_column: str | None, id_template: str | None
    ) -> tuple[Any, str | None, str | None]:
        unknown = [key for key in line if key not in _LINE_KEYS]
        if unknown:
            raise TableError(
                f"the template has a body, so it is a batch line, whose keys are "
                f"{', '.join(_LINE_KEYS)}; it also has {', '.join(map(repr, unknown))}"
            )
        if line.get("method", "POST") != "POST":
            raise TableError(f"the template's method is {line['method']!r}: batches take POST only")
        line_url = line.get("url")
        if line_url is not None and not isinstance(line_url, str):
            raise TableError("the template's url must be a string, e.g. /v1/chat/completions")
        if url is not None and line_url is not None and url != line_url:
            raise TableError(f"--url {url} contradicts the template's url {line_url}")
        custom_id = line.get("custom_id")
        if custom_id is not None:
            if not isinstance(custom_id, str):
                raise TableError("the template's custom_id must be a string, e.g. 'movie-{title}'")
            if id_column is not None or id_template is not None:
                raise TableError(
                    "the template has a custom_id: leave out --id-column and --id-template"
                )
            id_template = custom_id
        return line["body"], url or line_url, id_template

    def _check_body(self, body: dict[str, Any]) -> None:
        if "model" not in body:
            raise TableError(
                'the request body has no "model": add --model NAME or a "model" key to the template'
            )
        if body.get("stream") is True:
            raise TableError('batches do not stream: remove "stream": true from the template')
        required = BATCH_ENDPOINTS.get(self.url)
        if required is None:
            known = ", ".join(BATCH_ENDPOINTS)
            self.warnings.append(f"batchd serves batches for {known}, not {self.url}")
            return
        missing = [key for key in required if key not in body]
        if missing:
            raise TableError(
                f"a {self.url} request body needs {', '.join(map(repr, missing))}, which the "
                "template lacks (is --url right?)"
            )
