"""Tables for ``batchd prepare`` and ``batchd join``: reading and writing them.

A table is CSV (or TSV), JSONL (one object per line) or Parquet, read one row at a time: CSV and
JSONL line by line, Parquet by record batches (``pyarrow``, the ``parquet`` extra, imported only
when a Parquet file is used). A row is a ``dict`` from column name to cell; CSV cells are strings,
JSONL and Parquet cells keep their types, and :func:`cell_text` turns any of them into text.
:class:`TableWriter` writes rows to any of these formats, atomically
(:class:`~batchd.atomicfile.AtomicFile`).

Every error a user can cause is a :class:`TableError` whose message says what to change.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import importlib
import io
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import IO, Any

import orjson

from batchd.atomicfile import AtomicFile
from batchd.errors import BatchdError

__all__ = [
    "FORMATS",
    "Table",
    "TableError",
    "TableWriter",
    "cell_text",
    "open_table",
    "open_writer",
    "table_format",
]

FORMATS = ("csv", "tsv", "jsonl", "parquet")
"""Table formats, chosen from the file's extension unless named."""

_EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_EXTENSIONS |= {".parquet": "parquet", ".pq": "parquet"}
_PARQUET_BATCH_ROWS = 4096
_CSV_FIELD_LIMIT = 2**31 - 1  # csv's default (131,072 characters) is too small for documents


class TableError(BatchdError):
    """The table, the template or the results cannot be used."""


def table_format(path: Path, name: str | None = None) -> str:
    """The format of ``path``: ``name`` when given, otherwise from the extension."""
    if name is not None:
        if name not in FORMATS:
            raise TableError(f"unknown format {name!r}: use one of {', '.join(FORMATS)}")
        return name
    found = _EXTENSIONS.get(path.suffix.lower())
    if found is None:
        known = ", ".join(sorted(_EXTENSIONS))
        raise TableError(
            f"cannot tell the format of {path} from its extension (known: {known}); "
            f"name it with --format ({', '.join(FORMATS)})"
        )
    return found


def cell_text(value: Any) -> str:
    """A cell as text: strings as they are, ``None`` empty, ``true``/``false``, numbers as
    written, dates in ISO 8601, lists and objects as compact JSON."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _pyarrow(module: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise TableError(
            "Parquet tables need pyarrow: pip install 'batchd[parquet]' (or pip install pyarrow)"
        ) from None


# --------------------------------------------------------------------------- reading


@dataclass(slots=True)
class Table:
    """An open table: its columns and an iterator over its rows (read as they are consumed).

    ``columns`` is the header of a CSV file, the schema of a Parquet file, and the keys of the
    first object of a JSONL file (a later object may lack some: its cells are then ``None``).
    """

    path: Path
    format: str
    columns: list[str]
    rows: Iterator[dict[str, Any]]
    arrow_schema: Any = None
    """The Parquet schema (``pyarrow.Schema``) of a Parquet table, else ``None``."""


@contextlib.contextmanager
def open_table(
    path: Path, fmt: str, *, delimiter: str | None = None, encoding: str = "utf-8"
) -> Iterator[Table]:
    """Open ``path`` as a table of format ``fmt`` (see :func:`table_format`)."""
    if fmt == "parquet":
        with _open_parquet(path) as table:
            yield table
    elif fmt == "jsonl":
        with path.open("rb") as fh:
            yield _jsonl_table(path, fh)
    else:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise TableError(f"unknown encoding {encoding!r}, e.g. --encoding latin-1") from None
        # utf-8-sig reads UTF-8 and drops a byte order mark (Excel writes one).
        text_encoding = "utf-8-sig" if _is_utf8(encoding) else encoding
        with path.open(encoding=text_encoding, newline="") as fh:
            sep = delimiter or ("\t" if fmt == "tsv" else ",")
            yield _csv_table(path, fmt, fh, sep, encoding)


def _is_utf8(encoding: str) -> bool:
    return encoding.lower().replace("-", "").replace("_", "") == "utf8"


def _csv_table(path: Path, fmt: str, fh: IO[str], sep: str, encoding: str) -> Table:
    if len(sep) != 1:
        raise TableError(f"--delimiter must be one character, got {sep!r}")
    csv.field_size_limit(_CSV_FIELD_LIMIT)
    reader = csv.reader(fh, delimiter=sep)
    with _translate_read_errors(path, encoding, "the header"):
        header = next(reader, None)
    if not header:
        raise TableError(f"{path} is empty: a {fmt.upper()} table starts with a header line")
    seen: set[str] = set()
    for position, name in enumerate(header, 1):
        if not name:
            raise TableError(f"{path}: column {position} of the header has no name")
        if name in seen:
            raise TableError(f"{path}: the header names the column {name!r} twice")
        seen.add(name)
    return Table(path, fmt, header, _csv_rows(path, reader, header, encoding))


def _csv_rows(
    path: Path, reader: Iterator[list[str]], header: list[str], encoding: str
) -> Iterator[dict[str, Any]]:
    number = 0
    while True:
        with _translate_read_errors(path, encoding, f"row {number + 1}"):
            record = next(reader, None)
        if record is None:
            return
        if not record:  # a blank line
            continue
        number += 1
        if len(record) > len(header):
            raise TableError(
                f"row {number} of {path} has {len(record)} fields but the header has "
                f"{len(header)}: is the delimiter right (--delimiter)?"
            )
        record += [""] * (len(header) - len(record))
        yield dict(zip(header, record, strict=True))


@contextlib.contextmanager
def _translate_read_errors(path: Path, encoding: str, where: str) -> Iterator[None]:
    try:
        yield
    except UnicodeDecodeError:
        raise TableError(
            f"{path} is not {encoding} text ({where}): name its encoding, e.g. --encoding latin-1"
        ) from None
    except csv.Error as exc:
        raise TableError(f"{path} is not a valid CSV file ({where}): {exc}") from None


def _jsonl_table(path: Path, fh: IO[bytes]) -> Table:
    rows = _jsonl_rows(path, fh)
    first = next(rows, None)
    if first is None:
        return Table(path, "jsonl", [], iter(()))
    return Table(path, "jsonl", list(first), _chain_first(first, rows))


def _chain_first(first: dict[str, Any], rest: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    yield first
    yield from rest


def _jsonl_rows(path: Path, fh: IO[bytes]) -> Iterator[dict[str, Any]]:
    for lineno, line in enumerate(fh, 1):
        if lineno == 1:
            line = line.removeprefix(b"\xef\xbb\xbf")
        if not line.strip():
            continue
        try:
            row = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise TableError(f"line {lineno} of {path} is not valid JSON: {exc}") from None
        if not isinstance(row, dict):
            raise TableError(
                f"line {lineno} of {path} is a JSON {type(row).__name__}, not an object: "
                "each line of a JSONL table is one row, an object of column: value"
            )
        yield row


@contextlib.contextmanager
def _open_parquet(path: Path) -> Iterator[Table]:
    pq = _pyarrow("pyarrow.parquet")
    pa = _pyarrow("pyarrow")
    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise TableError(f"{path} is not a readable Parquet file: {exc}") from None
    try:
        schema = parquet.schema_arrow
        yield Table(path, "parquet", list(schema.names), _parquet_rows(parquet), schema)
    finally:
        parquet.close()


def _parquet_rows(parquet: Any) -> Iterator[dict[str, Any]]:
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS):
        rows: list[dict[str, Any]] = batch.to_pylist()
        yield from rows


# --------------------------------------------------------------------------- writing


class TableWriter:
    """Writes rows to a CSV, TSV, JSONL or Parquet file, atomically (see
    :class:`~batchd.atomicfile.AtomicFile`).

    CSV and Parquet cells that are not strings or numbers are written as :func:`cell_text`;
    JSONL keeps every value as it is. Only ``columns`` are written, in that order, except to
    JSONL, which writes each row whole.
    """

    def __init__(self, path: Path, fmt: str, columns: list[str], types: Mapping[str, Any]) -> None:
        self.columns = columns
        self._out = AtomicFile(path)
        self._fmt = fmt
        self._types = types
        self._pending: list[dict[str, Any]] = []
        self._parquet: Any = None
        self._csv: Any = None
        if fmt in ("csv", "tsv"):
            self._text = io.TextIOWrapper(self._out.file, encoding="utf-8", newline="")
            self._csv = csv.writer(self._text, delimiter="\t" if fmt == "tsv" else ",")
            self._csv.writerow(columns)

    def write(self, row: Mapping[str, Any]) -> None:
        """Write one row (missing columns are empty)."""
        if self._csv is not None:
            self._csv.writerow([cell_text(row.get(name)) for name in self.columns])
        elif self._fmt == "jsonl":
            line = orjson.dumps(row, default=str, option=orjson.OPT_NON_STR_KEYS)
            self._out.file.write(line + b"\n")
        else:
            self._pending.append({name: row.get(name) for name in self.columns})
            if len(self._pending) >= _PARQUET_BATCH_ROWS:
                self._flush_parquet()

    def commit(self) -> None:
        """Finish the file and move it into place."""
        if self._csv is not None:
            self._text.detach()  # flushes; the file stays open for AtomicFile
        elif self._fmt == "parquet":
            self._flush_parquet()
            if self._parquet is None:  # no rows: still a valid, empty file
                self._start_parquet([])
            self._parquet.close()
        self._out.commit()

    def discard(self) -> None:
        """Drop the file (after an error)."""
        if self._csv is not None:
            self._text.detach()
        if self._parquet is not None:
            with contextlib.suppress(Exception):
                self._parquet.close()
        self._out.discard()

    def _start_parquet(self, rows: list[dict[str, Any]]) -> Any:
        pa = _pyarrow("pyarrow")
        pq = _pyarrow("pyarrow.parquet")
        fields = []
        for name in self.columns:
            kind = self._types.get(name)
            if isinstance(kind, str):  # a type's name, e.g. "string"
                kind = getattr(pa, kind)()
            elif kind is None:  # a JSONL column: the type of its first values
                kind = self._infer(pa, name, rows)
            fields.append(pa.field(name, kind))
        schema = pa.schema(fields)
        self._parquet = pq.ParquetWriter(self._out.file, schema)
        return schema

    @staticmethod
    def _infer(pa: ModuleType, name: str, rows: list[dict[str, Any]]) -> Any:
        try:
            kind = pa.array([row[name] for row in rows]).type
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
            raise TableError(
                f"the column {name!r} mixes types ({exc}), which Parquet cannot hold: write CSV "
                "or JSONL instead"
            ) from None
        return pa.string() if pa.types.is_null(kind) else kind  # no value yet: text

    def _flush_parquet(self) -> None:
        if not self._pending:
            return
        pa = _pyarrow("pyarrow")
        schema = self._parquet.schema if self._parquet is not None else None
        if schema is None:
            schema = self._start_parquet(self._pending)
        columns = {}
        for field in schema:
            values = [row[field.name] for row in self._pending]
            if pa.types.is_string(field.type):
                values = [None if value is None else cell_text(value) for value in values]
            try:
                columns[field.name] = pa.array(values, type=field.type)
            except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
                raise TableError(
                    f"the column {field.name!r} changes type between rows ({exc}), which "
                    "Parquet cannot hold: write CSV or JSONL instead"
                ) from None
        self._parquet.write_table(pa.table(columns, schema=schema))
        self._pending = []


def open_writer(path: Path, columns: list[str], types: Mapping[str, Any]) -> TableWriter:
    """A :class:`TableWriter` for ``path``, its format from the extension.

    ``types`` maps column names to ``pyarrow`` types, or their names (``"string"``, ``"int64"``),
    for Parquet; other columns get the type of their first values. Other formats ignore it.
    """
    fmt = table_format(path)
    if fmt == "parquet":
        _pyarrow("pyarrow.parquet")
    return TableWriter(path, fmt, columns, types)
